/* piston.Future's C layout and the internal API other engines complete it
 * through (all with the GIL held). */
#ifndef PN_FUTURE_H
#define PN_FUTURE_H

#include "ext/module.h"
#include "core/pn_spin.h"
#include "core/pn_workq.h"

#include <stdatomic.h>
#include <stdint.h>

/* States, in concurrent.futures' order (state_names[] maps them). */
enum {
    PN_FUT_PENDING = 0,
    PN_FUT_RUNNING = 1,
    PN_FUT_CANCELLED = 2,
    PN_FUT_CANCELLED_AND_NOTIFIED = 3,
    PN_FUT_FINISHED = 4,
};

/* Called once with the GIL held right after the future is done (result,
 * exception or cancel), before Python done-callbacks. */
typedef void (*pn_future_hook)(PyObject *fut, void *arg);

typedef struct pn_future {
    PyObject_HEAD
    /* Waiters in result()/exception() sleep on this word with the GIL
     * released; changed only with the GIL held. */
    _Atomic uint32_t state;
    _Atomic uint32_t nsleepers;     /* threads asleep on `state` */
    _Atomic uint32_t nspinners;     /* threads waiting without the GIL */
    /* Set (GIL held) while a worker publishes a staged outcome without the
     * GIL; whoever needs a consistent view waits for it to clear. */
    _Atomic uint32_t publishing;
    int callbacks_is_list;
    PyObject *result;
    PyObject *exception;
    PyObject *callbacks;            /* NULL, one callable, or a list */
    PyObject *condition;            /* lazily: an RLock (for cf.wait) */
    PyObject *waiters;              /* lazily: a list (for cf.wait) */
    pn_future_hook hook;
    void *hook_arg;
    /* The work a thread pool carries in the future itself, so a submit
     * allocates one object. */
    pn_qnode qnode;
    PyObject *fn;
    PyObject *args;                 /* tuple */
    PyObject *kwargs;               /* dict or NULL */
} pn_future;

/* A new pending piston.Future, or NULL. */
PyObject *pn_future_new(pn_state *st);

/* 1 running, 0 was cancelled (waiters notified), -1 error. */
int pn_future_set_running_or_notify_cancel(PyObject *fut);

/* 0, or -1 with an exception set (InvalidStateError, or a BaseException
 * that a done-callback raised after the future completed). */
int pn_future_set_result(PyObject *fut, PyObject *value);
int pn_future_set_exception(PyObject *fut, PyObject *exc);

/* 1 if cancelled (now or before), 0 if running or finished, -1 error. */
int pn_future_cancel(PyObject *fut);

/* Stages the outcome of a RUNNING future that nobody observes through a
 * callback, hook or cf waiter, so the completing thread can release the GIL
 * first and publish after (pn_future_publish_staged, GIL not needed): the
 * waiter then finds the GIL free.  Returns 1 if staged, 0 if the future is
 * not eligible (nothing done: complete it the normal way). */
int pn_future_stage(PyObject *fut, PyObject *result, PyObject *exc);
void pn_future_publish_staged(pn_future *f);

/* Installs the completion hook; -1 (ValueError) if one is set already.
 * A future already done calls it at once. */
int pn_future_set_done_hook(PyObject *fut, pn_future_hook hook, void *arg);

/* Drops the work a thread pool attached (fn, args, kwargs). */
void pn_future_clear_work(pn_future *f);

/* The current exception, normalised, with its traceback attached, and the
 * error indicator cleared (PyErr_GetRaisedException on 3.12+). */
PyObject *pn_fetch_exception(void);

/* Parses a concurrent.futures-style timeout: None -> PN_FOREVER, else an
 * absolute monotonic deadline in ns; a timeout <= 0 gives the current time
 * (a non-blocking check).  0 or -1 (TypeError/ValueError set). */
int pn_parse_timeout(PyObject *timeout, int64_t *deadline_ns);

/* Sleeps with the GIL released until *word != seen, the deadline passes or
 * a signal arrives; *sleepers counts this thread while it sleeps and
 * *spinners (if not NULL) while it waits at all.  It spins for what
 * `budget` allows and teaches it how long the wait took.  Returns 0
 * (woken or word changed), 1 on timeout, -1 with an exception set (a signal
 * handler raised).  Spins briefly before sleeping. */
int pn_wait_word(_Atomic uint32_t *word, uint32_t seen,
                 _Atomic uint32_t *sleepers, _Atomic uint32_t *spinners,
                 pn_spin_budget *budget, int64_t deadline_ns);

#endif
