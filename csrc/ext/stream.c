/* piston.StreamTransport: asyncio's socket transport for TCP and Unix
 * streams in C -- the type, construction, reading state, sendfile hooks,
 * repr and GC (reads and writes: stream_io.c; closing, errors and flow
 * control: stream_close.c). */
#include "ext/stream.h"
#include "core/pn_fork.h"

#include <descrobject.h>
#include <structmember.h>

/* A limit as a byte count: ints, and floats as asyncio also takes them. */
static int
limit_value(PyObject *o, Py_ssize_t *out)
{
    if (PyFloat_Check(o)) {
        double d = PyFloat_AS_DOUBLE(o);
        if (!(d > -9e18 && d < 9e18)) {
            PyErr_SetString(PyExc_OverflowError, "limit out of range");
            return -1;
        }
        *out = (Py_ssize_t)d;
        return 0;
    }
    *out = PyNumber_AsSsize_t(o, PyExc_OverflowError);
    return *out == -1 && PyErr_Occurred() ? -1 : 0;
}

static int
set_limits(pn_stream *self, PyObject *high_o, PyObject *low_o)
{
    Py_ssize_t high = 0, low = 0;
    if (high_o != NULL && high_o != Py_None
        && limit_value(high_o, &high) < 0) {
        return -1;
    }
    if (low_o != NULL && low_o != Py_None && limit_value(low_o, &low) < 0) {
        return -1;
    }
    if (high_o == NULL || high_o == Py_None) {
        high = (low_o == NULL || low_o == Py_None) ? 64 * 1024 : 4 * low;
    }
    if (low_o == NULL || low_o == Py_None) {
        low = high / 4;
    }
    if (!(high >= low && low >= 0)) {
        PyErr_Format(PyExc_ValueError,
                     "high (%zd) must be >= low (%zd) must be >= 0", high,
                     low);
        return -1;
    }
    self->high_water = high;
    self->low_water = low;
    return 0;
}

static PyObject *
stream_set_write_buffer_limits(pn_stream *self, PyObject *args,
                               PyObject *kwds)
{
    static char *kwlist[] = {"high", "low", NULL};
    PyObject *high = NULL, *low = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds,
                                     "|OO:set_write_buffer_limits", kwlist,
                                     &high, &low)
        || set_limits(self, high, low) < 0
        || pn__stream_maybe_pause(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
stream_maybe_pause_m(pn_stream *self, PyObject *Py_UNUSED(a))
{
    if (pn__stream_maybe_pause(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
stream_maybe_resume_m(pn_stream *self, PyObject *Py_UNUSED(a))
{
    if (pn__stream_maybe_resume(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
stream_get_write_buffer_limits(pn_stream *self, PyObject *Py_UNUSED(a))
{
    return Py_BuildValue("(nn)", self->low_water, self->high_water);
}

static PyObject *
stream_get_write_buffer_size(pn_stream *self, PyObject *Py_UNUSED(a))
{
    return PyLong_FromSsize_t(self->wq_size);
}

/* Reading state. */

static int
is_reading(pn_stream *self)
{
    return !self->closing && !self->paused;
}

static PyObject *
stream_is_reading(pn_stream *self, PyObject *Py_UNUSED(a))
{
    return PyBool_FromLong(is_reading(self));
}

static PyObject *
stream_pause_reading(pn_stream *self, PyObject *Py_UNUSED(a))
{
    if (!is_reading(self) || self->loop == NULL) {
        Py_RETURN_NONE;
    }
    if (pn__stream_check_fork(self) < 0) {
        return NULL;
    }
    self->paused = 1;
    if (pn__loop_remove_fd(self->loop, self->fd, 0) < 0
        || (self->loop->debug
            && pn__stream_log(self, self->st->str_debug, "%r pauses reading", NULL,
                              NULL)
                   < 0)) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
stream_resume_reading(pn_stream *self, PyObject *Py_UNUSED(a))
{
    if (self->closing || !self->paused || self->loop == NULL) {
        Py_RETURN_NONE;
    }
    if (pn__stream_check_fork(self) < 0) {
        return NULL;
    }
    self->paused = 0;
    if (pn__loop_add_fd(self->loop, self->fd, 0, self->read_cb) < 0
        || (self->loop->debug
            && pn__stream_log(self, self->st->str_debug, "%r resumes reading", NULL,
                              NULL)
                   < 0)) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* Scheduled by the constructor after connection_made. */
static PyObject *
stream_start_reading(pn_stream *self, PyObject *Py_UNUSED(a))
{
    if (is_reading(self) && self->loop != NULL && self->read_cb != NULL
        && pn__loop_add_fd(self->loop, self->fd, 0, self->read_cb) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* Protocol. */

static int
set_protocol(pn_stream *self, PyObject *protocol)
{
    int b = PyObject_IsInstance(protocol, self->st->aio_BufferedProtocol);
    if (b < 0) {
        return -1;
    }
    self->buffered = (char)b;
    Py_XSETREF(self->protocol, Py_NewRef(protocol));
    self->protocol_connected = 1;
    return 0;
}

static PyObject *
stream_set_protocol(pn_stream *self, PyObject *protocol)
{
    if (set_protocol(self, protocol) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
stream_get_protocol(pn_stream *self, PyObject *Py_UNUSED(a))
{
    return Py_NewRef(self->protocol ? self->protocol : Py_None);
}

/* Public closing API. */

static PyObject *
stream_close(pn_stream *self, PyObject *Py_UNUSED(a))
{
    if (pn__stream_close(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
stream_abort(pn_stream *self, PyObject *Py_UNUSED(a))
{
    if (self->conn_lost || self->loop == NULL) {
        Py_RETURN_NONE;
    }
    if (pn__stream_check_fork(self) < 0
        || pn__stream_force_close(self, NULL) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
stream_is_closing(pn_stream *self, PyObject *Py_UNUSED(a))
{
    return PyBool_FromLong(self->closing);
}

static PyObject *
stream_can_write_eof(pn_stream *Py_UNUSED(self), PyObject *Py_UNUSED(a))
{
    Py_RETURN_TRUE;
}

static PyObject *
stream_call_connection_lost_m(pn_stream *self, PyObject *exc)
{
    if (pn__stream_call_connection_lost(self, exc) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
stream_fatal_error_m(pn_stream *self, PyObject *args)
{
    PyObject *exc;
    const char *msg = "Fatal error on transport";
    if (!PyArg_ParseTuple(args, "O|s:_fatal_error", &exc, &msg)
        || pn__stream_fatal_error(self, exc, msg) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
stream_force_close_m(pn_stream *self, PyObject *exc)
{
    if (pn__stream_force_close(self, exc == Py_None ? NULL : exc) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* sendfile support, as used by asyncio's _sendfile_native. */

static PyObject *
stream_make_empty_waiter(pn_stream *self, PyObject *Py_UNUSED(a))
{
    PyObject *w, *r;
    if (self->empty_waiter != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Empty waiter is already set");
        return NULL;
    }
    if (self->loop == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the transport is closed");
        return NULL;
    }
    w = PyObject_CallMethodNoArgs((PyObject *)self->loop,
                                  self->st->str_create_future);
    if (w == NULL) {
        return NULL;
    }
    if (pn_stream_wq_empty(self)) {
        r = PyObject_CallMethodOneArg(w, self->st->str_set_result, Py_None);
        if (r == NULL) {
            Py_DECREF(w);
            return NULL;
        }
        Py_DECREF(r);
    }
    self->empty_waiter = w;
    return Py_NewRef(w);
}

static PyObject *
stream_reset_empty_waiter(pn_stream *self, PyObject *Py_UNUSED(a))
{
    Py_CLEAR(self->empty_waiter);
    Py_RETURN_NONE;
}

/* repr, as asyncio's: class, state, fd, and whether the loop polls it. */
static PyObject *
stream_repr(pn_stream *self)
{
    PyObject *name = PyType_GetName(Py_TYPE(self)), *r;
    const char *state = self->sock == NULL ? " closed"
                        : self->closing    ? " closing"
                                           : "";
    if (name == NULL) {
        return NULL;
    }
    if (self->loop != NULL && !self->loop->closed) {
        pn_loop *lp = self->loop;
        pn_fdslot *slot = (self->fd >= 0 && (size_t)self->fd < lp->nfds)
                              ? &lp->fds[self->fd] : NULL;
        r = PyUnicode_FromFormat(
            "<%U%s fd=%d read=%s write=<%s, bufsize=%zd>>", name, state,
            self->fd, slot && slot->reader ? "polling" : "idle",
            slot && slot->writer ? "polling" : "idle", self->wq_size);
    }
    else {
        r = PyUnicode_FromFormat("<%U%s fd=%d>", name, state, self->fd);
    }
    Py_DECREF(name);
    return r;
}

/* Construction: StreamTransport(loop, sock, protocol, waiter=None,
 * extra=None, server=None), what _make_socket_transport calls. */

static PyObject *
stream_new(PyTypeObject *tp, PyObject *Py_UNUSED(a), PyObject *Py_UNUSED(k))
{
    pn_stream *self = (pn_stream *)tp->tp_alloc(tp, 0);
    if (self == NULL) {
        return NULL;
    }
    self->st = pn_state_from_type(tp);
    if (self->st == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    self->fd = -1;
    self->fork_gen = pn_fork_generation();
    self->max_size = PN_STREAM_MAX_SIZE;
    self->high_water = 64 * 1024;
    self->low_water = 16 * 1024;
    return (PyObject *)self;
}

/* extra[key] = sock.<method>(), or None if it raises OSError. */
static int
set_addr(PyObject *extra, PyObject *key, PyObject *sock, PyObject *method)
{
    PyObject *v = PyObject_CallMethodNoArgs(sock, method);
    int r;
    if (v == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_OSError)) {
            return -1;
        }
        PyErr_Clear();
        v = Py_NewRef(Py_None);
    }
    r = PyDict_SetItem(extra, key, v);
    Py_DECREF(v);
    return r;
}

static int
stream_init(pn_stream *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"loop", "sock", "protocol", "waiter", "extra",
                             "server", NULL};
    PyObject *loop, *sock, *protocol, *waiter = Py_None;
    PyObject *extra = Py_None, *server = Py_None, *o, *cb;
    pn_state *st = self->st;
    long fd;
    int r;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO|OOO:StreamTransport",
                                     kwlist, &loop, &sock, &protocol,
                                     &waiter, &extra, &server)) {
        return -1;
    }
    if (self->sock != NULL || self->loop != NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "StreamTransport is already initialised");
        return -1;
    }
    if (!PyObject_TypeCheck(loop, st->LoopCoreType)) {
        PyErr_Format(PyExc_TypeError,
                     "StreamTransport needs a piston loop, not %.200s",
                     Py_TYPE(loop)->tp_name);
        return -1;
    }
    if (extra != Py_None && !PyDict_Check(extra)) {
        PyErr_SetString(PyExc_TypeError, "extra must be a dict or None");
        return -1;
    }
    o = PyObject_CallMethodNoArgs(sock, st->str_fileno);
    if (o == NULL) {
        return -1;
    }
    fd = PyLong_AsLong(o);
    Py_DECREF(o);
    if (fd == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (fd < 0 || fd > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "the socket is closed");
        return -1;
    }
    self->fd = (int)fd;
    /* BaseTransport keeps the dict it was given. */
    Py_XSETREF(self->extra,
               extra == Py_None ? PyDict_New() : Py_NewRef(extra));
    if (self->extra == NULL) {
        return -1;
    }
    o = PyObject_CallOneArg(st->aio_TransportSocket, sock);
    if (o == NULL) {
        return -1;
    }
    r = PyDict_SetItemString(self->extra, "socket", o);
    Py_DECREF(o);
    if (r < 0
        || set_addr(self->extra, st->str_sockname, sock, st->str_getsockname)
               < 0) {
        return -1;
    }
    r = PyDict_Contains(self->extra, st->str_peername);
    if (r < 0
        || (r == 0
            && set_addr(self->extra, st->str_peername, sock,
                        st->str_getpeername) < 0)) {
        return -1;
    }
    self->sock = Py_NewRef(sock);
    self->loop = (pn_loop *)Py_NewRef(loop);
    self->protocol_connected = 0;
    if (set_protocol(self, protocol) < 0) {
        return -1;
    }
    self->read_cb = PyCFunction_New(&pn__stream_read_ready_def,
                                    (PyObject *)self);
    self->write_cb = PyCFunction_New(&pn__stream_write_ready_def,
                                     (PyObject *)self);
    if (self->read_cb == NULL || self->write_cb == NULL) {
        return -1;
    }
    if (server != Py_None) {
        self->server = Py_NewRef(server);
        if (pn__stream_server_call(self, self->st->str__attach) < 0) {
            Py_CLEAR(self->server);
            return -1;
        }
    }
    /* loop._transports[fd] = self: add_reader & co. refuse the fd. */
    o = PyObject_GetAttr(loop, self->st->str__transports);
    if (o == NULL) {
        return -1;
    }
    {
        PyObject *key = PyLong_FromLong(fd);
        r = key ? PyObject_SetItem(o, key, (PyObject *)self) : -1;
        Py_XDECREF(key);
    }
    Py_DECREF(o);
    if (r < 0) {
        return -1;
    }
    /* Nagle off, under asyncio's conditions. */
    o = PyObject_CallOneArg(st->aio_set_nodelay, sock);
    if (o == NULL) {
        return -1;
    }
    Py_DECREF(o);
    /* connection_made first; reading starts after it; then the waiter. */
    cb = PyObject_GetAttr(protocol, st->str_connection_made);
    if (cb == NULL) {
        return -1;
    }
    r = pn__stream_call_soon(self, cb, (PyObject *)self);
    Py_DECREF(cb);
    if (r < 0) {
        return -1;
    }
    cb = PyObject_GetAttr((PyObject *)self, self->st->str__pn_start_reading);
    if (cb == NULL) {
        return -1;
    }
    r = pn__stream_call_soon(self, cb, NULL);
    Py_DECREF(cb);
    if (r < 0) {
        return -1;
    }
    if (waiter != Py_None) {
        PyObject *res = PyObject_CallMethodObjArgs(
            loop, st->str_call_soon, st->aio_set_result_unless_cancelled,
            waiter, Py_None, NULL);
        if (res == NULL) {
            return -1;
        }
        Py_DECREF(res);
    }
    return 0;
}

/* An unclosed transport warns when collected, and closes its socket. */
static void
stream_finalize(pn_stream *self)
{
    PyObject *exc;
    if (self->sock == NULL) {
        return;
    }
    exc = pn_fetch_exception();
    if (PyErr_ResourceWarning((PyObject *)self, 1, "unclosed transport %R",
                              (PyObject *)self) < 0) {
        PyErr_WriteUnraisable((PyObject *)self);
    }
    if (pn__stream_close_sock(self) < 0) {
        PyErr_WriteUnraisable((PyObject *)self);
    }
#if PY_VERSION_HEX >= 0x030D0000
    if (self->server != NULL) {
        PyObject *server = self->server;
        int r = pn__stream_server_call(self, self->st->str__detach);
        self->server = NULL;
        Py_DECREF(server);
        if (r < 0) {
            PyErr_WriteUnraisable((PyObject *)self);
        }
    }
#endif
    pn__stream_restore(exc);
}

static int
stream_traverse(pn_stream *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->extra);
    Py_VISIT(self->dict);
    Py_VISIT((PyObject *)self->loop);
    Py_VISIT(self->sock);
    Py_VISIT(self->protocol);
    Py_VISIT(self->server);
    Py_VISIT(self->empty_waiter);
    Py_VISIT(self->read_cb);
    Py_VISIT(self->write_cb);
    /* The queue holds bytes only: nothing to visit. */
    return 0;
}

static int
stream_clear(pn_stream *self)
{
    Py_CLEAR(self->extra);
    Py_CLEAR(self->dict);
    Py_CLEAR(self->loop);
    Py_CLEAR(self->sock);
    Py_CLEAR(self->protocol);
    Py_CLEAR(self->server);
    Py_CLEAR(self->empty_waiter);
    Py_CLEAR(self->read_cb);
    Py_CLEAR(self->write_cb);
    pn__stream_wq_clear(self);
    return 0;
}

static void
stream_dealloc(pn_stream *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    if (PyObject_CallFinalizerFromDealloc((PyObject *)self) < 0) {
        return;     /* resurrected */
    }
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    stream_clear(self);
    PyMem_Free(self->wq);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *
stream_get_sock(pn_stream *self, void *Py_UNUSED(c))
{
    return Py_NewRef(self->sock ? self->sock : Py_None);
}

static PyObject *
stream_get_loop(pn_stream *self, void *Py_UNUSED(c))
{
    return Py_NewRef(self->loop ? (PyObject *)self->loop : Py_None);
}

static PyGetSetDef stream_getset[] = {
    {"_sock", (getter)stream_get_sock, NULL, NULL, NULL},
    {"_loop", (getter)stream_get_loop, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

#define RO READONLY
static PyMemberDef stream_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(pn_stream, weakreflist), RO,
     NULL},
    {"__dictoffset__", T_PYSSIZET, offsetof(pn_stream, dict), RO, NULL},
    {"_sock_fd", T_INT, offsetof(pn_stream, fd), RO, NULL},
    {"_protocol", T_OBJECT, offsetof(pn_stream, protocol), RO, NULL},
    {"_server", T_OBJECT, offsetof(pn_stream, server), RO, NULL},
    {"_empty_waiter", T_OBJECT, offsetof(pn_stream, empty_waiter), RO, NULL},
    {"_conn_lost", T_INT, offsetof(pn_stream, conn_lost), RO, NULL},
    {"_closing", T_BOOL, offsetof(pn_stream, closing), RO, NULL},
    {"_paused", T_BOOL, offsetof(pn_stream, paused), RO, NULL},
    {"_eof", T_BOOL, offsetof(pn_stream, eof), RO, NULL},
    {"_protocol_paused", T_BOOL, offsetof(pn_stream, protocol_paused), RO,
     NULL},
    {"_high_water", T_PYSSIZET, offsetof(pn_stream, high_water), RO, NULL},
    {"_low_water", T_PYSSIZET, offsetof(pn_stream, low_water), RO, NULL},
    {"max_size", T_PYSSIZET, offsetof(pn_stream, max_size), 0,
     "Bytes read at most per readable event."},
    {NULL, 0, 0, 0, NULL},
};

static PyMethodDef stream_methods[] = {
    {"write", (PyCFunction)pn__stream_write, METH_O,
     "Write bytes-like data: sent now if possible, else queued."},
    {"writelines", (PyCFunction)pn__stream_writelines, METH_O,
     "Write a sequence of bytes-like objects (gathered into one send)."},
    {"write_eof", (PyCFunction)pn__stream_write_eof, METH_NOARGS,
     "Shut down the write side once the buffer has drained."},
    {"can_write_eof", (PyCFunction)stream_can_write_eof, METH_NOARGS, NULL},
    {"close", (PyCFunction)stream_close, METH_NOARGS,
     "Close after the buffered data is sent; connection_lost(None) "
     "follows."},
    {"abort", (PyCFunction)stream_abort, METH_NOARGS,
     "Close now, dropping buffered data."},
    {"is_closing", (PyCFunction)stream_is_closing, METH_NOARGS, NULL},
    {"is_reading", (PyCFunction)stream_is_reading, METH_NOARGS, NULL},
    {"pause_reading", (PyCFunction)stream_pause_reading, METH_NOARGS, NULL},
    {"resume_reading", (PyCFunction)stream_resume_reading, METH_NOARGS,
     NULL},
    {"set_protocol", (PyCFunction)stream_set_protocol, METH_O, NULL},
    {"get_protocol", (PyCFunction)stream_get_protocol, METH_NOARGS, NULL},
    {"set_write_buffer_limits",
     (PyCFunction)(void (*)(void))stream_set_write_buffer_limits,
     METH_VARARGS | METH_KEYWORDS, NULL},
    {"get_write_buffer_limits", (PyCFunction)stream_get_write_buffer_limits,
     METH_NOARGS, NULL},
    {"get_write_buffer_size", (PyCFunction)stream_get_write_buffer_size,
     METH_NOARGS, NULL},
    {"_maybe_pause_protocol", (PyCFunction)stream_maybe_pause_m, METH_NOARGS,
     NULL},
    {"_maybe_resume_protocol", (PyCFunction)stream_maybe_resume_m,
     METH_NOARGS, NULL},
    {"_read_ready", (PyCFunction)pn__stream_read_ready, METH_NOARGS, NULL},
    {"_write_ready", (PyCFunction)pn__stream_write_ready, METH_NOARGS, NULL},
    {"_pn_start_reading", (PyCFunction)stream_start_reading, METH_NOARGS,
     NULL},
    {"_call_connection_lost", (PyCFunction)stream_call_connection_lost_m,
     METH_O, NULL},
    {"_fatal_error", (PyCFunction)stream_fatal_error_m, METH_VARARGS, NULL},
    {"_force_close", (PyCFunction)stream_force_close_m, METH_O, NULL},
    {"_make_empty_waiter", (PyCFunction)stream_make_empty_waiter,
     METH_NOARGS, NULL},
    {"_reset_empty_waiter", (PyCFunction)stream_reset_empty_waiter,
     METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot stream_slots[] = {
    {Py_tp_new, stream_new},
    {Py_tp_init, stream_init},
    {Py_tp_dealloc, stream_dealloc},
    {Py_tp_finalize, stream_finalize},
    {Py_tp_traverse, stream_traverse},
    {Py_tp_clear, stream_clear},
    {Py_tp_repr, stream_repr},
    {Py_tp_methods, stream_methods},
    {Py_tp_members, stream_members},
    {Py_tp_getset, stream_getset},
    {Py_tp_doc, "asyncio's socket transport for TCP and Unix streams, in "
                "C (an asyncio.Transport)."},
    {0, NULL},
};

/* _stream_setup(_FlowControlMixin, BufferedProtocol, TransportSocket,
 * set_nodelay, set_result_unless_cancelled, logger) -> the StreamTransport type, made
 * once asyncio is imported (piston._loop_net does it): its base is
 * asyncio's _FlowControlMixin, so isinstance(t, asyncio.Transport) holds. */
static PyObject *
stream_setup(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    pn_state *st = PyModule_GetState(m);
    PyTypeObject *base;
    PyObject *descr;
    PyType_Spec spec = {
        .name = "piston.StreamTransport",
        .basicsize = sizeof(pn_stream),
        .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC
                 | Py_TPFLAGS_BASETYPE,
        .slots = stream_slots,
    };
    PyObject *tp;

    if (nargs != 6 || !PyType_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError,
                        "_stream_setup(_FlowControlMixin, "
                        "BufferedProtocol, "
                        "TransportSocket, set_nodelay, "
                        "set_result_unless_cancelled, logger)");
        return NULL;
    }
    base = (PyTypeObject *)args[0];
    /* Our `extra` must land on BaseTransport's `_extra` slot, and the
     * base must hold nothing else we do not know of. */
    descr = _PyType_Lookup(base, st->str__extra);
    if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type)
        || ((PyMemberDescrObject *)descr)->d_member->offset
               != (Py_ssize_t)offsetof(pn_stream, extra)
        || base->tp_basicsize != (Py_ssize_t)offsetof(pn_stream, dict)
        || base->tp_itemsize != 0 || base->tp_dictoffset != 0
        || base->tp_weaklistoffset != 0) {
        PyErr_Format(PyExc_TypeError,
                     "%.200s's layout is not the expected one "
                     "(basicsize %zd)", base->tp_name, base->tp_basicsize);
        return NULL;
    }
    tp = PyType_FromModuleAndSpec(m, &spec, args[0]);
    if (tp == NULL) {
        return NULL;
    }
    Py_XSETREF(st->StreamTransportType, (PyTypeObject *)Py_NewRef(tp));
    Py_XSETREF(st->aio_BufferedProtocol, Py_NewRef(args[1]));
    Py_XSETREF(st->aio_TransportSocket, Py_NewRef(args[2]));
    Py_XSETREF(st->aio_set_nodelay, Py_NewRef(args[3]));
    Py_XSETREF(st->aio_set_result_unless_cancelled, Py_NewRef(args[4]));
    Py_XSETREF(st->aio_logger, Py_NewRef(args[5]));
    return tp;
}

static PyMethodDef stream_module_methods[] = {
    {"_stream_setup", (PyCFunction)(void (*)(void))stream_setup,
     METH_FASTCALL, "Makes piston's StreamTransport type over asyncio's."},
    {NULL, NULL, 0, NULL},
};

int
pn_stream_exec(PyObject *m, pn_state *st)
{
    st->minus_one = PyLong_FromLong(-1);
    if (st->minus_one == NULL) {
        return -1;
    }
    return PyModule_AddFunctions(m, stream_module_methods);
}
