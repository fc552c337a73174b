/* piston.Future's C layout and the internal API other engines complete it
 * through (all with the GIL held). */
#ifndef PN_FUTURE_H
#define PN_FUTURE_H

#include "ext/module.h"
#include "ext/wait.h"
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

#define PN_FUTURE_HOOKS 2

/* What completes a future, for its waiters to help (GIL held):
 * wait() waits for `fut` by doing that work itself (it may release the
 * GIL): a process pool's waiter collects its own result rather than sleep
 * until the collector thread wakes it.  It returns 1 once done, 0 when it
 * stopped helping before (deadline, or nothing it can do; *spun_ns: how
 * long it polled), -1 with an exception set.  After a 0 the caller waits
 * as usual and, once the future is done, reports the whole wait to
 * learn(). */
typedef struct pn_future_driver {
    int (*wait)(PyObject *driver, PyObject *fut, int64_t deadline_ns,
                int64_t *spun_ns);
    void (*learn)(PyObject *driver, int64_t spun_ns, int64_t waited_ns);
} pn_future_driver;

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
    /* Up to two engines watch a future in C (a process pool's running-task
     * cancel and the loop's batched completion). */
    pn_future_hook hooks[PN_FUTURE_HOOKS];
    void *hook_args[PN_FUTURE_HOOKS];
    /* What completes the future, for waiters to help it (dropped once the
     * future is done). */
    PyObject *driver;
    const pn_future_driver *drive;
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

/* Adds a completion hook (hooks run in the order added); -1 (ValueError)
 * when PN_FUTURE_HOOKS are set already.  A future already done calls it at
 * once. */
int pn_future_set_done_hook(PyObject *fut, pn_future_hook hook, void *arg);

/* Lets result()/exception() wait through drive->wait(driver, ...) while
 * the future is pending (holds a reference to driver until then). */
void pn_future_set_driver(PyObject *fut, const pn_future_driver *drive,
                          PyObject *driver);

/* 1 if a completion would run Python code here: done-callbacks, or
 * cf.wait()/as_completed() waiters. */
int pn_future_observed(PyObject *fut);

/* Drops the work a thread pool attached (fn, args, kwargs). */
void pn_future_clear_work(pn_future *f);

#endif
