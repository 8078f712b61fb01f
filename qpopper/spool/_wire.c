/* qpopper.spool._wire: the RETR/TOP wire conversion of mbox_send.wire_bytes in one C pass.
 *
 * Optional: mbox_send falls back to its pure-Python wire_bytes when this is not built, and
 * that function stays the definition this one is tested and fuzzed against
 * (docs/accelerators.md, "The wire conversion"). Same result for every input:
 *
 *   NUL -> space; CR LF -> LF; then a dot after LF doubled; LF -> CR LF; and a dot at the very
 *   start doubled when at_line_start.
 *
 * Every change is anchored at an LF (the CR dropped is the byte before it, the dot added the
 * byte after it), so the work is: find the LFs with memchr, copy the runs between them with
 * memcpy. NUL -> space changes no size and no other step looks at NUL or space, so it is done
 * last, over the output, only when the input has a NUL at all.
 *
 * The bytes come from strangers' mail: no fixed buffers, Py_ssize_t for every size, the output
 * size computed first and checked for overflow, one allocation of exactly that size, the fill
 * checked against it; no global state (the module has none), no recursion.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* The exact output size, or -1 (with OverflowError set) when it would not fit Py_ssize_t. */
static Py_ssize_t
wire_size(const char *in, Py_ssize_t n, int at_line_start)
{
    /* Each LF gains a CR (+1), loses the CR before it (-1) and gains a dot before a dot
     * (+1): at most 2 per LF, so the growth is counted apart from n and checked once. */
    Py_ssize_t grow = 0;
    const char *p = in, *end = in + n;
    const char *lf;

    while (p < end && (lf = memchr(p, '\n', (size_t)(end - p))) != NULL) {
        grow += 1;
        if (lf > in && lf[-1] == '\r')
            grow -= 1;
        if (lf + 1 < end && lf[1] == '.')
            grow += 1;
        p = lf + 1;
    }
    if (at_line_start && n > 0 && in[0] == '.')
        grow += 1;
    if (grow > PY_SSIZE_T_MAX - n) {     /* grow <= 2n + 1: only a huge input can overflow */
        PyErr_SetString(PyExc_OverflowError, "wire_bytes: output too large");
        return -1;
    }
    return n + grow;
}

/* Writes the converted bytes (NUL not yet replaced) into out, which holds exactly size bytes;
 * returns how many were written (== size unless wire_size and this loop disagree). */
static Py_ssize_t
wire_fill(const char *in, Py_ssize_t n, int at_line_start, char *out, Py_ssize_t size)
{
    const char *p = in, *end = in + n;
    const char *lf;
    char *o = out, *oend = out + size;

    if (at_line_start && n > 0 && in[0] == '.') {
        if (o >= oend)
            return -1;
        *o++ = '.';
    }
    while (p < end && (lf = memchr(p, '\n', (size_t)(end - p))) != NULL) {
        /* the run before this LF, without a CR right before it (CR LF -> LF -> CR LF) */
        const char *run_end = (lf > p && lf[-1] == '\r') ? lf - 1 : lf;
        Py_ssize_t run = run_end - p;
        int dot = (lf + 1 < end && lf[1] == '.');

        if (run > oend - o || 2 + dot > oend - o - run)
            return -1;
        memcpy(o, p, (size_t)run);
        o += run;
        *o++ = '\r';
        *o++ = '\n';
        if (dot)
            *o++ = '.';              /* the line's own dot follows with the next run */
        p = lf + 1;
    }
    /* the tail after the last LF: copied as it is (a lone CR at the end stays) */
    if (end - p > oend - o)
        return -1;
    memcpy(o, p, (size_t)(end - p));
    o += end - p;
    return o - out;
}

/* NUL -> space, in place, only where memchr finds one. */
static void
nul_to_space(char *buf, Py_ssize_t size)
{
    char *p = buf, *end = buf + size;
    char *nul;

    while (p < end && (nul = memchr(p, '\0', (size_t)(end - p))) != NULL) {
        *nul = ' ';
        p = nul + 1;
    }
}

static PyObject *
wire_bytes(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"data", "at_line_start", NULL};
    Py_buffer view;
    int at_line_start = 1;
    PyObject *result = NULL;
    const char *in;
    Py_ssize_t n, size, written;

    (void)module;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*|p:wire_bytes", keywords,
                                     &view, &at_line_start))
        return NULL;
    in = (const char *)view.buf;
    n = view.len;

    size = wire_size(in, n, at_line_start);
    if (size < 0)
        goto done;
    result = PyBytes_FromStringAndSize(NULL, size);
    if (result == NULL)
        goto done;
    written = wire_fill(in, n, at_line_start, PyBytes_AS_STRING(result), size);
    if (written != size) {
        /* cannot happen (the two loops count the same things); never hand out a short or
         * partly uninitialised object if it ever does */
        Py_CLEAR(result);
        PyErr_SetString(PyExc_SystemError, "wire_bytes: size mismatch");
        goto done;
    }
    if (n > 0 && memchr(in, '\0', (size_t)n) != NULL)
        nul_to_space(PyBytes_AS_STRING(result), size);
done:
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef wire_methods[] = {
    {"wire_bytes", (PyCFunction)(void (*)(void))wire_bytes, METH_VARARGS | METH_KEYWORDS,
     "wire_bytes(data, at_line_start=True) -> bytes\n\n"
     "Spool bytes as POP3 multi-line data: NUL as space, CRLF line ends, dot-stuffing\n"
     "(the same result as qpopper.spool.mbox_send.wire_bytes_python)."},
    {NULL, NULL, 0, NULL}
};

static struct PyModuleDef_Slot wire_slots[] = {
    {0, NULL}
};

static struct PyModuleDef wire_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "qpopper.spool._wire",
    .m_doc = "The RETR/TOP wire conversion in C (docs/accelerators.md).",
    .m_size = 0,
    .m_methods = wire_methods,
    .m_slots = wire_slots,
};

PyMODINIT_FUNC
PyInit__wire(void)
{
    return PyModuleDef_Init(&wire_module);
}
