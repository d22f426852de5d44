/* proxy.wire.http2's header block helpers in one call each (decision 0115): `malformed`,
 * why a received HTTP/2 header block is malformed (RFC 9113 8.2 and 8.3), or None;
 * `forwardable` and `from_http1`, the fields a block may hand on. Compiled as part of
 * _h2native.c.
 *
 * The same checks in the same order, with the same reasons, as the Python it stands in
 * for (which stays, for blocks that are not a list of 2-tuples of bytes and where the
 * extension is not built); tests/proxy/test_h2fields.py compares the two on every case.
 */

enum { BLOCK_REQUEST = 0, BLOCK_RESPONSE = 1, BLOCK_TRAILERS = 2 };

/* RFC 9113 8.2.1: a field name is visible ASCII without uppercase letters or a colon. */
static unsigned char h2_name_char[256];

static int h2_is(PyObject *b, const char *s, Py_ssize_t n) {
    return PyBytes_GET_SIZE(b) == n && memcmp(PyBytes_AS_STRING(b), s, (size_t)n) == 0;
}

#define IS(b, lit) h2_is((b), (lit), (Py_ssize_t)(sizeof(lit) - 1))

static PyObject *h2_reason(const char *format, PyObject *name) {
    return PyUnicode_FromFormat(format, name); /* %R: repr(name), as an f-string's !r */
}

/* Seen pseudo-headers, as bits. */
enum { P_METHOD = 1, P_SCHEME = 2, P_AUTHORITY = 4, P_PATH = 8, P_PROTOCOL = 16, P_STATUS = 32 };

static int pseudo_bit(PyObject *name, int kind) {
    if (kind == BLOCK_REQUEST) {
        if (IS(name, ":method"))
            return P_METHOD;
        if (IS(name, ":scheme"))
            return P_SCHEME;
        if (IS(name, ":authority"))
            return P_AUTHORITY;
        if (IS(name, ":path"))
            return P_PATH;
        if (IS(name, ":protocol"))
            return P_PROTOCOL;
    } else if (kind == BLOCK_RESPONSE && IS(name, ":status")) {
        return P_STATUS;
    }
    return 0;
}

static int bytes_equal(PyObject *a, PyObject *b) {
    return PyBytes_GET_SIZE(a) == PyBytes_GET_SIZE(b) &&
           memcmp(PyBytes_AS_STRING(a), PyBytes_AS_STRING(b), (size_t)PyBytes_GET_SIZE(a)) == 0;
}

/* Whether `headers` is a list of 2-tuples of bytes (the only blocks done in C). */
static int h2_byte_pairs(PyObject *headers) {
    if (!PyList_Check(headers))
        return 0;
    Py_ssize_t n = PyList_GET_SIZE(headers);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(headers, i);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2 ||
            !PyBytes_Check(PyTuple_GET_ITEM(item, 0)) || !PyBytes_Check(PyTuple_GET_ITEM(item, 1)))
            return 0;
    }
    return 1;
}

PyDoc_STRVAR(malformed_doc,
"malformed(headers, kind)\n--\n\n"
"proxy.wire.http2.malformed for `kind` 0 (a request), 1 (a response) or 2 (trailers):\n"
"the reason, or None; False if `headers` is not a list of 2-tuples of bytes.");

static PyObject *h2_malformed(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 2 || !PyLong_Check(args[1]) || !h2_byte_pairs(args[0]))
        Py_RETURN_FALSE;
    long kind = PyLong_AsLong(args[1]);
    if (kind < BLOCK_REQUEST || kind > BLOCK_TRAILERS) {
        if (PyErr_Occurred())
            return NULL;
        Py_RETURN_FALSE;
    }
    PyObject *headers = args[0];
    Py_ssize_t n = PyList_GET_SIZE(headers);
    int seen = 0, regular = 0;
    PyObject *method = NULL, *authority = NULL, *host = NULL, *length = NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(headers, i);
        PyObject *name = PyTuple_GET_ITEM(item, 0), *value = PyTuple_GET_ITEM(item, 1);
        const unsigned char *nm = (const unsigned char *)PyBytes_AS_STRING(name);
        Py_ssize_t name_len = PyBytes_GET_SIZE(name);
        const unsigned char *v = (const unsigned char *)PyBytes_AS_STRING(value);
        Py_ssize_t value_len = PyBytes_GET_SIZE(value);
        if (name_len > 0 && nm[0] == ':') {
            if (regular)
                return h2_reason("pseudo-header %R after a regular field", name);
            int bit = pseudo_bit(name, (int)kind);
            if (bit == 0 || (seen & bit))
                return h2_reason("unexpected or repeated pseudo-header %R", name);
            seen |= bit;
            if (bit == P_METHOD)
                method = value;
            else if (bit == P_AUTHORITY)
                authority = value;
            else if (bit == P_PATH && value_len == 0)
                return PyUnicode_FromString("empty :path");
        } else {
            regular = 1;
            if (name_len == 0)
                return h2_reason("invalid field name %R", name);
            for (Py_ssize_t j = 0; j < name_len; j++) {
                if (!h2_name_char[nm[j]])
                    return h2_reason("invalid field name %R", name);
            }
            if (IS(name, "connection") || IS(name, "proxy-connection") || IS(name, "keep-alive") ||
                IS(name, "transfer-encoding") || IS(name, "upgrade"))
                return h2_reason("connection-specific field %R", name);
            if (IS(name, "te")) {
                int trailers = value_len == 8;
                for (Py_ssize_t j = 0; trailers && j < 8; j++) {
                    unsigned char c = v[j];
                    if (c >= 'A' && c <= 'Z')
                        c += 32;
                    trailers = c == (unsigned char)"trailers"[j];
                }
                if (!trailers)
                    return PyUnicode_FromFormat("te: %R (only trailers is allowed)", value);
            }
            if (IS(name, "host") && kind == BLOCK_REQUEST) {
                if (host != NULL)
                    return PyUnicode_FromString("more than one host field");
                host = value;
            } else if (IS(name, "content-length")) {
                int digits = value_len > 0;
                for (Py_ssize_t j = 0; digits && j < value_len; j++)
                    digits = v[j] >= '0' && v[j] <= '9';
                if (!digits)
                    return PyUnicode_FromFormat("content-length: %R is not a number", value);
                if (length != NULL && !bytes_equal(value, length))
                    return PyUnicode_FromString("content-length fields that differ");
                length = value;
            }
        }
        if (value_len > 0) {
            int bad = v[0] == ' ' || v[0] == '\t' || v[value_len - 1] == ' ' ||
                      v[value_len - 1] == '\t';
            for (Py_ssize_t j = 0; !bad && j < value_len; j++)
                bad = v[j] == 0 || v[j] == '\r' || v[j] == '\n';
            if (bad)
                return h2_reason(
                    "invalid characters or surrounding whitespace in the value of %R", name);
        }
    }
    if (kind == BLOCK_RESPONSE) {
        if (seen & P_STATUS)
            Py_RETURN_NONE;
        return PyUnicode_FromString("no :status");
    }
    if (kind != BLOCK_REQUEST)
        Py_RETURN_NONE;
    if (method == NULL)
        return PyUnicode_FromString("no :method");
    int connect = IS(method, "CONNECT");
    if (connect && !(seen & P_PROTOCOL)) {
        if (seen & (P_SCHEME | P_PATH))
            return PyUnicode_FromString("CONNECT with :scheme or :path");
    } else if (!(seen & P_SCHEME) || !(seen & P_PATH)) {
        return PyUnicode_FromString("no :scheme or no :path");
    } else if ((seen & P_PROTOCOL) && !connect) {
        return PyUnicode_FromString(":protocol without CONNECT");
    }
    if (authority == NULL && host == NULL)
        return PyUnicode_FromString("neither :authority nor host");
    if (authority != NULL && host != NULL && !bytes_equal(authority, host))
        return PyUnicode_FromString(":authority and host differ");
    Py_RETURN_NONE;
}

/* ---- forwardable and from_http1 ------------------------------------------------------ */

/* RFC 9113 8.2.2: connection-specific fields, never handed on (http2._HOP_BY_HOP). */
static int h2_hop_by_hop(PyObject *name) {
    return IS(name, "connection") || IS(name, "keep-alive") || IS(name, "proxy-connection") ||
           IS(name, "transfer-encoding") || IS(name, "upgrade") || IS(name, "http2-settings");
}

static int h2_is_trailers(const unsigned char *v, Py_ssize_t n) {
    if (n != 8)
        return 0;
    for (Py_ssize_t j = 0; j < 8; j++) {
        unsigned char c = v[j];
        if (c >= 'A' && c <= 'Z')
            c += 32;
        if (c != (unsigned char)"trailers"[j])
            return 0;
    }
    return 1;
}

/* Appends (name, value) to `out` unless http2.forwardable would drop it; steals neither.
 * `item`: the tuple they came in, reused when it is a plain tuple of these two. */
static int h2_keep(PyObject *out, PyObject *item, PyObject *name, PyObject *value, PyObject *drop) {
    if (h2_hop_by_hop(name))
        return 0;
    if (drop != NULL) {
        int found = PySet_Contains(drop, name);
        if (found != 0)
            return found < 0 ? -1 : 0;
    }
    if (IS(name, "te") &&
        !h2_is_trailers((const unsigned char *)PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value)))
        return 0;
    if (item != NULL && PyTuple_CheckExact(item) && PyTuple_GET_ITEM(item, 0) == name &&
        PyTuple_GET_ITEM(item, 1) == value)
        return PyList_Append(out, item);
    PyObject *pair = PyTuple_Pack(2, name, value);
    if (pair == NULL)
        return -1;
    int r = PyList_Append(out, pair);
    Py_DECREF(pair);
    return r;
}

PyDoc_STRVAR(forwardable_doc,
"forwardable(headers, drop)\n--\n\n"
"http2.forwardable for a list of 2-tuples of bytes and a set (or frozenset) `drop`;\n"
"False for anything else.");

static PyObject *h2_forwardable(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 2 || !PyAnySet_Check(args[1]) || !h2_byte_pairs(args[0]))
        Py_RETURN_FALSE;
    PyObject *headers = args[0];
    PyObject *drop = PySet_GET_SIZE(args[1]) > 0 ? args[1] : NULL;
    Py_ssize_t n = PyList_GET_SIZE(headers);
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(headers, i);
        if (h2_keep(out, item, PyTuple_GET_ITEM(item, 0), PyTuple_GET_ITEM(item, 1), drop) < 0) {
            Py_DECREF(out);
            return NULL;
        }
    }
    return out;
}

PyDoc_STRVAR(from_http1_doc,
"from_http1(headers)\n--\n\n"
"http2.from_http1 for a list of 2-tuples of bytes: names in lower case, values without\n"
"spaces or tabs at their ends, connection-specific fields dropped; False for anything else.");

static PyObject *h2_from_http1(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 1 || !h2_byte_pairs(args[0]))
        Py_RETURN_FALSE;
    PyObject *headers = args[0];
    Py_ssize_t n = PyList_GET_SIZE(headers);
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(headers, i);
        PyObject *name = PyTuple_GET_ITEM(item, 0), *value = PyTuple_GET_ITEM(item, 1);
        const char *nm = PyBytes_AS_STRING(name);
        Py_ssize_t name_len = PyBytes_GET_SIZE(name), upper = 0;
        for (Py_ssize_t j = 0; j < name_len && !upper; j++)
            upper = nm[j] >= 'A' && nm[j] <= 'Z';
        const char *v = PyBytes_AS_STRING(value);
        Py_ssize_t lo = 0, hi = PyBytes_GET_SIZE(value);
        while (lo < hi && (v[lo] == ' ' || v[lo] == '\t'))
            lo++;
        while (hi > lo && (v[hi - 1] == ' ' || v[hi - 1] == '\t'))
            hi--;
        PyObject *lower = name, *stripped = value;
        Py_INCREF(lower);
        Py_INCREF(stripped);
        if (upper) {
            Py_SETREF(lower, PyBytes_FromStringAndSize(NULL, name_len));
            if (lower != NULL) {
                char *to = PyBytes_AS_STRING(lower);
                for (Py_ssize_t j = 0; j < name_len; j++)
                    to[j] = (char)((nm[j] >= 'A' && nm[j] <= 'Z') ? nm[j] + 32 : nm[j]);
            }
        }
        if (lo != 0 || hi != PyBytes_GET_SIZE(value))
            Py_SETREF(stripped, PyBytes_FromStringAndSize(v + lo, hi - lo));
        int r = (lower == NULL || stripped == NULL) ? -1 : h2_keep(out, item, lower, stripped, NULL);
        Py_XDECREF(lower);
        Py_XDECREF(stripped);
        if (r < 0) {
            Py_DECREF(out);
            return NULL;
        }
    }
    return out;
}

static void h2fields_init(void) {
    for (int c = 0; c < 256; c++)
        h2_name_char[c] = (c >= 0x21 && c <= 0x39) || (c >= 0x3b && c <= 0x40) ||
                          (c >= 0x5b && c <= 0x7e);
}

static PyMethodDef h2native_methods[] = {
    {"malformed", (PyCFunction)(void (*)(void))h2_malformed, METH_FASTCALL, malformed_doc},
    {"forwardable", (PyCFunction)(void (*)(void))h2_forwardable, METH_FASTCALL, forwardable_doc},
    {"from_http1", (PyCFunction)(void (*)(void))h2_from_http1, METH_FASTCALL, from_http1_doc},
    {NULL, NULL, 0, NULL},
};
