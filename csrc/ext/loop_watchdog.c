/* The loop watchdog: a C thread that notices a callback running longer than
 * a threshold and reports it (with the loop thread's Python stack) while the
 * callback is still blocking the loop. */
#include "ext/loop.h"
#include "core/pn_futex.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

/* Lock order: the GIL is never requested while `mu` is held. */
typedef struct pn_watchdog {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;      /* CLOCK_MONOTONIC: wakes the thread to stop */
    int stop;               /* under mu; also read with the GIL held */
    int64_t threshold_ns;
    pn_loop *loop;          /* borrowed: the loop joins us before dying */
    PyObject *report;       /* report(loop, handle, elapsed_seconds) */
} pn_watchdog;

static int
is_finalizing(void)
{
#if PY_VERSION_HEX >= 0x030D0000
    return Py_IsFinalizing();
#else
    return _Py_IsFinalizing();
#endif
}

/* With the GIL: report the stalled callback unless we are stopping or the
 * callback ended meanwhile. */
static void
report(pn_watchdog *w, uint64_t seq)
{
    pn_loop *loop = w->loop;
    int64_t start;
    PyObject *r;

    if (w->stop
        || atomic_load_explicit(&loop->cb_seq, memory_order_relaxed) != seq) {
        return;
    }
    start = atomic_load_explicit(&loop->cb_start_ns, memory_order_relaxed);
    if (start == 0) {
        return;
    }
    r = PyObject_CallFunction(
        w->report, "OOd", (PyObject *)loop,
        loop->current ? (PyObject *)loop->current : Py_None,
        (pn_monotonic_ns() - start) / 1e9);
    if (r == NULL) {
        PyErr_WriteUnraisable(w->report);
    }
    Py_XDECREF(r);
}

static void *
watchdog_main(void *arg)
{
    pn_watchdog *w = arg;
    pn_loop *loop = w->loop;
    uint64_t reported = UINT64_MAX;
    /* Check four times per threshold: a stall is seen within 1.25x. */
    int64_t period = w->threshold_ns / 4 > 1000000 ? w->threshold_ns / 4
                                                    : 1000000;

    pthread_mutex_lock(&w->mu);
    while (!w->stop) {
        struct timespec ts;
        int64_t now, start, deadline = pn_monotonic_ns() + period;
        uint64_t seq;

        ts.tv_sec = (time_t)(deadline / 1000000000);
        ts.tv_nsec = (long)(deadline % 1000000000);
        while (!w->stop
               && pthread_cond_timedwait(&w->cv, &w->mu, &ts) != ETIMEDOUT) {
        }
        if (w->stop) {
            break;
        }
        /* acquire: pairs with the release store of cb_start_ns. */
        start = atomic_load_explicit(&loop->cb_start_ns,
                                     memory_order_acquire);
        seq = atomic_load_explicit(&loop->cb_seq, memory_order_relaxed);
        now = pn_monotonic_ns();
        if (start == 0 || seq == reported
            || now - start < w->threshold_ns) {
            continue;
        }
        reported = seq;
        pthread_mutex_unlock(&w->mu);
        if (!is_finalizing()) {
            PyGILState_STATE g = PyGILState_Ensure();
            report(w, seq);
            PyGILState_Release(g);
        }
        pthread_mutex_lock(&w->mu);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

void
pn__loop_watchdog_stop(pn_loop *loop)
{
    pn_watchdog *w = loop->watchdog;
    if (w == NULL) {
        return;
    }
    loop->watchdog = NULL;
    pthread_mutex_lock(&w->mu);
    w->stop = 1;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    /* The thread may be waiting for the GIL to report: let it in (it sees
     * `stop` and returns). */
    Py_BEGIN_ALLOW_THREADS
    pthread_join(w->thread, NULL);
    Py_END_ALLOW_THREADS
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    Py_DECREF(w->report);
    free(w);
}

/* _pn_watchdog_start(threshold_seconds, report) */
static PyObject *
watchdog_start(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    pn_loop *loop = (pn_loop *)self;
    pthread_condattr_t ca;
    pn_watchdog *w;
    double threshold;
    int err;

    if (nargs != 2 || !PyCallable_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError,
                        "_pn_watchdog_start(threshold, report)");
        return NULL;
    }
    threshold = PyFloat_AsDouble(args[0]);
    if (threshold == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    if (!(threshold > 0)) {
        PyErr_SetString(PyExc_ValueError,
                        "watchdog threshold must be > 0 seconds");
        return NULL;
    }
    if (loop->closed) {
        PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
        return NULL;
    }
    pn__loop_watchdog_stop(loop);
    w = calloc(1, sizeof(*w));
    if (w == NULL) {
        return PyErr_NoMemory();
    }
    w->threshold_ns = (int64_t)(threshold * 1e9);
    w->loop = loop;
    w->report = Py_NewRef(args[1]);
    pthread_mutex_init(&w->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cv, &ca);
    pthread_condattr_destroy(&ca);
    err = pthread_create(&w->thread, NULL, watchdog_main, w);
    if (err != 0) {
        pthread_cond_destroy(&w->cv);
        pthread_mutex_destroy(&w->mu);
        Py_DECREF(w->report);
        free(w);
        return pn_raise_errno(err);
    }
#ifdef __GLIBC__
    pthread_setname_np(w->thread, "piston-watchdog");
#endif
    loop->watchdog = w;
    Py_RETURN_NONE;
}

static PyObject *
watchdog_stop(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    pn__loop_watchdog_stop((pn_loop *)self);
    Py_RETURN_NONE;
}

PyMethodDef pn__loop_watchdog_methods[] = {
    {"_pn_watchdog_start", (PyCFunction)(void (*)(void))watchdog_start,
     METH_FASTCALL, NULL},
    {"_pn_watchdog_stop", (PyCFunction)watchdog_stop, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};
