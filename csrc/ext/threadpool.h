/* The thread pool's shared structures: the core the workers run on, and
 * map() jobs queued as one multi-unit node. */
#ifndef PN_THREADPOOL_H
#define PN_THREADPOOL_H

#include "ext/module.h"
#include "core/pn_spin.h"
#include "core/pn_workq.h"

#include <stdint.h>

/* What a queue node is embedded in. */
enum { PN_NODE_TASK = 1, PN_NODE_MAP = 2 };

#define PN_CONTAINER_OF(ptr, type, member) \
    ((type *)((char *)(ptr)-offsetof(type, member)))

/* What a worker runs right now, so a child after fork() can fail it. */
typedef struct {
    pn_qnode *node;
    uint32_t unit;
    int in_use;
} pn_worker_slot;

/* The part of a pool its workers hold on to: the executor object can be
 * collected while workers drain the queue, as with the stdlib. */
typedef struct pn_tpcore {
    PyObject_HEAD
    pn_state *st;
    pn_workq q;
    int q_ready;
    int shutdown;                   /* no new work accepted */
    Py_ssize_t max_workers;
    PyObject *broken;               /* NULL, or why the pool is broken */
    PyObject *initializer;
    PyObject *initargs;
    pn_spin_budget idle_budget;     /* how long idle workers spin */
    pn_worker_slot *slots;          /* grown as workers start */
    Py_ssize_t nslots;
} pn_tpcore;

/* Item states of a map job. */
enum { PN_ITEM_PENDING = 0, PN_ITEM_OK, PN_ITEM_ERR, PN_ITEM_CANCELLED };

typedef struct pn_mapjob {
    PyObject_HEAD
    pn_state *st;
    pn_qnode qnode;
    PyObject *fn;
    PyObject *items;                /* list of argument tuples */
    Py_ssize_t n;
    Py_ssize_t chunksize;
    uint32_t nchunks;
    PyObject **results;             /* result or exception per item */
    uint8_t *status;                /* PN_ITEM_*, atomic accesses */
    _Atomic uint32_t seq;           /* bumped each time items publish */
    _Atomic uint32_t nsleepers;
    _Atomic uint32_t chunks_done;   /* run, cancelled or failed */
    _Atomic int cancelled;
} pn_mapjob;

/* threadpool.c: the core, for thread_executor.c (GIL held throughout) */
pn_tpcore *pn__tpcore_new(pn_state *st);
int pn__tpcore_configure(pn_tpcore *core, Py_ssize_t max_workers,
                         PyObject *initializer, PyObject *initargs);
/* In a child after fork(): fails the parent's work, forgets its workers. */
void pn__tpcore_check_fork(pn_tpcore *core);
/* Cancels every queued unit (shutdown(cancel_futures=True)). */
void pn__tpcore_cancel_queued(pn_tpcore *core);
/* Workers exit once the queue is empty. */
void pn__tpcore_close(pn_tpcore *core);

/* thread_executor.c */
int pn_thread_executor_exec(PyObject *m, pn_state *st);

/* map_job.c */
int pn_map_exec(PyObject *m, pn_state *st);
/* A queued job over `items`; the queue's reference is the one returned
 * (dropped when the last chunk is done).  NULL on error. */
pn_mapjob *pn_mapjob_new(pn_state *st, PyObject *fn, PyObject *items,
                         Py_ssize_t chunksize);
/* The iterator map() returns. */
PyObject *pn_mapiter_new(pn_state *st, pn_mapjob *job, int64_t deadline);
/* Runs one chunk (GIL held). */
void pn_mapjob_run_chunk(pn_mapjob *job, uint32_t chunk);
/* Ends chunks [first, last) that will never run: with `exc` (a fresh
 * exception instance per item is made by calling exc_factory(arg)) or as
 * cancelled when exc_factory is NULL.  Items already finished keep their
 * outcome.  May drop the queue's reference (GIL held). */
void pn_mapjob_end_chunks(pn_mapjob *job, uint32_t first, uint32_t last,
                          PyObject *(*exc_factory)(void *), void *arg);

#endif
