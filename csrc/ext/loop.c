/* piston.Loop's C core (LoopCore): ready queue, timers, fd interest and the
 * epoll wait, with the GIL released around exactly the wait. */
#include "ext/loop.h"
#include "core/pn_fork.h"
#include "core/pn_futex.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Longest single wait: a loop recomputes its timeout at least this often
 * even with a far-away timer (as asyncio's MAXIMUM_SELECT_TIMEOUT). */
#define MAX_WAIT_NS (24LL * 3600 * 1000000000LL)

static inline pn_handle *
timer_owner(pn_timer *t)
{
    return (pn_handle *)((char *)t - offsetof(pn_handle, timer));
}

/* A pn_monotonic_ns() reading in seconds, computed as time.monotonic()
 * computes it so the values compare equal. */
static inline double
ns_to_time(int64_t ns)
{
    if (ns % 1000000000 == 0) {
        return (double)(ns / 1000000000);
    }
    return (double)ns / 1e9;
}

/* time.monotonic(). */
static inline double
loop_now(void)
{
    return ns_to_time(pn_monotonic_ns());
}

/* Misuse checks, with asyncio's messages. */

static int
check_closed(pn_loop *self)
{
    if (self->closed) {
        PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
        return -1;
    }
    return 0;
}

static int
check_thread(pn_loop *self)
{
    if (self->thread_id != 0
        && self->thread_id != PyThread_get_thread_ident()) {
        PyErr_SetString(PyExc_RuntimeError,
                        "Non-thread-safe operation invoked on an event loop "
                        "other than the current one");
        return -1;
    }
    return 0;
}

static int
check_fork(pn_loop *self)
{
    if (self->fork_gen != pn_fork_generation()) {
        PyErr_SetString(PyExc_RuntimeError,
                        "this event loop was created in the parent process "
                        "and cannot run after fork(); create a new loop in "
                        "the child");
        return -1;
    }
    return 0;
}

static int
is_coroutine_function(PyObject *cb)
{
    if (PyMethod_Check(cb)) {
        cb = PyMethod_GET_FUNCTION(cb);
    }
    if (PyFunction_Check(cb)) {
        PyCodeObject *code = (PyCodeObject *)PyFunction_GET_CODE(cb);
        return (code->co_flags & (CO_COROUTINE | CO_ITERABLE_COROUTINE))
               != 0;
    }
    return 0;
}

/* asyncio's _check_callback: no coroutines, only callables. */
static int
check_callback(PyObject *cb, const char *method)
{
    if (PyCoro_CheckExact(cb) || is_coroutine_function(cb)
        || (!PyCallable_Check(cb) && Py_TYPE(cb)->tp_as_async != NULL
            && Py_TYPE(cb)->tp_as_async->am_await != NULL)) {
        PyErr_Format(PyExc_TypeError, "coroutines cannot be used with %s()",
                     method);
        return -1;
    }
    if (!PyCallable_Check(cb)) {
        PyErr_Format(PyExc_TypeError,
                     "a callable object was expected by %s(), got %R",
                     method, cb);
        return -1;
    }
    return 0;
}

/* Parses (lead..., callback, *args, context=None) in a vectorcall.
 * `lead` positional arguments come before the callback. */
static int
parse_callback_args(pn_state *st, const char *method, PyObject *const *args,
                    Py_ssize_t nargs, PyObject *kwnames, Py_ssize_t lead,
                    PyObject **context)
{
    *context = NULL;
    if (kwnames != NULL) {
        Py_ssize_t nkw = PyTuple_GET_SIZE(kwnames);
        for (Py_ssize_t i = 0; i < nkw; i++) {
            PyObject *k = PyTuple_GET_ITEM(kwnames, i);
            /* Keyword names are interned by the compiler and by asyncio's
             * C Task: identity settles it (CPython's C Task passes
             * context= on every step). */
            if (k != st->str_context
                && (!PyUnicode_Check(k)
                    || PyUnicode_CompareWithASCIIString(k, "context") != 0)) {
                PyErr_Format(PyExc_TypeError,
                             "%s() got an unexpected keyword argument '%S'",
                             method, k);
                return -1;
            }
            *context = args[nargs + i];
        }
    }
    if (nargs < lead + 1) {
        PyErr_Format(PyExc_TypeError,
                     "%s() missing required positional argument", method);
        return -1;
    }
    return 0;
}

/* Debug mode: remember where the handle was created, as asyncio does. */
static int
record_source(pn_loop *self, pn_handle *h)
{
    if (!self->debug || self->st->extract_stack == NULL) {
        return 0;
    }
    h->source_traceback = PyObject_CallNoArgs(self->st->extract_stack);
    return h->source_traceback == NULL ? -1 : 0;
}

/* A queue-owned handle for args[0](*args[1:]) in `context`, or when that
 * is absent or None in the context current now: then it shares the
 * loop's snapshot (handle.c). */
static pn_handle *
new_queued_handle(pn_loop *self, PyTypeObject *tp, PyObject *const *args,
                  Py_ssize_t nargs, PyObject *context)
{
    int shared = context == NULL || context == Py_None;
    pn_handle *h;

    if (shared) {
        context = pn_loop_context_snapshot(self);
        if (context == NULL) {
            return NULL;
        }
    }
    h = pn_handle_new(self->st, tp, (PyObject *)self, args[0], args + 1,
                      nargs - 1, context, 0);
    if (h != NULL) {
        h->ctx_shared = (char)shared;
    }
    if (shared) {
        Py_DECREF(context);
    }
    return h;
}

static void
drop_context_snapshot(pn_loop *self)
{
    /* The key first: a later mapping may reuse the address. */
    self->ctx_snapshot_vars = NULL;
    Py_CLEAR(self->ctx_snapshot);
}

static int
push_ready(pn_loop *self, pn_handle *h)
{
    /* Takes over the caller's reference. */
    if (pn_readyq_push(&self->ready, h) < 0) {
        pn_handle_release(h);
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static PyObject *
schedule_soon(pn_loop *self, const char *method, PyObject *const *args,
              size_t nargsf, PyObject *kwnames, int threadsafe)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *context;
    pn_handle *h;

    if (parse_callback_args(self->st, method, args, nargs, kwnames, 0,
                            &context) < 0
        || check_closed(self) < 0 || check_callback(args[0], method) < 0) {
        return NULL;
    }
    if (self->debug && !threadsafe && check_thread(self) < 0) {
        return NULL;
    }
    h = new_queued_handle(self, self->st->HandleType, args, nargs, context);
    if (h == NULL) {
        return NULL;
    }
    if (record_source(self, h) < 0) {
        pn_handle_release(h);
        return NULL;
    }
    Py_INCREF(h);
    if (push_ready(self, h) < 0) {
        Py_DECREF(h);
        return NULL;
    }
    if (threadsafe) {
        int err = pn_wake_signal(&self->wake);
        if (err < 0) {
            Py_DECREF(h);
            return pn_raise_errno(-err);
        }
    }
    return (PyObject *)h;
}

static PyObject *
loop_call_soon(pn_loop *self, PyObject *const *args, size_t nargsf,
               PyObject *kwnames)
{
    return schedule_soon(self, "call_soon", args, nargsf, kwnames, 0);
}

static PyObject *
loop_call_soon_threadsafe(pn_loop *self, PyObject *const *args,
                          size_t nargsf, PyObject *kwnames)
{
    return schedule_soon(self, "call_soon_threadsafe", args, nargsf,
                         kwnames, 1);
}

static PyObject *
schedule_at(pn_loop *self, const char *method, double when,
            PyObject *const *args, Py_ssize_t nargs, PyObject *context)
{
    pn_handle *h;

    if (check_closed(self) < 0 || check_callback(args[0], method) < 0) {
        return NULL;
    }
    if (self->debug && check_thread(self) < 0) {
        return NULL;
    }
    h = new_queued_handle(self, self->st->TimerHandleType, args, nargs,
                          context);
    if (h == NULL) {
        return NULL;
    }
    if (record_source(self, h) < 0) {
        pn_handle_release(h);
        return NULL;
    }
    h->timer.when = when;
    /* The heap holds its own reference until the timer fires or is
     * cancelled. */
    if (pn_timerheap_push(&self->timers, &h->timer) < 0) {
        pn_handle_release(h);
        return PyErr_NoMemory();
    }
    Py_INCREF(h);
    return (PyObject *)h;
}

static int
parse_time(PyObject *o, const char *none_msg, double *out)
{
    if (o == Py_None) {
        PyErr_SetString(PyExc_TypeError, none_msg);
        return -1;
    }
    *out = PyFloat_AsDouble(o);
    if (*out == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    return 0;
}

static PyObject *
loop_call_later(pn_loop *self, PyObject *const *args, size_t nargsf,
                PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *context;
    double delay;

    if (parse_callback_args(self->st, "call_later", args, nargs, kwnames, 1,
                            &context) < 0
        || parse_time(args[0], "delay must not be None", &delay) < 0) {
        return NULL;
    }
    return schedule_at(self, "call_later", loop_now() + delay, args + 1,
                       nargs - 1, context);
}

static PyObject *
loop_call_at(pn_loop *self, PyObject *const *args, size_t nargsf,
             PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *context;
    double when;

    if (parse_callback_args(self->st, "call_at", args, nargs, kwnames, 1,
                            &context)
            < 0
        || parse_time(args[0], "when cannot be None", &when) < 0) {
        return NULL;
    }
    return schedule_at(self, "call_at", when, args + 1, nargs - 1, context);
}

void
pn__loop_timer_cancelled(pn_loop *self, pn_handle *h)
{
    if (pn_timer_queued(&h->timer)) {
        pn_timerheap_remove(&self->timers, &h->timer);
        pn_handle_release(h);
    }
}

static PyObject *
loop_time(pn_loop *Py_UNUSED(self), PyObject *Py_UNUSED(ignored))
{
    return PyFloat_FromDouble(loop_now());
}

static PyObject *
loop_create_future(pn_loop *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *arg = (PyObject *)self;
    return PyObject_Vectorcall(self->st->aio_Future, &arg, 0,
                               self->st->kwnames_loop);
}

/* create_task(coro, *, name=None, context=None, **kwargs): asyncio.Task
 * called straight from C; a task factory, extra keywords or debug mode go
 * through the Python method _pn_create_task. */
static PyObject *
loop_create_task(pn_loop *self, PyObject *const *args, size_t nargsf,
                 PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *name = NULL, *context = NULL, *stack[4];
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0, n = 1;
    int slow = self->task_factory != NULL || self->debug;
    PyObject *task;

    if (nargs != 1) {
        PyErr_Format(PyExc_TypeError,
                     "create_task() takes exactly one positional argument "
                     "(%zd given)", nargs);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nkw && !slow; i++) {
        PyObject *k = PyTuple_GET_ITEM(kwnames, i);
        if (PyUnicode_CompareWithASCIIString(k, "name") == 0) {
            name = args[nargs + i];
        }
        else if (PyUnicode_CompareWithASCIIString(k, "context") == 0) {
            context = args[nargs + i];
        }
        else {
            slow = 1;
        }
    }
    if (slow) {
        PyObject *meth = PyObject_GetAttr((PyObject *)self,
                                          self->st->str__pn_create_task);
        if (meth == NULL) {
            return NULL;
        }
        task = PyObject_Vectorcall(meth, args, nargsf, kwnames);
        Py_DECREF(meth);
        return task;
    }
    if (check_closed(self) < 0) {
        return NULL;
    }
    if (name == Py_None) {
        name = NULL;
    }
    if (context == Py_None) {
        context = NULL;
    }
    stack[0] = args[0];
    stack[n++] = (PyObject *)self;
    if (name != NULL) {
        stack[n++] = name;
    }
    if (context != NULL) {
        stack[n++] = context;
    }
    return PyObject_Vectorcall(
        self->st->aio_Task, stack, 1,
        self->st->kwnames_task[(name != NULL) | ((context != NULL) << 1)]);
}

static PyObject *
loop_get_task_factory(pn_loop *self, void *Py_UNUSED(c))
{
    return Py_NewRef(self->task_factory ? self->task_factory : Py_None);
}

static int
loop_set_task_factory(pn_loop *self, PyObject *v, void *Py_UNUSED(c))
{
    Py_XSETREF(self->task_factory,
               v == NULL || v == Py_None ? NULL : Py_NewRef(v));
    return 0;
}

/* Fd interest. */

/* asyncio's _fileobj_to_fd: an int, or an object with fileno(). */
static int
fileobj_to_fd(pn_loop *self, PyObject *obj)
{
    long fd;
    if (PyLong_Check(obj)) {
        fd = PyLong_AsLong(obj);
    }
    else {
        PyObject *r = PyObject_CallMethodNoArgs(obj, self->st->str_fileno);
        if (r == NULL) {
            if (PyErr_ExceptionMatches(PyExc_AttributeError)
                || PyErr_ExceptionMatches(PyExc_TypeError)
                || PyErr_ExceptionMatches(PyExc_ValueError)) {
                PyErr_Clear();
                PyErr_Format(PyExc_ValueError, "Invalid file object: %R",
                             obj);
            }
            return -1;
        }
        fd = PyLong_Check(r) ? PyLong_AsLong(r) : -1;
        Py_DECREF(r);
    }
    if (fd == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (fd < 0 || fd > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "Invalid file descriptor: %ld", fd);
        return -1;
    }
    return (int)fd;
}

static pn_fdslot *
fd_slot(pn_loop *self, int fd, int create)
{
    if ((size_t)fd >= self->nfds) {
        size_t n = self->nfds ? self->nfds : 64;
        pn_fdslot *fds;
        if (!create) {
            return NULL;
        }
        while (n <= (size_t)fd) {
            n *= 2;
        }
        fds = realloc(self->fds, n * sizeof(*fds));
        if (fds == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        memset(fds + self->nfds, 0, (n - self->nfds) * sizeof(*fds));
        self->fds = fds;
        self->nfds = n;
    }
    return &self->fds[fd];
}

/* Registers callback(*args) for fd's readiness in one direction,
 * replacing (and cancelling) any previous one.  New reference to the
 * handle, or NULL with an exception. */
static pn_handle *
add_fd_core(pn_loop *self, int fd, int writer, PyObject *callback,
            PyObject *const *args, Py_ssize_t nargs)
{
    unsigned bit = writer ? PN_POLL_WRITABLE : PN_POLL_READABLE;
    pn_fdslot *slot = fd_slot(self, fd, 1);
    pn_handle *h, **place;
    int err;

    if (slot == NULL) {
        return NULL;
    }
    h = pn_handle_new(self->st, self->st->HandleType, (PyObject *)self,
                      callback, args, nargs, NULL, 1);
    if (h == NULL) {
        return NULL;
    }
    err = pn_poll_ctl(self->poll, fd, slot->mask, slot->mask | bit);
    if (err < 0) {
        Py_DECREF(h);
        return (pn_handle *)pn_raise_errno(-err);
    }
    slot->mask |= bit;
    place = writer ? &slot->writer : &slot->reader;
    if (*place != NULL) {
        pn_handle *old = *place;
        *place = NULL;
        pn_handle_cancel_core(old);
        Py_DECREF(old);
    }
    *place = h;
    return (pn_handle *)Py_NewRef(h);
}

static PyObject *
add_fd_callback(pn_loop *self, PyObject *const *args, Py_ssize_t nargs,
                int writer, int return_handle)
{
    const char *method = writer ? "add_writer" : "add_reader";
    pn_handle *h;
    int fd;

    if (nargs < 2) {
        PyErr_Format(PyExc_TypeError, "%s() takes at least 2 arguments",
                     method);
        return NULL;
    }
    if (check_closed(self) < 0 || check_fork(self) < 0) {
        return NULL;
    }
    fd = fileobj_to_fd(self, args[0]);
    if (fd < 0 || check_callback(args[1], method) < 0) {
        return NULL;
    }
    h = add_fd_core(self, fd, writer, args[1], args + 2, nargs - 2);
    if (h == NULL) {
        return NULL;
    }
    if (return_handle) {
        return (PyObject *)h;
    }
    Py_DECREF(h);
    Py_RETURN_NONE;
}

static int
remove_fd_callback(pn_loop *self, int fd, int writer)
{
    unsigned bit = writer ? PN_POLL_WRITABLE : PN_POLL_READABLE;
    pn_fdslot *slot = fd_slot(self, fd, 0);
    pn_handle *h;
    int err;

    if (slot == NULL) {
        return 0;
    }
    h = writer ? slot->writer : slot->reader;
    if (slot->mask & bit) {
        err = pn_poll_ctl(self->poll, fd, slot->mask, slot->mask & ~bit);
        if (err < 0) {
            pn_raise_errno(-err);
            return -1;
        }
        slot->mask &= ~bit;
    }
    if (h == NULL) {
        return 0;
    }
    if (writer) {
        slot->writer = NULL;
    }
    else {
        slot->reader = NULL;
    }
    pn_handle_cancel_core(h);
    Py_DECREF(h);
    return 1;
}

int
pn__loop_add_fd(pn_loop *self, int fd, int writer, PyObject *callback)
{
    pn_handle *h;
    if (check_closed(self) < 0 || check_fork(self) < 0) {
        return -1;
    }
    h = add_fd_core(self, fd, writer, callback, NULL, 0);
    if (h == NULL) {
        return -1;
    }
    Py_DECREF(h);
    return 0;
}

int
pn__loop_remove_fd(pn_loop *self, int fd, int writer)
{
    return self->closed ? 0 : remove_fd_callback(self, fd, writer);
}

static PyObject *
remove_fd_method(pn_loop *self, PyObject *fileobj, int writer)
{
    int fd, r;
    if (self->closed) {
        Py_RETURN_FALSE;
    }
    fd = fileobj_to_fd(self, fileobj);
    if (fd < 0) {
        return NULL;
    }
    r = remove_fd_callback(self, fd, writer);
    if (r < 0) {
        return NULL;
    }
    return PyBool_FromLong(r);
}

static PyObject *
loop_add_reader(pn_loop *self, PyObject *const *args, Py_ssize_t nargs)
{
    return add_fd_callback(self, args, nargs, 0, 0);
}

static PyObject *
loop_add_writer(pn_loop *self, PyObject *const *args, Py_ssize_t nargs)
{
    return add_fd_callback(self, args, nargs, 1, 0);
}

static PyObject *
loop_add_reader_h(pn_loop *self, PyObject *const *args, Py_ssize_t nargs)
{
    return add_fd_callback(self, args, nargs, 0, 1);
}

static PyObject *
loop_add_writer_h(pn_loop *self, PyObject *const *args, Py_ssize_t nargs)
{
    return add_fd_callback(self, args, nargs, 1, 1);
}

static PyObject *
loop_remove_reader(pn_loop *self, PyObject *fileobj)
{
    return remove_fd_method(self, fileobj, 0);
}

static PyObject *
loop_remove_writer(pn_loop *self, PyObject *fileobj)
{
    return remove_fd_method(self, fileobj, 1);
}

/* (reader_handle, writer_handle) registered for fd, Nones when not. */
static PyObject *
loop_fd_handles(pn_loop *self, PyObject *fileobj)
{
    int fd = fileobj_to_fd(self, fileobj);
    pn_fdslot *slot;
    if (fd < 0) {
        return NULL;
    }
    slot = fd_slot(self, fd, 0);
    return Py_BuildValue(
        "(OO)",
        slot && slot->reader ? (PyObject *)slot->reader : Py_None,
        slot && slot->writer ? (PyObject *)slot->writer : Py_None);
}

/* An unscheduled Handle for callback(*args), for signal handlers. */
static PyObject *
loop_pn_new_handle(pn_loop *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError, "callback required");
        return NULL;
    }
    return (PyObject *)pn_handle_new(self->st, self->st->HandleType,
                                     (PyObject *)self, args[0], args + 1,
                                     nargs - 1, NULL, 1);
}

/* Queues an existing handle again (a signal handler each time the signal
 * arrives); from the loop's thread. */
static PyObject *
loop_pn_push_ready(pn_loop *self, PyObject *h)
{
    if (!PyObject_TypeCheck(h, self->st->HandleType)) {
        PyErr_SetString(PyExc_TypeError, "a piston Handle is required");
        return NULL;
    }
    if (check_closed(self) < 0) {
        return NULL;
    }
    Py_INCREF(h);
    if (push_ready(self, (pn_handle *)h) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* One iteration: wait, dispatch fd events, move due timers, run ready. */

static void
dispatch_events(pn_loop *self, int n)
{
    for (int i = 0; i < n; i++) {
        int fd = self->events[i].fd;
        unsigned ev = self->events[i].events;
        pn_fdslot *slot;

        if (fd == self->wake.fd) {
            pn_wake_drain(&self->wake);
            continue;
        }
        slot = fd_slot(self, fd, 0);
        if (slot == NULL || slot->mask == 0) {
            /* A registration we no longer track (fd reused behind our
             * back): drop it rather than spin on it. */
            (void)pn_poll_ctl(self->poll, fd, PN_POLL_READABLE, 0);
            continue;
        }
        self->n_io_events++;
        if ((ev & (PN_POLL_READABLE | PN_POLL_ERROR)) && slot->reader) {
            if (slot->reader->cancelled) {
                (void)remove_fd_callback(self, fd, 0);
                PyErr_Clear();
            }
            else {
                Py_INCREF(slot->reader);
                if (push_ready(self, slot->reader) < 0) {
                    PyErr_Clear();
                }
            }
        }
        slot = fd_slot(self, fd, 0);
        if ((ev & (PN_POLL_WRITABLE | PN_POLL_ERROR)) && slot->writer) {
            if (slot->writer->cancelled) {
                (void)remove_fd_callback(self, fd, 1);
                PyErr_Clear();
            }
            else {
                Py_INCREF(slot->writer);
                if (push_ready(self, slot->writer) < 0) {
                    PyErr_Clear();
                }
            }
        }
    }
}

/* Waits for I/O with the GIL released and counts the time blocked;
 * returns pn_poll_wait's result.  A non-blocking look (ready work) reads
 * no clock: four readings per iteration were a tenth of an await
 * sleep(0) (bench loop, "await sleep(0)"). */
static int
poll_events(pn_loop *self, int64_t timeout_ns)
{
    int64_t t0, t1;
    int n;

    self->n_iterations++;
    if (timeout_ns == 0) {
        /* Still released: a thread waiting for the GIL gets it here even
         * when the callbacks run no bytecode, as with asyncio. */
        Py_BEGIN_ALLOW_THREADS
        n = pn_poll_wait(self->poll, self->events, PN_LOOP_MAX_EVENTS, 0);
        Py_END_ALLOW_THREADS
        return n;
    }
    t0 = pn_monotonic_ns();
    Py_BEGIN_ALLOW_THREADS
    n = pn_poll_wait(self->poll, self->events, PN_LOOP_MAX_EVENTS,
                     timeout_ns);
    Py_END_ALLOW_THREADS
    t1 = pn_monotonic_ns();
    self->ns_polling += t1 - t0;
    if (self->run_mark_ns != 0) {
        self->ns_running += t0 - self->run_mark_ns;
        self->run_mark_ns = t1;
    }
    self->now_ns = t1;
    return n;
}

/* A due timer: the heap's reference moves to the ready queue (room was
 * reserved). */
static void
fire_timer(pn_timer *t, void *arg)
{
    pn_loop *self = arg;
    (void)pn_readyq_push(&self->ready, timer_owner(t));
}

static int
run_once(pn_loop *self)
{
    int64_t timeout_ns = -1;
    pn_timer *t;
    size_t ntodo;
    int n;

    /* Clock readings are taken only where needed: none at all in an
     * iteration with ready work and no timers. */
    self->now_ns = 0;
    if (pn_readyq_len(&self->ready) || self->stopping) {
        timeout_ns = 0;
    }
    else if ((t = pn_timerheap_peek(&self->timers)) != NULL) {
        double dt = t->when - loop_now();
        timeout_ns = dt <= 0 ? 0
                     : dt >= MAX_WAIT_NS / 1e9 ? MAX_WAIT_NS
                                               : (int64_t)ceil(dt * 1e9);
    }
    /* A signal that arrived while we ran C code would otherwise wait for
     * the next event before its Python handler ran. */
    if (timeout_ns != 0 && PyErr_CheckSignals() < 0) {
        return -1;
    }
    n = poll_events(self, timeout_ns);
    if (n < 0) {
        if (n != -EINTR) {
            pn_raise_errno(-n);
            return -1;
        }
        if (PyErr_CheckSignals() < 0) {
            return -1;
        }
        n = 0;
    }
    dispatch_events(self, n);
    if (pn__loop_run_completions(self) < 0) {
        return -1;
    }

    if ((t = pn_timerheap_peek(&self->timers)) != NULL) {
        double end = (self->now_ns ? ns_to_time(self->now_ns) : loop_now())
                     + self->clock_resolution;
        size_t due = pn_timerheap_count_due(&self->timers, end);
        if (due > 0) {
            /* Room first: then no timer can be lost half way. */
            if (pn_readyq_reserve(&self->ready, due) < 0) {
                PyErr_NoMemory();
                return -1;
            }
            pn_timerheap_take_due(&self->timers, end, due, fire_timer, self);
            self->n_timers_fired += due;
        }
    }

    /* Only what is ready now: callbacks scheduled by these run next
     * iteration, after the next poll. */
    ntodo = pn_readyq_len(&self->ready);
    for (size_t i = 0; i < ntodo; i++) {
        pn_handle *h = pn_readyq_pop(&self->ready);
        int rc;
        if (h == NULL) {
            break;  /* close() from a callback emptied the queue */
        }
        if (h->cancelled) {
            pn_handle_release(h);
            continue;
        }
        self->n_callbacks++;
        if (self->watchdog != NULL) {
            self->current = h;
            atomic_fetch_add_explicit(&self->cb_seq, 1,
                                      memory_order_relaxed);
            /* release: pairs with the watchdog's acquire load. */
            atomic_store_explicit(&self->cb_start_ns, pn_monotonic_ns(),
                                  memory_order_release);
        }
        if (self->debug) {
            double start = loop_now(), dt;
            rc = pn_handle_run(h);
            dt = loop_now() - start;
            if (rc == 0 && dt >= self->slow_callback_duration) {
                PyObject *d = PyFloat_FromDouble(dt);
                PyObject *r = d == NULL ? NULL : PyObject_CallMethodObjArgs(
                    (PyObject *)self, self->st->str__pn_slow_callback,
                    (PyObject *)h, d, NULL);
                Py_XDECREF(d);
                if (r == NULL) {
                    rc = -1;
                }
                Py_XDECREF(r);
            }
        }
        else {
            rc = pn_handle_run(h);
        }
        if (self->current != NULL) {
            atomic_store_explicit(&self->cb_start_ns, 0,
                                  memory_order_relaxed);
            self->current = NULL;
        }
        pn_handle_release(h);
        if (rc < 0) {
            return -1;
        }
    }
    return 0;
}

/* time_running counts from start_running to stop_running, less the time
 * blocked in polls (poll_events moves the mark).  A _run_once called from
 * a callback is inside the outer run already: it changes nothing. */
static inline int
start_running(pn_loop *self)
{
    if (self->run_mark_ns != 0) {
        return 0;
    }
    self->run_mark_ns = pn_monotonic_ns();
    return 1;
}

static inline void
stop_running(pn_loop *self, int started)
{
    if (started) {
        self->ns_running += pn_monotonic_ns() - self->run_mark_ns;
        self->run_mark_ns = 0;
    }
}

static PyObject *
loop_pn_run(pn_loop *self, PyObject *Py_UNUSED(ignored))
{
    int started = start_running(self), rc;
    do {
        rc = run_once(self);
    } while (rc == 0 && !self->stopping && !self->closed);
    stop_running(self, started);
    if (rc < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
loop_pn_run_once(pn_loop *self, PyObject *Py_UNUSED(ignored))
{
    int started = start_running(self), rc;
    rc = run_once(self);
    stop_running(self, started);
    if (rc < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* Marks the loop running in this thread; run_forever's checks done in
 * Python before (they need asyncio.events). */
static PyObject *
loop_pn_enter(pn_loop *self, PyObject *Py_UNUSED(ignored))
{
    if (check_closed(self) < 0 || check_fork(self) < 0) {
        return NULL;
    }
    if (self->running) {
        PyErr_SetString(PyExc_RuntimeError,
                        "This event loop is already running");
        return NULL;
    }
    self->running = 1;
    self->thread_id = PyThread_get_thread_ident();
    Py_RETURN_NONE;
}

static PyObject *
loop_pn_leave(pn_loop *self, PyObject *Py_UNUSED(ignored))
{
    self->running = 0;
    self->stopping = 0;
    self->thread_id = 0;
    Py_RETURN_NONE;
}

static PyObject *
loop_stop(pn_loop *self, PyObject *Py_UNUSED(ignored))
{
    self->stopping = 1;
    Py_RETURN_NONE;
}

static PyObject *
loop_is_running(pn_loop *self, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(self->running);
}

static PyObject *
loop_is_closed(pn_loop *self, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(self->closed);
}

static PyObject *
loop_get_debug(pn_loop *self, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(self->debug);
}

static PyObject *
loop_pn_set_debug(pn_loop *self, PyObject *flag)
{
    int v = PyObject_IsTrue(flag);
    if (v < 0) {
        return NULL;
    }
    self->debug = (char)v;
    Py_RETURN_NONE;
}

static PyObject *
loop_write_to_self(pn_loop *self, PyObject *Py_UNUSED(ignored))
{
    if (!self->closed) {
        int err = pn_wake_signal(&self->wake);
        if (err < 0) {
            return pn_raise_errno(-err);
        }
    }
    Py_RETURN_NONE;
}

/* Releases every queued handle and the kernel objects (close()). */
static void
release_all(pn_loop *self)
{
    pn_handle *h;
    pn_timer *t;

    pn__loop_drop_completions(self);
    while ((h = pn_readyq_pop(&self->ready)) != NULL) {
        pn_handle_release(h);
    }
    while ((t = pn_timerheap_pop(&self->timers)) != NULL) {
        pn_handle_release(timer_owner(t));
    }
    for (size_t fd = 0; fd < self->nfds; fd++) {
        pn_fdslot *slot = &self->fds[fd];
        pn_handle *r = slot->reader, *w = slot->writer;
        slot->reader = slot->writer = NULL;
        slot->mask = 0;
        Py_XDECREF(r);
        Py_XDECREF(w);
    }
}

static PyObject *
loop_pn_close(pn_loop *self, PyObject *Py_UNUSED(ignored))
{
    if (self->running) {
        PyErr_SetString(PyExc_RuntimeError,
                        "Cannot close a running event loop");
        return NULL;
    }
    if (self->closed) {
        Py_RETURN_NONE;
    }
    pn__loop_watchdog_stop(self);
    self->closed = 1;
    release_all(self);
    drop_context_snapshot(self);
    free(self->fds);
    self->fds = NULL;
    self->nfds = 0;
    pn_poll_close(self->poll);
    self->poll = NULL;
    pn_wake_close(&self->wake);
    Py_RETURN_NONE;
}

static PyObject *
loop_stats(pn_loop *self, PyObject *Py_UNUSED(ignored))
{
    /* Called from a callback: count the run so far. */
    int64_t running = self->ns_running
                      + (self->run_mark_ns ? pn_monotonic_ns()
                                                 - self->run_mark_ns : 0);
    return Py_BuildValue(
        "{sKsKsKsKsnsnsKsKsdsd}",
        "iterations", (unsigned long long)self->n_iterations,
        "callbacks", (unsigned long long)self->n_callbacks,
        "timers_fired", (unsigned long long)self->n_timers_fired,
        "io_events", (unsigned long long)self->n_io_events,
        "ready", (Py_ssize_t)pn_readyq_len(&self->ready),
        "timers_scheduled", (Py_ssize_t)pn_timerheap_len(&self->timers),
        "completions", (unsigned long long)self->n_completions,
        "completion_batches",
        (unsigned long long)self->n_completion_batches,
        "time_polling", self->ns_polling / 1e9,
        "time_running", running / 1e9);
}

static PyObject *
loop_get_slow(pn_loop *self, void *Py_UNUSED(c))
{
    return PyFloat_FromDouble(self->slow_callback_duration);
}

static int
loop_set_slow(pn_loop *self, PyObject *v, void *Py_UNUSED(c))
{
    double d;
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete attribute");
        return -1;
    }
    d = PyFloat_AsDouble(v);
    if (d == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    self->slow_callback_duration = d;
    return 0;
}

static PyObject *
loop_get_resolution(pn_loop *self, void *Py_UNUSED(c))
{
    return PyFloat_FromDouble(self->clock_resolution);
}

static PyObject *
loop_get_debug_attr(pn_loop *self, void *Py_UNUSED(c))
{
    return PyBool_FromLong(self->debug);
}

static PyObject *
loop_get_stopping(pn_loop *self, void *Py_UNUSED(c))
{
    return PyBool_FromLong(self->stopping);
}

static PyObject *
loop_get_closed(pn_loop *self, void *Py_UNUSED(c))
{
    return PyBool_FromLong(self->closed);
}

static PyObject *
loop_get_thread_id(pn_loop *self, void *Py_UNUSED(c))
{
    if (self->thread_id == 0) {
        Py_RETURN_NONE;
    }
    return PyLong_FromUnsignedLong(self->thread_id);
}

/* A snapshot list of the ready handles, for tests and debugging. */
static PyObject *
loop_get_ready(pn_loop *self, void *Py_UNUSED(c))
{
    size_t n = pn_readyq_len(&self->ready);
    PyObject *list = PyList_New((Py_ssize_t)n);
    if (list == NULL) {
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        PyList_SET_ITEM(list, (Py_ssize_t)i,
                        Py_NewRef((PyObject *)pn_readyq_at(&self->ready, i)));
    }
    return list;
}

static PyObject *
loop_get_scheduled(pn_loop *self, void *Py_UNUSED(c))
{
    size_t n = pn_timerheap_len(&self->timers);
    PyObject *list = PyList_New((Py_ssize_t)n);
    if (list == NULL) {
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        PyList_SET_ITEM(list, (Py_ssize_t)i,
                        Py_NewRef((PyObject *)timer_owner(
                            pn_timerheap_at(&self->timers, i))));
    }
    return list;
}

static PyGetSetDef loop_getset[] = {
    {"slow_callback_duration", (getter)loop_get_slow, (setter)loop_set_slow,
     "Callbacks running longer than this (seconds) are logged in debug "
     "mode.", NULL},
    {"_clock_resolution", (getter)loop_get_resolution, NULL, NULL, NULL},
    {"_task_factory", (getter)loop_get_task_factory,
     (setter)loop_set_task_factory, NULL, NULL},
    {"_debug", (getter)loop_get_debug_attr, NULL, NULL, NULL},
    {"_stopping", (getter)loop_get_stopping, NULL, NULL, NULL},
    {"_closed", (getter)loop_get_closed, NULL, NULL, NULL},
    {"_thread_id", (getter)loop_get_thread_id, NULL, NULL, NULL},
    {"_ready", (getter)loop_get_ready, NULL, NULL, NULL},
    {"_scheduled", (getter)loop_get_scheduled, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

#define FASTKW (METH_FASTCALL | METH_KEYWORDS)

static PyMethodDef loop_methods[] = {
    {"call_soon", (PyCFunction)(void (*)(void))loop_call_soon, FASTKW,
     "call_soon(callback, *args, context=None) -> Handle"},
    {"call_soon_threadsafe",
     (PyCFunction)(void (*)(void))loop_call_soon_threadsafe, FASTKW,
     "call_soon_threadsafe(callback, *args, context=None) -> Handle"},
    {"call_later", (PyCFunction)(void (*)(void))loop_call_later, FASTKW,
     "call_later(delay, callback, *args, context=None) -> TimerHandle"},
    {"call_at", (PyCFunction)(void (*)(void))loop_call_at, FASTKW,
     "call_at(when, callback, *args, context=None) -> TimerHandle"},
    {"time", (PyCFunction)loop_time, METH_NOARGS,
     "The loop's clock: time.monotonic()."},
    {"create_future", (PyCFunction)loop_create_future, METH_NOARGS,
     "A new asyncio.Future attached to this loop."},
    {"create_task", (PyCFunction)(void (*)(void))loop_create_task, FASTKW,
     "create_task(coro, *, name=None, context=None, **kwargs) -> Task"},
    {"add_reader", (PyCFunction)(void (*)(void))loop_add_reader,
     METH_FASTCALL, "add_reader(fd, callback, *args)"},
    {"add_writer", (PyCFunction)(void (*)(void))loop_add_writer,
     METH_FASTCALL, "add_writer(fd, callback, *args)"},
    {"_add_reader", (PyCFunction)(void (*)(void))loop_add_reader_h,
     METH_FASTCALL, NULL},
    {"_add_writer", (PyCFunction)(void (*)(void))loop_add_writer_h,
     METH_FASTCALL, NULL},
    {"remove_reader", (PyCFunction)loop_remove_reader, METH_O,
     "Stops watching fd for reading; True if it was watched."},
    {"remove_writer", (PyCFunction)loop_remove_writer, METH_O,
     "Stops watching fd for writing; True if it was watched."},
    {"_remove_reader", (PyCFunction)loop_remove_reader, METH_O, NULL},
    {"_remove_writer", (PyCFunction)loop_remove_writer, METH_O, NULL},
    {"_pn_fd_handles", (PyCFunction)loop_fd_handles, METH_O, NULL},
    {"_pn_new_handle", (PyCFunction)(void (*)(void))loop_pn_new_handle,
     METH_FASTCALL, NULL},
    {"_pn_push_ready", (PyCFunction)loop_pn_push_ready, METH_O, NULL},
    {"stop", (PyCFunction)loop_stop, METH_NOARGS,
     "Stops the loop after the current iteration."},
    {"is_running", (PyCFunction)loop_is_running, METH_NOARGS, NULL},
    {"is_closed", (PyCFunction)loop_is_closed, METH_NOARGS, NULL},
    {"get_debug", (PyCFunction)loop_get_debug, METH_NOARGS, NULL},
    {"_pn_set_debug", (PyCFunction)loop_pn_set_debug, METH_O, NULL},
    {"_write_to_self", (PyCFunction)loop_write_to_self, METH_NOARGS, NULL},
    {"_pn_run", (PyCFunction)loop_pn_run, METH_NOARGS, NULL},
    {"_run_once", (PyCFunction)loop_pn_run_once, METH_NOARGS, NULL},
    {"_pn_enter", (PyCFunction)loop_pn_enter, METH_NOARGS, NULL},
    {"_pn_leave", (PyCFunction)loop_pn_leave, METH_NOARGS, NULL},
    {"_pn_close", (PyCFunction)loop_pn_close, METH_NOARGS, NULL},
    {"stats", (PyCFunction)loop_stats, METH_NOARGS,
     "Counters: iterations, callbacks, timers fired, I/O events, and time "
     "spent polling vs running callbacks (seconds)."},
    {NULL, NULL, 0, NULL},
};

static PyObject *
loop_new(PyTypeObject *tp, PyObject *Py_UNUSED(args),
         PyObject *Py_UNUSED(kwds))
{
    pn_state *st = pn_state_from_type(tp);
    pn_loop *self;
    struct timespec res;
    int err;

    if (st == NULL) {
        return NULL;
    }
    if (st->aio_Future == NULL || st->aio_Task == NULL
        || st->aio_convert_exc == NULL) {
        PyObject *mod = PyImport_ImportModule("asyncio");
        if (mod == NULL) {
            return NULL;
        }
        Py_XSETREF(st->aio_Future, PyObject_GetAttrString(mod, "Future"));
        Py_XSETREF(st->aio_Task, PyObject_GetAttrString(mod, "Task"));
        Py_DECREF(mod);
        mod = PyImport_ImportModule("asyncio.futures");
        if (mod == NULL) {
            return NULL;
        }
        Py_XSETREF(st->aio_convert_exc,
                   PyObject_GetAttrString(mod, "_convert_future_exc"));
        Py_DECREF(mod);
        if (st->aio_Future == NULL || st->aio_Task == NULL
            || st->aio_convert_exc == NULL) {
            return NULL;
        }
    }
    self = (pn_loop *)tp->tp_alloc(tp, 0);
    if (self == NULL) {
        return NULL;
    }
    self->st = st;
    self->wake.fd = -1;
    pn_timerheap_init(&self->timers);
    pn_readyq_init(&self->ready);
    self->fork_gen = pn_fork_generation();
    self->slow_callback_duration = 0.1;
    self->clock_resolution =
        clock_getres(CLOCK_MONOTONIC, &res) == 0
            ? res.tv_sec + res.tv_nsec * 1e-9 : 1e-9;
    err = pn_poll_open(&self->poll);
    if (err == 0) {
        err = pn_wake_open(&self->wake);
    }
    if (err == 0) {
        err = pn_poll_ctl(self->poll, self->wake.fd, 0, PN_POLL_READABLE);
    }
    if (err < 0) {
        self->closed = 1;
        Py_DECREF(self);
        return pn_raise_errno(-err);
    }
    return (PyObject *)self;
}

static int
visit_queues(pn_loop *self, visitproc visit, void *arg)
{
    for (size_t i = 0; i < pn_readyq_len(&self->ready); i++) {
        int r = pn_handle_visit_queued(pn_readyq_at(&self->ready, i), visit,
                                       arg);
        if (r) {
            return r;
        }
    }
    for (size_t i = 0; i < pn_timerheap_len(&self->timers); i++) {
        int r = pn_handle_visit_queued(
            timer_owner(pn_timerheap_at(&self->timers, i)), visit, arg);
        if (r) {
            return r;
        }
    }
    return 0;
}

static int
loop_traverse(pn_loop *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->task_factory);
    Py_VISIT(self->ctx_snapshot);
    /* A running loop is held by the frame running it, so everything its
     * queues hold is reachable anyway: not reporting it only spares each
     * collection a walk over every queued handle (100k tasks being created
     * put 100k handles in the ready queue: bench loop, "create_task +
     * gather").  Stopped, the queues are reported so that cycles through
     * them are found. */
    if (!self->running) {
        int r = visit_queues(self, visit, arg);
        if (r) {
            return r;
        }
    }
    for (size_t fd = 0; fd < self->nfds; fd++) {
        Py_VISIT((PyObject *)self->fds[fd].reader);
        Py_VISIT((PyObject *)self->fds[fd].writer);
    }
    return 0;
}

static int
loop_clear(pn_loop *self)
{
    Py_CLEAR(self->task_factory);
    release_all(self);
    drop_context_snapshot(self);
    return 0;
}

static void
loop_dealloc(pn_loop *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    pn__loop_watchdog_stop(self);
    Py_CLEAR(self->task_factory);
    release_all(self);
    drop_context_snapshot(self);
    pn_readyq_destroy(&self->ready);
    pn_timerheap_destroy(&self->timers);
    free(self->fds);
    pn_poll_close(self->poll);
    pn_wake_close(&self->wake);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyType_Slot loop_slots[] = {
    {Py_tp_new, loop_new},
    {Py_tp_dealloc, loop_dealloc},
    {Py_tp_traverse, loop_traverse},
    {Py_tp_clear, loop_clear},
    {Py_tp_methods, loop_methods},
    {Py_tp_getset, loop_getset},
    {Py_tp_doc, "The C core of piston.Loop: scheduling, timers, fd "
                "interest and the epoll wait."},
    {0, NULL},
};

static PyType_Spec loop_spec = {
    .name = "piston._piston.LoopCore",
    .basicsize = sizeof(pn_loop),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .slots = loop_slots,
};

/* Adds methods defined in other files (loop_watchdog.c, loop_complete.c)
 * to LoopCore. */
static int
add_methods(PyTypeObject *tp, PyMethodDef *defs)
{
    for (PyMethodDef *d = defs; d->ml_name; d++) {
        PyObject *descr = PyDescr_NewMethod(tp, d);
        int r;
        if (descr == NULL) {
            return -1;
        }
        r = PyObject_SetAttrString((PyObject *)tp, d->ml_name, descr);
        Py_DECREF(descr);
        if (r < 0) {
            return -1;
        }
    }
    return 0;
}

int
pn_loop_exec(PyObject *m, pn_state *st)
{
    st->LoopCoreType = (PyTypeObject *)PyType_FromModuleAndSpec(
        m, &loop_spec, NULL);
    if (st->LoopCoreType == NULL) {
        return -1;
    }
    if (add_methods(st->LoopCoreType, pn__loop_watchdog_methods) < 0
        || add_methods(st->LoopCoreType, pn__loop_complete_methods) < 0) {
        return -1;
    }
    st->kwnames_loop = Py_BuildValue("(s)", "loop");
    st->kwnames_task[0] = Py_BuildValue("(s)", "loop");
    st->kwnames_task[1] = Py_BuildValue("(ss)", "loop", "name");
    st->kwnames_task[2] = Py_BuildValue("(ss)", "loop", "context");
    st->kwnames_task[3] = Py_BuildValue("(sss)", "loop", "name", "context");
    for (int i = 0; i < 4; i++) {
        if (st->kwnames_task[i] == NULL) {
            return -1;
        }
    }
    if (st->kwnames_loop == NULL) {
        return -1;
    }
    return PyModule_AddType(m, st->LoopCoreType);
}
