/* The binding-level structs shared by loop.c and handle.c. */
#ifndef PN_LOOP_H
#define PN_LOOP_H

#include "ext/module.h"
#include "core/pn_poll.h"
#include "core/pn_readyq.h"
#include "core/pn_timerheap.h"
#include "core/pn_wake.h"

#include <stdatomic.h>
#include <stdint.h>

struct pn_completion;

/* asyncio.Handle / asyncio.TimerHandle in C.  One struct for both types so
 * the pool can recycle either; `timer` is only used by TimerHandle. */
/* Up to this many arguments live in the handle itself: the common
 * call_soon(f), call_soon(f, x) (a future's done callbacks) and
 * call_soon(f, a, b) allocate no tuple. */
#define PN_HANDLE_INLINE_ARGS 2

typedef struct pn_handle {
    PyObject_HEAD
    PyObject *callback;         /* NULL once cancelled */
    /* The arguments: in argv when nargs <= PN_HANDLE_INLINE_ARGS, else in
     * the tuple `args`; `_args` makes (and keeps) a tuple of inline ones,
     * which then holds references of its own.  Dropped (nargs 0, args
     * NULL) once cancelled. */
    PyObject *args;
    PyObject *argv[PN_HANDLE_INLINE_ARGS];
    Py_ssize_t nargs;
    PyObject *context;          /* contextvars.Context the callback runs in */
    PyObject *loop;
    PyObject *source_traceback; /* debug mode only, else NULL */
    PyObject *repr;             /* debug mode: repr frozen at cancel() */
    PyObject *weakreflist;
    char cancelled;
    /* Owned by its loop's queues and not tracked by the GC meanwhile: a
     * burst of call_soon would otherwise make every collection walk every
     * queued handle (the loop's traverse reports what they hold). */
    char untracked;
    /* `context` is the loop's shared snapshot of the context current at
     * scheduling time (see pn_loop.ctx_snapshot), not yet this handle's
     * own: pn_handle_own_context copies it before the callback runs or
     * anyone sees it. */
    char ctx_shared;
    pn_timer timer;             /* TimerHandle: deadline and heap slot */
} pn_handle;

/* What the loop knows about one fd. */
typedef struct pn_fdslot {
    pn_handle *reader;
    pn_handle *writer;
    unsigned mask;              /* PN_POLL_* interest registered */
} pn_fdslot;

#define PN_LOOP_MAX_EVENTS 256

typedef struct pn_loop {
    PyObject_HEAD
    PyObject *weakreflist;
    PyObject *dict;
    pn_state *st;
    PyObject *task_factory;     /* NULL: asyncio.Task */
    pn_poll *poll;
    pn_wake wake;
    pn_timerheap timers;
    pn_readyq ready;            /* owns one reference per queued handle */
    pn_fdslot *fds;             /* indexed by fd, nfds long */
    size_t nfds;
    uint64_t fork_gen;          /* pn_fork_generation() at creation */
    unsigned long thread_id;    /* running thread, 0 when not running */
    char running;
    char stopping;
    char closed;
    char debug;
    double clock_resolution;
    double slow_callback_duration;
    /* loop.stats() */
    uint64_t n_iterations;
    uint64_t n_callbacks;
    uint64_t n_timers_fired;
    uint64_t n_io_events;
    int64_t ns_polling;         /* blocked in the poll */
    int64_t ns_running;         /* in _pn_run/_run_once, not blocked */
    int64_t run_mark_ns;        /* where ns_running counts from; 0: not */
    int64_t now_ns;             /* this iteration's clock after a blocking
                                 * poll, 0 when none was read */
    uint64_t n_completions;
    uint64_t n_completion_batches;
    /* piston.Futures done in other threads, waiting to be delivered to
     * their asyncio futures: a lock-free LIFO pushed by completion hooks
     * (any thread), taken whole by the loop (loop.c). */
    _Atomic(struct pn_completion *) completions;
    /* A copy of the current context that no one enters or sees, shared by
     * the handles scheduled (without context=) while the current context
     * holds the same variables: a timer or call_soon then costs no
     * Context of its own until it runs (handle.c).  ctx_snapshot_vars is
     * the immutable mapping it wraps, the key for "the same". */
    PyObject *ctx_snapshot;
    const void *ctx_snapshot_vars;
    /* Watchdog (loop_watchdog.c): the loop publishes when each callback
     * starts; the watchdog thread reads it without the GIL. */
    struct pn_watchdog *watchdog;   /* NULL when off */
    pn_handle *current;             /* the running handle (GIL), borrowed */
    _Atomic uint64_t cb_seq;        /* bumped as each callback starts */
    _Atomic int64_t cb_start_ns;    /* its start, 0 between callbacks */
    pn_poll_event events[PN_LOOP_MAX_EVENTS];
} pn_loop;

/* handle.c */

/* A new Handle (tp = st->HandleType) or TimerHandle (tp = st->TimerHandleType)
 * for callback(*args) in context (NULL: a copy of the current one).  With
 * track == 0 the handle starts GC-untracked, owned by a loop queue that
 * tracks it again when it lets go (pn_handle_release).  New reference or
 * NULL with an exception. */
pn_handle *pn_handle_new(pn_state *st, PyTypeObject *tp, PyObject *loop,
                         PyObject *callback, PyObject *const *args,
                         Py_ssize_t nargs, PyObject *context, int track);

/* A loop queue drops its reference: a handle someone else still holds is
 * handed back to the GC first. */
static inline void
pn_handle_release(pn_handle *h)
{
    if (h->untracked) {
        h->untracked = 0;
        if (Py_REFCNT(h) > 1) {
            PyObject_GC_Track(h);
        }
    }
    Py_DECREF(h);
}

/* Visits everything a handle refers to (its tp_traverse). */
static inline int
pn_handle_visit_fields(pn_handle *h, visitproc visit, void *arg)
{
    Py_VISIT((PyObject *)Py_TYPE(h));
    Py_VISIT(h->callback);
    Py_VISIT(h->args);
    if (h->nargs <= PN_HANDLE_INLINE_ARGS) {
        for (Py_ssize_t i = 0; i < h->nargs; i++) {
            Py_VISIT(h->argv[i]);
        }
    }
    Py_VISIT(h->context);
    Py_VISIT(h->loop);
    Py_VISIT(h->source_traceback);
    Py_VISIT(h->repr);
    return 0;
}

/* For the loop's traverse: a queued handle, or what an untracked one that
 * only the queue owns refers to. */
static inline int
pn_handle_visit_queued(pn_handle *h, visitproc visit, void *arg)
{
    if (!h->untracked) {
        Py_VISIT((PyObject *)h);
    }
    else if (Py_REFCNT(h) == 1) {
        return pn_handle_visit_fields(h, visit, arg);
    }
    return 0;
}

/* Runs a live handle's callback in its context.  An exception is handed to
 * loop._pn_callback_error (asyncio's "Exception in callback" report) and
 * 0 is returned; -1 only for SystemExit/KeyboardInterrupt, left set. */
int pn_handle_run(pn_handle *h);

/* The loop's context snapshot equal to a copy of the current context (a
 * new reference: a callback run by a collection may replace the loop's
 * own), for a handle to share (then mark it ctx_shared); NULL with an
 * exception. */
PyObject *pn_loop_context_snapshot(pn_loop *loop);

/* Gives a handle sharing the loop's snapshot a context of its own (a copy
 * of the snapshot: the same variables).  0, or -1 with an exception. */
int pn_handle_own_context(pn_handle *h);

/* Drops the callback and args, marks cancelled; for a TimerHandle also
 * takes it out of its loop's heap. */
void pn_handle_cancel_core(pn_handle *h);


/* loop_watchdog.c: stops and joins the loop's watchdog thread, if any
 * (GIL held; released while joining). */
void pn__loop_watchdog_stop(pn_loop *loop);
extern PyMethodDef pn__loop_watchdog_methods[];

/* loop_complete.c: delivers the piston.Futures completed since the last
 * call into their asyncio futures (0, or -1 for KeyboardInterrupt and
 * SystemExit); drops pending ones (close). */
int pn__loop_run_completions(pn_loop *loop);
void pn__loop_drop_completions(pn_loop *loop);
extern PyMethodDef pn__loop_complete_methods[];

/* loop.c, for transports (stream.c): add_reader/add_writer of callback()
 * on fd without a Python call (0, or -1 with an exception: loop closed, in
 * a forked child, epoll refused), and remove_reader/remove_writer (1 if
 * something was registered, 0 if not or the loop is closed, -1 on error). */
int pn__loop_add_fd(pn_loop *loop, int fd, int writer, PyObject *callback);
int pn__loop_remove_fd(pn_loop *loop, int fd, int writer);

/* loop.c: takes a timer out of the heap, dropping the heap's reference. */
void pn__loop_timer_cancelled(pn_loop *loop, pn_handle *h);

#endif
