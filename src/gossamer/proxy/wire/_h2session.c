/* The proxy's HTTP/2 connection on libnghttp2's nghttp2_session (decision 0102).
 *
 * Session has the part of h2's H2Connection that proxy/wire/http2.py uses
 * (receive_data -> list of h2.events, send_headers, send_data, end_stream,
 * reset_stream, close_connection, data_to_send, local_flow_control_window,
 * acknowledge_received_data, increment_flow_control_window, ...): frames, HPACK,
 * stream states and flow control are nghttp2's, in C, and one read is one call.
 * The events are h2.events instances (made without their __init__), so http2.py has one
 * path over either engine.
 *
 * The limits of decision 0046 that _GuardedH2 counts per frame before h2 acts on it
 * (control frame floods, empty DATA in a row, WINDOW_UPDATE per DATA frame sent) are
 * counted here, per frame header, before nghttp2 reads the frame (count_frame), the
 * header list size field by field as nghttp2 decodes it; their values come from
 * http2.py (the constructor's arguments). Those checked in Python over events (premature resets, streams per
 * connection, fields per block, malformed blocks) stay there for both engines.
 * nghttp2's own: max_continuations, max_settings, max_outbound_ack.
 */
/* Not compiled on its own: _h2native.c includes it (one translation unit), after the
 * helpers it shares with the HPACK codec (h2n_fill_nva, h2n_field_tuple, HeaderTuple). */
#include <time.h>

/* h2's event and exception types, imported once. */
static PyObject *EvRequestReceived, *EvResponseReceived, *EvTrailersReceived, *EvDataReceived,
    *EvStreamEnded, *EvStreamReset, *EvWindowUpdated, *EvRemoteSettingsChanged,
    *EvConnectionTerminated, *EvInformational;
static PyObject *ProtocolError, *StreamClosedError, *FlowControlError, *DenialOfServiceError,
    *TooManyStreamsError;
static PyObject *empty_tuple, *empty_bytes;
static PyObject *s_stream_id, *s_headers, *s_stream_ended, *s_priority_updated, *s_data,
    *s_flow_controlled_length, *s_error_code, *s_remote_reset, *s_delta, *s_changed_settings,
    *s_last_stream_id, *s_additional_data;

/* Per stream, in nghttp2's stream user data (an integer, not a pointer: no allocation). */
#define F_RESET_HERE 1   /* this end reset it (reset_stream) */
#define F_RESET_THERE 2  /* the peer reset it (StreamReset already made) */
#define F_FINAL 4        /* a final response (not 1xx) was received: next HEADERS are trailers */
#define F_HEADERS_IN 8   /* a request's HEADERS were received (server): next are trailers */
#define F_HEAD 16        /* this end's request was a HEAD: its response has no body */
/* Above the flags, the message's content-length still to come, plus one (0: none given):
 * RFC 9113 8.1.1, which nghttp2 checks only with its HTTP messaging, off here. A
 * response's counts unless it answers a HEAD, or is a 1xx, 204 or 304 (RFC 9110 8.6). */
#define CL_SHIFT 5
#define CL_MAX ((uintptr_t)1 << 58)
/* Stream ids a client skipped (idle, so closed by a higher one, RFC 9113 5.1.1): HEADERS
 * on one is a connection error. nghttp2 ignores them, as it cannot tell them from streams
 * that were open and have closed; the first ranges are remembered here. Past those (no
 * client skips that often in practice) HEADERS on a lower stream that is gone is ignored
 * and counted as a control frame, as on a stream that was open: taking every gone stream
 * for a skipped one ended whole connections over trailers that crossed this end's own
 * RST_STREAM, which RFC 9113 5.1 says to ignore. */
#define SKIPPED 16

typedef struct {
    PyObject_HEAD
    nghttp2_session *s;
    int server_side;
    PyObject *events; /* made by callbacks, handed out by receive_data */
    /* what is to be written (data_to_send) */
    char *out;
    size_t outlen, outcap;
    /* the header block being read (blocks are never interleaved) and its size */
    PyObject *headers;
    size_t headers_size;
    int headers_over;
    int block_status; /* the :status of the response block being read (0: none yet) */
    /* the DATA frame being read */
    PyObject *data;
    /* the DATA being sent by send_data now; what did not fit waits in `deferred` */
    const char *send_ptr;
    size_t send_len, send_off;
    int32_t send_stream;
    int send_end, send_eof;
    PyObject *deferred; /* {stream_id: [bytes, offset, end_stream]} */
    /* settings this end sends */
    uint32_t initial_window, max_streams, max_header_list;
    /* decision 0046's limits (from http2.py) and their counters */
    long control_limit, empty_limit, wu_per_data, wu_base;
    PyObject *flood; /* the exception type a flood raises (http2._Flood) */
    long control;
    double control_since;
    long empty;
    long window_updates;
    long data_sent;
    long opened;
    long outgoing; /* streams this end opened that are not closed yet */
    int32_t peer_opened;
    /* receive_data's scan of frame headers: the client's preface still to come (server),
     * the header being read and the payload left of the frame being read */
    size_t preface_left, payload_left;
    uint8_t hd[9];
    size_t hd_have;
    int32_t skipped[SKIPPED][2]; /* [first, last] */
    int nskipped;
    /* an error found in a callback, raised when nghttp2 returns */
    PyObject *err_type;
    PyObject *err_msg;
    long err_code;
    char lib_msg[200]; /* nghttp2's last words on a connection error */
    int goaway_sent, goaway_code, goaway_ours, terminated;
} Session;

static double now_monotonic(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- events ------------------------------------------------------------------------- */

/* An h2 event without its __init__ (which sets every attribute to None first). */
static PyObject *event(PyObject *cls) {
    return ((PyTypeObject *)cls)->tp_new((PyTypeObject *)cls, empty_tuple, NULL);
}

static int set_int(PyObject *ev, PyObject *name, long value) {
    PyObject *v = PyLong_FromLong(value);
    if (v == NULL)
        return -1;
    int rv = PyObject_SetAttr(ev, name, v);
    Py_DECREF(v);
    return rv;
}

static int push(Session *self, PyObject *ev) {
    if (ev == NULL)
        return -1;
    int rv = PyList_Append(self->events, ev);
    Py_DECREF(ev);
    return rv;
}

/* A callback failed with a Python exception set, or with an error to raise: nghttp2 stops. */
static int fail_with(Session *self, PyObject *type, long code, const char *msg) {
    if (self->err_type == NULL) {
        self->err_type = type;
        Py_INCREF(type);
        self->err_msg = PyUnicode_FromString(msg);
        self->err_code = code;
    }
    return NGHTTP2_ERR_CALLBACK_FAILURE;
}

static int py_failed(Session *self) {
    /* A Python error in a callback (memory): kept as it is, raised when nghttp2 returns. */
    return NGHTTP2_ERR_CALLBACK_FAILURE;
}

static uintptr_t flags_of(Session *self, int32_t stream_id);
static void set_flags(Session *self, int32_t stream_id, uintptr_t flags);

/* ---- decision 0046's counts ------------------------------------------------------------ */

static int control_frame(Session *self) {
    double now = now_monotonic();
    if (now - self->control_since > 1.0) {
        self->control_since = now;
        self->control = 0;
    }
    self->control += 1;
    if (self->control > self->control_limit) {
        char msg[100];
        snprintf(msg, sizeof msg, "more than %ld control frames in a second", self->control_limit);
        return fail_with(self, self->flood, NGHTTP2_ENHANCE_YOUR_CALM, msg);
    }
    return 0;
}

/* An empty DATA frame (no payload but padding, no END_STREAM): more than empty_limit in
 * a row is a flood, and each counts as a control frame. */
static int empty_data(Session *self) {
    self->empty += 1;
    if (self->empty > self->empty_limit) {
        char msg[100];
        snprintf(msg, sizeof msg, "%ld empty DATA frames in a row", self->empty);
        return fail_with(self, self->flood, NGHTTP2_ENHANCE_YOUR_CALM, msg);
    }
    return control_frame(self);
}

/* A stream that is gone (or never was) as far as frames on it go. */
static int stream_gone(Session *self, int32_t stream_id) {
    nghttp2_stream *st = nghttp2_session_find_stream(self->s, stream_id);
    return st == NULL || nghttp2_stream_get_state(st) == NGHTTP2_STREAM_STATE_CLOSED;
}

/* Count one frame by its header (decision 0046's limits), before nghttp2 reads it. Called
 * from receive_data's own scan of the frame headers, not from nghttp2's
 * on_begin_frame_callback, which nghttp2 skips for the frames it ignores (unknown types,
 * DATA on a closed stream): those are exactly the ones a flood is made of. */
static int count_frame(Session *self, const nghttp2_frame_hd *hd) {
    switch (hd->type) {
    case NGHTTP2_DATA:
    case NGHTTP2_HEADERS: {
        int peer = hd->stream_id % 2 == (self->server_side ? 1 : 0);
        if (hd->type == NGHTTP2_HEADERS && peer && hd->stream_id > self->peer_opened) {
            /* The peer's next id: 1 (2 for a server's) to begin with, then +2. */
            int32_t next = self->peer_opened ? self->peer_opened + 2 : (self->server_side ? 1 : 2);
            if (hd->stream_id > next) {
                if (self->nskipped < SKIPPED) {
                    self->skipped[self->nskipped][0] = next;
                    self->skipped[self->nskipped][1] = hd->stream_id - 2;
                    self->nskipped += 1;
                }
            }
            self->peer_opened = hd->stream_id;
            self->opened += 1;
            self->empty = 0;
            return 0;
        }
        if (hd->type == NGHTTP2_HEADERS && peer) {
            int skipped = 0;
            for (int i = 0; i < self->nskipped && !skipped; i++)
                skipped = hd->stream_id >= self->skipped[i][0] &&
                          hd->stream_id <= self->skipped[i][1];
            if (skipped)
                return fail_with(self, ProtocolError, NGHTTP2_PROTOCOL_ERROR,
                                 "HEADERS on a stream id lower than one already opened");
        }
        int end = (hd->flags & NGHTTP2_FLAG_END_STREAM) != 0;
        if (hd->type == NGHTTP2_DATA && !end && (hd->flags & NGHTTP2_FLAG_PADDED)) {
            /* Empty or not is known once its padding is read (on_frame_recv): a frame
             * of only padding is as empty as one of no bytes (h2 looks at frame.data). */
        } else if (hd->type == NGHTTP2_HEADERS || hd->length > 0 || end) {
            self->empty = 0;
        } else if (empty_data(self) != 0) {
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        }
        /* A client's frame on a stream that is gone makes nothing happen: no better than
         * a PING. Not counted from an upstream (see _GuardedH2). */
        if (self->server_side && stream_gone(self, hd->stream_id))
            return control_frame(self);
        return 0;
    }
    case NGHTTP2_CONTINUATION:
        return 0;
    case NGHTTP2_WINDOW_UPDATE:
        self->window_updates += 1;
        if (self->window_updates >
            self->wu_base + 2 * (self->opened + self->wu_per_data * self->data_sent)) {
            char msg[200];
            snprintf(msg, sizeof msg,
                     "%ld WINDOW_UPDATE frames for %ld DATA frames sent and %ld streams opened "
                     "(more than %ld per DATA frame)",
                     self->window_updates, self->data_sent, self->opened, self->wu_per_data);
            return fail_with(self, self->flood, NGHTTP2_ENHANCE_YOUR_CALM, msg);
        }
        return 0;
    case NGHTTP2_RST_STREAM:
        if (!self->server_side)
            return 0; /* an upstream may end every stream it answered with one */
        return control_frame(self);
    default:
        return control_frame(self);
    }
}

/* ---- receiving ------------------------------------------------------------------------ */

static int on_begin_frame(nghttp2_session *s, const nghttp2_frame_hd *hd, void *user) {
    Session *self = user;
    /* A frame's payload may come over several reads: what it brings is kept until the
     * frame ends (on_frame_recv), and only a new frame's start forgets it. */
    if (hd->type == NGHTTP2_DATA)
        Py_CLEAR(self->data);
    return 0;
}

static int on_begin_headers(nghttp2_session *s, const nghttp2_frame *frame, void *user) {
    Session *self = user;
    Py_XSETREF(self->headers, PyList_New(0));
    self->headers_size = 0;
    self->headers_over = 0;
    self->block_status = 0;
    return self->headers == NULL ? py_failed(self) : 0;
}

static int on_header(nghttp2_session *s, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user) {
    Session *self = user;
    /* As hpack counts a header list (RFC 7541 4.1's 32 bytes a field): a bomb stops here,
     * at the limit, not once decoded. */
    self->headers_size += namelen + valuelen + 32;
    if (self->headers_size > self->max_header_list) {
        char msg[120];
        snprintf(msg, sizeof msg, "header list over %u bytes (SETTINGS_MAX_HEADER_LIST_SIZE)",
                 self->max_header_list);
        return fail_with(self, DenialOfServiceError, NGHTTP2_ENHANCE_YOUR_CALM, msg);
    }
    if (self->headers == NULL)
        return 0;
    if (!self->server_side && namelen == 7 && memcmp(name, ":status", 7) == 0 && valuelen == 3)
        self->block_status = (value[0] - '0') * 100 + (value[1] - '0') * 10 + (value[2] - '0');
    int32_t sid = frame->hd.stream_id;
    int counts = self->server_side
                     ? frame->headers.cat == NGHTTP2_HCAT_REQUEST
                     : !(flags_of(self, sid) & (F_FINAL | F_HEAD)) && self->block_status >= 200 &&
                           self->block_status != 204 && self->block_status != 304;
    if (counts && namelen == 14 && memcmp(name, "content-length", 14) == 0) {
        uintptr_t cl = 0;
        for (size_t i = 0; i < valuelen; i++) {
            if (value[i] < '0' || value[i] > '9' || cl >= CL_MAX / 10)
                return fail_with(self, ProtocolError, NGHTTP2_PROTOCOL_ERROR,
                                 "invalid content-length header");
            cl = cl * 10 + (uintptr_t)(value[i] - '0');
        }
        if (valuelen == 0)
            return fail_with(self, ProtocolError, NGHTTP2_PROTOCOL_ERROR,
                             "invalid content-length header");
        set_flags(self, sid, (flags_of(self, sid) & ((1 << CL_SHIFT) - 1)) | ((cl + 1) << CL_SHIFT));
    }
    nghttp2_nv nv = {(uint8_t *)name, (uint8_t *)value, namelen, valuelen, flags};
    PyObject *t = h2n_field_tuple(
        (flags & NGHTTP2_NV_FLAG_NO_INDEX) ? NeverIndexedHeaderTuple : HeaderTuple, &nv, 1);
    if (t == NULL || PyList_Append(self->headers, t) < 0) {
        Py_XDECREF(t);
        return py_failed(self);
    }
    Py_DECREF(t);
    return 0;
}

static int on_data_chunk(nghttp2_session *s, uint8_t flags, int32_t stream_id,
                         const uint8_t *data, size_t len, void *user) {
    Session *self = user;
    if (self->data == NULL) {
        self->data = PyBytes_FromStringAndSize((const char *)data, (Py_ssize_t)len);
    } else {
        /* A frame split over reads (rare): joined, in a new object (a short one may be
         * one CPython shares). */
        Py_ssize_t had = PyBytes_GET_SIZE(self->data);
        PyObject *joined = PyBytes_FromStringAndSize(NULL, had + (Py_ssize_t)len);
        if (joined != NULL) {
            memcpy(PyBytes_AS_STRING(joined), PyBytes_AS_STRING(self->data), (size_t)had);
            memcpy(PyBytes_AS_STRING(joined) + had, data, len);
        }
        Py_SETREF(self->data, joined);
    }
    return self->data == NULL ? py_failed(self) : 0;
}

static uintptr_t flags_of(Session *self, int32_t stream_id) {
    return (uintptr_t)nghttp2_session_get_stream_user_data(self->s, stream_id);
}

static void set_flags(Session *self, int32_t stream_id, uintptr_t flags) {
    nghttp2_session_set_stream_user_data(self->s, stream_id, (void *)flags);
}

/* DATA of `len` bytes (and the stream's end, if `end`) against the message's
 * content-length: -1 with the error saved when they disagree. */
static int body_length(Session *self, int32_t sid, size_t len, int end) {
    uintptr_t flags = flags_of(self, sid);
    uintptr_t cl = flags >> CL_SHIFT;
    if (cl == 0)
        return 0;
    if (len > cl - 1) {
        fail_with(self, ProtocolError, NGHTTP2_PROTOCOL_ERROR,
                  "more DATA than the content-length");
        return -1;
    }
    cl -= len;
    if (end && cl != 1) {
        fail_with(self, ProtocolError, NGHTTP2_PROTOCOL_ERROR,
                  "less DATA than the content-length");
        return -1;
    }
    set_flags(self, sid, (flags & ((1 << CL_SHIFT) - 1)) | (cl << CL_SHIFT));
    return 0;
}

/* The :status of a response block: 1 when it is 1xx (informational). */
static int informational(PyObject *headers) {
    Py_ssize_t n = PyList_GET_SIZE(headers);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t = PyList_GET_ITEM(headers, i);
        PyObject *name = PyTuple_GET_ITEM(t, 0);
        if (PyBytes_GET_SIZE(name) == 7 && memcmp(PyBytes_AS_STRING(name), ":status", 7) == 0) {
            PyObject *v = PyTuple_GET_ITEM(t, 1);
            return PyBytes_GET_SIZE(v) == 3 && PyBytes_AS_STRING(v)[0] == '1';
        }
    }
    return 0;
}

/* StreamEnded for a frame with END_STREAM, also set as `ev.stream_ended`. */
static int stream_ended(Session *self, PyObject *ev, int32_t stream_id) {
    PyObject *end = event(EvStreamEnded);
    if (end == NULL || set_int(end, s_stream_id, stream_id) < 0 ||
        (ev != NULL && PyObject_SetAttr(ev, s_stream_ended, end) < 0)) {
        Py_XDECREF(end);
        return -1;
    }
    return push(self, end);
}

static int on_headers_frame(Session *self, const nghttp2_frame *frame) {
    int32_t sid = frame->hd.stream_id;
    int end = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    PyObject *headers = self->headers;
    self->headers = NULL;
    if (headers == NULL)
        return 0;
    uintptr_t flags = flags_of(self, sid);
    PyObject *cls;
    if (self->server_side) {
        if (flags & F_HEADERS_IN) {
            cls = EvTrailersReceived;
        } else {
            cls = EvRequestReceived;
            set_flags(self, sid, flags | F_HEADERS_IN);
        }
    } else if (flags & F_FINAL) {
        cls = EvTrailersReceived;
    } else if (informational(headers)) {
        cls = EvInformational;
        if (end) {
            Py_DECREF(headers);
            return fail_with(self, ProtocolError, NGHTTP2_PROTOCOL_ERROR,
                             "informational response with END_STREAM");
        }
    } else {
        cls = EvResponseReceived;
        set_flags(self, sid, flags | F_FINAL);
    }
    if (end && body_length(self, sid, 0, 1) < 0) {
        Py_DECREF(headers);
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    if (cls == EvTrailersReceived && !end) {
        Py_DECREF(headers);
        return fail_with(self, ProtocolError, NGHTTP2_PROTOCOL_ERROR,
                         "Trailers must have END_STREAM set");
    }
    PyObject *ev = event(cls);
    if (ev == NULL || set_int(ev, s_stream_id, sid) < 0 ||
        PyObject_SetAttr(ev, s_headers, headers) < 0 ||
        PyObject_SetAttr(ev, s_stream_ended, Py_None) < 0 ||
        PyObject_SetAttr(ev, s_priority_updated, Py_None) < 0) {
        Py_DECREF(headers);
        Py_XDECREF(ev);
        return -1;
    }
    Py_DECREF(headers);
    Py_INCREF(ev);
    if (push(self, ev) < 0 || (end && stream_ended(self, ev, sid) < 0)) {
        Py_DECREF(ev);
        return -1;
    }
    Py_DECREF(ev);
    return 0;
}

static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *frame, void *user) {
    Session *self = user;
    int32_t sid = frame->hd.stream_id;
    PyObject *ev;
    switch (frame->hd.type) {
    case NGHTTP2_DATA: {
        PyObject *data = self->data;
        self->data = NULL;
        if ((frame->hd.flags & NGHTTP2_FLAG_PADDED) &&
            !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
            /* Left to here by count_frame: only padding is empty. */
            if (data != NULL && PyBytes_GET_SIZE(data) > 0) {
                self->empty = 0;
            } else if (empty_data(self) != 0) {
                Py_XDECREF(data);
                return NGHTTP2_ERR_CALLBACK_FAILURE;
            }
        }
        if (body_length(self, sid, data != NULL ? (size_t)PyBytes_GET_SIZE(data) : 0,
                        (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0) < 0) {
            Py_XDECREF(data);
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        }
        ev = event(EvDataReceived);
        if (ev == NULL || set_int(ev, s_stream_id, sid) < 0 ||
            PyObject_SetAttr(ev, s_data, data != NULL ? data : empty_bytes) < 0 ||
            set_int(ev, s_flow_controlled_length, (long)frame->hd.length) < 0 ||
            PyObject_SetAttr(ev, s_stream_ended, Py_None) < 0) {
            Py_XDECREF(data);
            Py_XDECREF(ev);
            return py_failed(self);
        }
        Py_XDECREF(data);
        Py_INCREF(ev);
        if (push(self, ev) < 0 ||
            ((frame->hd.flags & NGHTTP2_FLAG_END_STREAM) && stream_ended(self, ev, sid) < 0)) {
            Py_DECREF(ev);
            return py_failed(self);
        }
        Py_DECREF(ev);
        return 0;
    }
    case NGHTTP2_HEADERS: {
        int rv = on_headers_frame(self, frame);
        if (rv == NGHTTP2_ERR_CALLBACK_FAILURE)
            return rv;
        return rv < 0 ? py_failed(self) : 0;
    }
    case NGHTTP2_RST_STREAM:
        set_flags(self, sid, flags_of(self, sid) | F_RESET_THERE);
        ev = event(EvStreamReset);
        if (ev == NULL || set_int(ev, s_stream_id, sid) < 0 ||
            set_int(ev, s_error_code, (long)frame->rst_stream.error_code) < 0 ||
            PyObject_SetAttr(ev, s_remote_reset, Py_True) < 0) {
            Py_XDECREF(ev);
            return py_failed(self);
        }
        return push(self, ev) < 0 ? py_failed(self) : 0;
    case NGHTTP2_WINDOW_UPDATE:
        ev = event(EvWindowUpdated);
        if (ev == NULL || set_int(ev, s_stream_id, sid) < 0 ||
            set_int(ev, s_delta, (long)frame->window_update.window_size_increment) < 0) {
            Py_XDECREF(ev);
            return py_failed(self);
        }
        return push(self, ev) < 0 ? py_failed(self) : 0;
    case NGHTTP2_SETTINGS: {
        if (frame->hd.flags & NGHTTP2_FLAG_ACK)
            return 0;
        PyObject *changed = PyDict_New();
        ev = event(EvRemoteSettingsChanged);
        if (changed == NULL || ev == NULL) {
            Py_XDECREF(changed);
            Py_XDECREF(ev);
            return py_failed(self);
        }
        for (size_t i = 0; i < frame->settings.niv; i++) {
            PyObject *k = PyLong_FromLong(frame->settings.iv[i].settings_id);
            PyObject *v = PyLong_FromUnsignedLong(frame->settings.iv[i].value);
            if (k == NULL || v == NULL || PyDict_SetItem(changed, k, v) < 0) {
                Py_XDECREF(k);
                Py_XDECREF(v);
                Py_DECREF(changed);
                Py_DECREF(ev);
                return py_failed(self);
            }
            Py_DECREF(k);
            Py_DECREF(v);
        }
        int rv = PyObject_SetAttr(ev, s_changed_settings, changed);
        Py_DECREF(changed);
        if (rv < 0) {
            Py_DECREF(ev);
            return py_failed(self);
        }
        return push(self, ev) < 0 ? py_failed(self) : 0;
    }
    case NGHTTP2_GOAWAY: {
        ev = event(EvConnectionTerminated);
        PyObject *extra =
            frame->goaway.opaque_data_len
                ? PyBytes_FromStringAndSize((const char *)frame->goaway.opaque_data,
                                            (Py_ssize_t)frame->goaway.opaque_data_len)
                : Py_NewRef(Py_None);
        if (ev == NULL || extra == NULL ||
            set_int(ev, s_error_code, (long)frame->goaway.error_code) < 0 ||
            set_int(ev, s_last_stream_id, frame->goaway.last_stream_id) < 0 ||
            PyObject_SetAttr(ev, s_additional_data, extra) < 0) {
            Py_XDECREF(extra);
            Py_XDECREF(ev);
            return py_failed(self);
        }
        Py_DECREF(extra);
        return push(self, ev) < 0 ? py_failed(self) : 0;
    }
    default:
        return 0;
    }
}

static int on_stream_close(nghttp2_session *s, int32_t sid, uint32_t error_code, void *user) {
    Session *self = user;
    uintptr_t flags = flags_of(self, sid);
    if (sid % 2 == (self->server_side ? 0 : 1))
        self->outgoing -= 1;
    if (self->deferred != NULL && PyDict_GET_SIZE(self->deferred) > 0) {
        PyObject *k = PyLong_FromLong(sid);
        if (k == NULL)
            return py_failed(self);
        int rv = PyDict_DelItem(self->deferred, k);
        Py_DECREF(k);
        if (rv < 0)
            PyErr_Clear(); /* not there */
    }
    if (error_code == NGHTTP2_NO_ERROR || (flags & (F_RESET_HERE | F_RESET_THERE)))
        return 0;
    /* nghttp2 reset it (a stream error in what the peer sent, or a GOAWAY's refusal):
     * h2 makes a StreamReset for those too. */
    PyObject *ev = event(EvStreamReset);
    if (ev == NULL || set_int(ev, s_stream_id, sid) < 0 ||
        set_int(ev, s_error_code, (long)error_code) < 0 ||
        PyObject_SetAttr(ev, s_remote_reset, Py_False) < 0) {
        Py_XDECREF(ev);
        return py_failed(self);
    }
    return push(self, ev) < 0 ? py_failed(self) : 0;
}

/* A frame nghttp2 refused as a stream error (it answers RST_STREAM itself): a stream
 * over MAX_CONCURRENT_STREAMS before the client acknowledged it (REFUSED_STREAM), a
 * frame on a half-closed stream... From a client it made nothing happen, so it counts
 * as a control frame (h2's engine ends the connection for most of them). */
static int on_invalid_frame(nghttp2_session *s, const nghttp2_frame *frame, int lib_error_code,
                            void *user) {
    Session *self = user;
    return self->server_side ? control_frame(self) : 0;
}

static int on_frame_send(nghttp2_session *s, const nghttp2_frame *frame, void *user) {
    Session *self = user;
    if (frame->hd.type == NGHTTP2_GOAWAY) {
        self->goaway_sent = 1;
        self->goaway_code = (int)frame->goaway.error_code;
        self->terminated = 1;
    }
    return 0;
}

static int on_error(nghttp2_session *s, int lib_error_code, const char *msg, size_t len,
                    void *user) {
    Session *self = user;
    snprintf(self->lib_msg, sizeof self->lib_msg, "%.*s", (int)len, msg);
    return 0;
}

/* ---- sending -------------------------------------------------------------------------- */

static ssize_t on_send(nghttp2_session *s, const uint8_t *data, size_t length, int flags,
                       void *user) {
    Session *self = user;
    if (self->outlen + length > self->outcap) {
        size_t cap = self->outcap ? self->outcap : 16384;
        while (cap < self->outlen + length)
            cap *= 2;
        char *out = PyMem_Realloc(self->out, cap);
        if (out == NULL)
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        self->out = out;
        self->outcap = cap;
    }
    memcpy(self->out + self->outlen, data, length);
    self->outlen += length;
    return (ssize_t)length;
}

static ssize_t read_data(nghttp2_session *s, int32_t sid, uint8_t *buf, size_t length,
                         uint32_t *data_flags, nghttp2_data_source *source, void *user) {
    Session *self = user;
    const char *ptr;
    size_t left;
    int end;
    PyObject *item = NULL;
    if (sid == self->send_stream) {
        ptr = self->send_ptr + self->send_off;
        left = self->send_len - self->send_off;
        end = self->send_end;
    } else {
        /* What an earlier send_data could not send at once. */
        PyObject *k = PyLong_FromLong(sid);
        item = k != NULL ? PyDict_GetItemWithError(self->deferred, k) : NULL;
        Py_XDECREF(k);
        if (item == NULL)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        Py_ssize_t off = PyLong_AsSsize_t(PyList_GET_ITEM(item, 1));
        PyObject *b = PyList_GET_ITEM(item, 0);
        ptr = PyBytes_AS_STRING(b) + off;
        left = (size_t)(PyBytes_GET_SIZE(b) - off);
        end = PyObject_IsTrue(PyList_GET_ITEM(item, 2));
    }
    size_t n = left < length ? left : length;
    memcpy(buf, ptr, n);
    if (item == NULL) {
        self->send_off += n;
        if (n == left)
            self->send_eof = 1;
    } else if (n < left) {
        PyObject *off = PyLong_FromSsize_t(PyLong_AsSsize_t(PyList_GET_ITEM(item, 1)) + n);
        if (off == NULL || PyList_SetItem(item, 1, off) < 0)
            return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    if (n == left) {
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
        if (!end)
            *data_flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        if (item != NULL) {
            PyObject *k = PyLong_FromLong(sid);
            if (k == NULL || PyDict_DelItem(self->deferred, k) < 0) {
                Py_XDECREF(k);
                return NGHTTP2_ERR_CALLBACK_FAILURE;
            }
            Py_DECREF(k);
        }
    }
    return (ssize_t)n;
}

/* nghttp2's error (a negative return) as the exception h2 would raise, or the one a
 * callback saved. Returns NULL. */
static PyObject *raise_error(Session *self, int rv) {
    if (self->err_type != NULL) {
        PyObject *exc = PyObject_CallOneArg(self->err_type, self->err_msg);
        if (exc != NULL) {
            PyObject *code = PyLong_FromLong(self->err_code);
            if (code != NULL)
                PyObject_SetAttrString(exc, "error_code", code);
            Py_XDECREF(code);
            PyErr_SetObject(self->err_type, exc);
            Py_DECREF(exc);
        }
        Py_CLEAR(self->err_type);
        Py_CLEAR(self->err_msg);
        return NULL;
    }
    if (PyErr_Occurred())
        return NULL;
    long code = NGHTTP2_PROTOCOL_ERROR;
    if (rv == NGHTTP2_ERR_FLOODED)
        code = NGHTTP2_ENHANCE_YOUR_CALM;
    else if (rv == NGHTTP2_ERR_NOMEM)
        return PyErr_NoMemory();
    PyObject *exc = PyObject_CallFunction(ProtocolError, "s", nghttp2_strerror(rv));
    if (exc != NULL) {
        PyObject *c = PyLong_FromLong(code);
        if (c != NULL)
            PyObject_SetAttrString(exc, "error_code", c);
        Py_XDECREF(c);
        PyErr_SetObject(ProtocolError, exc);
        Py_DECREF(exc);
    }
    return NULL;
}

/* Have nghttp2 serialize what it has queued into `out`. */
static int flush(Session *self) {
    int rv = nghttp2_session_send(self->s);
    if (rv != 0) {
        raise_error(self, rv);
        return -1;
    }
    return 0;
}

/* ---- the type ----------------------------------------------------------------------- */

static PyObject *Session_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"client_side",     "initial_window", "max_streams",
                             "max_header_list", "control_limit",  "empty_limit",
                             "wu_per_data",     "wu_base",        "max_continuations",
                             "flood",           NULL};
    int client_side;
    unsigned int initial_window = 65535, max_streams = 100, max_header_list = 65536;
    long control_limit = 500, empty_limit = 1, wu_per_data = 10, wu_base = 5;
    unsigned long max_continuations = 64;
    PyObject *flood = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "p|IIIllllkO", kwlist, &client_side,
                                     &initial_window, &max_streams, &max_header_list,
                                     &control_limit, &empty_limit, &wu_per_data, &wu_base,
                                     &max_continuations, &flood))
        return NULL;
    if (flood == NULL)
        flood = ProtocolError;
    Session *self = (Session *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->server_side = !client_side;
    self->preface_left = client_side ? 0 : NGHTTP2_CLIENT_MAGIC_LEN;
    self->initial_window = initial_window;
    self->max_streams = max_streams;
    self->max_header_list = max_header_list;
    self->control_limit = control_limit;
    self->empty_limit = empty_limit;
    self->wu_per_data = wu_per_data;
    self->wu_base = wu_base;
    self->flood = Py_NewRef(flood);
    self->send_stream = -1;
    if ((self->events = PyList_New(0)) == NULL || (self->deferred = PyDict_New()) == NULL) {
        Py_DECREF(self);
        return NULL;
    }

    nghttp2_session_callbacks *cb;
    nghttp2_option *opt;
    if (nghttp2_session_callbacks_new(&cb) != 0) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    if (nghttp2_option_new(&opt) != 0) {
        nghttp2_session_callbacks_del(cb);
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    nghttp2_session_callbacks_set_send_callback(cb, on_send);
    nghttp2_session_callbacks_set_on_begin_frame_callback(cb, on_begin_frame);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send);
    nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cb, on_invalid_frame);
    nghttp2_session_callbacks_set_error_callback2(cb, on_error);
    /* Flow control is the proxy's: credit goes back as the other half sends it on. */
    nghttp2_option_set_no_auto_window_update(opt, 1);
    /* Header blocks are checked by http2.malformed, for both engines (one place). */
    nghttp2_option_set_no_http_messaging(opt, 1);
    nghttp2_option_set_max_continuations(opt, max_continuations);
    nghttp2_option_set_max_settings(opt, 32);
    nghttp2_option_set_peer_max_concurrent_streams(opt, 100);
    /* No token bucket on RST_STREAM (nghttp2's default: 1,000, then 33 a second): one
     * proxy-to-proxy link carries many clients' cancellations, and cutting it fails
     * every stream on it. Resets before an answer are limited in http2.py (decision
     * 0046's premature-reset ratio), for both engines. */
    nghttp2_option_set_stream_reset_rate_limit(opt, (uint64_t)1 << 62, (uint64_t)1 << 30);
    int rv = client_side ? nghttp2_session_client_new2(&self->s, cb, self, opt)
                         : nghttp2_session_server_new2(&self->s, cb, self, opt);
    nghttp2_session_callbacks_del(cb);
    nghttp2_option_del(opt);
    if (rv != 0) {
        self->s = NULL;
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    return (PyObject *)self;
}

static void Session_dealloc(Session *self) {
    if (self->s != NULL)
        nghttp2_session_del(self->s);
    PyMem_Free(self->out);
    Py_XDECREF(self->events);
    Py_XDECREF(self->headers);
    Py_XDECREF(self->data);
    Py_XDECREF(self->deferred);
    Py_XDECREF(self->flood);
    Py_XDECREF(self->err_type);
    Py_XDECREF(self->err_msg);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Session_initiate_connection(Session *self, PyObject *unused) {
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, self->initial_window},
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, self->max_streams},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, self->max_header_list},
    };
    int rv = nghttp2_submit_settings(self->s, NGHTTP2_FLAG_NONE, iv, 3);
    if (rv != 0 || flush(self) < 0)
        return rv != 0 ? raise_error(self, rv) : NULL;
    Py_RETURN_NONE;
}

static PyObject *Session_receive_data(Session *self, PyObject *arg) {
    Py_buffer buf;
    if (PyObject_GetBuffer(arg, &buf, PyBUF_SIMPLE) < 0)
        return NULL;
    int had_goaway = self->goaway_sent;
    /* nghttp2 is given the bytes a frame at a time, each frame counted first (count_frame)
     * with the stream states as the frames before it left them. */
    const uint8_t *p = buf.buf;
    size_t len = (size_t)buf.len, pos = 0, start = 0;
    ssize_t rv = 0;
    int counted = 0;
    while (pos < len) {
        size_t take;
        if (self->preface_left) {
            take = self->preface_left < len - pos ? self->preface_left : len - pos;
            self->preface_left -= take;
            pos += take;
            continue;
        }
        if (self->payload_left) {
            take = self->payload_left < len - pos ? self->payload_left : len - pos;
            self->payload_left -= take;
            pos += take;
            continue;
        }
        take = 9 - self->hd_have < len - pos ? 9 - self->hd_have : len - pos;
        memcpy(self->hd + self->hd_have, p + pos, take);
        self->hd_have += take;
        if (self->hd_have < 9) {
            pos += take;
            continue;
        }
        /* A whole frame header: what came before it goes to nghttp2 first. */
        if (pos > start) {
            rv = nghttp2_session_mem_recv(self->s, p + start, pos - start);
            if (rv < 0 || !nghttp2_session_want_read(self->s))
                break;
            start = pos;
        }
        const uint8_t *h = self->hd;
        nghttp2_frame_hd hd;
        hd.length = ((size_t)h[0] << 16) | ((size_t)h[1] << 8) | h[2];
        hd.type = h[3];
        hd.flags = h[4];
        hd.stream_id = (int32_t)((((uint32_t)h[5] & 0x7f) << 24) | ((uint32_t)h[6] << 16) |
                                 ((uint32_t)h[7] << 8) | h[8]);
        hd.reserved = 0;
        self->hd_have = 0;
        self->payload_left = hd.length;
        pos += take;
        if (count_frame(self, &hd) != 0) {
            counted = -1;
            break;
        }
    }
    if (rv >= 0 && counted == 0 && pos > start && nghttp2_session_want_read(self->s))
        rv = nghttp2_session_mem_recv(self->s, p + start, pos - start);
    PyBuffer_Release(&buf);
    if (counted < 0 && rv >= 0) {
        /* A limit was passed, but nghttp2 may have ended the connection already for an
         * earlier frame (its GOAWAY queued): then its error is the one, as it is the
         * code the peer is told. */
        if (flush(self) < 0)
            return NULL;
        if (self->goaway_sent && !had_goaway && !self->goaway_ours && self->goaway_code != 0) {
            Py_CLEAR(self->err_type);
            Py_CLEAR(self->err_msg);
            counted = 0;
        }
    }
    if (rv < 0 || counted < 0)
        return raise_error(self, rv < 0 ? (int)rv : NGHTTP2_ERR_CALLBACK_FAILURE);
    if (flush(self) < 0)
        return NULL;
    if (self->goaway_sent && !had_goaway && !self->goaway_ours && self->goaway_code != 0) {
        /* nghttp2 ended the connection for what the peer sent (its GOAWAY is queued): as
         * h2 would, this is a ProtocolError with that code. */
        char msg[260];
        snprintf(msg, sizeof msg, "%s",
                 self->lib_msg[0] ? self->lib_msg : nghttp2_http2_strerror(self->goaway_code));
        fail_with(self, ProtocolError, self->goaway_code, msg);
        return raise_error(self, 0);
    }
    PyObject *events = self->events;
    PyObject *fresh = PyList_New(0);
    if (fresh == NULL)
        return NULL;
    self->events = fresh;
    return events;
}

static PyObject *stream_closed(int32_t sid) {
    PyObject *exc = PyObject_CallFunction(StreamClosedError, "i", sid);
    if (exc != NULL) {
        PyErr_SetObject(StreamClosedError, exc);
        Py_DECREF(exc);
    }
    return NULL;
}

/* Can this end still send on the stream? */
static int sendable(Session *self, int32_t sid) {
    nghttp2_stream *st = nghttp2_session_find_stream(self->s, sid);
    if (st == NULL || (flags_of(self, sid) & F_RESET_HERE))
        return 0;
    nghttp2_stream_proto_state state = nghttp2_stream_get_state(st);
    return state != NGHTTP2_STREAM_STATE_CLOSED && state != NGHTTP2_STREAM_STATE_HALF_CLOSED_LOCAL;
}

static PyObject *Session_send_headers(Session *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"stream_id", "headers", "end_stream", NULL};
    int sid, end = 0;
    PyObject *headers;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iO|p", kwlist, &sid, &headers, &end))
        return NULL;
    int opening = 0;
    if (!sendable(self, sid)) {
        if (self->server_side || (uint32_t)sid != nghttp2_session_get_next_stream_id(self->s))
            return stream_closed(sid);
        /* As h2 does: no more than the peer allows at once (nghttp2 would hold the
         * HEADERS back, and the DATA given for the stream meanwhile with it). */
        uint32_t most = nghttp2_session_get_remote_settings(
            self->s, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
        if ((uint32_t)self->outgoing >= most) {
            PyErr_Format(TooManyStreamsError,
                         "Max outbound streams is %u, %ld open", most, self->outgoing);
            return NULL;
        }
        opening = 1;
    }
    PyObject *items = PyList_CheckExact(headers) ? PyList_AsTuple(headers) : PySequence_Tuple(headers);
    if (items == NULL)
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(items);
    NvList list;
    PyObject *result = NULL;
    if (nv_list_fill(&list, items) < 0)
        goto done;
    nghttp2_nv *nva = list.nva;
    uintptr_t head = 0; /* a HEAD request: its response's content-length has no body */
    for (Py_ssize_t i = 0; opening && i < n; i++)
        if (nva[i].namelen == 7 && memcmp(nva[i].name, ":method", 7) == 0)
            head = nva[i].valuelen == 4 && memcmp(nva[i].value, "HEAD", 4) == 0 ? F_HEAD : 0;
    int32_t rv = nghttp2_submit_headers(self->s, end ? NGHTTP2_FLAG_END_STREAM : NGHTTP2_FLAG_NONE,
                                        opening ? -1 : sid, NULL, nva, (size_t)n, (void *)head);
    if (rv < 0) {
        if (rv == NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE || rv == NGHTTP2_ERR_STREAM_CLOSED ||
            rv == NGHTTP2_ERR_STREAM_CLOSING)
            stream_closed(sid);
        else
            raise_error(self, rv);
        goto done;
    }
    /* A new stream is opened as its HEADERS go out: before any DATA is given for it. */
    if (opening) {
        self->outgoing += 1;
        if (flush(self) < 0)
            goto done;
    }
    result = Py_NewRef(Py_None);
done:
    nv_list_release(&list);
    Py_DECREF(items);
    return result;
}

/* DATA given for the stream that nghttp2 has not sent yet: [bytes, offset, end] or NULL
 * (borrowed). Only when nghttp2 held a stream's DATA back (not seen in practice: a
 * new stream's HEADERS go out at once, and send_data gives at most the window). */
static PyObject *deferred_item(Session *self, int32_t sid) {
    if (PyDict_GET_SIZE(self->deferred) == 0)
        return NULL;
    PyObject *k = PyLong_FromLong(sid);
    if (k == NULL)
        return NULL;
    PyObject *item = PyDict_GetItemWithError(self->deferred, k);
    Py_DECREF(k);
    return item;
}

static int32_t send_window(Session *self, int32_t sid) {
    int32_t stream = nghttp2_session_get_stream_remote_window_size(self->s, sid);
    int32_t conn = nghttp2_session_get_remote_window_size(self->s);
    int32_t window = stream < conn ? stream : conn;
    PyObject *item = deferred_item(self, sid);
    if (item != NULL)
        window -= (int32_t)(PyBytes_GET_SIZE(PyList_GET_ITEM(item, 0)) -
                            PyLong_AsSsize_t(PyList_GET_ITEM(item, 1)));
    return window;
}

static PyObject *do_send_data(Session *self, int32_t sid, const char *ptr, size_t len, int end) {
    if (!sendable(self, sid))
        return stream_closed(sid);
    int32_t window = send_window(self, sid);
    if (window < 0 || (size_t)window < len) {
        PyErr_Format(FlowControlError, "Cannot send %zu bytes, flow control window is %d", len,
                     (int)window);
        return NULL;
    }
    PyObject *waiting = deferred_item(self, sid);
    if (waiting != NULL) {
        /* nghttp2 still holds this stream's DATA item: what comes now joins it. */
        PyObject *had = PyList_GET_ITEM(waiting, 0);
        Py_ssize_t off = PyLong_AsSsize_t(PyList_GET_ITEM(waiting, 1));
        Py_ssize_t left = PyBytes_GET_SIZE(had) - off;
        PyObject *joined = PyBytes_FromStringAndSize(NULL, left + (Py_ssize_t)len);
        PyObject *zero = PyLong_FromLong(0);
        if (joined == NULL || zero == NULL) {
            Py_XDECREF(joined);
            Py_XDECREF(zero);
            return NULL;
        }
        memcpy(PyBytes_AS_STRING(joined), PyBytes_AS_STRING(had) + off, (size_t)left);
        memcpy(PyBytes_AS_STRING(joined) + left, ptr, len);
        PyList_SetItem(waiting, 0, joined);
        PyList_SetItem(waiting, 1, zero);
        PyList_SetItem(waiting, 2, PyBool_FromLong(end));
        if (nghttp2_session_resume_data(self->s, sid) != 0)
            PyErr_Clear();
        self->data_sent += 1;
        Py_RETURN_NONE;
    }
    if (PyErr_Occurred())
        return NULL;
    nghttp2_data_provider prd;
    prd.source.ptr = NULL;
    prd.read_callback = read_data;
    self->send_ptr = ptr;
    self->send_len = len;
    self->send_off = 0;
    self->send_stream = sid;
    self->send_end = end;
    self->send_eof = 0;
    int rv = nghttp2_submit_data(self->s, end ? NGHTTP2_FLAG_END_STREAM : NGHTTP2_FLAG_NONE, sid,
                                 &prd);
    int frv = rv == 0 ? nghttp2_session_send(self->s) : 0;
    self->send_stream = -1;
    if (rv != 0)
        return raise_error(self, rv);
    if (frv != 0)
        return raise_error(self, frv);
    if (!self->send_eof) {
        /* Not all of it went: the rest waits in nghttp2's DATA item for the stream. So
         * does an empty DATA frame (an END_STREAM) when the window is 0, which nghttp2
         * holds back until it opens, where h2 sends it at once. */
        PyObject *rest = PyBytes_FromStringAndSize(ptr + self->send_off,
                                                   (Py_ssize_t)(self->send_len - self->send_off));
        PyObject *item = rest != NULL ? Py_BuildValue("[NiO]", rest, 0, end ? Py_True : Py_False)
                                      : NULL;
        PyObject *k = PyLong_FromLong(sid);
        if (item == NULL || k == NULL || PyDict_SetItem(self->deferred, k, item) < 0) {
            Py_XDECREF(item);
            Py_XDECREF(k);
            return NULL;
        }
        Py_DECREF(item);
        Py_DECREF(k);
    }
    self->data_sent += 1;
    Py_RETURN_NONE;
}

static PyObject *Session_send_data(Session *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"stream_id", "data", "end_stream", "pad_length", NULL};
    int sid, end = 0;
    Py_buffer data;
    PyObject *pad = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iy*|pO", kwlist, &sid, &data, &end, &pad))
        return NULL;
    PyObject *r = do_send_data(self, sid, data.buf, (size_t)data.len, end);
    PyBuffer_Release(&data);
    return r;
}

static PyObject *Session_end_stream(Session *self, PyObject *arg) {
    int sid = PyLong_AsLong(arg);
    if (sid == -1 && PyErr_Occurred())
        return NULL;
    return do_send_data(self, sid, "", 0, 1);
}

static PyObject *Session_reset_stream(Session *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"stream_id", "error_code", NULL};
    int sid;
    unsigned int code = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i|I", kwlist, &sid, &code))
        return NULL;
    nghttp2_stream *st = nghttp2_session_find_stream(self->s, sid);
    if (st == NULL || (flags_of(self, sid) & F_RESET_HERE) ||
        nghttp2_stream_get_state(st) == NGHTTP2_STREAM_STATE_CLOSED)
        return stream_closed(sid);
    set_flags(self, sid, flags_of(self, sid) | F_RESET_HERE);
    int rv = nghttp2_submit_rst_stream(self->s, NGHTTP2_FLAG_NONE, sid, code);
    if (rv != 0)
        return raise_error(self, rv);
    Py_RETURN_NONE;
}

static PyObject *Session_close_connection(Session *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"error_code", "additional_data", "last_stream_id", NULL};
    unsigned int code = 0;
    PyObject *extra = Py_None, *last = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|IOO", kwlist, &code, &extra, &last))
        return NULL;
    self->goaway_ours = 1;
    self->terminated = 1;
    int rv = nghttp2_session_terminate_session(self->s, code);
    if (rv != 0)
        return raise_error(self, rv);
    Py_RETURN_NONE;
}

static PyObject *Session_data_to_send(Session *self, PyObject *args) {
    if (flush(self) < 0)
        return NULL;
    PyObject *b = PyBytes_FromStringAndSize(self->out, (Py_ssize_t)self->outlen);
    self->outlen = 0;
    return b;
}

static PyObject *Session_acknowledge_received_data(Session *self, PyObject *args) {
    Py_ssize_t size;
    int sid;
    if (!PyArg_ParseTuple(args, "ni", &size, &sid))
        return NULL;
    if (size <= 0 || sid <= 0)
        Py_RETURN_NONE;
    int rv = nghttp2_session_consume(self->s, sid, (size_t)size);
    if (rv != 0)
        return raise_error(self, rv);
    Py_RETURN_NONE;
}

static PyObject *Session_increment_flow_control_window(Session *self, PyObject *args,
                                                       PyObject *kwds) {
    static char *kwlist[] = {"increment", "stream_id", NULL};
    int increment;
    PyObject *sid_obj = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i|O", kwlist, &increment, &sid_obj))
        return NULL;
    int sid = sid_obj == Py_None ? 0 : (int)PyLong_AsLong(sid_obj);
    if (sid == -1 && PyErr_Occurred())
        return NULL;
    int rv = nghttp2_submit_window_update(self->s, NGHTTP2_FLAG_NONE, sid, increment);
    if (rv != 0)
        return raise_error(self, rv);
    Py_RETURN_NONE;
}

static PyObject *Session_local_flow_control_window(Session *self, PyObject *arg) {
    int sid = PyLong_AsLong(arg);
    if (sid == -1 && PyErr_Occurred())
        return NULL;
    if (!sendable(self, sid))
        return stream_closed(sid);
    return PyLong_FromLong(send_window(self, sid));
}

static PyObject *Session_get_next_available_stream_id(Session *self, PyObject *unused) {
    return PyLong_FromUnsignedLong(nghttp2_session_get_next_stream_id(self->s));
}

static PyObject *Session_control_frame(Session *self, PyObject *unused) {
    if (control_frame(self) != 0)
        return raise_error(self, 0);
    Py_RETURN_NONE;
}

static PyObject *Session_get_max_outbound_frame_size(Session *self, void *closure) {
    return PyLong_FromUnsignedLong(
        nghttp2_session_get_remote_settings(self->s, NGHTTP2_SETTINGS_MAX_FRAME_SIZE));
}

static PyObject *Session_get_server_side(Session *self, void *closure) {
    return PyBool_FromLong(self->server_side);
}

static PyObject *Session_get_terminated(Session *self, void *closure) {
    return PyBool_FromLong(self->terminated);
}

static PyMethodDef Session_methods[] = {
    {"initiate_connection", (PyCFunction)Session_initiate_connection, METH_NOARGS,
     "Queue this end's SETTINGS (and, as a client, the preface)."},
    {"receive_data", (PyCFunction)Session_receive_data, METH_O,
     "receive_data(data) -> list of h2.events: what the bytes read made happen."},
    {"send_headers", (PyCFunction)(void (*)(void))Session_send_headers,
     METH_VARARGS | METH_KEYWORDS, "send_headers(stream_id, headers, end_stream=False)"},
    {"send_data", (PyCFunction)(void (*)(void))Session_send_data, METH_VARARGS | METH_KEYWORDS,
     "send_data(stream_id, data, end_stream=False): at most the stream's window."},
    {"end_stream", (PyCFunction)Session_end_stream, METH_O,
     "end_stream(stream_id): an empty DATA frame with END_STREAM."},
    {"reset_stream", (PyCFunction)(void (*)(void))Session_reset_stream,
     METH_VARARGS | METH_KEYWORDS, "reset_stream(stream_id, error_code=0)"},
    {"close_connection", (PyCFunction)(void (*)(void))Session_close_connection,
     METH_VARARGS | METH_KEYWORDS, "close_connection(error_code=0): GOAWAY."},
    {"data_to_send", (PyCFunction)Session_data_to_send, METH_VARARGS,
     "data_to_send() -> bytes: everything queued to be written."},
    {"acknowledge_received_data", (PyCFunction)Session_acknowledge_received_data, METH_VARARGS,
     "acknowledge_received_data(size, stream_id): credit back to the peer."},
    {"increment_flow_control_window",
     (PyCFunction)(void (*)(void))Session_increment_flow_control_window,
     METH_VARARGS | METH_KEYWORDS, "increment_flow_control_window(increment, stream_id=None)"},
    {"local_flow_control_window", (PyCFunction)Session_local_flow_control_window, METH_O,
     "local_flow_control_window(stream_id) -> what may be sent on it now."},
    {"get_next_available_stream_id", (PyCFunction)Session_get_next_available_stream_id,
     METH_NOARGS, "The id the next stream this end opens gets."},
    {"control_frame", (PyCFunction)Session_control_frame, METH_NOARGS,
     "Count a frame that carries nothing to a stream; too many a second are a flood."},
    {NULL},
};

static PyMemberDef Session_members[] = {
    {"opened", T_LONG, offsetof(Session, opened), 0, "streams opened, by either end"},
    {"data_sent", T_LONG, offsetof(Session, data_sent), READONLY, "DATA frames sent"},
    {"window_updates", T_LONG, offsetof(Session, window_updates), READONLY,
     "WINDOW_UPDATE frames received"},
    {NULL},
};

static PyGetSetDef Session_getset[] = {
    {"max_outbound_frame_size", (getter)Session_get_max_outbound_frame_size, NULL,
     "the peer's SETTINGS_MAX_FRAME_SIZE", NULL},
    {"server_side", (getter)Session_get_server_side, NULL, "the server's end", NULL},
    {"terminated", (getter)Session_get_terminated, NULL, "a GOAWAY was sent", NULL},
    {NULL},
};

static PyTypeObject SessionType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "gossamer.proxy.wire._h2native.Session",
    .tp_basicsize = sizeof(Session),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "An HTTP/2 connection on nghttp2_session, with the API of h2's that the proxy "
              "uses (decision 0102).",
    .tp_new = Session_new,
    .tp_dealloc = (destructor)Session_dealloc,
    .tp_methods = Session_methods,
    .tp_members = Session_members,
    .tp_getset = Session_getset,
};

static PyObject *attr(const char *module, const char *name) {
    PyObject *m = PyImport_ImportModule(module);
    if (m == NULL)
        return NULL;
    PyObject *a = PyObject_GetAttrString(m, name);
    Py_DECREF(m);
    return a;
}

static int h2session_add(PyObject *m) {
    if (PyType_Ready(&SessionType) < 0)
        return -1;
    if (!(EvRequestReceived = attr("h2.events", "RequestReceived")) ||
        !(EvResponseReceived = attr("h2.events", "ResponseReceived")) ||
        !(EvTrailersReceived = attr("h2.events", "TrailersReceived")) ||
        !(EvDataReceived = attr("h2.events", "DataReceived")) ||
        !(EvStreamEnded = attr("h2.events", "StreamEnded")) ||
        !(EvStreamReset = attr("h2.events", "StreamReset")) ||
        !(EvWindowUpdated = attr("h2.events", "WindowUpdated")) ||
        !(EvRemoteSettingsChanged = attr("h2.events", "RemoteSettingsChanged")) ||
        !(EvConnectionTerminated = attr("h2.events", "ConnectionTerminated")) ||
        !(EvInformational = attr("h2.events", "InformationalResponseReceived")) ||
        !(ProtocolError = attr("h2.exceptions", "ProtocolError")) ||
        !(StreamClosedError = attr("h2.exceptions", "StreamClosedError")) ||
        !(FlowControlError = attr("h2.exceptions", "FlowControlError")) ||
        !(DenialOfServiceError = attr("h2.exceptions", "DenialOfServiceError")) ||
        !(TooManyStreamsError = attr("h2.exceptions", "TooManyStreamsError")) ||
        !(empty_tuple = PyTuple_New(0)) || !(empty_bytes = PyBytes_FromStringAndSize("", 0)))
        return -1;
#define INTERN(var, s) if (!(var = PyUnicode_InternFromString(s))) return -1;
    INTERN(s_stream_id, "stream_id")
    INTERN(s_headers, "headers")
    INTERN(s_stream_ended, "stream_ended")
    INTERN(s_priority_updated, "priority_updated")
    INTERN(s_data, "data")
    INTERN(s_flow_controlled_length, "flow_controlled_length")
    INTERN(s_error_code, "error_code")
    INTERN(s_remote_reset, "remote_reset")
    INTERN(s_delta, "delta")
    INTERN(s_changed_settings, "changed_settings")
    INTERN(s_last_stream_id, "last_stream_id")
    INTERN(s_additional_data, "additional_data")
#undef INTERN
    return PyModule_AddObjectRef(m, "Session", (PyObject *)&SessionType);
}
