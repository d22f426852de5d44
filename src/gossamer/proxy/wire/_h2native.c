/* HPACK for the proxy's HTTP/2 connections, on libnghttp2's deflater and inflater.
 *
 * Encoder and Decoder have the interface h2 uses of hpack's (encode(headers,
 * huffman=True), decode(data, raw=False), header_table_size, max_allowed_table_size,
 * max_header_list_size) and raise hpack's exceptions where hpack would, so that h2
 * handles a bad block from the peer exactly as before. One call into C per header
 * block, not per field: decision 0096 measured that crossing into C per field (cffi's
 * ABI mode) costs more than the C saves. See docs/decisions/0097.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <nghttp2/nghttp2.h>

/* Fields of one block kept on the stack; more than this (rare) is malloc'd. */
#define STACK_FIELDS 64

/* hpack's defaults: a 4 KiB dynamic table, a 64 KiB header list. */
#define DEFAULT_TABLE_SIZE 4096
#define DEFAULT_MAX_HEADER_LIST_SIZE 65536

static PyObject *HeaderTuple;            /* hpack.struct.HeaderTuple */
static PyObject *NeverIndexedHeaderTuple; /* hpack.struct.NeverIndexedHeaderTuple */
static PyObject *HPACKDecodingError;
static PyObject *OversizedHeaderListError;
static PyObject *InvalidTableSizeError;

/* ---- Encoder ------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    nghttp2_hd_deflater *deflater;
    Py_ssize_t table_size;
} Encoder;

/* The deflater is made here, not in __init__: a subclass's __init__ that does not call
 * ours, or Encoder.__new__ alone, must still leave a usable object. */
static PyObject *Encoder_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    Encoder *self = (Encoder *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    if (nghttp2_hd_deflate_new(&self->deflater, DEFAULT_TABLE_SIZE) != 0) {
        self->deflater = NULL;
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    self->table_size = DEFAULT_TABLE_SIZE;
    return (PyObject *)self;
}

static int Encoder_init(Encoder *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "", kwlist))
        return -1;
    return 0;
}

static void Encoder_dealloc(Encoder *self) {
    if (self->deflater != NULL)
        nghttp2_hd_deflate_del(self->deflater);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* A field's name or value as bytes: bytes as they are, str as UTF-8 (as hpack does).
 * Returns a new reference. */
static PyObject *as_bytes(PyObject *o) {
    if (PyBytes_Check(o)) {
        Py_INCREF(o);
        return o;
    }
    if (PyUnicode_Check(o))
        return PyUnicode_AsUTF8String(o);
    if (PyByteArray_Check(o) || PyMemoryView_Check(o))
        return PyBytes_FromObject(o);
    PyErr_Format(PyExc_TypeError, "header names and values must be bytes or str, not %.100s",
                 Py_TYPE(o)->tp_name);
    return NULL;
}

/* Fill nva[0..n) from a tuple of (name, value[, sensitive]) fields; keep[] gets the bytes
 * objects nva points into (*kept of them, to be released by the caller whatever the
 * outcome). Returns 0, or -1 with an exception set. Session uses it too. */
static int h2n_fill_nva(PyObject *items, nghttp2_nv *nva, PyObject **keep, Py_ssize_t *kept) {
    Py_ssize_t n = PyTuple_GET_SIZE(items);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *field = PyTuple_GET_ITEM(items, i);
        Py_ssize_t size;
        PyObject *name, *value;
        int sensitive = 0;
        if (PyTuple_Check(field)) {
            size = PyTuple_GET_SIZE(field);
            if (size < 2) {
                PyErr_SetString(PyExc_ValueError, "a header field is a (name, value) pair");
                return -1;
            }
            name = PyTuple_GET_ITEM(field, 0);
            value = PyTuple_GET_ITEM(field, 1);
            Py_INCREF(name);
            Py_INCREF(value);
            if (!PyTuple_CheckExact(field) &&
                PyObject_TypeCheck(field, (PyTypeObject *)NeverIndexedHeaderTuple)) {
                sensitive = 1;
            } else if (size > 2 && !PyObject_TypeCheck(field, (PyTypeObject *)HeaderTuple)) {
                sensitive = PyObject_IsTrue(PyTuple_GET_ITEM(field, 2)); /* a tuple holds it */
                if (sensitive < 0) {
                    Py_DECREF(name);
                    Py_DECREF(value);
                    return -1;
                }
            }
        } else {
            /* Any other sequence: hpack takes (name, value) or (name, value, sensitive). */
            /* A tuple copy, which holds its items whatever __bool__ does. */
            PyObject *seq = PySequence_Tuple(field);
            if (seq == NULL)
                return -1;
            size = PyTuple_GET_SIZE(seq);
            if (size < 2) {
                Py_DECREF(seq);
                PyErr_SetString(PyExc_ValueError, "a header field is a (name, value) pair");
                return -1;
            }
            name = PyTuple_GET_ITEM(seq, 0);
            value = PyTuple_GET_ITEM(seq, 1);
            Py_INCREF(name);
            Py_INCREF(value);
            if (size > 2) {
                sensitive = PyObject_IsTrue(PyTuple_GET_ITEM(seq, 2));
            }
            Py_DECREF(seq);
            if (sensitive < 0) {
                Py_DECREF(name);
                Py_DECREF(value);
                return -1;
            }
        }
        PyObject *bname = as_bytes(name);
        Py_DECREF(name);
        if (bname == NULL) {
            Py_DECREF(value);
            return -1;
        }
        keep[(*kept)++] = bname;
        PyObject *bvalue = as_bytes(value);
        Py_DECREF(value);
        if (bvalue == NULL)
            return -1;
        keep[(*kept)++] = bvalue;
        nva[i].name = (uint8_t *)PyBytes_AS_STRING(bname);
        nva[i].namelen = (size_t)PyBytes_GET_SIZE(bname);
        nva[i].value = (uint8_t *)PyBytes_AS_STRING(bvalue);
        nva[i].valuelen = (size_t)PyBytes_GET_SIZE(bvalue);
        nva[i].flags = sensitive ? NGHTTP2_NV_FLAG_NO_INDEX : NGHTTP2_NV_FLAG_NONE;
    }

    return 0;
}

/* A header list as nghttp2_nv, with the bytes objects it points into kept alive: on the
 * stack up to STACK_FIELDS fields. `nv_list_fill`, then `nv_list_release` whatever the
 * outcome. Encoder.encode and Session.send_headers share it. */
typedef struct {
    nghttp2_nv *nva;
    PyObject **keep;
    Py_ssize_t kept;
    nghttp2_nv stack_nva[STACK_FIELDS];
    PyObject *stack_keep[2 * STACK_FIELDS];
} NvList;

/* Fill `l` from a tuple of fields; 0, or -1 with an exception set. */
static int nv_list_fill(NvList *l, PyObject *items) {
    Py_ssize_t n = PyTuple_GET_SIZE(items);
    l->nva = l->stack_nva;
    l->keep = l->stack_keep;
    l->kept = 0;
    if (n > STACK_FIELDS) {
        l->nva = PyMem_Malloc(sizeof(nghttp2_nv) * (size_t)n);
        l->keep = PyMem_Malloc(sizeof(PyObject *) * 2 * (size_t)n);
        if (l->nva == NULL || l->keep == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    return h2n_fill_nva(items, l->nva, l->keep, &l->kept);
}

static void nv_list_release(NvList *l) {
    for (Py_ssize_t i = 0; i < l->kept; i++)
        Py_DECREF(l->keep[i]);
    if (l->nva != l->stack_nva)
        PyMem_Free(l->nva);
    if (l->keep != l->stack_keep)
        PyMem_Free(l->keep);
}

static PyObject *Encoder_encode(Encoder *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"headers", "huffman", NULL};
    PyObject *headers;
    int huffman = 1; /* nghttp2 Huffman-codes a string whenever that makes it shorter */
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|p", kwlist, &headers, &huffman))
        return NULL;
    (void)huffman;

    /* A tuple of our own: what a field's __iter__ or a flag's __bool__ does to the list
     * it came from cannot free what is read here. */
    PyObject *items;
    if (PyDict_Check(headers)) {
        PyObject *view = PyDict_Items(headers);
        if (view == NULL)
            return NULL;
        items = PySequence_Tuple(view);
        Py_DECREF(view);
    } else if (PyTuple_CheckExact(headers)) {
        Py_INCREF(headers);
        items = headers;
    } else {
        items = PySequence_Tuple(headers);
    }
    if (items == NULL)
        return NULL;

    Py_ssize_t n = PyTuple_GET_SIZE(items);
    NvList list;
    PyObject *result = NULL;
    if (nv_list_fill(&list, items) < 0)
        goto done;
    nghttp2_nv *nva = list.nva;

    size_t bound = nghttp2_hd_deflate_bound(self->deflater, nva, (size_t)n);
    result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)bound);
    if (result == NULL)
        goto done;
    ssize_t written = nghttp2_hd_deflate_hd(self->deflater, (uint8_t *)PyBytes_AS_STRING(result),
                                            bound, nva, (size_t)n);
    if (written < 0) {
        Py_CLEAR(result);
        if (written == NGHTTP2_ERR_NOMEM)
            PyErr_NoMemory();
        else
            PyErr_Format(PyExc_ValueError, "HPACK encoding failed: %s",
                         nghttp2_strerror((int)written));
        goto done;
    }
    _PyBytes_Resize(&result, (Py_ssize_t)written);

done:
    nv_list_release(&list);
    Py_DECREF(items);
    return result;
}

/* A table size set from Python (a setter's value): 0 to 2**32-1. Returns 0 with *size
 * set, or -1 with an exception set. */
static int table_size_arg(PyObject *value, const char *name, Py_ssize_t *size) {
    if (value == NULL) {
        PyErr_Format(PyExc_AttributeError, "%s cannot be deleted", name);
        return -1;
    }
    *size = PyLong_AsSsize_t(value);
    if (*size == -1 && PyErr_Occurred())
        return -1;
    if (*size < 0 || *size > UINT32_MAX) {
        PyErr_Format(PyExc_ValueError, "header table size out of range: %zd", *size);
        return -1;
    }
    return 0;
}

static PyObject *Encoder_get_header_table_size(Encoder *self, void *closure) {
    return PyLong_FromSsize_t(self->table_size);
}

/* The peer's SETTINGS_HEADER_TABLE_SIZE: the next block starts with a size update. */
static int Encoder_set_header_table_size(Encoder *self, PyObject *value, void *closure) {
    Py_ssize_t size;
    if (table_size_arg(value, "header_table_size", &size) < 0)
        return -1;
    if (nghttp2_hd_deflate_change_table_size(self->deflater, (size_t)size) != 0) {
        PyErr_NoMemory();
        return -1;
    }
    self->table_size = size;
    return 0;
}

static PyMethodDef Encoder_methods[] = {
    {"encode", (PyCFunction)(void (*)(void))Encoder_encode, METH_VARARGS | METH_KEYWORDS,
     "encode(headers, huffman=True) -> bytes: one HPACK header block."},
    {NULL}};

static PyGetSetDef Encoder_getset[] = {
    {"header_table_size", (getter)Encoder_get_header_table_size,
     (setter)Encoder_set_header_table_size, "the peer's SETTINGS_HEADER_TABLE_SIZE", NULL},
    {NULL}};

static PyTypeObject EncoderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "gossamer.proxy.wire._h2native.Encoder",
    .tp_doc = "HPACK encoder (nghttp2's deflater) with hpack.Encoder's interface.",
    .tp_basicsize = sizeof(Encoder),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Encoder_new,
    .tp_init = (initproc)Encoder_init,
    .tp_dealloc = (destructor)Encoder_dealloc,
    .tp_methods = Encoder_methods,
    .tp_getset = Encoder_getset,
};

/* ---- Decoder ------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    nghttp2_hd_inflater *inflater;
    Py_ssize_t max_header_list_size;
    Py_ssize_t max_allowed_table_size;
    /* A block failed half way: the inflater's state is no longer the peer's. */
    int broken;
} Decoder;

/* As for the Encoder: made in __new__, so that an object __init__ never ran on works. */
static PyObject *Decoder_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    Decoder *self = (Decoder *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    if (nghttp2_hd_inflate_new(&self->inflater) != 0) {
        self->inflater = NULL;
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    self->max_header_list_size = DEFAULT_MAX_HEADER_LIST_SIZE;
    self->max_allowed_table_size = DEFAULT_TABLE_SIZE;
    self->broken = 0;
    return (PyObject *)self;
}

static int Decoder_init(Decoder *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"max_header_list_size", NULL};
    Py_ssize_t max_header_list_size = DEFAULT_MAX_HEADER_LIST_SIZE;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|n", kwlist, &max_header_list_size))
        return -1;
    self->max_header_list_size = max_header_list_size;
    return 0;
}

static void Decoder_dealloc(Decoder *self) {
    if (self->inflater != NULL)
        nghttp2_hd_inflate_del(self->inflater);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The dynamic table size updates a block starts with, checked against what this end
 * allows, as hpack checks them (InvalidTableSizeError); nghttp2 would refuse them too,
 * but with no word of why. Returns 0, or -1 with an exception set. */
static int check_size_updates(Decoder *self, const uint8_t *p, size_t len) {
    size_t i = 0;
    while (i < len && (p[i] & 0xe0) == 0x20) {
        uint64_t size = p[i] & 0x1f;
        i++;
        if (size == 0x1f) {
            unsigned shift = 0;
            for (;;) {
                if (i >= len || shift > 28)
                    return 0; /* truncated or absurd: nghttp2 refuses it below */
                uint8_t b = p[i++];
                size += (uint64_t)(b & 0x7f) << shift;
                shift += 7;
                if (!(b & 0x80))
                    break;
            }
        }
        if (size > (uint64_t)self->max_allowed_table_size) {
            PyErr_Format(InvalidTableSizeError,
                         "Encoder exceeded max allowable table size (%llu > %zd)",
                         (unsigned long long)size, self->max_allowed_table_size);
            return -1;
        }
    }
    return 0;
}

static PyObject *h2n_field_tuple(PyObject *type, const nghttp2_nv *nv, int raw) {
    PyObject *name, *value;
    /* The value is made only once the name is: never with an exception already set. */
    if (raw) {
        name = PyBytes_FromStringAndSize((const char *)nv->name, (Py_ssize_t)nv->namelen);
        if (name == NULL)
            return NULL;
        value = PyBytes_FromStringAndSize((const char *)nv->value, (Py_ssize_t)nv->valuelen);
    } else {
        name = PyUnicode_DecodeUTF8((const char *)nv->name, (Py_ssize_t)nv->namelen, NULL);
        if (name == NULL)
            return NULL;
        value = PyUnicode_DecodeUTF8((const char *)nv->value, (Py_ssize_t)nv->valuelen, NULL);
    }
    if (value == NULL) {
        Py_DECREF(name);
        return NULL;
    }
    /* What tuple.__new__(cls, (name, value)) makes, without the call. */
    PyObject *t = ((PyTypeObject *)type)->tp_alloc((PyTypeObject *)type, 2);
    if (t == NULL) {
        Py_DECREF(name);
        Py_DECREF(value);
        return NULL;
    }
    PyTuple_SET_ITEM(t, 0, name);
    PyTuple_SET_ITEM(t, 1, value);
    return t;
}

static PyObject *Decoder_decode(Decoder *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"data", "raw", NULL};
    Py_buffer data;
    int raw = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*|p", kwlist, &data, &raw))
        return NULL;
    if (self->broken) {
        PyBuffer_Release(&data);
        PyErr_SetString(HPACKDecodingError,
                        "the HPACK context was lost to an earlier bad header block");
        return NULL;
    }
    PyObject *headers = PyList_New(0);
    if (headers == NULL) {
        PyBuffer_Release(&data);
        return NULL;
    }
    const uint8_t *in = data.buf;
    size_t inlen = (size_t)data.len;
    Py_ssize_t listed = 0; /* RFC 7541 4.1 sizes: name + value + 32 each */

    if (check_size_updates(self, in, inlen) < 0)
        goto fail;
    for (;;) {
        nghttp2_nv nv;
        int flags = 0;
        ssize_t used = nghttp2_hd_inflate_hd2(self->inflater, &nv, &flags, in, inlen, 1);
        if (used < 0) {
            if (used == NGHTTP2_ERR_NOMEM)
                PyErr_NoMemory();
            else
                PyErr_Format(HPACKDecodingError, "invalid HPACK header block: %s",
                             nghttp2_strerror((int)used));
            goto fail;
        }
        in += used;
        inlen -= (size_t)used;
        if (flags & NGHTTP2_HD_INFLATE_EMIT) {
            listed += (Py_ssize_t)(nv.namelen + nv.valuelen + 32);
            if (listed > self->max_header_list_size) {
                PyErr_Format(OversizedHeaderListError,
                             "A header list larger than %zd has been received",
                             self->max_header_list_size);
                goto fail;
            }
            PyObject *t = h2n_field_tuple(
                (nv.flags & NGHTTP2_NV_FLAG_NO_INDEX) ? NeverIndexedHeaderTuple : HeaderTuple,
                &nv, raw);
            if (t == NULL) {
                if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
                    PyObject *type, *val, *tb;
                    PyErr_Fetch(&type, &val, &tb);
                    PyErr_NormalizeException(&type, &val, &tb);
                    PyErr_SetString(HPACKDecodingError, "Unable to decode headers as UTF-8");
                    PyObject *type2, *val2, *tb2;
                    PyErr_Fetch(&type2, &val2, &tb2);
                    PyErr_NormalizeException(&type2, &val2, &tb2);
                    PyException_SetCause(val2, val);
                    Py_XDECREF(type);
                    Py_XDECREF(tb);
                    PyErr_Restore(type2, val2, tb2);
                }
                goto fail;
            }
            int rc = PyList_Append(headers, t);
            Py_DECREF(t);
            if (rc < 0)
                goto fail;
        }
        if (flags & NGHTTP2_HD_INFLATE_FINAL) {
            nghttp2_hd_inflate_end_headers(self->inflater);
            break;
        }
        if (used == 0 && inlen == 0) {
            /* nghttp2 ends a final block with FINAL; anything else is a cut block. */
            PyErr_SetString(HPACKDecodingError, "truncated HPACK header block");
            goto fail;
        }
    }
    PyBuffer_Release(&data);
    return headers;

fail:
    self->broken = 1;
    PyBuffer_Release(&data);
    Py_DECREF(headers);
    return NULL;
}

static PyObject *Decoder_get_max_allowed_table_size(Decoder *self, void *closure) {
    return PyLong_FromSsize_t(self->max_allowed_table_size);
}

/* This end's SETTINGS_HEADER_TABLE_SIZE, once the peer acknowledged it. */
static int Decoder_set_max_allowed_table_size(Decoder *self, PyObject *value, void *closure) {
    Py_ssize_t size;
    if (table_size_arg(value, "max_allowed_table_size", &size) < 0)
        return -1;
    int rv = nghttp2_hd_inflate_change_table_size(self->inflater, (size_t)size);
    if (rv != 0) {
        PyErr_Format(PyExc_ValueError, "cannot change the HPACK table size: %s",
                     nghttp2_strerror(rv));
        return -1;
    }
    self->max_allowed_table_size = size;
    return 0;
}

static PyObject *Decoder_get_header_table_size(Decoder *self, void *closure) {
    return PyLong_FromSize_t(nghttp2_hd_inflate_get_max_dynamic_table_size(self->inflater));
}

static PyMemberDef Decoder_members[] = {
    {"max_header_list_size", T_PYSSIZET, offsetof(Decoder, max_header_list_size), 0,
     "the largest decoded header list (RFC 7541 sizes) before OversizedHeaderListError"},
    {NULL}};

static PyMethodDef Decoder_methods[] = {
    {"decode", (PyCFunction)(void (*)(void))Decoder_decode, METH_VARARGS | METH_KEYWORDS,
     "decode(data, raw=False) -> list of HeaderTuple: one whole HPACK header block."},
    {NULL}};

static PyGetSetDef Decoder_getset[] = {
    {"max_allowed_table_size", (getter)Decoder_get_max_allowed_table_size,
     (setter)Decoder_set_max_allowed_table_size,
     "the largest table size the peer's encoder may set (this end's setting)", NULL},
    {"header_table_size", (getter)Decoder_get_header_table_size, NULL,
     "the dynamic table's size as the peer's encoder last set it", NULL},
    {NULL}};

static PyTypeObject DecoderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "gossamer.proxy.wire._h2native.Decoder",
    .tp_doc = "HPACK decoder (nghttp2's inflater) with hpack.Decoder's interface.",
    .tp_basicsize = sizeof(Decoder),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Decoder_new,
    .tp_init = (initproc)Decoder_init,
    .tp_dealloc = (destructor)Decoder_dealloc,
    .tp_methods = Decoder_methods,
    .tp_members = Decoder_members,
    .tp_getset = Decoder_getset,
};

/* ---- Session: the whole connection on nghttp2_session (decision 0102) -------------- */

/* In a file of its own, compiled as part of this one (one translation unit: it uses the
 * helpers above, and `gcc _h2native.c` alone still builds the whole module). */
#include "_h2session.c"
/* HTTP/2 header block checks (http2.malformed), likewise. */
#include "_h2fields.c"

/* ---- module ------------------------------------------------------------------------- */

static struct PyModuleDef h2native_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "gossamer.proxy.wire._h2native",
    .m_doc = "HPACK on libnghttp2 for the proxy's HTTP/2 connections (decision 0097).",
    .m_size = -1,
    .m_methods = h2native_methods,
};

static PyObject *import_attr(const char *module, const char *name) {
    PyObject *m = PyImport_ImportModule(module);
    if (m == NULL)
        return NULL;
    PyObject *attr = PyObject_GetAttrString(m, name);
    Py_DECREF(m);
    return attr;
}

PyMODINIT_FUNC PyInit__h2native(void) {
    h2fields_init();
    if (PyType_Ready(&EncoderType) < 0 || PyType_Ready(&DecoderType) < 0)
        return NULL;
    if ((HeaderTuple = import_attr("hpack.struct", "HeaderTuple")) == NULL ||
        (NeverIndexedHeaderTuple = import_attr("hpack.struct", "NeverIndexedHeaderTuple")) ==
            NULL ||
        (HPACKDecodingError = import_attr("hpack.exceptions", "HPACKDecodingError")) == NULL ||
        (OversizedHeaderListError = import_attr("hpack.exceptions", "OversizedHeaderListError")) ==
            NULL ||
        (InvalidTableSizeError = import_attr("hpack.exceptions", "InvalidTableSizeError")) == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&h2native_module);
    if (m == NULL)
        return NULL;
    nghttp2_info *info = nghttp2_version(0);
    if (PyModule_AddStringConstant(m, "NGHTTP2_VERSION", info->version_str) < 0 ||
        PyModule_AddObjectRef(m, "Encoder", (PyObject *)&EncoderType) < 0 ||
        PyModule_AddObjectRef(m, "Decoder", (PyObject *)&DecoderType) < 0 ||
        h2session_add(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
