/* The process pool's messages: pickling with out-of-band buffers into
 * arena blocks, and freeing them (used by the parent and the workers). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "ext/procpool.h"
#include "ext/wait.h"

#include <string.h>
#include <sys/mman.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

/* Maps a big block's pages in one call instead of one fault per page
 * (Linux 5.14+; a no-op elsewhere). */
void
pn__populate(unsigned char *p, uint64_t len, int advice)
{
    if (len < (1u << 20)) {
        return;
    }
    uintptr_t a = (uintptr_t)p & ~(uintptr_t)4095;
    (void)madvise((void *)a, len + ((uintptr_t)p - a), advice);
}

unsigned char *
pn__msg_body(unsigned char *base, pn_slot *slot)
{
    return slot->msg.body_off ? base + slot->msg.body_off : slot->data;
}

/* Sets `exc` (a reference stolen) as the current exception, traceback
 * kept. */
void
pn__restore_exc(PyObject *exc)
{
    PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(exc)), exc,
                  PyException_GetTraceback(exc));
}

/* -------------------------------------------- pickling with out-of-band
 * buffers: a callable that keeps big contiguous buffers for the arena and
 * lets pickle keep the rest in-band. */


static PyObject *
bufsink_call(PyObject *self, PyObject *args, PyObject *kw)
{
    pn__bufsink *s = (pn__bufsink *)self;
    PyObject *pb;
    if (kw != NULL || !PyArg_UnpackTuple(args, "buffer_callback", 1, 1, &pb)) {
        return NULL;
    }
    if (s->n < PN_MSG_MAXBUFS) {
        Py_buffer view;
        if (PyObject_GetBuffer(pb, &view, PyBUF_ANY_CONTIGUOUS) == 0) {
            Py_ssize_t len = view.len;
            PyBuffer_Release(&view);
            if (len >= s->threshold) {
                s->bufs[s->n++] = Py_NewRef(pb);
                Py_RETURN_FALSE;    /* out of band */
            }
        }
        else {
            PyErr_Clear();
        }
    }
    Py_RETURN_TRUE;                 /* in band */
}

void
pn__bufsink_reset(pn__bufsink *s)
{
    for (int i = 0; i < s->n; i++) {
        Py_CLEAR(s->bufs[i]);
    }
    s->n = 0;
}

static int
bufsink_traverse(PyObject *self, visitproc visit, void *arg)
{
    pn__bufsink *s = (pn__bufsink *)self;
    Py_VISIT(Py_TYPE(self));
    for (int i = 0; i < s->n; i++) {
        Py_VISIT(s->bufs[i]);
    }
    return 0;
}

static void
bufsink_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    pn__bufsink_reset((pn__bufsink *)self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyType_Slot bufsink_slots[] = {
    {Py_tp_call, bufsink_call},
    {Py_tp_traverse, bufsink_traverse},
    {Py_tp_dealloc, bufsink_dealloc},
    {0, NULL},
};

static PyType_Spec bufsink_spec = {
    .name = "piston._piston._BufferSink",
    .basicsize = sizeof(pn__bufsink),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC
             | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = bufsink_slots,
};

pn__bufsink *
pn__bufsink_new(pn_state *st, Py_ssize_t threshold)
{
    pn__bufsink *s = PyObject_GC_New(pn__bufsink, st->ProcBufSinkType);
    if (s != NULL) {
        s->threshold = threshold;
        s->n = 0;
        PyObject_GC_Track(s);
    }
    return s;
}

/* pickle with protocol 5 (then cloudpickle when that fails and is
 * installed); the body as bytes, big buffers left in `sink`. */
PyObject *
pn__dumps5(PyObject *dumps, PyObject *cloud_dumps, PyObject *kwnames,
       PyObject *obj, pn__bufsink *sink)
{
    PyObject *five = PyLong_FromLong(5);
    if (five == NULL) {
        return NULL;
    }
    PyObject *argv[3] = {obj, five, (PyObject *)sink};
    PyObject *body = PyObject_Vectorcall(dumps, argv, 2, kwnames);
    if (body == NULL && cloud_dumps != NULL
        && !PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)) {
        PyObject *exc = pn_fetch_exception();
        pn__bufsink_reset(sink);
        body = PyObject_Vectorcall(cloud_dumps, argv, 2, kwnames);
        if (body == NULL) {
            /* Report the stdlib pickler's complaint, which names the
             * object; cloudpickle's is about its own internals. */
            PyErr_Clear();
            pn__restore_exc(exc);
        }
        else {
            Py_XDECREF(exc);
        }
    }
    Py_DECREF(five);
    if (body != NULL && !PyBytes_Check(body)) {
        Py_DECREF(body);
        PyErr_SetString(PyExc_TypeError, "dumps() did not return bytes");
        return NULL;
    }
    return body;
}

/* Bytes a pickle (body + out-of-band buffers) needs in an arena. */
uint64_t
pn__msg_size(PyObject *body, pn__bufsink *sink)
{
    uint64_t need = (uint64_t)PyBytes_GET_SIZE(body);
    for (int i = 0; i < sink->n; i++) {
        Py_buffer v;
        if (PyObject_GetBuffer(sink->bufs[i], &v, PyBUF_ANY_CONTIGUOUS) == 0) {
            need += (uint64_t)v.len;
            PyBuffer_Release(&v);
        }
        else {
            PyErr_Clear();
        }
    }
    return need;
}

/* Copies a pickle (body + sink buffers) into msg/inline storage, with
 * blocks from `arena`.  0, 1 when the arena is full for now, -1 error. */
int
pn__store_msg(pn_arena *arena, unsigned char *base, PyObject *body,
          pn__bufsink *sink, pn_msg *msg, unsigned char *inl, uint32_t *inl_len)
{
    Py_ssize_t blen = PyBytes_GET_SIZE(body);
    memset(msg, 0, sizeof(*msg));
    msg->body_len = (uint64_t)blen;
    if ((size_t)blen <= PN_SLOT_INLINE) {
        if (inl == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        memcpy(inl, PyBytes_AS_STRING(body), (size_t)blen);
        *inl_len = (uint32_t)blen;
    }
    else {
        uint64_t off = pn_arena_alloc(arena, (uint64_t)blen);
        if (off == 0) {
            return 1;
        }
        memcpy(base + off, PyBytes_AS_STRING(body), (size_t)blen);
        msg->body_off = off;
        *inl_len = 0;
    }
    for (int i = 0; i < sink->n; i++) {
        Py_buffer view;
        if (PyObject_GetBuffer(sink->bufs[i], &view, PyBUF_ANY_CONTIGUOUS)
            < 0) {
            goto fail;
        }
        uint64_t off = pn_arena_alloc(arena, (uint64_t)view.len);
        if (off == 0) {
            PyBuffer_Release(&view);
            goto full;
        }
        /* Map the pages in one call the first time only: a reused
         * block's pages stay mapped in this process. */
        if (pn_arena_touched(arena, off, (uint64_t)view.len)
            < (uint64_t)view.len) {
            pn__populate(base + off, (uint64_t)view.len, MADV_POPULATE_WRITE);
        }
        memcpy(base + off, view.buf, (size_t)view.len);
        msg->buf_off[i] = off;
        msg->buf_len[i] = (uint64_t)view.len;
        msg->nbufs = (uint32_t)i + 1;
        PyBuffer_Release(&view);
    }
    return 0;
full:
    for (uint32_t i = 0; i < msg->nbufs; i++) {
        pn_arena_free(base, arena->off + arena->size, msg->buf_off[i]);
    }
    if (msg->body_off) {
        pn_arena_free(base, arena->off + arena->size, msg->body_off);
    }
    return 1;
fail:
    for (uint32_t i = 0; i < msg->nbufs; i++) {
        pn_arena_free(base, arena->off + arena->size, msg->buf_off[i]);
    }
    if (msg->body_off) {
        pn_arena_free(base, arena->off + arena->size, msg->body_off);
    }
    return -1;
}

/* Frees the arena blocks a message refers to (any process). */
void
pn__free_msg(pn_shm *shm, pn_msg *msg)
{
    for (uint32_t i = 0; i < msg->nbufs; i++) {
        pn_arena_free(shm->base, shm->size, msg->buf_off[i]);
    }
    if (msg->body_off) {
        pn_arena_free(shm->base, shm->size, msg->body_off);
    }
}

int
pn__procpool_msg_exec(PyObject *m, pn_state *st)
{
    st->ProcBufSinkType =
        (PyTypeObject *)PyType_FromModuleAndSpec(m, &bufsink_spec, NULL);
    return st->ProcBufSinkType == NULL ? -1 : 0;
}
