/* The stream transport's closing, error and flow-control paths, as
 * asyncio's _SelectorTransport and _FlowControlMixin: fatal errors, forced
 * and orderly close, connection_lost, pause_writing/resume_writing. */
#include "ext/stream.h"
#include "core/pn_fork.h"

/* Small helpers. */

static int
is_fatal_exception(void)
{
    return PyErr_ExceptionMatches(PyExc_SystemExit)
           || PyErr_ExceptionMatches(PyExc_KeyboardInterrupt);
}

int
pn__stream_log(pn_stream *self, PyObject *level, const char *fmt,
               const char *arg, PyObject *exc_info)
{
    PyObject *args = arg ? Py_BuildValue("(sOs)", fmt, (PyObject *)self, arg)
                         : Py_BuildValue("(sO)", fmt, (PyObject *)self);
    return pn_log(self->st->aio_logger, level, args, exc_info);
}

/* loop.call_soon(cb, arg) (arg may be NULL). */
int
pn__stream_call_soon(pn_stream *self, PyObject *cb, PyObject *arg)
{
    PyObject *r = PyObject_CallMethodObjArgs(
        (PyObject *)self->loop, self->st->str_call_soon, cb, arg, NULL);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

/* loop.call_exception_handler({...}) with asyncio's context keys. */
static int
report(pn_stream *self, PyObject *exc, const char *msg)
{
    PyObject *ctx, *r;
    if (self->loop == NULL) {
        return 0;
    }
    ctx = Py_BuildValue("{sssOsOsO}", "message", msg, "exception", exc,
                        "transport", (PyObject *)self, "protocol",
                        self->protocol ? self->protocol : Py_None);
    if (ctx == NULL) {
        return -1;
    }
    r = PyObject_CallMethodOneArg((PyObject *)self->loop,
                                  self->st->str_call_exception_handler, ctx);
    Py_DECREF(ctx);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

/* Closing and errors, as asyncio's _SelectorTransport. */

int
pn__stream_force_close(pn_stream *self, PyObject *exc)
{
    PyObject *cb;
    int r;

    if (self->conn_lost || self->loop == NULL) {
        return 0;
    }
    if (!pn_stream_wq_empty(self)) {
        pn__stream_wq_clear(self);
        if (pn__loop_remove_fd(self->loop, self->fd, 1) < 0) {
            return -1;
        }
    }
    if (!self->closing) {
        self->closing = 1;
        if (pn__loop_remove_fd(self->loop, self->fd, 0) < 0) {
            return -1;
        }
    }
    self->conn_lost++;
    cb = PyObject_GetAttr((PyObject *)self, self->st->str__call_connection_lost);
    if (cb == NULL) {
        return -1;
    }
    r = pn__stream_call_soon(self, cb, exc ? exc : Py_None);
    Py_DECREF(cb);
    return r;
}

int
pn__stream_fatal_error(pn_stream *self, PyObject *exc, const char *msg)
{
    /* Socket errors are the peer's doing: logged in debug mode only. */
    if (PyObject_TypeCheck(exc, (PyTypeObject *)PyExc_OSError)) {
        if (self->loop != NULL && self->loop->debug
            && pn__stream_log(self, self->st->str_debug, "%r: %s", msg, exc) < 0) {
            return -1;
        }
    }
    else if (report(self, exc, msg) < 0) {
        return -1;
    }
    return pn__stream_force_close(self, exc);
}

int
pn__stream_protocol_failed(pn_stream *self, const char *msg)
{
    PyObject *exc;
    int r;
    if (is_fatal_exception()) {
        return -1;
    }
    exc = pn_fetch_exception();
    if (exc == NULL) {
        return -1;
    }
    r = pn__stream_fatal_error(self, exc, msg);
    Py_DECREF(exc);
    return r;
}

int
pn__stream_close(pn_stream *self)
{
    PyObject *cb;
    int r;

    if (self->closing) {
        return 0;
    }
    if (pn__stream_check_fork(self) < 0) {
        return -1;
    }
    self->closing = 1;
    if (self->loop == NULL) {
        return 0;
    }
    if (pn__loop_remove_fd(self->loop, self->fd, 0) < 0) {
        return -1;
    }
    if (!pn_stream_wq_empty(self)) {
        return 0;   /* write_ready finishes the close once drained */
    }
    self->conn_lost++;
    if (pn__loop_remove_fd(self->loop, self->fd, 1) < 0) {
        return -1;
    }
    cb = PyObject_GetAttr((PyObject *)self, self->st->str__call_connection_lost);
    if (cb == NULL) {
        return -1;
    }
    r = pn__stream_call_soon(self, cb, Py_None);
    Py_DECREF(cb);
    return r;
}

int
pn__stream_server_call(pn_stream *self, PyObject *method)
{
    PyObject *r;
#if PY_VERSION_HEX >= 0x030D0000
    /* 3.13's Server keeps a set of its transports. */
    r = PyObject_CallMethodOneArg(self->server, method, (PyObject *)self);
#else
    r = PyObject_CallMethodNoArgs(self->server, method);
#endif
    Py_XDECREF(r);
    return r ? 0 : -1;
}

/* Closes our socket object, keeping any exception already set. */
int
pn__stream_close_sock(pn_stream *self)
{
    PyObject *sock = self->sock, *r;
    if (sock == NULL) {
        return 0;
    }
    self->sock = NULL;
    r = PyObject_CallMethodNoArgs(sock, self->st->str_close);
    Py_DECREF(sock);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

/* Tells the protocol, then releases the socket, the protocol, the loop
 * and the server (asyncio's _call_connection_lost).  Runs once. */
int
pn__stream_call_connection_lost(pn_stream *self, PyObject *exc)
{
    PyObject *err = NULL, *proto = self->protocol;
    PyObject *server;

    if (proto != NULL && self->protocol_connected) {
        PyObject *r;
        Py_INCREF(proto);
        r = PyObject_CallMethodOneArg(proto, self->st->str_connection_lost,
                                      exc);
        Py_DECREF(proto);
        if (r == NULL) {
            err = pn_fetch_exception();
        }
        Py_XDECREF(r);
    }
    /* What follows runs even if connection_lost raised (a `finally`). */
    if (pn__stream_close_sock(self) < 0 && err == NULL) {
        err = pn_fetch_exception();
    }
    else if (PyErr_Occurred()) {
        PyErr_Clear();
    }
    Py_CLEAR(self->protocol);
    Py_CLEAR(self->loop);
    /* The bound callbacks refer back to us: drop them so a finished
     * transport is freed by refcount, not by the cycle collector.  One
     * of them may be running; the loop's handle holds it meanwhile. */
    Py_CLEAR(self->read_cb);
    Py_CLEAR(self->write_cb);
    server = self->server;
    if (server != NULL) {
        int r = pn__stream_server_call(self, self->st->str__detach);
        self->server = NULL;
        Py_DECREF(server);
        if (r < 0 && err == NULL) {
            err = pn_fetch_exception();
        }
        else if (r < 0) {
            PyErr_Clear();
        }
    }
    if (err != NULL) {
        pn__stream_restore(err);
        return -1;
    }
    if (self->empty_waiter != NULL) {
        PyObject *e = PyObject_CallFunction(
            PyExc_ConnectionError, "s", "Connection is closed by peer");
        PyObject *r;
        if (e == NULL) {
            return -1;
        }
        r = PyObject_CallMethodOneArg(self->empty_waiter,
                                      self->st->str_set_exception, e);
        Py_DECREF(e);
        Py_XDECREF(r);
        if (r == NULL) {
            return -1;
        }
    }
    return 0;
}

/* Flow control, as asyncio's _FlowControlMixin. */

static int
call_flow(pn_stream *self, PyObject *name, const char *what)
{
    PyObject *proto = self->protocol, *r, *exc;
    int rc;
    if (proto == NULL) {
        return 0;
    }
    Py_INCREF(proto);
    r = PyObject_CallMethodNoArgs(proto, name);
    Py_DECREF(proto);
    if (r != NULL) {
        Py_DECREF(r);
        return 0;
    }
    if (is_fatal_exception()) {
        return -1;
    }
    exc = pn_fetch_exception();
    if (exc == NULL) {
        return -1;
    }
    rc = report(self, exc, what);
    Py_DECREF(exc);
    return rc;
}

int
pn__stream_maybe_pause(pn_stream *self)
{
    if (self->wq_size <= self->high_water || self->protocol_paused) {
        return 0;
    }
    self->protocol_paused = 1;
    return call_flow(self, self->st->str_pause_writing,
                     "protocol.pause_writing() failed");
}

int
pn__stream_maybe_resume(pn_stream *self)
{
    if (!self->protocol_paused || self->wq_size > self->low_water) {
        return 0;
    }
    self->protocol_paused = 0;
    return call_flow(self, self->st->str_resume_writing,
                     "protocol.resume_writing() failed");
}
