/* piston's stream transport (TCP and Unix sockets): the struct shared by
 * stream.c (type, lifecycle, flow control) and stream_io.c (reads and
 * writes). */
#ifndef PN_STREAM_H
#define PN_STREAM_H

#include "ext/loop.h"
#include "ext/wait.h"
#include "core/pn_fork.h"

/* Bytes read at most per readable event, as asyncio's max_size. */
#define PN_STREAM_MAX_SIZE (256 * 1024)

/* asyncio.constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES */
#define PN_STREAM_CONNLOST_WARN 5

/* One queued write: the unsent tail of a bytes object we own. */
typedef struct pn_wchunk {
    PyObject *obj;              /* bytes */
    Py_ssize_t off;             /* first unsent byte */
} pn_wchunk;

/* The type's base is asyncio.transports._FlowControlMixin (a Transport;
 * asyncio's sendfile fallback insists on it), whose fields are __slots__:
 * BaseTransport's `_extra` and four of the mixin's own.  `extra` sits
 * exactly on `_extra` (checked when the type is made), so asyncio's own
 * get_extra_info works on it; the mixin's four are shadowed by our
 * attributes and stay NULL. */
typedef struct pn_stream {
    PyObject_HEAD
    PyObject *extra;            /* BaseTransport._extra: always a dict */
    PyObject *mixin_slots[4];   /* _FlowControlMixin's, unused */
    PyObject *dict;
    PyObject *weakreflist;
    pn_state *st;
    pn_loop *loop;              /* NULL once connection_lost has run */
    PyObject *sock;             /* NULL once closed */
    PyObject *protocol;
    PyObject *server;
    PyObject *empty_waiter;     /* sendfile: set when the buffer drains */
    PyObject *read_cb;          /* bound _read_ready, what the loop calls */
    PyObject *write_cb;         /* bound _write_ready */
    pn_wchunk *wq;              /* write queue: wq[wq_head .. wq_end) */
    size_t wq_head;
    size_t wq_end;
    size_t wq_cap;
    Py_ssize_t wq_size;         /* bytes queued */
    Py_ssize_t high_water;
    Py_ssize_t low_water;
    Py_ssize_t max_size;
    Py_ssize_t last_read;       /* bytes the last Protocol read got */
    uint64_t fork_gen;
    int fd;
    int conn_lost;              /* connection_lost scheduled; then counts
                                 * writes after it */
    char closing;
    char paused;                /* pause_reading() */
    char eof;                   /* write_eof() */
    char buffered;              /* the protocol is a BufferedProtocol */
    char protocol_connected;
    char protocol_paused;       /* pause_writing() called */
} pn_stream;

static inline int
pn_stream_wq_empty(const pn_stream *s)
{
    return s->wq_head == s->wq_end;
}

/* A transport inherited through fork() shares its socket and the epoll
 * instance with the parent: using it would corrupt the parent's stream. */
static inline int
pn__stream_check_fork(pn_stream *self)
{
    if (self->fork_gen != pn_fork_generation()) {
        PyErr_SetString(PyExc_RuntimeError,
                        "this transport was created in the parent process "
                        "and cannot be used after fork()");
        return -1;
    }
    return 0;
}

/* Sets exc (a reference taken over; NULL: nothing) as the exception being
 * raised, the inverse of pn_fetch_exception. */
static inline void
pn__stream_restore(PyObject *exc)
{
    if (exc == NULL) {
        return;
    }
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(exc);
#else
    PyErr_Restore(Py_NewRef(Py_TYPE(exc)), exc,
                  PyException_GetTraceback(exc));
#endif
}

/* stream_close.c */
int pn__stream_fatal_error(pn_stream *self, PyObject *exc, const char *msg);
int pn__stream_force_close(pn_stream *self, PyObject *exc);
int pn__stream_close(pn_stream *self);
int pn__stream_call_connection_lost(pn_stream *self, PyObject *exc);
int pn__stream_maybe_pause(pn_stream *self);
int pn__stream_maybe_resume(pn_stream *self);
/* logger.<level>(fmt, self[, arg], exc_info=exc_info) on asyncio's
 * logger, `level` an interned name; arg and exc_info may be NULL. */
int pn__stream_log(pn_stream *self, PyObject *level, const char *fmt,
                   const char *arg, PyObject *exc_info);
/* A protocol callback raised: SystemExit/KeyboardInterrupt stay set (-1),
 * anything else is a fatal error of the transport (0, or -1). */
int pn__stream_protocol_failed(pn_stream *self, const char *msg);
void pn__stream_wq_clear(pn_stream *self);
/* loop.call_soon(cb[, arg]); 0 or -1. */
int pn__stream_call_soon(pn_stream *self, PyObject *cb, PyObject *arg);
/* server._attach()/_detach() (3.13: with the transport), `method` one of
 * the interned names; 0 or -1. */
int pn__stream_server_call(pn_stream *self, PyObject *method);
/* Closes the socket object and forgets it; 0 or -1. */
int pn__stream_close_sock(pn_stream *self);

/* stream_io.c */
PyObject *pn__stream_read_ready(pn_stream *self, PyObject *unused);
PyObject *pn__stream_write_ready(pn_stream *self, PyObject *unused);
PyObject *pn__stream_write(pn_stream *self, PyObject *data);
PyObject *pn__stream_writelines(pn_stream *self, PyObject *seq);
PyObject *pn__stream_write_eof(pn_stream *self, PyObject *unused);
extern PyMethodDef pn__stream_read_ready_def;
extern PyMethodDef pn__stream_write_ready_def;

#endif
