/* pn_workq: the thread pool's MPMC work queue and worker accounting.
 *
 * A queue of intrusive nodes guarded by one mutex, with a condition variable
 * for idle workers.  A node may carry several units (a map job's chunks):
 * it stays at the head until every unit has been claimed, so one node serves
 * many workers without an allocation per unit.  Lock order: this mutex is a
 * leaf; nothing else is taken while it is held. */
#ifndef PN_WORKQ_H
#define PN_WORKQ_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

typedef struct pn_qnode {
    struct pn_qnode *next;
    uint32_t units_total;   /* units this node carries (>= 1) */
    uint32_t units_left;    /* units not yet claimed */
    uint32_t kind;          /* what the owner embedded this node in */
} pn_qnode;

typedef struct pn_workq {
    pthread_mutex_t mu;
    pthread_cond_t cv;      /* idle workers wait here */
    pn_qnode *head;
    pn_qnode *tail;
    size_t len;             /* unclaimed units in the queue */
    unsigned busy;          /* workers running a unit */
    unsigned nthreads;      /* workers alive or reserved by a starter */
    unsigned idle;          /* workers blocked in pn_workq_pop_wait */
    unsigned max_threads;
    int closing;            /* workers exit once the queue is empty */
    uint64_t fork_gen;      /* pn_fork_generation() when (re)initialised */
} pn_workq;

/* 0 or -errno. */
int pn_workq_init(pn_workq *q, unsigned max_threads);
void pn_workq_destroy(pn_workq *q);

/* Appends a node of `units` units unless the queue is closing (-ESHUTDOWN).
 * Sets *start_thread when the caller should start one more worker: the
 * queued and running units outnumber the workers and the cap allows it; the
 * slot is then already counted in nthreads (give it back with
 * pn_workq_thread_exit if starting fails). */
int pn_workq_push(pn_workq *q, pn_qnode *node, uint32_t units,
                  int *start_thread);

/* Claims one unit without blocking: the node and, in *unit, the index of
 * the claimed unit (0 .. units_total-1).  NULL when the queue is empty. */
pn_qnode *pn_workq_trypop(pn_workq *q, uint32_t *unit);

/* Spins up to spin_ns for work, never sleeping: a claimed unit, or NULL
 * (nothing came, or the queue is closing).  A submitter that finds the
 * worker spinning skips the condvar signal and the worker skips the sleep:
 * no syscall on either side. */
pn_qnode *pn_workq_pop_spin(pn_workq *q, uint32_t *unit, int64_t spin_ns);

/* Claims one unit, sleeping while the queue is empty.  Returns NULL once
 * the queue is closing and empty; the caller's thread slot is released
 * then (it must exit).  Call without the GIL. */
pn_qnode *pn_workq_pop_wait(pn_workq *q, uint32_t *unit);

/* Whether the queue looks empty (unlocked, may be stale). */
int pn_workq_looks_empty(pn_workq *q);

/* A claimed unit has finished running. */
void pn_workq_unit_done(pn_workq *q);

/* Gives back a thread slot (a worker that exits early, or a failed start). */
void pn_workq_thread_exit(pn_workq *q);

/* Unlinks every queued node and returns them as a list through ->next; the
 * nodes keep units_left = the units that were never claimed. */
pn_qnode *pn_workq_drain(pn_workq *q);

/* Workers exit once the queue is empty; wakes every idle worker. */
void pn_workq_close(pn_workq *q);

/* Removes `node` if it is still queued with no unit claimed. 1 if removed. */
int pn_workq_remove(pn_workq *q, pn_qnode *node);

/* In a child after fork(): the parent's workers do not exist here and its
 * mutex may have been held by one of them.  Re-creates the locks, forgets
 * every worker and returns the queued nodes as pn_workq_drain does. */
pn_qnode *pn_workq_after_fork(pn_workq *q);

/* Counters for tests and stats (approximate unless quiescent). */
void pn_workq_counts(pn_workq *q, size_t *len, unsigned *busy,
                     unsigned *nthreads, unsigned *idle);

#endif
