/* The batch scan's two passes over a mapped mbox part in C (docs/mbox.md, "The batch scan").
 *
 * candidates(buffer, start, end) does in one pass what mbox_batch._candidates does with a
 * regex, `find` and a `count` per message: it lists every `From ` line of [start, end) that
 * may be a separator, with the number of LFs before it, and gives up on a CR. All policy
 * (is_from_line, headers, UIDs, what goes to the reference scanner) stays in Python.
 *
 * uid_text(digest) is mbox_format.uid_text_python's arithmetic: a digest's 20-character UID
 * (docs/accelerators.md, "UID text").
 *
 * plain_from_lines(buffer, ats, eols, max_octets) is mbox_batch.python_plain_from_lines: which
 * candidate lines have the envelope's common shape (docs/accelerators.md, "The separator shape").
 *
 * header_block(buffer, at, eol, stop, continuations) is mbox_batch.python_header_block: a
 * message's header block found, its UID's hashed text made and its other noted headers looked
 * for in one walk over its lines (docs/accelerators.md, "The header block").
 *
 * The bytes are mail from strangers: every index is a Py_ssize_t checked against `end`, the
 * results grow in a heap array with overflow checks, nothing is kept between calls, and the
 * buffer is held (Py_buffer) while the GIL is released for the pass.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* The candidates found so far: three int64-sized values per candidate. */
typedef struct {
    Py_ssize_t *items;   /* at, eol, LFs in [start, at) for each candidate */
    Py_ssize_t len;      /* values used (3 per candidate) */
    Py_ssize_t cap;
} found_t;

/* Append one candidate; 0 on success, -1 when memory or the size ran out. */
static int
found_add(found_t *f, Py_ssize_t at, Py_ssize_t eol, Py_ssize_t lfs)
{
    if (f->cap - f->len < 3) {
        Py_ssize_t cap = f->cap ? f->cap : 3 * 256;
        if (cap > PY_SSIZE_T_MAX / 2 / (Py_ssize_t)sizeof(Py_ssize_t))
            return -1;
        cap *= 2;
        /* Raw allocator: this runs without the GIL. */
        Py_ssize_t *grown = PyMem_RawRealloc(f->items, (size_t)cap * sizeof(Py_ssize_t));
        if (grown == NULL)
            return -1;
        f->items = grown;
        f->cap = cap;
    }
    f->items[f->len++] = at;
    f->items[f->len++] = eol;
    f->items[f->len++] = lfs;
    return 0;
}

enum pass_result { PASS_OK, PASS_CR, PASS_NOMEM };

/* The pass over [from, end) of buf, from just after the first line (from > start, and
 * buf[from - 1] is that line's LF). A candidate is a `From ` at p with LF LF right before
 * it (the LF before may be the previous candidate's own: p >= from) and an LF in [p + 5,
 * end): mbox_batch's _FROM_LINE searched from the previous match's end. *lfs counts the
 * LFs passed; it comes in as the count of [start, from). */
static enum pass_result
pass(const unsigned char *buf, Py_ssize_t from, Py_ssize_t end, Py_ssize_t *lfs,
     found_t *found)
{
    Py_ssize_t i = from;
    Py_ssize_t count = *lfs;

    while (i < end) {
        if (end - i >= 64) {
            /* 64 octets at a time, a loop GCC turns into vector compares: the LFs, whether
             * an LF follows an LF (buf[i - 1] exists: i > start), whether a CR is there. */
            const unsigned char *s = buf + i;
            unsigned char nl = 0, pair = 0, cr = 0;
            for (int k = 0; k < 64; k++) {
                unsigned char is_nl = s[k] == '\n';
                nl += is_nl;
                pair |= is_nl & (s[k - 1] == '\n');
                cr |= s[k] == '\r';
            }
            if (cr)
                return PASS_CR;
            if (!pair) {
                count += nl;
                i += 64;
                continue;
            }
        }
        /* One octet at a time: the end of the part, or a block with an empty line. */
        Py_ssize_t stop = end - i >= 64 ? i + 64 : end;
        for (; i < stop; i++) {
            unsigned char c = buf[i];
            if (c == '\r')
                return PASS_CR;
            if (c != '\n')
                continue;
            count++;
            Py_ssize_t p = i + 1;
            if (buf[i - 1] != '\n' || end - p < 5 || memcmp(buf + p, "From ", 5) != 0)
                continue;
            const unsigned char *nl = memchr(buf + p + 5, '\n', (size_t)(end - p - 5));
            if (nl == NULL) {
                /* No LF after it: neither it nor any later `From ` is a candidate; only a
                 * CR in the rest still matters. */
                if (memchr(buf + p, '\r', (size_t)(end - p)) != NULL)
                    return PASS_CR;
                *lfs = count;
                return PASS_OK;
            }
            Py_ssize_t eol = (Py_ssize_t)(nl - buf) + 1;
            if (memchr(buf + p, '\r', (size_t)(eol - p)) != NULL)
                return PASS_CR;
            if (found_add(found, p, eol, count) < 0)
                return PASS_NOMEM;
            count++;                  /* the line's own LF; the line holds no other */
            i = eol;
            break;                    /* back to whole blocks from the end of the line */
        }
    }
    *lfs = count;
    return PASS_OK;
}

/* A list of every third value of found, from `first`. */
static PyObject *
column(const found_t *f, Py_ssize_t first)
{
    PyObject *list = PyList_New(f->len / 3);
    if (list == NULL)
        return NULL;
    for (Py_ssize_t j = first, n = 0; j < f->len; j += 3, n++) {
        PyObject *value = PyLong_FromSsize_t(f->items[j]);
        if (value == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, n, value);
    }
    return list;
}

PyDoc_STRVAR(candidates_doc,
"candidates(buffer, start, end) -> (ats, eols, lfs) or None\n\n"
"The `From ` lines of buffer[start:end] that may be mbox separators: the first line when it\n"
"starts with `From `, then every `From ` line after an empty line, each only when its LF is\n"
"before end. ats and eols are their offsets and line ends; lfs[i] is the number of LFs in\n"
"[start, ats[i]), with one more item: the LFs in [start, end). None when the part does not\n"
"start with such a line or holds a CR.");

/* An argument check failed: the buffer given back, ValueError(message) raised. */
static PyObject *
refused(Py_buffer *view, const char *message)
{
    PyBuffer_Release(view);
    PyErr_SetString(PyExc_ValueError, message);
    return NULL;
}

static PyObject *
candidates(PyObject *module, PyObject *args)
{
    (void)module;
    Py_buffer view;
    Py_ssize_t start, end;
    if (!PyArg_ParseTuple(args, "y*nn:candidates", &view, &start, &end))
        return NULL;
    if (start < 0 || end < start || end > view.len)
        return refused(&view, "candidates: need 0 <= start <= end <= len(buffer)");
    const unsigned char *buf = view.buf;
    found_t found = {NULL, 0, 0};
    PyObject *result = NULL;
    const unsigned char *first_nl = NULL;
    if (end - start > 5 && memcmp(buf + start, "From ", 5) == 0)
        first_nl = memchr(buf + start + 5, '\n', (size_t)(end - start - 5));
    if (first_nl == NULL)
        goto none;
    Py_ssize_t eol = (Py_ssize_t)(first_nl - buf) + 1;
    if (memchr(buf + start, '\r', (size_t)(eol - start)) != NULL)
        goto none;
    Py_ssize_t lfs = 1;
    enum pass_result got;
    if (found_add(&found, start, eol, 0) < 0) {
        got = PASS_NOMEM;
    } else {
        Py_BEGIN_ALLOW_THREADS
        got = pass(buf, eol, end, &lfs, &found);
        Py_END_ALLOW_THREADS
    }
    if (got == PASS_NOMEM) {
        PyErr_NoMemory();
        goto done;
    }
    if (got == PASS_CR)
        goto none;
    PyObject *ats = column(&found, 0), *eols = column(&found, 1), *counts = column(&found, 2);
    PyObject *total = PyLong_FromSsize_t(lfs);
    if (ats && eols && counts && total && PyList_Append(counts, total) == 0)
        result = PyTuple_Pack(3, ats, eols, counts);
    Py_XDECREF(ats);
    Py_XDECREF(eols);
    Py_XDECREF(counts);
    Py_XDECREF(total);
    goto done;
none:
    result = Py_NewRef(Py_None);
done:
    PyMem_RawFree(found.items);
    PyBuffer_Release(&view);
    return result;
}

/* --- UID text: mbox_format.uid_text_python in C ---------------------------------------------- */

/* Qpopper's base-80 digits: '!' (0x21) onwards, '.' replaced by '~' (docs/mbox.md, "X-UIDL and Status"). */
static const char uid_digits[] =
    "!\"#$%&'()*+,-~/0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnop";
_Static_assert(sizeof uid_digits == 80 + 1, "the UID alphabet has 80 digits");

PyDoc_STRVAR(uid_text_doc,
"uid_text(digest) -> str\n\n"
"Qpopper's 20-character UID for a 16-octet MD5 digest: per 4 octets b0..b3,\n"
"v = (b0 << 12) + (b1 << 8) + (b2 << 4) + b3 (Qpopper shifts by 4, not 8) as five base-80\n"
"digits, least significant first (the same result as mbox_format.uid_text_python).");

static PyObject *
uid_text(PyObject *module, PyObject *arg)
{
    (void)module;
    Py_buffer view;
    char out[20];
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (view.len != 16)
        return refused(&view, "uid_text: need a 16-octet digest");
    const unsigned char *b = view.buf;
    for (int group = 0; group < 4; group++) {
        const unsigned char *o = b + 4 * group;
        unsigned long v = ((unsigned long)o[0] << 12) + ((unsigned long)o[1] << 8) +
                          ((unsigned long)o[2] << 4) + o[3];
        for (int digit = 0; digit < 5; digit++) {
            out[5 * group + digit] = uid_digits[v % 80];
            v /= 80;
        }
    }
    PyBuffer_Release(&view);
    return PyUnicode_FromStringAndSize(out, 20);
}

/* --- the header block: mbox_batch.python_header_block in C ------------------------------------ */

typedef struct {
    const char *text;
    size_t len;
} name_t;

/* In lower case: a letter matches either case, anything else itself. */
static const name_t hashed_names[] = {
    {"received", 8}, {"date", 4}, {"message-id", 10}, {"subject", 7}, {NULL, 0}};
static const name_t other_names[] = {
    {"content-length", 14}, {"x-uidl", 6}, {"status", 6}, {NULL, 0}};

/* Does the line [p, end) (its LF excluded) start with one of names, then ':'? ASCII
 * case-insensitive, as the Python side's re.IGNORECASE on bytes. */
static int
line_is(const unsigned char *p, const unsigned char *end, const name_t *names)
{
    for (; names->text != NULL; names++) {
        size_t n = names->len, i = 0;
        if ((size_t)(end - p) <= n || p[n] != ':')
            continue;
        for (; i < n; i++) {
            unsigned char c = (unsigned char)names->text[i];
            if (c >= 'a' && c <= 'z' ? (p[i] | 0x20) != c : p[i] != c)
                break;
        }
        if (i == n)
            return 1;
    }
    return 0;
}

/* The hashed text as it grows: a bytes object resized by doubling. */
typedef struct {
    PyObject *bytes;
    Py_ssize_t len, cap;
} text_t;

/* Append n octets; 0, or -1 with an exception (text->bytes is then NULL). */
static int
text_add(text_t *text, const unsigned char *src, Py_ssize_t n)
{
    if (n > text->cap - text->len) {
        Py_ssize_t cap = text->cap;
        while (n > cap - text->len) {
            if (cap > PY_SSIZE_T_MAX / 2) {
                Py_CLEAR(text->bytes);
                PyErr_NoMemory();
                return -1;
            }
            cap *= 2;
        }
        if (_PyBytes_Resize(&text->bytes, cap) < 0)
            return -1;
        text->cap = cap;
    }
    memcpy(PyBytes_AS_STRING(text->bytes) + text->len, src, (size_t)n);
    text->len += n;
    return 0;
}

PyDoc_STRVAR(header_block_doc,
"header_block(buffer, at, eol, stop, continuations) -> (blank, text, other) or None\n\n"
"The header block of the message whose separator line is buffer[at:eol] (its LF included):\n"
"blank, the offset of the empty line's LF (the first LF LF at or after eol - 1, before\n"
"stop, plus one); text, the UID's hashed text (the separator line, every Received, Date,\n"
"Message-ID and Subject line, with its continuation lines when `continuations`, each ended\n"
"by an LF, then the separator line again when `continuations`), NUL turned into space;\n"
"other, whether a Content-Length, X-UIDL or Status line is among the headers. None when\n"
"there is no empty line before stop. The same as mbox_batch.python_header_block.");

static PyObject *
header_block(PyObject *module, PyObject *args)
{
    (void)module;
    Py_buffer view;
    Py_ssize_t at, eol, stop;
    int continuations;
    if (!PyArg_ParseTuple(args, "y*nnnp:header_block", &view, &at, &eol, &stop, &continuations))
        return NULL;
    if (at < 0 || eol <= at || eol > view.len || stop < eol - 1 || stop > view.len ||
        ((const unsigned char *)view.buf)[eol - 1] != '\n')
        return refused(&view, "header_block: need 0 <= at < eol, eol - 1 <= stop "
                       "<= len(buffer), and buffer[eol - 1] an LF");
    /* One walk, every read bounded by `stop` and every write by the text's size: the buffer
     * is a map of a spool its owner can change while we read it, so nothing found in one
     * step is trusted in the next; a line end that is gone makes the message the reference
     * scanner's (None). */
    const unsigned char *buf = view.buf, *limit = buf + stop, *p = buf + eol - 1;
    const unsigned char *blank_at = NULL;
    PyObject *result = NULL;
    text_t text = {NULL, 0, 0};
    while (p + 1 < limit) {                        /* the first LF LF in [eol - 1, stop) */
        const unsigned char *lf = memchr(p, '\n', (size_t)(limit - 1 - p));
        if (lf == NULL)
            break;
        if (lf[1] == '\n') {
            blank_at = lf + 1;
            break;
        }
        p = lf + 1;
    }
    if (blank_at == NULL)
        goto none;
    Py_ssize_t sep = eol - at;
    text.cap = 2 * sep + 512;
    text.bytes = PyBytes_FromStringAndSize(NULL, text.cap);
    if (text.bytes == NULL || text_add(&text, buf + at, sep) < 0)
        goto done;
    int other = 0;
    const unsigned char *line = buf + eol;         /* each line of [eol, blank_at) */
    while (line < blank_at) {
        const unsigned char *end = memchr(line, '\n', (size_t)(blank_at - line));
        if (end == NULL)
            goto none;                             /* changed under us */
        if (line_is(line, end, hashed_names)) {
            while (continuations && end + 1 < blank_at && (end[1] == ' ' || end[1] == '\t')) {
                end = memchr(end + 1, '\n', (size_t)(blank_at - end - 1));
                if (end == NULL)
                    goto none;
            }
            if (text_add(&text, line, end - line + 1) < 0)     /* with its LF */
                goto done;
        } else if (!other && line_is(line, end, other_names)) {
            other = 1;
        }
        line = end + 1;
    }
    if (continuations && text_add(&text, buf + at, sep) < 0)
        goto done;
    if (_PyBytes_Resize(&text.bytes, text.len) < 0)
        goto done;
    char *t = PyBytes_AS_STRING(text.bytes), *nul;
    Py_ssize_t left = text.len;
    while (left > 0 && (nul = memchr(t, '\0', (size_t)left)) != NULL) {
        *nul = ' ';
        left -= nul + 1 - t;
        t = nul + 1;
    }
    result = Py_BuildValue("(nOO)", (Py_ssize_t)(blank_at - buf), text.bytes,
                           other ? Py_True : Py_False);
    goto done;
none:
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(text.bytes);
    PyBuffer_Release(&view);
    return result;
}

/* --- the separator shape: mbox_batch.python_plain_from_lines in C ------------------------------ */

static int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
static int is_word(unsigned char c) { return c != ' ' && c != '\r' && c != '\n'; }

/* mbox_format._PLAIN_FROM_LINE's fullmatch of s[0:n]:
 *   From [^\r\n]*[^ \r\n] [^ \r\n]{3} [^ \r\n]{3} [ 0-9][0-9] [0-9]{2}:[0-9]{2}:[0-9]{2} [0-9]{4}\r?\n?
 * Past `From ` everything is at a fixed distance from the end: the optional LF, then the
 * optional CR (a digit ends the year, so the two are found by looking), then 26 octets of
 * the date; between `From ` and those, any octets but CR and LF. */
static int
plain_from_line(const unsigned char *s, Py_ssize_t n)
{
    Py_ssize_t e = n;
    if (e > 0 && s[e - 1] == '\n')
        e--;
    if (e > 0 && s[e - 1] == '\r')
        e--;
    if (e < 5 + 26 || memcmp(s, "From ", 5) != 0)
        return 0;
    for (Py_ssize_t i = 5; i < e - 26; i++)
        if (s[i] == '\r' || s[i] == '\n')
            return 0;
    const unsigned char *t = s + e - 26;
    return is_word(t[0]) && t[1] == ' ' && is_word(t[2]) && is_word(t[3]) && is_word(t[4]) &&
           t[5] == ' ' && is_word(t[6]) && is_word(t[7]) && is_word(t[8]) && t[9] == ' ' &&
           (t[10] == ' ' || is_digit(t[10])) && is_digit(t[11]) && t[12] == ' ' &&
           is_digit(t[13]) && is_digit(t[14]) && t[15] == ':' && is_digit(t[16]) &&
           is_digit(t[17]) && t[18] == ':' && is_digit(t[19]) && is_digit(t[20]) &&
           t[21] == ' ' && is_digit(t[22]) && is_digit(t[23]) && is_digit(t[24]) &&
           is_digit(t[25]);
}

PyDoc_STRVAR(plain_from_lines_doc,
"plain_from_lines(buffer, ats, eols, max_octets) -> bytes\n\n"
"One octet per line buffer[ats[i]:eols[i]]: 1 when it is shorter than max_octets and has the\n"
"envelope's common shape (mbox_format._PLAIN_FROM_LINE matches all of it), else 0. The same\n"
"as mbox_batch.python_plain_from_lines for indexes inside the buffer; others are refused.");

static PyObject *
plain_from_lines(PyObject *module, PyObject *args)
{
    (void)module;
    Py_buffer view;
    PyObject *ats, *eols;
    Py_ssize_t max_octets;
    if (!PyArg_ParseTuple(args, "y*O!O!n:plain_from_lines", &view, &PyList_Type, &ats,
                          &PyList_Type, &eols, &max_octets))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t count = PyList_GET_SIZE(ats);
    if (PyList_GET_SIZE(eols) != count) {
        PyErr_SetString(PyExc_ValueError, "plain_from_lines: ats and eols differ in length");
        goto done;
    }
    result = PyBytes_FromStringAndSize(NULL, count);
    if (result == NULL)
        goto done;
    char *flags = PyBytes_AS_STRING(result);
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t at = PyLong_AsSsize_t(PyList_GET_ITEM(ats, i));
        Py_ssize_t eol = PyLong_AsSsize_t(PyList_GET_ITEM(eols, i));
        if ((at == -1 || eol == -1) && PyErr_Occurred()) {
            Py_CLEAR(result);
            goto done;
        }
        if (at < 0 || eol < at || eol > view.len) {
            Py_CLEAR(result);
            PyErr_SetString(PyExc_ValueError,
                            "plain_from_lines: need 0 <= ats[i] <= eols[i] <= len(buffer)");
            goto done;
        }
        flags[i] = (char)(eol - at < max_octets &&
                          plain_from_line((const unsigned char *)view.buf + at, eol - at));
    }
done:
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef scan_methods[] = {
    {"candidates", candidates, METH_VARARGS, candidates_doc},
    {"uid_text", uid_text, METH_O, uid_text_doc},
    {"header_block", header_block, METH_VARARGS, header_block_doc},
    {"plain_from_lines", plain_from_lines, METH_VARARGS, plain_from_lines_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef scan_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "qpopper.spool._scan",
    .m_doc = "The batch mbox scan's passes in C (docs/mbox.md, \"The batch scan\").",
    .m_size = 0,
    .m_methods = scan_methods,
};

PyMODINIT_FUNC
PyInit__scan(void)
{
    return PyModuleDef_Init(&scan_module);
}
