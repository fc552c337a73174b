/* piston.Future: a concurrent.futures.Future in C whose waiters sleep on a
 * futex without the GIL. */
#include "ext/future.h"
#include "core/pn_spin.h"

#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <unistd.h>

/* The most result() spins (GIL released) before it sleeps on the futex,
 * learnt down from there (pn_spin_budget).  A sleep/wake pair costs 5-20 us
 * on an idle VM's vCPU, a whole round trip ~3 us when both sides spin:
 * `python -m piston bench thread` (one-at-a-time latency). */
#define PN_SPIN_NS 20000

/* Process-wide: the learnt budget is a property of the machine's load,
 * not of any Python object (a C value, safe to share after fork). */
static pn_spin_budget wait_budget = PN_SPIN_BUDGET_INIT(PN_SPIN_NS);

#define IS_DONE(s) ((s) >= PN_FUT_CANCELLED)
#define IS_CANCELLED(s) \
    ((s) == PN_FUT_CANCELLED || (s) == PN_FUT_CANCELLED_AND_NOTIFIED)

static inline uint32_t
fut_state(pn_future *f)
{
    return atomic_load_explicit(&f->state, memory_order_acquire);
}

/* Wakes every thread asleep in result()/exception(). */
static void
wake_sleepers(pn_future *f)
{
    if (atomic_load_explicit(&f->nsleepers, memory_order_seq_cst) > 0) {
        pn_futex_wake(&f->state, INT_MAX, 0);
    }
}

static void
set_state(pn_future *f, uint32_t s)
{
    /* seq_cst: see pn_wait_word. */
    atomic_store_explicit(&f->state, s, memory_order_seq_cst);
}

/* Waits out a worker publishing a staged outcome (a few hundred ns of work
 * that needs no GIL, so holding the GIL here cannot deadlock). */
static void
wait_published(pn_future *f)
{
    pn_spinner spin;
    pn_spinner_init(&spin, PN_FOREVER);
    /* Acquire pairs with the release store in pn_future_publish_staged. */
    while (atomic_load_explicit(&f->publishing, memory_order_acquire)) {
        pn_spinner_step(&spin);
    }
}

int
pn_future_stage(PyObject *fut, PyObject *result, PyObject *exc)
{
    pn_future *f = (pn_future *)fut;
    if (fut_state(f) != PN_FUT_RUNNING || f->callbacks != NULL
        || f->condition != NULL || f->waiters != NULL
        || f->hooks[0] != NULL) {
        return 0;
    }
    Py_XSETREF(f->result, Py_XNewRef(result));
    Py_XSETREF(f->exception, Py_XNewRef(exc));
    atomic_store_explicit(&f->publishing, 1, memory_order_relaxed);
    return 1;
}

void
pn_future_publish_staged(pn_future *f)
{
    set_state(f, PN_FUT_FINISHED);
    wake_sleepers(f);
    /* Release pairs with wait_published: the outcome and state are set. */
    atomic_store_explicit(&f->publishing, 0, memory_order_release);
}

static pn_state *
fut_module_state(pn_future *f)
{
    pn_state *st = pn_state_from_type(Py_TYPE(f));
    if (st == NULL && !PyErr_Occurred()) {
        PyErr_SetString(PyExc_SystemError, "piston: module state not found");
    }
    return st;
}

/* ---- the condition lock cf.wait()/as_completed() take ------------------ */

/* Takes f->condition when it exists: wait()/as_completed() hold it while
 * they check states and install waiters, so a completion must not slip in
 * between.  Returns the lock to release (or NULL), *err on failure. */
static PyObject *
cond_enter(pn_state *st, pn_future *f, int *err)
{
    PyObject *cond = f->condition, *r;
    *err = 0;
    if (cond == NULL) {
        return NULL;
    }
    Py_INCREF(cond);
    r = PyObject_CallMethodNoArgs(cond, st->str_acquire);
    if (r == NULL) {
        Py_DECREF(cond);
        *err = 1;
        return NULL;
    }
    Py_DECREF(r);
    return cond;
}

static void
cond_exit(pn_state *st, PyObject *cond)
{
    if (cond != NULL) {
        PyObject *r = PyObject_CallMethodNoArgs(cond, st->str_release);
        if (r == NULL) {
            PyErr_WriteUnraisable(cond);
        }
        Py_XDECREF(r);
        Py_DECREF(cond);
    }
}

/* Calls waiter.<meth>(f) for each installed cf waiter. */
static void
notify_waiters(pn_future *f, PyObject *meth)
{
    if (f->waiters == NULL) {
        return;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(f->waiters); i++) {
        PyObject *w = Py_NewRef(PyList_GET_ITEM(f->waiters, i));
        PyObject *r = PyObject_CallMethodOneArg(w, meth, (PyObject *)f);
        if (r == NULL) {
            PyErr_WriteUnraisable(w);
        }
        Py_XDECREF(r);
        Py_DECREF(w);
    }
}

/* ---- done callbacks ---------------------------------------------------- */

/* Logs like concurrent.futures: "exception calling callback for %r". */
static void
log_callback_error(pn_state *st, pn_future *f, PyObject *exc)
{
    PyObject *meth = NULL, *args = NULL, *kw = NULL, *r = NULL;
    meth = PyObject_GetAttr(st->cf_logger, st->str_exception);
    if (meth != NULL) {
        args = Py_BuildValue("(sO)", "exception calling callback for %r",
                             (PyObject *)f);
        kw = Py_BuildValue("{sO}", "exc_info", exc);
    }
    if (args != NULL && kw != NULL) {
        r = PyObject_Call(meth, args, kw);
    }
    if (r == NULL) {
        PyErr_WriteUnraisable((PyObject *)f);
    }
    Py_XDECREF(r);
    Py_XDECREF(kw);
    Py_XDECREF(args);
    Py_XDECREF(meth);
}

/* Calls cb(f).  An Exception is logged; the first other BaseException
 * (KeyboardInterrupt, SystemExit) is kept in *raised for the caller. */
static void
call_callback(pn_future *f, PyObject *cb, PyObject **raised)
{
    PyObject *r = PyObject_CallOneArg(cb, (PyObject *)f), *exc;
    if (r != NULL) {
        Py_DECREF(r);
        return;
    }
    exc = pn_fetch_exception();
    if (PyObject_TypeCheck(exc, (PyTypeObject *)PyExc_Exception)) {
        pn_state *st = fut_module_state(f);
        if (st != NULL) {
            log_callback_error(st, f, exc);
        }
        else {
            PyErr_WriteUnraisable((PyObject *)f);
        }
        Py_DECREF(exc);
    }
    else if (*raised == NULL) {
        *raised = exc;
    }
    else {
        Py_DECREF(exc);
    }
}

/* Runs the C hook and the done callbacks once the future is done. */
static int
run_done(pn_future *f)
{
    PyObject *cbs = f->callbacks, *raised = NULL;
    int is_list = f->callbacks_is_list;

    f->drive = NULL;
    Py_CLEAR(f->driver);
    for (int i = 0; i < PN_FUTURE_HOOKS && f->hooks[i] != NULL; i++) {
        pn_future_hook hook = f->hooks[i];
        f->hooks[i] = NULL;
        hook((PyObject *)f, f->hook_args[i]);
    }
    if (cbs == NULL) {
        return 0;
    }
    /* Callbacks run once; dropping them frees what they reference. */
    f->callbacks = NULL;
    f->callbacks_is_list = 0;
    if (!is_list) {
        call_callback(f, cbs, &raised);
    }
    else {
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(cbs); i++) {
            PyObject *cb = Py_NewRef(PyList_GET_ITEM(cbs, i));
            call_callback(f, cb, &raised);
            Py_DECREF(cb);
        }
    }
    Py_DECREF(cbs);
    if (raised != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(raised), raised);
        Py_DECREF(raised);
        return -1;
    }
    return 0;
}

/* ---- state transitions -------------------------------------------------- */

static int
invalid_state(pn_state *st, pn_future *f)
{
    PyErr_Format(st->InvalidStateError, "%U: %R",
                 st->state_names[fut_state(f)], (PyObject *)f);
    return -1;
}

static int
finish(pn_future *f, PyObject *result, PyObject *exc)
{
    pn_state *st = NULL;
    PyObject *cond = NULL;
    int err;

    wait_published(f);
    if (f->condition != NULL || IS_DONE(fut_state(f))) {
        if ((st = fut_module_state(f)) == NULL) {
            return -1;
        }
        cond = cond_enter(st, f, &err);
        if (err) {
            return -1;
        }
    }
    if (IS_DONE(fut_state(f))) {
        invalid_state(st, f);
        cond_exit(st, cond);
        return -1;
    }
    Py_XSETREF(f->result, Py_XNewRef(result));
    Py_XSETREF(f->exception, Py_XNewRef(exc));
    set_state(f, PN_FUT_FINISHED);
    if (f->waiters != NULL) {
        notify_waiters(f, exc ? st->str_add_exception : st->str_add_result);
    }
    wake_sleepers(f);
    if (cond != NULL) {
        cond_exit(st, cond);
    }
    return run_done(f);
}

int
pn_future_set_result(PyObject *fut, PyObject *value)
{
    return finish((pn_future *)fut, value, NULL);
}

int
pn_future_set_exception(PyObject *fut, PyObject *exc)
{
    return finish((pn_future *)fut, NULL, exc);
}

int
pn_future_cancel(PyObject *fut)
{
    pn_future *f = (pn_future *)fut;
    pn_state *st = NULL;
    PyObject *cond = NULL;
    uint32_t s;
    int err;

    if (f->condition != NULL) {
        if ((st = fut_module_state(f)) == NULL) {
            return -1;
        }
        cond = cond_enter(st, f, &err);
        if (err) {
            return -1;
        }
    }
    s = fut_state(f);
    if (s == PN_FUT_RUNNING || s == PN_FUT_FINISHED || IS_CANCELLED(s)) {
        if (cond != NULL) {
            cond_exit(st, cond);
        }
        return IS_CANCELLED(s);
    }
    set_state(f, PN_FUT_CANCELLED);
    wake_sleepers(f);
    if (cond != NULL) {
        cond_exit(st, cond);
    }
    return run_done(f) < 0 ? -1 : 1;
}

int
pn_future_set_running_or_notify_cancel(PyObject *fut)
{
    pn_future *f = (pn_future *)fut;
    pn_state *st = NULL;
    PyObject *cond = NULL;
    uint32_t s;
    int err, rc;

    if (f->condition != NULL) {
        if ((st = fut_module_state(f)) == NULL) {
            return -1;
        }
        cond = cond_enter(st, f, &err);
        if (err) {
            return -1;
        }
    }
    s = fut_state(f);
    if (s == PN_FUT_PENDING) {
        set_state(f, PN_FUT_RUNNING);
        rc = 1;
    }
    else if (s == PN_FUT_CANCELLED) {
        set_state(f, PN_FUT_CANCELLED_AND_NOTIFIED);
        if (f->waiters != NULL) {
            notify_waiters(f, st->str_add_cancelled);
        }
        rc = 0;
    }
    else {
        rc = -1;
    }
    if (cond != NULL) {
        cond_exit(st, cond);
    }
    if (rc < 0) {
        if (st == NULL && (st = fut_module_state(f)) == NULL) {
            return -1;
        }
        int r = pn_log(st->cf_logger, st->str_critical,
                       Py_BuildValue("(sKO)",
                                     "Future %s in unexpected state: %s",
                                     (unsigned long long)(uintptr_t)f,
                                     st->state_names[s]),
                       NULL);
        if (r == 0) {
            PyErr_SetString(PyExc_RuntimeError, "Future in unexpected state");
        }
    }
    return rc;
}

int
pn_future_set_done_hook(PyObject *fut, pn_future_hook hook, void *arg)
{
    pn_future *f = (pn_future *)fut;
    wait_published(f);
    int i = 0;
    while (i < PN_FUTURE_HOOKS && f->hooks[i] != NULL) {
        i++;
    }
    if (i == PN_FUTURE_HOOKS) {
        PyErr_SetString(PyExc_ValueError, "future has all its done hooks");
        return -1;
    }
    if (IS_DONE(fut_state(f))) {
        hook(fut, arg);
        return 0;
    }
    f->hooks[i] = hook;
    f->hook_args[i] = arg;
    return 0;
}

void
pn_future_set_driver(PyObject *fut, const pn_future_driver *drive,
                     PyObject *driver)
{
    pn_future *f = (pn_future *)fut;
    if (!IS_DONE(fut_state(f))) {
        Py_XSETREF(f->driver, Py_NewRef(driver));
        f->drive = drive;
    }
}

int
pn_future_observed(PyObject *fut)
{
    pn_future *f = (pn_future *)fut;
    return f->callbacks != NULL || f->waiters != NULL
           || f->condition != NULL;
}

void
pn_future_clear_work(pn_future *f)
{
    Py_CLEAR(f->fn);
    Py_CLEAR(f->args);
    Py_CLEAR(f->kwargs);
}

PyObject *
pn_future_new(pn_state *st)
{
    return st->FutureType->tp_alloc(st->FutureType, 0);
}

/* ---- waiting ------------------------------------------------------------ */

/* Waits for the future to be done.  1 done, 0 timed out, -1 error. */
static int
wait_done(pn_future *f, PyObject *timeout)
{
    int64_t deadline;
    uint32_t s = fut_state(f);
    if (IS_DONE(s)) {
        return 1;
    }
    if (pn_parse_timeout(timeout, &deadline) < 0) {
        return -1;
    }
    PyObject *driver = NULL;
    const pn_future_driver *drive = f->drive;
    int64_t started = 0, spun = 0;
    if (f->driver != NULL) {
        driver = Py_NewRef(f->driver);
        started = pn_monotonic_ns();
        if (drive->wait(driver, (PyObject *)f, deadline, &spun) < 0) {
            Py_DECREF(driver);
            return -1;
        }
        s = fut_state(f);
    }
    int rc = 1;
    while (!IS_DONE(s)) {
        int r = pn_wait_word(&f->state, s, &f->nsleepers, &f->nspinners,
                             &wait_budget, deadline);
        if (r < 0) {
            rc = -1;
            break;
        }
        s = fut_state(f);
        if (r == 1 && !IS_DONE(s)) {
            rc = 0;
            break;
        }
        if (IS_DONE(s) && driver != NULL) {
            /* The driver gave up before the end: tell it how long the
             * whole wait took. */
            drive->learn(driver, spun, pn_monotonic_ns() - started);
        }
    }
    Py_XDECREF(driver);
    return rc;
}

/* Parses the single optional `timeout` argument of result()/exception(). */
static int
parse_timeout_arg(const char *fname, PyObject *const *args, Py_ssize_t nargs,
                  PyObject *kwnames, PyObject **timeout)
{
    *timeout = Py_None;
    if (nargs > 1 || (kwnames && PyTuple_GET_SIZE(kwnames) + nargs > 1)) {
        PyErr_Format(PyExc_TypeError,
                     "%s() takes at most 1 argument (timeout)", fname);
        return -1;
    }
    if (nargs == 1) {
        *timeout = args[0];
    }
    else if (kwnames && PyTuple_GET_SIZE(kwnames) == 1) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, 0);
        if (!PyUnicode_Check(key)
            || PyUnicode_CompareWithASCIIString(key, "timeout") != 0) {
            PyErr_Format(PyExc_TypeError,
                         "%s() got an unexpected keyword argument %R",
                         fname, key);
            return -1;
        }
        *timeout = args[0];
    }
    return 0;
}

/* Raises CancelledError or TimeoutError for a future that is not finished. */
static PyObject *
raise_not_finished(pn_future *f)
{
    pn_state *st = fut_module_state(f);
    if (st == NULL) {
        return NULL;
    }
    if (IS_CANCELLED(fut_state(f))) {
        PyErr_SetNone(st->CancelledError);
    }
    else {
        PyErr_SetNone(PyExc_TimeoutError);
    }
    return NULL;
}

/* The stored exception, or NULL when the future holds a result (like
 * concurrent.futures, a falsy exception counts as none). */
static PyObject *
stored_exception(pn_future *f)
{
    if (f->exception == NULL || f->exception == Py_None) {
        return NULL;
    }
    return f->exception;
}

/* The shared start of result() and exception(): parses `timeout`, waits,
 * and returns 0 once the future is FINISHED, or -1 with CancelledError,
 * TimeoutError or a signal handler's exception set. */
static int
wait_finished(pn_future *f, const char *fname, PyObject *const *args,
              Py_ssize_t nargsf, PyObject *kwnames)
{
    PyObject *timeout;
    int r;
    if (parse_timeout_arg(fname, args, PyVectorcall_NARGS(nargsf), kwnames,
                          &timeout) < 0
        || (r = wait_done(f, timeout)) < 0) {
        return -1;
    }
    if (r == 0 || fut_state(f) != PN_FUT_FINISHED) {
        raise_not_finished(f);
        return -1;
    }
    return 0;
}

static PyObject *
fut_result(pn_future *f, PyObject *const *args, Py_ssize_t nargsf,
           PyObject *kwnames)
{
    PyObject *exc;
    if (wait_finished(f, "result", args, nargsf, kwnames) < 0) {
        return NULL;
    }
    if ((exc = stored_exception(f)) != NULL) {
        if (!PyExceptionInstance_Check(exc)) {
            PyErr_SetString(PyExc_TypeError,
                            "exceptions must derive from BaseException");
            return NULL;
        }
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        return NULL;
    }
    return Py_NewRef(f->result ? f->result : Py_None);
}

static PyObject *
fut_exception(pn_future *f, PyObject *const *args, Py_ssize_t nargsf,
              PyObject *kwnames)
{
    if (wait_finished(f, "exception", args, nargsf, kwnames) < 0) {
        return NULL;
    }
    return Py_NewRef(f->exception ? f->exception : Py_None);
}

/* ---- the rest of the Python API ---------------------------------------- */

static PyObject *
fut_cancel(pn_future *f, PyObject *Py_UNUSED(ignored))
{
    int r = pn_future_cancel((PyObject *)f);
    return r < 0 ? NULL : PyBool_FromLong(r);
}

static PyObject *
fut_cancelled(pn_future *f, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(IS_CANCELLED(fut_state(f)));
}

static PyObject *
fut_running(pn_future *f, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(fut_state(f) == PN_FUT_RUNNING);
}

static PyObject *
fut_done(pn_future *f, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(IS_DONE(fut_state(f)));
}

static PyObject *
fut_set_running_or_notify_cancel(pn_future *f, PyObject *Py_UNUSED(ignored))
{
    int r = pn_future_set_running_or_notify_cancel((PyObject *)f);
    return r < 0 ? NULL : PyBool_FromLong(r);
}

static PyObject *
fut_set_result(pn_future *f, PyObject *value)
{
    return finish(f, value, NULL) < 0 ? NULL : Py_NewRef(Py_None);
}

static PyObject *
fut_set_exception(pn_future *f, PyObject *exc)
{
    return finish(f, NULL, exc) < 0 ? NULL : Py_NewRef(Py_None);
}

static PyObject *
fut_add_done_callback(pn_future *f, PyObject *fn)
{
    PyObject *raised = NULL;
    wait_published(f);
    if (!IS_DONE(fut_state(f))) {
        if (f->callbacks == NULL) {
            f->callbacks = Py_NewRef(fn);
        }
        else if (f->callbacks_is_list) {
            if (PyList_Append(f->callbacks, fn) < 0) {
                return NULL;
            }
        }
        else {
            PyObject *list = PyList_New(2);
            if (list == NULL) {
                return NULL;
            }
            PyList_SET_ITEM(list, 0, f->callbacks);
            PyList_SET_ITEM(list, 1, Py_NewRef(fn));
            f->callbacks = list;
            f->callbacks_is_list = 1;
        }
        Py_RETURN_NONE;
    }
    call_callback(f, fn, &raised);
    if (raised != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(raised), raised);
        Py_DECREF(raised);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
fut_repr(pn_future *f)
{
    pn_state *st = fut_module_state(f);
    PyObject *name, *r, *what, *exc;
    uint32_t s = fut_state(f);
    const char *desc[] = {"pending", "running", "cancelled", "cancelled",
                          "finished"};
    if (st == NULL || (name = PyType_GetName(Py_TYPE(f))) == NULL) {
        return NULL;
    }
    if (s != PN_FUT_FINISHED) {
        r = PyUnicode_FromFormat("<%U at %p state=%s>", name, f, desc[s]);
        Py_DECREF(name);
        return r;
    }
    exc = stored_exception(f);
    what = PyType_GetName(Py_TYPE(exc ? exc : f->result ? f->result
                                                        : Py_None));
    if (what == NULL) {
        Py_DECREF(name);
        return NULL;
    }
    r = PyUnicode_FromFormat("<%U at %p state=finished %s %U>", name, f,
                             exc ? "raised" : "returned", what);
    Py_DECREF(what);
    Py_DECREF(name);
    return r;
}

/* Materialises the RLock and waiter list that cf.wait() reaches into. */
static int
materialise_condition(pn_future *f)
{
    pn_state *st;
    wait_published(f);
    if (f->condition != NULL) {
        return 0;
    }
    if ((st = fut_module_state(f)) == NULL) {
        return -1;
    }
    /* Both or neither: a completion that sees the lock uses the list. */
    PyObject *waiters = PyList_New(0);
    PyObject *cond = waiters ? PyObject_CallNoArgs(st->RLockType) : NULL;
    if (cond == NULL) {
        Py_XDECREF(waiters);
        return -1;
    }
    Py_XSETREF(f->waiters, waiters);
    f->condition = cond;
    return 0;
}

static PyObject *
fut_get_condition(pn_future *f, void *Py_UNUSED(closure))
{
    if (materialise_condition(f) < 0) {
        return NULL;
    }
    return Py_NewRef(f->condition);
}

static PyObject *
fut_get_waiters(pn_future *f, void *Py_UNUSED(closure))
{
    if (materialise_condition(f) < 0) {
        return NULL;
    }
    return Py_NewRef(f->waiters);
}

static PyObject *
fut_get_state(pn_future *f, void *Py_UNUSED(closure))
{
    pn_state *st = fut_module_state(f);
    return st ? Py_NewRef(st->state_names[fut_state(f)]) : NULL;
}

static PyObject *
fut_get_result(pn_future *f, void *Py_UNUSED(closure))
{
    return Py_NewRef(f->result ? f->result : Py_None);
}

static PyObject *
fut_get_exception(pn_future *f, void *Py_UNUSED(closure))
{
    return Py_NewRef(f->exception ? f->exception : Py_None);
}

static PyObject *
fut_get_done_callbacks(pn_future *f, void *Py_UNUSED(closure))
{
    if (f->callbacks == NULL) {
        return PyList_New(0);
    }
    if (f->callbacks_is_list) {
        return PyList_GetSlice(f->callbacks, 0, PY_SSIZE_T_MAX);
    }
    PyObject *list = PyList_New(1);
    if (list != NULL) {
        PyList_SET_ITEM(list, 0, Py_NewRef(f->callbacks));
    }
    return list;
}

static int
fut_init(PyObject *self, PyObject *args, PyObject *kwds)
{
    if (PyTuple_GET_SIZE(args) != 0 || (kwds && PyDict_GET_SIZE(kwds))) {
        PyErr_SetString(PyExc_TypeError, "Future() takes no arguments");
        return -1;
    }
    (void)self;
    return 0;
}

static int
fut_traverse(pn_future *f, visitproc visit, void *arg)
{
    Py_VISIT((PyObject *)Py_TYPE(f));
    Py_VISIT(f->result);
    Py_VISIT(f->exception);
    Py_VISIT(f->callbacks);
    Py_VISIT(f->condition);
    Py_VISIT(f->waiters);
    Py_VISIT(f->driver);
    Py_VISIT(f->fn);
    Py_VISIT(f->args);
    Py_VISIT(f->kwargs);
    return 0;
}

static int
fut_clear(pn_future *f)
{
    Py_CLEAR(f->result);
    Py_CLEAR(f->exception);
    Py_CLEAR(f->callbacks);
    f->callbacks_is_list = 0;
    Py_CLEAR(f->condition);
    Py_CLEAR(f->waiters);
    Py_CLEAR(f->driver);
    f->drive = NULL;
    pn_future_clear_work(f);
    return 0;
}

static void
fut_dealloc(pn_future *f)
{
    PyTypeObject *tp = Py_TYPE(f);
    PyObject_GC_UnTrack(f);
    fut_clear(f);
    tp->tp_free((PyObject *)f);
    Py_DECREF(tp);
}

PyDoc_STRVAR(result_doc,
"result(timeout=None)\n--\n\n"
"Return the result of the call, waiting up to timeout seconds (None: no\n"
"limit) without holding the GIL.  Raises CancelledError if cancelled,\n"
"TimeoutError on timeout, or the call's own exception.");
PyDoc_STRVAR(exception_doc,
"exception(timeout=None)\n--\n\n"
"Return the exception raised by the call (None if it succeeded), waiting\n"
"like result().");

static PyMethodDef fut_methods[] = {
    {"result", (PyCFunction)(void (*)(void))fut_result,
     METH_FASTCALL | METH_KEYWORDS, result_doc},
    {"exception", (PyCFunction)(void (*)(void))fut_exception,
     METH_FASTCALL | METH_KEYWORDS, exception_doc},
    {"cancel", (PyCFunction)fut_cancel, METH_NOARGS,
     "Cancel the call if it has not started; True if cancelled."},
    {"cancelled", (PyCFunction)fut_cancelled, METH_NOARGS,
     "True if the call was cancelled."},
    {"running", (PyCFunction)fut_running, METH_NOARGS,
     "True if the call is running."},
    {"done", (PyCFunction)fut_done, METH_NOARGS,
     "True if the call finished or was cancelled."},
    {"add_done_callback", (PyCFunction)fut_add_done_callback, METH_O,
     "Call fn(future) when the future is done (at once if it is)."},
    {"set_running_or_notify_cancel",
     (PyCFunction)fut_set_running_or_notify_cancel, METH_NOARGS,
     "Mark the future running, or notify waiters that it was cancelled;\n"
     "False if it was cancelled.  For executors."},
    {"set_result", (PyCFunction)fut_set_result, METH_O,
     "Complete the future with a result.  For executors."},
    {"set_exception", (PyCFunction)fut_set_exception, METH_O,
     "Complete the future with an exception.  For executors."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef fut_getset[] = {
    {"_condition", (getter)fut_get_condition, NULL,
     "Lock that concurrent.futures.wait() holds (created on first use).",
     NULL},
    {"_waiters", (getter)fut_get_waiters, NULL,
     "Waiters installed by concurrent.futures.wait().", NULL},
    {"_state", (getter)fut_get_state, NULL,
     "The state as concurrent.futures names it.", NULL},
    {"_result", (getter)fut_get_result, NULL, NULL, NULL},
    {"_exception", (getter)fut_get_exception, NULL, NULL, NULL},
    {"_done_callbacks", (getter)fut_get_done_callbacks, NULL,
     "A copy of the pending done-callbacks.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot fut_slots[] = {
    {Py_tp_doc, "C core of piston.Future."},
    {Py_tp_init, fut_init},
    {Py_tp_repr, fut_repr},
    {Py_tp_traverse, fut_traverse},
    {Py_tp_clear, fut_clear},
    {Py_tp_dealloc, fut_dealloc},
    {Py_tp_methods, fut_methods},
    {Py_tp_getset, fut_getset},
    {0, NULL},
};

static PyType_Spec fut_spec = {
    .name = "piston._piston.FutureCore",
    .basicsize = sizeof(pn_future),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC
             | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = fut_slots,
};

PyDoc_STRVAR(future_doc,
"The result of an asynchronous call: a concurrent.futures.Future written\n"
"in C and shared by every piston engine.\n\n"
"isinstance(f, concurrent.futures.Future) holds, and wait(), as_completed(),\n"
"asyncio.wrap_future() and loop.run_in_executor() accept it.  result() and\n"
"exception() wait without the GIL and can be interrupted by Ctrl-C.");

int
pn_future_exec(PyObject *m, pn_state *st)
{
    static const char *names[] = {"PENDING", "RUNNING", "CANCELLED",
                                  "CANCELLED_AND_NOTIFIED", "FINISHED"};
    PyObject *cf = NULL, *cf_future = NULL, *ns = NULL, *thread = NULL;
    int rc = -1;

    for (int i = 0; i < 5; i++) {
        if ((st->state_names[i] = PyUnicode_InternFromString(names[i]))
            == NULL) {
            return -1;
        }
    }
    if ((thread = PyImport_ImportModule("_thread")) == NULL
        || (st->RLockType = PyObject_GetAttrString(thread, "RLock"))
               == NULL) {
        goto done;
    }
    st->FutureCoreType =
        (PyTypeObject *)PyType_FromModuleAndSpec(m, &fut_spec, NULL);
    if (st->FutureCoreType == NULL) {
        goto done;
    }
    if ((cf = PyImport_ImportModule("concurrent.futures")) == NULL
        || (cf_future = PyObject_GetAttrString(cf, "Future")) == NULL) {
        goto done;
    }
    /* piston.Future = class Future(FutureCore, concurrent.futures.Future):
     * the C methods come first in the MRO, isinstance() checks hold, and
     * instances keep a __dict__ and weakrefs like the stdlib's. */
    ns = Py_BuildValue("{ssssss}", "__module__", "piston", "__qualname__",
                       "Future", "__doc__", future_doc);
    if (ns == NULL) {
        goto done;
    }
    st->FutureType = (PyTypeObject *)PyObject_CallFunction(
        (PyObject *)&PyType_Type, "s(OO)O", "Future",
        (PyObject *)st->FutureCoreType, cf_future, ns);
    if (st->FutureType == NULL
        || PyModule_AddObjectRef(m, "Future", (PyObject *)st->FutureType) < 0
        || PyModule_AddObjectRef(m, "FutureCore",
                                 (PyObject *)st->FutureCoreType) < 0) {
        goto done;
    }
    rc = 0;
done:
    Py_XDECREF(thread);
    Py_XDECREF(ns);
    Py_XDECREF(cf_future);
    Py_XDECREF(cf);
    return rc;
}
