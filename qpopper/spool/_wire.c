/* qpopper.spool._wire: the RETR/TOP wire conversion of mbox_send.wire_bytes_python, in one C
 * pass for most input.
 *
 * Optional: mbox_send falls back to its pure-Python wire_join_python (wire_bytes_python of the
 * pieces joined) when this is not built, and those functions stay the definition this one is
 * tested and fuzzed against (docs/accelerators.md, "The wire conversion"). Same result for
 * every input:
 *
 *   NUL -> space; CR LF -> LF; then a dot after LF doubled; LF -> CR LF; and a dot at the very
 *   start doubled when at_line_start.
 *
 * Every change is anchored at an LF (the CR dropped is the byte before it, the dot added the
 * byte after it), so the work is: find the LFs with memchr, copy the runs between them with
 * memcpy. NUL -> space changes no size and no other step looks at NUL or space, so it is done
 * last, over the output, only when the input has a NUL at all.
 *
 * wire_join(pieces) converts a message's pieces (its kept ranges and the X-UIDL line) the
 * same as wire_bytes of them joined, without the joined copy unless a piece boundary splits
 * a CR LF (docs/accelerators.md, "A message's pieces").
 *
 * The bytes come from strangers' mail: no fixed buffers, Py_ssize_t for every size, sizes
 * checked for overflow, every copy of the fill checked against the space left; the fill goes
 * into a guessed size and, when it does not fit, into the exactly counted one; the result is
 * cut to what was filled (only a missed guess or wire_join's rare join path allocates a second
 * buffer); no global state (the module has none), no recursion.
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
        PyErr_SetString(PyExc_OverflowError, "wire conversion: output too large");
        return -1;
    }
    return n + grow;
}

/* Writes the converted bytes (NUL not yet replaced) into out, which holds size bytes; returns
 * how many were written, or -1 when they do not fit (a missed guess: convert_pieces). */
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
    if (end > p)                     /* an empty buffer's pointer may be NULL */
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

/* --- wire_join: a message's pieces (kept ranges, the X-UIDL line) without joining them ---- */

/* Does a CR end one non-empty piece and an LF start the next? Only there would the conversion
 * reach across two pieces (the CR of a CR LF is dropped). Everywhere else each piece converts
 * on its own: it starts a line exactly when the non-empty piece before it ends with LF (the
 * dot doubled after an LF), and a CR at a piece's end not followed by LF stays, as it would. */
static int
splits_a_crlf(const Py_buffer *views, Py_ssize_t count)
{
    Py_ssize_t i;
    char last = 0;                       /* the last octet of the non-empty piece before */

    for (i = 0; i < count; i++) {
        const char *buf = (const char *)views[i].buf;

        if (views[i].len == 0)
            continue;
        if (last == '\r' && buf[0] == '\n')
            return 1;
        last = buf[views[i].len - 1];
    }
    return 0;
}

/* The pieces as one new bytes object: wire_join's way when splits_a_crlf. */
static PyObject *
joined(const Py_buffer *views, Py_ssize_t count)
{
    Py_ssize_t total = 0, i;
    PyObject *result;
    char *o;

    for (i = 0; i < count; i++) {
        if (views[i].len > PY_SSIZE_T_MAX - total) {
            PyErr_SetString(PyExc_OverflowError, "wire_join: input too large");
            return NULL;
        }
        total += views[i].len;
    }
    result = PyBytes_FromStringAndSize(NULL, total);
    if (result == NULL)
        return NULL;
    o = PyBytes_AS_STRING(result);
    for (i = 0; i < count; i++) {
        if (views[i].len == 0)           /* an empty buffer's pointer may be NULL */
            continue;
        memcpy(o, views[i].buf, (size_t)views[i].len);
        o += views[i].len;
    }
    return result;
}

/* The octets the pieces convert to, counted (wire_size per piece), or -1 with OverflowError. */
static Py_ssize_t
pieces_size(const Py_buffer *views, Py_ssize_t count, int at_line_start)
{
    Py_ssize_t size = 0, part, i;
    int line_start = at_line_start;

    for (i = 0; i < count; i++) {
        const char *in = (const char *)views[i].buf;

        if (views[i].len == 0)
            continue;
        part = wire_size(in, views[i].len, line_start);
        if (part < 0)
            return -1;
        if (part > PY_SSIZE_T_MAX - size) {
            PyErr_SetString(PyExc_OverflowError, "wire conversion: output too large");
            return -1;
        }
        size += part;
        line_start = in[views[i].len - 1] == '\n';
    }
    return size;
}

/* Fills out (size octets) with the pieces converted, each after the one before (NUL not yet
 * replaced); the octets written, or -1 when they do not fit. */
static Py_ssize_t
pieces_fill(const Py_buffer *views, Py_ssize_t count, int at_line_start, char *out,
            Py_ssize_t size)
{
    Py_ssize_t filled = 0, part, i;
    int line_start = at_line_start;

    for (i = 0; i < count; i++) {
        const char *in = (const char *)views[i].buf;

        if (views[i].len == 0)
            continue;
        part = wire_fill(in, views[i].len, line_start, out + filled, size - filled);
        if (part < 0)
            return -1;
        filled += part;
        line_start = in[views[i].len - 1] == '\n';
    }
    return filled;
}

/* The pieces converted as one new bytes object: what wire_bytes does with one piece, and
 * wire_join when no piece boundary splits a CR LF. NULL with an exception set on failure.
 *
 * Counting the output size first cost about as much as the conversion (a memchr per line), so
 * the fill goes first into a guess, the input plus a quarter: each LF adds one octet (its CR),
 * and mail's lines are longer than four octets. The object is then cut to what was filled
 * (a shrinking realloc, no copy). Input with more growth than that (short lines, many dots
 * after LFs) does not fit: it is counted and filled again at the exact size, at most twice
 * the work for that message. Only inputs up to GUESS_MAX octets are guessed: a buffer past
 * glibc's mmap threshold (128 KiB by default) that is then cut is mapped and faulted in
 * afresh on every call (the threshold only rises to the size of what is freed, and the cut
 * one is smaller than the next guess), while exactly sized ones reuse the heap. A guess of
 * twice the input would always fit, but would cross the threshold at 64 KiB, the RETR window
 * (docs/accelerators.md, "The wire conversion"). */
#define GUESS_MAX (96 * 1024)

static PyObject *
convert_pieces(const Py_buffer *views, Py_ssize_t count, int at_line_start)
{
    Py_ssize_t total = 0, size, filled = -1, i;
    int has_nul = 0;
    PyObject *result = NULL;

    for (i = 0; i < count; i++) {
        if (views[i].len > PY_SSIZE_T_MAX / 2 - total) {
            PyErr_SetString(PyExc_OverflowError, "wire conversion: input too large");
            return NULL;
        }
        total += views[i].len;
        if (!has_nul && views[i].len > 0 && memchr(views[i].buf, '\0', (size_t)views[i].len))
            has_nul = 1;
    }
    if (total <= GUESS_MAX) {
        size = total + total / 4 + 2;     /* at most 120 KiB + 2 */
        result = PyBytes_FromStringAndSize(NULL, size);
        if (result == NULL)
            return NULL;
        filled = pieces_fill(views, count, at_line_start, PyBytes_AS_STRING(result), size);
        if (filled < 0)
            Py_CLEAR(result);
    }
    if (filled < 0) {
        size = pieces_size(views, count, at_line_start);
        if (size < 0)
            return NULL;
        result = PyBytes_FromStringAndSize(NULL, size);
        if (result == NULL)
            return NULL;
        filled = pieces_fill(views, count, at_line_start, PyBytes_AS_STRING(result), size);
        if (filled != size) {
            Py_DECREF(result);  /* cannot happen (wire_size and wire_fill count the same
                                 * things): never hand out a short or partly uninitialised
                                 * object if it ever does */
            PyErr_SetString(PyExc_SystemError, "wire conversion: size mismatch");
            return NULL;
        }
    }
    if (has_nul)
        nul_to_space(PyBytes_AS_STRING(result), filled);
    if (filled != size && _PyBytes_Resize(&result, filled) < 0)
        return NULL;            /* it freed result */
    return result;
}

static PyObject *
wire_bytes(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"data", "at_line_start", NULL};
    Py_buffer view;
    int at_line_start = 1;
    PyObject *result;

    (void)module;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*|p:wire_bytes", keywords,
                                     &view, &at_line_start))
        return NULL;
    result = convert_pieces(&view, 1, at_line_start);
    PyBuffer_Release(&view);
    return result;
}

static PyObject *
wire_join(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"pieces", "at_line_start", NULL};
    PyObject *pieces, *items, *result = NULL;
    Py_buffer *views;
    Py_ssize_t count, acquired = 0, i;
    int at_line_start = 1;

    (void)module;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|p:wire_join", keywords,
                                     &pieces, &at_line_start))
        return NULL;
    if (!PyList_Check(pieces) && !PyTuple_Check(pieces)) {
        PyErr_SetString(PyExc_TypeError, "wire_join: pieces must be a list or a tuple");
        return NULL;
    }
    /* A tuple of its own: a buffer exporter written in Python (PEP 688, Python 3.12 on) runs
     * inside PyObject_GetBuffer and could change a list under the loop. */
    items = PySequence_Tuple(pieces);
    if (items == NULL)
        return NULL;
    count = PyTuple_GET_SIZE(items);
    views = PyMem_New(Py_buffer, (size_t)(count > 0 ? count : 1));
    if (views == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    /* each view holds a reference to its object until it is released */
    for (; acquired < count; acquired++)
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(items, acquired), &views[acquired],
                               PyBUF_SIMPLE) < 0)
            goto done;
    if (!splits_a_crlf(views, count)) {
        result = convert_pieces(views, count, at_line_start);
    } else {
        PyObject *whole = joined(views, count);

        if (whole != NULL) {
            Py_buffer one = {.buf = PyBytes_AS_STRING(whole), .len = PyBytes_GET_SIZE(whole)};

            result = convert_pieces(&one, 1, at_line_start);
            Py_DECREF(whole);
        }
    }
done:
    for (i = 0; i < acquired; i++)
        PyBuffer_Release(&views[i]);
    PyMem_Free(views);
    Py_DECREF(items);
    return result;
}

static PyMethodDef wire_methods[] = {
    {"wire_bytes", (PyCFunction)(void (*)(void))wire_bytes, METH_VARARGS | METH_KEYWORDS,
     "wire_bytes(data, at_line_start=True) -> bytes\n\n"
     "Spool bytes as POP3 multi-line data: NUL as space, CRLF line ends, dot-stuffing\n"
     "(the same result as qpopper.spool.mbox_send.wire_bytes_python)."},
    {"wire_join", (PyCFunction)(void (*)(void))wire_join, METH_VARARGS | METH_KEYWORDS,
     "wire_join(pieces, at_line_start=True) -> bytes\n\n"
     "wire_bytes(b''.join(pieces), at_line_start) for a list or tuple of buffers, without\n"
     "the joined copy unless a piece boundary splits a CR LF (the same result as\n"
     "qpopper.spool.mbox_send.wire_join_python)."},
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
