/* The common HTTP/1.1 message in one call into C (decision 0115).
 *
 * llhttp (httptools) reads every message the proxy gets, and calls back into Python once
 * per part: the message's start, its target or status, each header field, the head's end,
 * the body, the message's end. For the message a mesh carries most (a keep-alive
 * HTTP/1.1 request or response whose head and whole body are in one read), those calls and
 * the per-field classification in proxy.wire.http1 cost more than everything llhttp does.
 *
 * parse_request and parse_response read such a message in one call and give back what
 * proxy.wire.http1's readers would have built from llhttp's callbacks: the forwardable
 * header list (hop-by-hop fields taken out by the reader's `kinds`), Host, Content-Length
 * and the mesh's own fields. They accept a strict subset of what llhttp accepts and
 * decline (return None) everything else, so that llhttp reads it as before and every
 * refusal, limit and smuggling guard stays where it is: a head not whole in this read,
 * any byte outside the plain grammar (a bare LF, a control character, obs-text, obs-fold,
 * whitespace before a colon), HTTP/1.0, a method outside the common seven, a target not in
 * origin form, Transfer-Encoding, a Content-Length that is not 1-18 digits or comes twice,
 * a second Host, Expect, Upgrade, any Connection other than keep-alive, a field count or
 * head size over the reader's limits, a body not whole in this read, and for responses
 * 1xx, 204, 304 and a status outside 200-599 or one without Content-Length. A declined
 * message costs one scan of its head more than before.
 *
 * tests/proxy/test_h1native.py feeds the same bytes to a reader with and without this
 * path and requires the same calls with the same values, for the cases above and
 * for generated and mutated messages.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdio.h>
#include <string.h>

/* proxy.wire.http1's field kinds (K_*): the values of a reader's `kinds` dict. */
enum {
    K_DROP = 0,
    K_CONNECTION = 1,
    K_CONTENT_LENGTH = 2,
    K_TRANSFER_ENCODING = 3,
    K_HOST = 4,
    K_EXPECT = 5,
    K_SRC_SERVICE = 6,
    K_FORWARDED_FOR = 7,
    K_UPGRADE = 8,
};

/* Names longer than this are never a kind (the longest is gossamer-src-service). */
#define MAX_KIND_NAME 63

static unsigned char is_tchar[256];  /* RFC 9110 token characters */
static unsigned char is_vchar[256];  /* field value: HTAB, SP and VCHAR; no obs-text */
static unsigned char is_target[256]; /* origin-form target: VCHAR */

static const char *const METHODS[] = {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"};
#define N_METHODS (sizeof(METHODS) / sizeof(METHODS[0]))
static PyObject *method_bytes[N_METHODS];

/* The name lengths present among a kinds dict's keys (bit n: a name of n bytes), so that
 * a field whose name cannot be a kind is not looked up; all bits when a key is longer
 * than MAX_KIND_NAME (then every field is). Worked out on each call, not cached: a
 * dozen keys cost less than a cache that could go stale or fill up. */
static unsigned long long kinds_mask(PyObject *kinds) {
    unsigned long long mask = 0;
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(kinds, &pos, &key, &value)) {
        if (!PyBytes_Check(key))
            continue; /* never equal to a field's name */
        if (PyBytes_GET_SIZE(key) > MAX_KIND_NAME)
            return ~0ULL;
        mask |= 1ULL << PyBytes_GET_SIZE(key);
    }
    return mask;
}

/* What the fields of one head gave. */
typedef struct {
    PyObject *headers;
    PyObject *host;
    PyObject *content_length;
    PyObject *src_service;
    PyObject *forwarded_for;
    long long length;
} Fields;

static void fields_clear(Fields *f) {
    Py_CLEAR(f->headers);
    Py_CLEAR(f->host);
    Py_CLEAR(f->content_length);
    Py_CLEAR(f->src_service);
    Py_CLEAR(f->forwarded_for);
}

#define DECLINE 0
#define OK 1
#define FAILED -1

/* Names llhttp itself acts on, whatever the reader's kinds say. */
enum { F_NONE, F_CONTENT_LENGTH, F_CONNECTION, F_PROXY_CONNECTION, F_DECLINE };

static int framing(const char *lower, Py_ssize_t n) {
    switch (n) {
    case 7:
        return memcmp(lower, "upgrade", 7) == 0 ? F_DECLINE : F_NONE;
    case 10:
        return memcmp(lower, "connection", 10) == 0 ? F_CONNECTION : F_NONE;
    case 14:
        return memcmp(lower, "content-length", 14) == 0 ? F_CONTENT_LENGTH : F_NONE;
    case 16:
        return memcmp(lower, "proxy-connection", 16) == 0 ? F_PROXY_CONNECTION : F_NONE;
    case 17:
        return memcmp(lower, "transfer-encoding", 17) == 0 ? F_DECLINE : F_NONE;
    default:
        return F_NONE;
    }
}

#define KIND_NONE -1  /* not among the kinds: forwarded */
#define KIND_ERROR -2 /* a Python error is set */

/* One field's kind in `kinds` (KIND_NONE, KIND_ERROR, or K_DROP..K_UPGRADE) and what
 * llhttp makes of it (`frame`; F_DECLINE also for a kind this code does not know). */
static long field_kind(PyObject *kinds, unsigned long long mask, const char *name, Py_ssize_t n,
                       int *frame) {
    *frame = F_NONE;
    char small[MAX_KIND_NAME + 1];
    char *lower = small;
    if (n > MAX_KIND_NAME) {
        if (mask != ~0ULL)
            return KIND_NONE; /* no kind is this long */
        lower = PyMem_Malloc((size_t)n);
        if (lower == NULL) {
            PyErr_NoMemory();
            return KIND_ERROR;
        }
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        lower[i] = (char)((c >= 'A' && c <= 'Z') ? c + 32 : c);
    }
    *frame = framing(lower, n);
    long result = KIND_NONE;
    if (n > MAX_KIND_NAME || (mask & (1ULL << n))) {
        PyObject *key = PyBytes_FromStringAndSize(lower, n);
        PyObject *kind = key == NULL ? NULL : PyDict_GetItemWithError(kinds, key);
        Py_XDECREF(key);
        if (kind == NULL) {
            result = PyErr_Occurred() ? KIND_ERROR : KIND_NONE;
        } else {
            int overflow = 0;
            long k = PyLong_Check(kind) ? PyLong_AsLongAndOverflow(kind, &overflow) : -1;
            if (k == -1 && PyErr_Occurred()) {
                result = KIND_ERROR;
            } else if (overflow || k < K_DROP || k > K_UPGRADE) {
                *frame = F_DECLINE; /* not a kind this code knows: Python's */
            } else {
                result = k;
            }
        }
    }
    if (lower != small)
        PyMem_Free(lower);
    return result;
}

static int ieq(const char *a, Py_ssize_t n, const char *lower) {
    if ((Py_ssize_t)strlen(lower) != n)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)a[i];
        if (c >= 'A' && c <= 'Z')
            c += 32;
        if (c != (unsigned char)lower[i])
            return 0;
    }
    return 1;
}

/* Header lines from p up to `end` (the blank line's CR). DECLINE, OK or FAILED. */
static int parse_fields(const char *p, const char *end, PyObject *kinds, Py_ssize_t max_fields,
                        Fields *f) {
    unsigned long long mask = kinds_mask(kinds);
    Py_ssize_t count = 0;
    f->length = -1;
    f->headers = PyList_New(0);
    if (f->headers == NULL)
        return FAILED;
    while (p < end) {
        const char *name = p;
        while (p < end && is_tchar[(unsigned char)*p])
            p++;
        if (p == name || p >= end || *p != ':')
            return DECLINE; /* empty name, obs-fold, whitespace before the colon, ... */
        Py_ssize_t name_len = p - name;
        p++;
        while (p < end && (*p == ' ' || *p == '\t'))
            p++;
        const char *value = p;
        while (p < end && is_vchar[(unsigned char)*p])
            p++;
        if (p >= end || p[0] != '\r' || p[1] != '\n')
            return DECLINE; /* a control character, obs-text, a bare CR or LF */
        Py_ssize_t value_len = p - value;
        p += 2;
        if (++count > max_fields)
            return DECLINE;
        int frame;
        long kind = field_kind(kinds, mask, name, name_len, &frame);
        if (kind == KIND_ERROR)
            return FAILED;
        switch (frame) {
        case F_DECLINE:
            return DECLINE; /* Transfer-Encoding, Upgrade: llhttp's */
        case F_CONNECTION:
        case F_PROXY_CONNECTION:
            /* llhttp keeps the connection alive or not by both; only keep-alive is ours */
            if (!ieq(value, value_len, "keep-alive") ||
                (frame == F_CONNECTION && kind != K_CONNECTION))
                return DECLINE;
            break;
        case F_CONTENT_LENGTH:
            if (kind != K_CONTENT_LENGTH)
                return DECLINE;
            break;
        }
        if (kind == KIND_NONE) {
            PyObject *item = Py_BuildValue("(y#y#)", name, name_len, value, value_len);
            if (item == NULL)
                return FAILED;
            int r = PyList_Append(f->headers, item);
            Py_DECREF(item);
            if (r < 0)
                return FAILED;
            continue;
        }
        switch (kind) {
        case K_DROP:
            break;
        case K_CONNECTION:
            if (frame != F_CONNECTION || !ieq(value, value_len, "keep-alive"))
                return DECLINE;
            break;
        case K_CONTENT_LENGTH: {
            if (frame != F_CONTENT_LENGTH || f->content_length != NULL || value_len < 1 || value_len > 18)
                return DECLINE;
            long long n = 0;
            for (Py_ssize_t i = 0; i < value_len; i++) {
                if (value[i] < '0' || value[i] > '9')
                    return DECLINE;
                n = n * 10 + (value[i] - '0');
            }
            f->length = n;
            f->content_length = PyBytes_FromStringAndSize(value, value_len);
            if (f->content_length == NULL)
                return FAILED;
            break;
        }
        case K_HOST:
            if (f->host != NULL)
                return DECLINE;
            f->host = PyBytes_FromStringAndSize(value, value_len);
            if (f->host == NULL)
                return FAILED;
            break;
        case K_SRC_SERVICE:
            Py_XDECREF(f->src_service);
            f->src_service = PyBytes_FromStringAndSize(value, value_len);
            if (f->src_service == NULL)
                return FAILED;
            break;
        case K_FORWARDED_FOR:
            if (f->forwarded_for == NULL) {
                f->forwarded_for = PyBytes_FromStringAndSize(value, value_len);
            } else {
                Py_ssize_t old = PyBytes_GET_SIZE(f->forwarded_for);
                PyObject *joined = PyBytes_FromStringAndSize(NULL, old + 2 + value_len);
                if (joined != NULL) {
                    char *out = PyBytes_AS_STRING(joined);
                    memcpy(out, PyBytes_AS_STRING(f->forwarded_for), old);
                    memcpy(out + old, ", ", 2);
                    memcpy(out + old + 2, value, value_len);
                }
                Py_DECREF(f->forwarded_for);
                f->forwarded_for = joined;
            }
            if (f->forwarded_for == NULL)
                return FAILED;
            break;
        default: /* Transfer-Encoding, Expect, Upgrade, anything else: llhttp's */
            return DECLINE;
        }
    }
    return OK;
}

/* The head from `start`: its CR of the blank line, or NULL if not within max_head bytes. */
static const char *head_end(const char *start, const char *stop, Py_ssize_t max_head) {
    Py_ssize_t window = stop - start;
    if (max_head < 0)
        return NULL;
    if (window - 4 > max_head) /* (max_head + 4 could overflow) */
        window = max_head + 4;
    if (window < 4)
        return NULL;
    const char *found = memmem(start, (size_t)window, "\r\n\r\n", 4);
    return found == NULL ? NULL : found + 2;
}

static PyObject *as_result(int r) {
    if (r == FAILED)
        return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(parse_request_doc,
"parse_request(data, start, kinds, max_fields, max_head)\n--\n\n"
"The request at data[start:] if it is a plain keep-alive HTTP/1.1 request whose head\n"
"and body are whole there: (end, body_start, method, target, headers, host,\n"
"content_length, src_service, forwarded_for); None for llhttp to read it.");

static PyObject *parse_request(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    Py_ssize_t start, max_fields, max_head;
    if (nargs != 5 || !PyDict_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "parse_request(data, start, kinds, max_fields, max_head)");
        return NULL;
    }
    if (!PyBytes_Check(args[0]))
        Py_RETURN_NONE;
    start = PyLong_AsSsize_t(args[1]);
    max_fields = PyLong_AsSsize_t(args[3]);
    max_head = PyLong_AsSsize_t(args[4]);
    if (PyErr_Occurred())
        return NULL;
    const char *data = PyBytes_AS_STRING(args[0]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    if (start < 0 || start >= size)
        Py_RETURN_NONE;
    const char *p = data + start, *stop = data + size;
    const char *end = head_end(p, stop, max_head);
    if (end == NULL)
        return as_result(DECLINE);

    /* method SP target SP HTTP/1.1 CRLF */
    const char *m = p;
    while (p < end && *p >= 'A' && *p <= 'Z')
        p++;
    if (p >= end || *p != ' ')
        return as_result(DECLINE);
    PyObject *method = NULL;
    for (size_t i = 0; i < N_METHODS; i++) {
        if ((Py_ssize_t)strlen(METHODS[i]) == p - m && memcmp(METHODS[i], m, (size_t)(p - m)) == 0) {
            method = method_bytes[i];
            break;
        }
    }
    if (method == NULL)
        return as_result(DECLINE);
    const char *target = ++p;
    while (p < end && is_target[(unsigned char)*p])
        p++;
    if (*target != '/' || end - p < 11 || memcmp(p, " HTTP/1.1\r\n", 11) != 0)
        return as_result(DECLINE);
    Py_ssize_t target_len = p - target;
    p += 11;

    Fields f = {0};
    int r = parse_fields(p, end, args[2], max_fields, &f);
    if (r != OK) {
        fields_clear(&f);
        return as_result(r);
    }
    Py_ssize_t body_start = (end - data) + 2;
    Py_ssize_t body = f.length < 0 ? 0 : (Py_ssize_t)f.length;
    if (f.length > (long long)(size - body_start)) {
        fields_clear(&f);
        return as_result(DECLINE);
    }
    PyObject *t = PyBytes_FromStringAndSize(target, target_len);
    if (t == NULL) {
        fields_clear(&f);
        return NULL;
    }
    PyObject *result = Py_BuildValue(
        "(nnONNOOOO)", body_start + body, body_start, method, t, f.headers,
        f.host ? f.host : Py_None, f.content_length ? f.content_length : Py_None,
        f.src_service ? f.src_service : Py_None, f.forwarded_for ? f.forwarded_for : Py_None);
    f.headers = NULL; /* stolen by N */
    fields_clear(&f);
    return result;
}

PyDoc_STRVAR(parse_response_doc,
"parse_response(data, start, kinds, max_head)\n--\n\n"
"The response at data[start:] if it is a plain keep-alive HTTP/1.1 response with\n"
"Content-Length whose head and body are whole there: (end, body_start, status, reason,\n"
"headers, content_length); None for llhttp to read it.");

static PyObject *parse_response(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 4 || !PyDict_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "parse_response(data, start, kinds, max_head)");
        return NULL;
    }
    if (!PyBytes_Check(args[0]))
        Py_RETURN_NONE;
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    Py_ssize_t max_head = PyLong_AsSsize_t(args[3]);
    if (PyErr_Occurred())
        return NULL;
    const char *data = PyBytes_AS_STRING(args[0]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    if (start < 0 || start >= size)
        Py_RETURN_NONE;
    const char *p = data + start, *stop = data + size;
    const char *end = head_end(p, stop, max_head);
    if (end == NULL || end - p < 14 || memcmp(p, "HTTP/1.1 ", 9) != 0)
        return as_result(DECLINE);
    p += 9;
    if (p[0] < '2' || p[0] > '5' || p[1] < '0' || p[1] > '9' || p[2] < '0' || p[2] > '9' ||
        p[3] != ' ')
        return as_result(DECLINE);
    int status = (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
    if (status == 204 || status == 304)
        return as_result(DECLINE);
    p += 4;
    const char *reason = p;
    while (p < end && is_vchar[(unsigned char)*p])
        p++;
    if (p >= end || p[0] != '\r' || p[1] != '\n')
        return as_result(DECLINE);
    Py_ssize_t reason_len = p - reason;
    p += 2;

    Fields f = {0};
    int r = parse_fields(p, end, args[2], PY_SSIZE_T_MAX, &f);
    if (r == OK && (f.host != NULL || f.src_service != NULL || f.forwarded_for != NULL))
        r = DECLINE; /* a response's kinds hold none of these */
    Py_ssize_t body_start = (end - data) + 2;
    if (r == OK && (f.length < 0 || f.length > (long long)(size - body_start)))
        r = DECLINE;
    if (r != OK) {
        fields_clear(&f);
        return as_result(r);
    }
    PyObject *result = Py_BuildValue("(nniy#NO)", body_start + (Py_ssize_t)f.length, body_start,
                                     status, reason, reason_len, f.headers, f.content_length);
    f.headers = NULL;
    fields_clear(&f);
    return result;
}

/* ---- writing ----------------------------------------------------------------------- */

/* The size of "name: value\r\n" lines for `headers`, a list of 2-tuples of bytes; -1 if
 * it holds anything else (the caller then writes the head in Python). */
static Py_ssize_t lines_size(PyObject *headers) {
    if (!PyList_Check(headers))
        return -1;
    Py_ssize_t size = 0, n = PyList_GET_SIZE(headers);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(headers, i);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2)
            return -1;
        PyObject *name = PyTuple_GET_ITEM(item, 0), *value = PyTuple_GET_ITEM(item, 1);
        if (!PyBytes_Check(name) || !PyBytes_Check(value))
            return -1;
        size += PyBytes_GET_SIZE(name) + PyBytes_GET_SIZE(value) + 4;
    }
    return size;
}

static char *put(char *out, const char *data, Py_ssize_t n) {
    memcpy(out, data, (size_t)n);
    return out + n;
}

/* A head's end: its field lines, then `extra` (ready-made lines), then the blank line. */
static void put_rest(char *out, PyObject *headers, PyObject *extra) {
    Py_ssize_t n = PyList_GET_SIZE(headers);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(headers, i);
        PyObject *name = PyTuple_GET_ITEM(item, 0), *value = PyTuple_GET_ITEM(item, 1);
        out = put(out, PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name));
        out = put(out, ": ", 2);
        out = put(out, PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value));
        out = put(out, "\r\n", 2);
    }
    out = put(out, PyBytes_AS_STRING(extra), PyBytes_GET_SIZE(extra));
    put(out, "\r\n", 2);
}

PyDoc_STRVAR(request_head_doc,
"request_head(method, target, host, headers, extra)\n--\n\n"
"proxy.wire.http1.request_head_bytes in one call; None if `headers` is not a list of\n"
"2-tuples of bytes (the caller then writes it in Python).");

static PyObject *request_head(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 5 || !PyBytes_Check(args[0]) || !PyBytes_Check(args[1]) ||
        !(args[2] == Py_None || PyBytes_Check(args[2])) || !PyBytes_Check(args[4]))
        Py_RETURN_NONE;
    Py_ssize_t lines = lines_size(args[3]);
    if (lines < 0)
        Py_RETURN_NONE;
    PyObject *method = args[0], *target = args[1], *host = args[2], *extra = args[4];
    Py_ssize_t size = PyBytes_GET_SIZE(method) + 1 + PyBytes_GET_SIZE(target) + 11 + lines +
                      PyBytes_GET_SIZE(extra) + 2;
    if (host != Py_None)
        size += 8 + PyBytes_GET_SIZE(host);
    PyObject *result = PyBytes_FromStringAndSize(NULL, size);
    if (result == NULL)
        return NULL;
    char *out = PyBytes_AS_STRING(result);
    out = put(out, PyBytes_AS_STRING(method), PyBytes_GET_SIZE(method));
    out = put(out, " ", 1);
    out = put(out, PyBytes_AS_STRING(target), PyBytes_GET_SIZE(target));
    out = put(out, " HTTP/1.1\r\n", 11);
    if (host != Py_None) {
        out = put(out, "host: ", 6);
        out = put(out, PyBytes_AS_STRING(host), PyBytes_GET_SIZE(host));
        out = put(out, "\r\n", 2);
    }
    put_rest(out, args[3], extra);
    return result;
}

PyDoc_STRVAR(response_head_doc,
"response_head(status, reason, headers, extra)\n--\n\n"
"proxy.wire.http1.response_head_bytes in one call, `reason` given; None if `status` is\n"
"not 0-999 or `headers` not a list of 2-tuples of bytes.");

static PyObject *response_head(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 4 || !PyLong_CheckExact(args[0]) || !PyBytes_Check(args[1]) ||
        !PyBytes_Check(args[3]))
        Py_RETURN_NONE;
    long status = PyLong_AsLong(args[0]);
    if (status == -1 && PyErr_Occurred())
        return NULL;
    if (status < 0 || status > 999)
        Py_RETURN_NONE;
    Py_ssize_t lines = lines_size(args[2]);
    if (lines < 0)
        Py_RETURN_NONE;
    PyObject *reason = args[1], *extra = args[3];
    char code[4];
    int digits = snprintf(code, sizeof code, "%ld", status);
    Py_ssize_t size = 9 + digits + 1 + PyBytes_GET_SIZE(reason) + 2 + lines +
                      PyBytes_GET_SIZE(extra) + 2;
    PyObject *result = PyBytes_FromStringAndSize(NULL, size);
    if (result == NULL)
        return NULL;
    char *out = PyBytes_AS_STRING(result);
    out = put(out, "HTTP/1.1 ", 9);
    out = put(out, code, digits);
    out = put(out, " ", 1);
    out = put(out, PyBytes_AS_STRING(reason), PyBytes_GET_SIZE(reason));
    out = put(out, "\r\n", 2);
    put_rest(out, args[2], extra);
    return result;
}

static PyMethodDef methods[] = {
    {"parse_request", (PyCFunction)(void (*)(void))parse_request, METH_FASTCALL, parse_request_doc},
    {"parse_response", (PyCFunction)(void (*)(void))parse_response, METH_FASTCALL,
     parse_response_doc},
    {"request_head", (PyCFunction)(void (*)(void))request_head, METH_FASTCALL, request_head_doc},
    {"response_head", (PyCFunction)(void (*)(void))response_head, METH_FASTCALL,
     response_head_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_h1native",
    "The common HTTP/1.1 message in one call (see _h1native.c and decision 0115).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__h1native(void) {
    for (int c = 0; c < 256; c++) {
        is_tchar[c] = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                      (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
        is_vchar[c] = c == '\t' || (c >= 0x20 && c <= 0x7e);
        is_target[c] = c >= 0x21 && c <= 0x7e;
    }
    for (size_t i = 0; i < N_METHODS; i++) {
        if (method_bytes[i] == NULL) {
            method_bytes[i] = PyBytes_FromString(METHODS[i]);
            if (method_bytes[i] == NULL)
                return NULL;
        }
    }
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "K_DROP", K_DROP) < 0 ||
        PyModule_AddIntConstant(m, "K_CONNECTION", K_CONNECTION) < 0 ||
        PyModule_AddIntConstant(m, "K_CONTENT_LENGTH", K_CONTENT_LENGTH) < 0 ||
        PyModule_AddIntConstant(m, "K_TRANSFER_ENCODING", K_TRANSFER_ENCODING) < 0 ||
        PyModule_AddIntConstant(m, "K_HOST", K_HOST) < 0 ||
        PyModule_AddIntConstant(m, "K_EXPECT", K_EXPECT) < 0 ||
        PyModule_AddIntConstant(m, "K_SRC_SERVICE", K_SRC_SERVICE) < 0 ||
        PyModule_AddIntConstant(m, "K_FORWARDED_FOR", K_FORWARDED_FOR) < 0 ||
        PyModule_AddIntConstant(m, "K_UPGRADE", K_UPGRADE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
