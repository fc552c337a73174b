/* The stream transport's hot path: reading into the protocol (Protocol or
 * BufferedProtocol) and writing (try now, queue the rest, flush with one
 * sendmsg per writable event). */
#include "ext/stream.h"

#include <errno.h>
#include <limits.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

/* One sendmsg covers at most this many queued chunks (Linux's UIO_MAXIOV,
 * as asyncio's SC_IOV_MAX). */
#define WQ_IOV_MAX 1024

static int
would_block(int err)
{
    return err == EAGAIN || err == EWOULDBLOCK || err == EINTR;
}

/* The OSError subclass for err (ConnectionResetError, BrokenPipeError,
 * ...), as socket methods raise it. */
static PyObject *
errno_exception(int err)
{
    errno = err;
    PyErr_SetFromErrno(PyExc_OSError);
    return pn_fetch_exception();
}

/* A socket error: asyncio's fatal-error path.  NULL only for a fatal
 * exception raised by the exception handler. */
static PyObject *
io_failed(pn_stream *self, int err, const char *msg)
{
    PyObject *exc = errno_exception(err);
    int r;
    if (exc == NULL) {
        return NULL;
    }
    r = pn__stream_fatal_error(self, exc, msg);
    Py_DECREF(exc);
    if (r < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
protocol_failed(pn_stream *self, const char *msg)
{
    if (pn__stream_protocol_failed(self, msg) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* Reading. */

static PyObject *
on_eof(pn_stream *self)
{
    PyObject *proto = self->protocol, *res;
    int keep_open;

    if (self->loop->debug
        && pn__stream_log(self, self->st->str_debug, "%r received EOF", NULL, NULL)
               < 0) {
        return NULL;
    }
    Py_INCREF(proto);
    res = PyObject_CallMethodNoArgs(proto, self->st->str_eof_received);
    Py_DECREF(proto);
    if (res == NULL) {
        return protocol_failed(
            self, "Fatal error: protocol.eof_received() call failed.");
    }
    keep_open = PyObject_IsTrue(res);
    Py_DECREF(res);
    if (keep_open < 0) {
        return protocol_failed(
            self, "Fatal error: protocol.eof_received() call failed.");
    }
    if (keep_open) {
        /* Half-open: the protocol may still write, but nothing more can
         * be read. */
        if (self->loop != NULL
            && pn__loop_remove_fd(self->loop, self->fd, 0) < 0) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    if (pn__stream_close(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* Protocol reads.  Small reads land in a scratch buffer shared by all
 * transports (the GIL is held from recv to the copy) and are handed over
 * as right-sized bytes: no max_size object allocated and shrunk per read.
 * Once a transport reads large chunks, it receives straight into a bytes
 * object of DIRECT_SIZE (heap-allocated: below glibc's mmap threshold, so
 * shrinking it to the size read happens in place) and skips the copy,
 * which costs more than the allocation from 16 KiB on (64 KiB echo). */
#define DIRECT_MIN (16 * 1024)
#define DIRECT_SIZE (128 * 1024 - 64)

/* 1 with *out set, 0 at EOF, -EAGAIN-style negative errno. */
static int
recv_bytes(pn_stream *self, Py_ssize_t want, PyObject **out)
{
    pn_state *st = self->st;
    PyObject *data;
    Py_ssize_t n;

    if (want <= PN_STREAM_MAX_SIZE && self->last_read < DIRECT_MIN) {
        if (st->stream_scratch == NULL) {
            st->stream_scratch = PyMem_RawMalloc(PN_STREAM_MAX_SIZE);
            if (st->stream_scratch == NULL) {
                PyErr_NoMemory();
                return -ENOMEM;
            }
        }
        n = recv(self->fd, st->stream_scratch, (size_t)want, 0);
        if (n <= 0) {
            return n == 0 ? 0 : -errno;
        }
        self->last_read = n;
        *out = PyBytes_FromStringAndSize(st->stream_scratch, n);
        return *out ? 1 : -ENOMEM;
    }
    if (want <= PN_STREAM_MAX_SIZE && want > DIRECT_SIZE) {
        want = DIRECT_SIZE;
    }
    data = PyBytes_FromStringAndSize(NULL, want);
    if (data == NULL) {
        return -ENOMEM;
    }
    n = recv(self->fd, PyBytes_AS_STRING(data), (size_t)want, 0);
    if (n <= 0) {
        int err = errno;
        Py_DECREF(data);
        return n == 0 ? 0 : -err;
    }
    self->last_read = n;
    if (n < want && _PyBytes_Resize(&data, n) < 0) {
        return -ENOMEM;
    }
    *out = data;
    return 1;
}

static PyObject *
read_data(pn_stream *self)
{
    pn_state *st = self->st;
    PyObject *data = NULL, *proto, *args[2], *res;
    int r = recv_bytes(self, self->max_size > 0 ? self->max_size : 1,
                       &data);

    if (r <= 0) {
        if (r == 0) {
            return on_eof(self);
        }
        if (PyErr_Occurred()) {
            return NULL;    /* no memory */
        }
        if (would_block(-r)) {
            Py_RETURN_NONE;
        }
        return io_failed(self, -r, "Fatal read error on socket transport");
    }
    proto = Py_NewRef(self->protocol);
    args[0] = proto;
    args[1] = data;
    res = PyObject_VectorcallMethod(st->str_data_received, args,
                                    2 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                    NULL);
    Py_DECREF(proto);
    Py_DECREF(data);
    if (res == NULL) {
        return protocol_failed(
            self, "Fatal error: protocol.data_received() call failed.");
    }
    Py_DECREF(res);
    Py_RETURN_NONE;
}

/* BufferedProtocol: recv straight into the buffer get_buffer() returned. */
static PyObject *
read_buffered(pn_stream *self)
{
    pn_state *st = self->st;
    PyObject *proto = Py_NewRef(self->protocol), *buf, *res, *nobj;
    PyObject *args[2];
    Py_buffer view;
    Py_ssize_t n;
    int err;

    args[0] = proto;
    args[1] = st->minus_one;
    buf = PyObject_VectorcallMethod(st->str_get_buffer, args,
                                    2 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                    NULL);
    if (buf != NULL) {
        Py_ssize_t len = PyObject_Size(buf);
        if (len == 0) {
            PyErr_SetString(PyExc_RuntimeError,
                            "get_buffer() returned an empty buffer");
        }
        if (len <= 0) {
            Py_CLEAR(buf);
        }
    }
    if (buf == NULL) {
        Py_DECREF(proto);
        return protocol_failed(
            self, "Fatal error: protocol.get_buffer() call failed.");
    }
    if (PyObject_GetBuffer(buf, &view, PyBUF_WRITABLE) < 0) {
        Py_DECREF(buf);
        Py_DECREF(proto);
        return protocol_failed(self,
                               "Fatal read error on socket transport");
    }
    n = recv(self->fd, view.buf, (size_t)view.len, 0);
    err = errno;
    PyBuffer_Release(&view);
    Py_DECREF(buf);
    if (n <= 0) {
        Py_DECREF(proto);
        if (n == 0) {
            return on_eof(self);
        }
        if (would_block(err)) {
            Py_RETURN_NONE;
        }
        return io_failed(self, err, "Fatal read error on socket transport");
    }
    nobj = PyLong_FromSsize_t(n);
    if (nobj == NULL) {
        Py_DECREF(proto);
        return NULL;
    }
    args[1] = nobj;
    res = PyObject_VectorcallMethod(st->str_buffer_updated, args,
                                    2 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                    NULL);
    Py_DECREF(nobj);
    Py_DECREF(proto);
    if (res == NULL) {
        return protocol_failed(
            self, "Fatal error: protocol.buffer_updated() call failed.");
    }
    Py_DECREF(res);
    Py_RETURN_NONE;
}

PyObject *
pn__stream_read_ready(pn_stream *self, PyObject *Py_UNUSED(unused))
{
    if (self->conn_lost || self->loop == NULL || self->protocol == NULL) {
        Py_RETURN_NONE;
    }
    return self->buffered ? read_buffered(self) : read_data(self);
}

/* The write queue. */

static int
wq_push(pn_stream *self, PyObject *bytes, Py_ssize_t off)
{
    if (self->wq_end == self->wq_cap) {
        size_t live = self->wq_end - self->wq_head;
        if (self->wq_head > 0 && live <= self->wq_cap / 2) {
            memmove(self->wq, self->wq + self->wq_head,
                    live * sizeof(*self->wq));
        }
        else {
            size_t cap = self->wq_cap ? self->wq_cap * 2 : 8;
            pn_wchunk *q = PyMem_Realloc(self->wq, cap * sizeof(*q));
            if (q == NULL) {
                PyErr_NoMemory();
                return -1;
            }
            self->wq = q;
            self->wq_cap = cap;
            if (self->wq_head > 0) {
                memmove(self->wq, self->wq + self->wq_head,
                        live * sizeof(*self->wq));
            }
        }
        self->wq_head = 0;
        self->wq_end = live;
    }
    self->wq[self->wq_end].obj = bytes;
    self->wq[self->wq_end].off = off;
    self->wq_end++;
    self->wq_size += PyBytes_GET_SIZE(bytes) - off;
    return 0;
}

/* Queues view[off:] of data: a bytes object is kept as it is (it cannot
 * change), anything else is copied (a bytearray may be reused by the
 * caller). */
static int
wq_append(pn_stream *self, PyObject *data, const Py_buffer *view,
          Py_ssize_t off)
{
    PyObject *b;
    if (PyBytes_CheckExact(data)) {
        b = Py_NewRef(data);
    }
    else {
        b = PyBytes_FromStringAndSize((const char *)view->buf + off,
                                      view->len - off);
        off = 0;
        if (b == NULL) {
            return -1;
        }
    }
    if (wq_push(self, b, off) < 0) {
        Py_DECREF(b);
        return -1;
    }
    return 0;
}

void
pn__stream_wq_clear(pn_stream *self)
{
    while (self->wq_head < self->wq_end) {
        PyObject *b = self->wq[self->wq_head].obj;
        self->wq_head++;
        Py_DECREF(b);
    }
    self->wq_head = self->wq_end = 0;
    self->wq_size = 0;
}

static void
wq_consume(pn_stream *self, Py_ssize_t n)
{
    self->wq_size -= n;
    while (n > 0) {
        pn_wchunk *c = &self->wq[self->wq_head];
        Py_ssize_t left = PyBytes_GET_SIZE(c->obj) - c->off;
        if (left > n) {
            c->off += n;
            return;
        }
        n -= left;
        Py_DECREF(c->obj);
        self->wq_head++;
    }
    if (self->wq_head == self->wq_end) {
        self->wq_head = self->wq_end = 0;
    }
}

/* One sendmsg of as much of the queue as fits an iovec.  Bytes sent, or
 * -errno. */
static Py_ssize_t
wq_send(pn_stream *self)
{
    struct iovec iov[WQ_IOV_MAX];
    struct msghdr msg;
    size_t n = self->wq_end - self->wq_head;
    ssize_t r;

    if (n > WQ_IOV_MAX) {
        n = WQ_IOV_MAX;
    }
    for (size_t i = 0; i < n; i++) {
        pn_wchunk *c = &self->wq[self->wq_head + i];
        iov[i].iov_base = PyBytes_AS_STRING(c->obj) + c->off;
        iov[i].iov_len = (size_t)(PyBytes_GET_SIZE(c->obj) - c->off);
    }
    memset(&msg, 0, sizeof(msg));
    msg.msg_iov = iov;
    msg.msg_iovlen = n;
    r = sendmsg(self->fd, &msg, MSG_NOSIGNAL);
    return r < 0 ? -errno : r;
}

/* After the queue drained: stop watching, wake sendfile, finish close()
 * or write_eof(). */
static int
on_drained(pn_stream *self)
{
    if (pn__loop_remove_fd(self->loop, self->fd, 1) < 0) {
        return -1;
    }
    if (self->empty_waiter != NULL) {
        PyObject *r = PyObject_CallMethodOneArg(
            self->empty_waiter, self->st->str_set_result, Py_None);
        if (r == NULL) {
            return -1;
        }
        Py_DECREF(r);
    }
    if (self->closing) {
        return pn__stream_call_connection_lost(self, Py_None);
    }
    if (self->eof && shutdown(self->fd, SHUT_WR) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return 0;
}

PyObject *
pn__stream_write_ready(pn_stream *self, PyObject *Py_UNUSED(unused))
{
    Py_ssize_t n;

    if (self->conn_lost || self->loop == NULL) {
        Py_RETURN_NONE;
    }
    if (pn_stream_wq_empty(self)) {
        /* Nothing to send (cannot happen through the public API): stop
         * polling rather than spin. */
        if (pn__loop_remove_fd(self->loop, self->fd, 1) < 0) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    n = wq_send(self);
    if (n < 0) {
        PyObject *exc;
        int r;
        if (would_block((int)-n)) {
            Py_RETURN_NONE;
        }
        if (pn__loop_remove_fd(self->loop, self->fd, 1) < 0) {
            return NULL;
        }
        pn__stream_wq_clear(self);
        exc = errno_exception((int)-n);
        if (exc == NULL) {
            return NULL;
        }
        r = pn__stream_fatal_error(self, exc,
                                   "Fatal write error on socket transport");
        if (r == 0 && self->empty_waiter != NULL) {
            PyObject *res = PyObject_CallMethodOneArg(
                self->empty_waiter, self->st->str_set_exception, exc);
            if (res == NULL) {
                r = -1;
            }
            Py_XDECREF(res);
        }
        Py_DECREF(exc);
        if (r < 0) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    wq_consume(self, n);
    if (pn__stream_maybe_resume(self) < 0) {    /* may write more */
        return NULL;
    }
    if (self->conn_lost) {
        /* resume_writing() aborted: connection_lost is already on its
         * way, with the right exception. */
        Py_RETURN_NONE;
    }
    if (pn_stream_wq_empty(self) && self->loop != NULL
        && on_drained(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* What write() and writelines() check first; 1 to go on, 0 when the data
 * is dropped (the connection is lost), -1 on error. */
static int
write_precheck(pn_stream *self, const char *method)
{
    if (self->eof) {
        PyErr_Format(PyExc_RuntimeError,
                     "Cannot call %s() after write_eof()", method);
        return -1;
    }
    if (self->empty_waiter != NULL) {
        PyErr_Format(PyExc_RuntimeError,
                     "unable to %s; sendfile is in progress", method);
        return -1;
    }
    if (pn__stream_check_fork(self) < 0) {
        return -1;
    }
    return 1;
}

/* Writes after the connection was lost are dropped; past a few, each one
 * warns (asyncio's behaviour). */
static PyObject *
write_after_lost(pn_stream *self)
{
    if (self->conn_lost >= PN_STREAM_CONNLOST_WARN) {
        if (pn_log(self->st->aio_logger, self->st->str_warning,
                   Py_BuildValue("(s)", "socket.send() raised exception."),
                   NULL) < 0) {
            return NULL;
        }
    }
    self->conn_lost++;
    Py_RETURN_NONE;
}

static int
check_bytes_like(PyObject *data)
{
    if (!PyBytes_Check(data) && !PyByteArray_Check(data)
        && !PyMemoryView_Check(data)) {
        PyErr_Format(PyExc_TypeError,
                     "data argument must be a bytes-like object, not '%.200s'",
                     Py_TYPE(data)->tp_name);
        return -1;
    }
    return 0;
}

PyObject *
pn__stream_write(pn_stream *self, PyObject *data)
{
    Py_buffer view;
    Py_ssize_t n = 0;
    int r;

    if (check_bytes_like(data) < 0) {
        return NULL;
    }
    r = write_precheck(self, "write");
    if (r <= 0) {
        return r < 0 ? NULL : Py_NewRef(Py_None);
    }
    if (PyBytes_CheckExact(data)) {
        /* The common case, without the buffer protocol's overhead. */
        view.buf = PyBytes_AS_STRING(data);
        view.len = PyBytes_GET_SIZE(data);
        view.obj = NULL;
    }
    else if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (view.len == 0) {
        PyBuffer_Release(&view);
        Py_RETURN_NONE;
    }
    if (self->conn_lost || self->loop == NULL) {
        PyBuffer_Release(&view);
        return write_after_lost(self);
    }
    if (pn_stream_wq_empty(self)) {
        /* Nothing queued: try to send it all now. */
        n = send(self->fd, view.buf, (size_t)view.len, MSG_NOSIGNAL);
        if (n < 0) {
            int err = errno;
            if (!would_block(err)) {
                PyBuffer_Release(&view);
                return io_failed(self, err,
                                 "Fatal write error on socket transport");
            }
            n = 0;
        }
        if (n == view.len) {
            PyBuffer_Release(&view);
            Py_RETURN_NONE;
        }
        if (pn__loop_add_fd(self->loop, self->fd, 1, self->write_cb) < 0) {
            PyBuffer_Release(&view);
            return NULL;
        }
    }
    r = wq_append(self, data, &view, n);
    PyBuffer_Release(&view);
    if (r < 0 || pn__stream_maybe_pause(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

PyObject *
pn__stream_writelines(pn_stream *self, PyObject *seq)
{
    PyObject *fast, *res;
    Py_ssize_t len;
    int r, was_empty;

    r = write_precheck(self, "writelines");
    if (r <= 0) {
        return r < 0 ? NULL : Py_NewRef(Py_None);
    }
    fast = PySequence_Fast(seq, "writelines() argument must be iterable");
    if (fast == NULL) {
        return NULL;
    }
    len = PySequence_Fast_GET_SIZE(fast);
    /* All or nothing: check every item before queueing any. */
    for (Py_ssize_t i = 0; i < len; i++) {
        if (check_bytes_like(PySequence_Fast_GET_ITEM(fast, i)) < 0) {
            Py_DECREF(fast);
            return NULL;
        }
    }
    if (len == 0) {
        Py_DECREF(fast);
        Py_RETURN_NONE;
    }
    if (self->conn_lost || self->loop == NULL) {
        Py_DECREF(fast);
        return write_after_lost(self);
    }
    was_empty = pn_stream_wq_empty(self);
    for (Py_ssize_t i = 0; i < len; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(fast, i);
        Py_buffer view;
        if (PyObject_GetBuffer(item, &view, PyBUF_SIMPLE) < 0) {
            Py_DECREF(fast);
            goto failed;
        }
        r = view.len > 0 ? wq_append(self, item, &view, 0) : 0;
        PyBuffer_Release(&view);
        if (r < 0) {
            Py_DECREF(fast);
            goto failed;
        }
    }
    Py_DECREF(fast);
    if (!was_empty || pn_stream_wq_empty(self)) {
        /* Already waiting for writability, or nothing to write. */
        if (pn__stream_maybe_pause(self) < 0) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    /* Gathered into one sendmsg; what does not fit waits for the loop. */
    res = pn__stream_write_ready(self, NULL);
    if (res == NULL) {
        return NULL;
    }
    Py_DECREF(res);
    if (!pn_stream_wq_empty(self) && self->loop != NULL && !self->conn_lost) {
        if (pn__loop_add_fd(self->loop, self->fd, 1, self->write_cb) < 0
            || pn__stream_maybe_pause(self) < 0) {
            return NULL;
        }
    }
    Py_RETURN_NONE;

failed:
    /* An item that would not give a contiguous buffer: what was queued
     * before it still goes out. */
    if (was_empty && !pn_stream_wq_empty(self)) {
        PyObject *exc = pn_fetch_exception();
        int r2 = pn__loop_add_fd(self->loop, self->fd, 1, self->write_cb);
        if (r2 < 0) {
            Py_XDECREF(exc);
            return NULL;
        }
        pn__stream_restore(exc);
    }
    return NULL;
}

PyObject *
pn__stream_write_eof(pn_stream *self, PyObject *Py_UNUSED(unused))
{
    if (self->closing || self->eof) {
        Py_RETURN_NONE;
    }
    if (pn__stream_check_fork(self) < 0) {
        return NULL;
    }
    self->eof = 1;
    if (pn_stream_wq_empty(self) && shutdown(self->fd, SHUT_WR) < 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

PyMethodDef pn__stream_read_ready_def = {
    "_read_ready", (PyCFunction)pn__stream_read_ready, METH_NOARGS, NULL};
PyMethodDef pn__stream_write_ready_def = {
    "_write_ready", (PyCFunction)pn__stream_write_ready, METH_NOARGS, NULL};
