/* What the process pool's files share (private to csrc/ext/procpool*.c):
 * the pickling helpers that move a message through an arena, and the
 * registration of each file's types and functions. */
#ifndef PN_PROCPOOL_H
#define PN_PROCPOOL_H

#include "ext/module.h"
#include "core/pn_arena.h"
#include "core/pn_shm.h"

/* The buffer_callback handed to pickle: keeps up to PN_MSG_MAXBUFS
 * contiguous buffers of at least `threshold` bytes for the arena, lets
 * pickle keep the rest in-band. */
typedef struct {
    PyObject_HEAD
    Py_ssize_t threshold;
    int n;
    PyObject *bufs[PN_MSG_MAXBUFS];
} pn__bufsink;

pn__bufsink *pn__bufsink_new(pn_state *st, Py_ssize_t threshold);
void pn__bufsink_reset(pn__bufsink *s);

/* pickle with protocol 5 (then cloudpickle when that fails and is
 * installed); the body as bytes, big buffers left in `sink`. */
PyObject *pn__dumps5(PyObject *dumps, PyObject *cloud_dumps,
                     PyObject *kwnames, PyObject *obj, pn__bufsink *sink);

/* Bytes a pickle (body + out-of-band buffers) needs in an arena. */
uint64_t pn__msg_size(PyObject *body, pn__bufsink *sink);

/* Copies a pickle (body + sink buffers) into msg/inline storage, with
 * blocks from `arena`.  0, 1 when the arena is full for now, -1 error. */
int pn__store_msg(pn_arena *arena, unsigned char *base, PyObject *body,
                  pn__bufsink *sink, pn_msg *msg, unsigned char *inl,
                  uint32_t *inl_len);

/* Frees the arena blocks a message refers to (any process). */
void pn__free_msg(pn_shm *shm, pn_msg *msg);

/* A slot's pickle body: inline, or in the arena. */
unsigned char *pn__msg_body(unsigned char *base, pn_slot *slot);

/* Maps a big block's pages in one call instead of one fault per page
 * (Linux 5.14+; a no-op elsewhere). */
void pn__populate(unsigned char *p, uint64_t len, int advice);

/* Sets `exc` (a reference stolen) as the current exception, traceback
 * kept. */
void pn__restore_exc(PyObject *exc);

/* Module exec parts: the buffer sink type; the worker side's type and
 * functions.  0 or -1. */
int pn__procpool_msg_exec(PyObject *m, pn_state *st);
int pn__procpool_worker_exec(PyObject *m, pn_state *st);

#endif
