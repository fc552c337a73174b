/* Batched completion of piston.Futures into a piston loop: a C done hook,
 * a lock-free stack, one eventfd write per batch. */
#include "ext/loop.h"
#include "ext/future.h"

#include <stdatomic.h>

/* run_in_executor on a piston pool gives a piston.Future; instead of a
 * Python done-callback and a call_soon_threadsafe per future (what
 * asyncio.wrap_future does), a C hook on the future pushes a node onto the
 * loop's lock-free stack and wakes the loop only when the stack was empty:
 * one eventfd write per batch.  The loop takes the whole stack at once and
 * copies each outcome into its asyncio future. */

typedef struct pn_completion {
    struct pn_completion *next;
    PyObject *pfut;     /* the piston.Future, set by the hook */
    PyObject *afut;     /* the asyncio.Future to complete */
    pn_loop *loop;      /* strong: the loop outlives its pending nodes */
} pn_completion;

static void
completion_free(pn_completion *c)
{
    Py_XDECREF(c->pfut);
    Py_XDECREF(c->afut);
    Py_XDECREF(c->loop);
    PyMem_RawFree(c);
}

/* The future's done hook: GIL held, any thread. */
static void
completion_hook(PyObject *fut, void *arg)
{
    pn_completion *c = arg, *head;
    pn_loop *loop = c->loop;

    if (loop->closed) {
        completion_free(c);
        return;
    }
    c->pfut = Py_NewRef(fut);
    head = atomic_load_explicit(&loop->completions, memory_order_relaxed);
    do {
        c->next = head;
        /* release: the node's fields are visible to the loop's acquire
         * exchange in take_completions. */
    } while (!atomic_compare_exchange_weak_explicit(
        &loop->completions, &head, c, memory_order_release,
        memory_order_relaxed));
    if (head == NULL) {
        /* First of a batch: the loop may be asleep in epoll_wait. */
        (void)pn_wake_signal(&loop->wake);
    }
}

/* The whole stack, oldest first. */
static pn_completion *
take_completions(pn_loop *self)
{
    pn_completion *c, *fifo = NULL;
    if (atomic_load_explicit(&self->completions, memory_order_relaxed)
        == NULL) {
        return NULL;
    }
    /* acquire: pairs with the release CAS in completion_hook. */
    c = atomic_exchange_explicit(&self->completions, NULL,
                                 memory_order_acquire);
    while (c != NULL) {
        pn_completion *next = c->next;
        c->next = fifo;
        fifo = c;
        c = next;
    }
    return fifo;
}

static int
deliver(pn_state *st, pn_completion *c)
{
    pn_future *f = (pn_future *)c->pfut;
    uint32_t state = atomic_load_explicit(&f->state, memory_order_acquire);
    PyObject *r;
    int cancelled;

    r = PyObject_CallMethodNoArgs(c->afut, st->str_cancelled);
    if (r == NULL) {
        return -1;
    }
    cancelled = PyObject_IsTrue(r);
    Py_DECREF(r);
    if (cancelled) {
        return cancelled < 0 ? -1 : 0;
    }
    if (state == PN_FUT_CANCELLED || state == PN_FUT_CANCELLED_AND_NOTIFIED) {
        r = PyObject_CallMethodNoArgs(c->afut, st->str_cancel);
    }
    else if (f->exception != NULL) {
        PyObject *exc = Py_NewRef(f->exception);
        /* concurrent.futures' CancelledError and InvalidStateError become
         * asyncio's, as asyncio.wrap_future converts them. */
        if (PyObject_TypeCheck(exc, (PyTypeObject *)st->CancelledError)
            || PyObject_TypeCheck(exc,
                                  (PyTypeObject *)st->InvalidStateError)) {
            Py_SETREF(exc, PyObject_CallOneArg(st->aio_convert_exc, exc));
            if (exc == NULL) {
                return -1;
            }
        }
        r = PyObject_CallMethodOneArg(c->afut, st->str_set_exception, exc);
        Py_DECREF(exc);
    }
    else {
        r = PyObject_CallMethodOneArg(c->afut, st->str_set_result,
                                      f->result ? f->result : Py_None);
    }
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

int
pn__loop_run_completions(pn_loop *self)
{
    pn_completion *c = take_completions(self);
    if (c == NULL) {
        return 0;
    }
    self->n_completion_batches++;
    while (c != NULL) {
        pn_completion *next = c->next;
        self->n_completions++;
        if (deliver(self->st, c) < 0) {
            if (PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)
                || PyErr_ExceptionMatches(PyExc_SystemExit)) {
                /* Put the rest back for the next iteration. */
                completion_free(c);
                while (next != NULL) {
                    pn_completion *n2 = next->next;
                    completion_free(next);
                    next = n2;
                }
                return -1;
            }
            PyErr_WriteUnraisable(c->afut);
        }
        completion_free(c);
        c = next;
    }
    return 0;
}

void
pn__loop_drop_completions(pn_loop *self)
{
    pn_completion *c = take_completions(self);
    while (c != NULL) {
        pn_completion *next = c->next;
        completion_free(c);
        c = next;
    }
}

/* _pn_watch_future(piston_future, asyncio_future): completes the asyncio
 * future on this loop when the piston future is done.  ValueError if the
 * piston future has a done hook already (use wrap_future then). */
static PyObject *
loop_pn_watch_future(pn_loop *self, PyObject *const *args, Py_ssize_t nargs)
{
    pn_completion *c;

    if (nargs != 2 || !PyObject_TypeCheck(args[0], self->st->FutureCoreType)) {
        PyErr_SetString(PyExc_TypeError,
                        "_pn_watch_future(piston.Future, asyncio.Future)");
        return NULL;
    }
    if (self->closed) {
        PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
        return NULL;
    }
    c = PyMem_RawCalloc(1, sizeof(*c));
    if (c == NULL) {
        return PyErr_NoMemory();
    }
    c->afut = Py_NewRef(args[1]);
    c->loop = (pn_loop *)Py_NewRef((PyObject *)self);
    if (pn_future_set_done_hook(args[0], completion_hook, c) < 0) {
        completion_free(c);
        return NULL;
    }
    Py_RETURN_NONE;
}

PyMethodDef pn__loop_complete_methods[] = {
    {"_pn_watch_future",
     (PyCFunction)(void (*)(void))loop_pn_watch_future, METH_FASTCALL,
     NULL},
    {NULL, NULL, 0, NULL},
};
