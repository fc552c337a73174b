/* piston.ThreadPoolExecutor's C base: submit(), map() and the calls the
 * Python class makes; the workers and queue are the core (threadpool.c). */
#include "ext/threadpool.h"
#include "ext/future.h"

#include <errno.h>

typedef struct {
    PyObject_HEAD
    pn_tpcore *core;
} pn_tpexec;

static int
check_open(pn_tpcore *core)
{
    pn_state *st = core->st;
    if (!core->q_ready) {
        PyErr_SetString(PyExc_RuntimeError,
                        "ThreadPoolExecutor.__init__() was not called");
        return -1;
    }
    pn__tpcore_check_fork(core);
    if (core->broken != NULL) {
        PyErr_SetObject(st->BrokenThreadPool, core->broken);
        return -1;
    }
    if (core->shutdown) {
        PyErr_SetString(PyExc_RuntimeError,
                        "cannot schedule new futures after shutdown");
        return -1;
    }
    if (st->interpreter_exiting) {
        PyErr_SetString(PyExc_RuntimeError,
                        "cannot schedule new futures after "
                        "interpreter shutdown");
        return -1;
    }
    return 0;
}

/* Queues `node` (the queue takes the caller's reference to its object) and
 * starts a worker when one is due.  On failure the node is not queued and
 * the reference is the caller's again. */
static int
enqueue(pn_tpexec *self, pn_qnode *node, uint32_t units)
{
    pn_tpcore *core = self->core;
    int start;
    if (pn_workq_push(&core->q, node, units, &start) < 0) {
        PyErr_SetString(PyExc_RuntimeError,
                        "cannot schedule new futures after shutdown");
        return -1;
    }
    if (start) {
        PyObject *r = PyObject_CallMethodNoArgs((PyObject *)self,
                                                core->st->str__start_worker);
        if (r != NULL) {
            Py_DECREF(r);
            return 0;
        }
        pn_workq_thread_exit(&core->q);
        size_t len;
        unsigned busy, nthreads, idle;
        pn_workq_counts(&core->q, &len, &busy, &nthreads, &idle);
        if (nthreads == 0 && pn_workq_remove(&core->q, node)) {
            return -1;          /* nobody could ever run it: say so */
        }
        /* Other workers will run it; the pool just stays smaller. */
        PyErr_Clear();
    }
    return 0;
}

static PyObject *
tp_submit(pn_tpexec *self, PyObject *const *args, Py_ssize_t nargsf,
          PyObject *kwnames)
{
    pn_tpcore *core = self->core;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    pn_future *f;
    PyObject *fn;

    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError, "submit() missing 1 required "
                        "positional argument: 'fn'");
        return NULL;
    }
    fn = args[0];
    if (!PyCallable_Check(fn)) {
        PyErr_Format(PyExc_TypeError,
                     "submit(): fn must be callable, not %.100s",
                     Py_TYPE(fn)->tp_name);
        return NULL;
    }
    if (check_open(core) < 0) {
        return NULL;
    }
    f = (pn_future *)pn_future_new(core->st);
    if (f == NULL) {
        return NULL;
    }
    f->fn = Py_NewRef(fn);
    f->args = PyTuple_New(nargs - 1);
    if (f->args == NULL) {
        goto error;
    }
    for (Py_ssize_t i = 1; i < nargs; i++) {
        PyTuple_SET_ITEM(f->args, i - 1, Py_NewRef(args[i]));
    }
    if (kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0) {
        if ((f->kwargs = PyDict_New()) == NULL) {
            goto error;
        }
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++) {
            if (PyDict_SetItem(f->kwargs, PyTuple_GET_ITEM(kwnames, i),
                               args[nargs + i]) < 0) {
                goto error;
            }
        }
    }
    f->qnode.kind = PN_NODE_TASK;
    Py_INCREF(f);                   /* the queue's reference */
    if (enqueue(self, &f->qnode, 1) < 0) {
        Py_DECREF(f);
        goto error;
    }
    return (PyObject *)f;
error:
    pn_future_clear_work(f);
    Py_DECREF(f);
    return NULL;
}

static PyObject *
tp_map(pn_tpexec *self, PyObject *const *args, Py_ssize_t nargsf,
       PyObject *kwnames)
{
    pn_tpcore *core = self->core;
    pn_state *st = core->st;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf), chunksize = 1;
    PyObject *fn, *timeout = Py_None, *zip, *items, *it;
    pn_mapjob *job;
    int64_t deadline;

    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError, "map() missing 1 required "
                        "positional argument: 'fn'");
        return NULL;
    }
    for (Py_ssize_t i = 0; kwnames && i < PyTuple_GET_SIZE(kwnames); i++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, i), *val = args[nargs + i];
        if (PyUnicode_CompareWithASCIIString(key, "timeout") == 0) {
            timeout = val;
        }
        else if (PyUnicode_CompareWithASCIIString(key, "chunksize") == 0) {
            chunksize = PyLong_AsSsize_t(val);
            if (chunksize == -1 && PyErr_Occurred()) {
                return NULL;
            }
            if (chunksize < 1) {
                PyErr_SetString(PyExc_ValueError, "chunksize must be >= 1.");
                return NULL;
            }
        }
        else {
            PyErr_Format(PyExc_TypeError,
                         "map() got an unexpected keyword argument %R", key);
            return NULL;
        }
    }
    fn = args[0];
    if (!PyCallable_Check(fn)) {
        PyErr_Format(PyExc_TypeError, "map(): fn must be callable, not %.100s",
                     Py_TYPE(fn)->tp_name);
        return NULL;
    }
    if (pn_parse_timeout(timeout, &deadline) < 0 || check_open(core) < 0) {
        return NULL;
    }
    /* Like the stdlib, every item is taken from the iterables now. */
    zip = PyObject_Vectorcall((PyObject *)&PyZip_Type, args + 1, nargs - 1,
                              NULL);
    if (zip == NULL) {
        return NULL;
    }
    items = PySequence_List(zip);
    Py_DECREF(zip);
    if (items == NULL) {
        return NULL;
    }
    if (PyList_GET_SIZE(items) == 0) {
        Py_DECREF(items);
        return pn_mapiter_new(st, NULL, deadline);
    }
    job = pn_mapjob_new(st, fn, items, chunksize);
    Py_DECREF(items);
    if (job == NULL) {
        return NULL;
    }
    it = pn_mapiter_new(st, job, deadline);
    if (it == NULL || enqueue(self, &job->qnode, job->nchunks) < 0) {
        Py_DECREF(job);             /* the queue's reference */
        Py_XDECREF(it);
        return NULL;
    }
    return it;
}

static PyObject *
tp_configure(pn_tpexec *self, PyObject *args)
{
    PyObject *initializer, *initargs;
    Py_ssize_t max_workers;

    if (!PyArg_ParseTuple(args, "nOO!:_configure", &max_workers, &initializer,
                          &PyTuple_Type, &initargs)
        || pn__tpcore_configure(self->core, max_workers, initializer,
                                initargs) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
tp_shutdown_core(pn_tpexec *self, PyObject *cancel_futures)
{
    pn_tpcore *core = self->core;
    int cancel = PyObject_IsTrue(cancel_futures);
    if (cancel < 0) {
        return NULL;
    }
    if (!core->q_ready) {
        Py_RETURN_NONE;
    }
    pn__tpcore_check_fork(core);
    core->shutdown = 1;
    if (cancel) {
        pn__tpcore_cancel_queued(core);
    }
    pn_workq_close(&core->q);
    Py_RETURN_NONE;
}

static PyObject *
tp_get_core(pn_tpexec *self, void *Py_UNUSED(closure))
{
    return Py_NewRef((PyObject *)self->core);
}

static PyObject *
tp_get_shutdown(pn_tpexec *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->core->shutdown);
}

static PyObject *
tp_get_broken(pn_tpexec *self, void *Py_UNUSED(closure))
{
    PyObject *b = self->core->broken;
    return Py_NewRef(b ? b : Py_False);
}

static PyObject *
tp_counts(pn_tpexec *self, PyObject *Py_UNUSED(ignored))
{
    size_t len = 0;
    unsigned busy = 0, nthreads = 0, idle = 0;
    if (self->core->q_ready) {
        pn__tpcore_check_fork(self->core);
        pn_workq_counts(&self->core->q, &len, &busy, &nthreads, &idle);
    }
    return Py_BuildValue("{snsIsIsI}", "queued", (Py_ssize_t)len, "busy",
                         busy, "threads", nthreads, "idle", idle);
}

static PyObject *
tp_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    pn_state *st = pn_state_from_type(type);
    pn_tpexec *self;
    (void)args;
    (void)kwds;
    if (st == NULL) {
        return NULL;
    }
    self = (pn_tpexec *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->core = pn__tpcore_new(st);
    if (self->core == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int
tp_traverse(pn_tpexec *self, visitproc visit, void *arg)
{
    Py_VISIT((PyObject *)Py_TYPE(self));
    Py_VISIT(self->core);
    return 0;
}

static int
tp_clear(pn_tpexec *self)
{
    /* An executor dropped without shutdown(): like the stdlib, its workers
     * finish the queued work and exit. */
    if (self->core != NULL) {
        pn__tpcore_close(self->core);
        Py_CLEAR(self->core);
    }
    return 0;
}

static void
tp_dealloc(pn_tpexec *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    tp_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

PyDoc_STRVAR(submit_doc,
"submit(fn, /, *args, **kwargs)\n--\n\n"
"Schedule fn(*args, **kwargs) on a worker thread; returns a piston.Future.");
PyDoc_STRVAR(map_doc,
"map(fn, *iterables, timeout=None, chunksize=1)\n--\n\n"
"Like the builtin map() but fn runs on the workers; results come back in\n"
"order.  The iterables are consumed at once.  chunksize items go to a\n"
"worker as one unit.  Raises TimeoutError if a result is not ready\n"
"timeout seconds after the call; closing the iterator cancels the items\n"
"that have not started.");

static PyMethodDef tp_methods[] = {
    {"submit", (PyCFunction)(void (*)(void))tp_submit,
     METH_FASTCALL | METH_KEYWORDS, submit_doc},
    {"map", (PyCFunction)(void (*)(void))tp_map,
     METH_FASTCALL | METH_KEYWORDS, map_doc},
    {"_configure", (PyCFunction)tp_configure, METH_VARARGS,
     "_configure(max_workers, initializer, initargs): set up the core."},
    {"_shutdown_core", (PyCFunction)tp_shutdown_core, METH_O,
     "_shutdown_core(cancel_futures): refuse new work and let workers exit "
     "once the queue is drained."},
    {"_counts", (PyCFunction)tp_counts, METH_NOARGS,
     "Queue and worker counters (for tests)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef tp_getset[] = {
    {"_core", (getter)tp_get_core, NULL, "The core the workers run on.",
     NULL},
    {"_shutdown", (getter)tp_get_shutdown, NULL, NULL, NULL},
    {"_broken", (getter)tp_get_broken, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot tp_slots[] = {
    {Py_tp_doc, "C base of piston.ThreadPoolExecutor."},
    {Py_tp_new, tp_new},
    {Py_tp_methods, tp_methods},
    {Py_tp_getset, tp_getset},
    {Py_tp_traverse, tp_traverse},
    {Py_tp_clear, tp_clear},
    {Py_tp_dealloc, tp_dealloc},
    {0, NULL},
};

static PyType_Spec tp_spec = {
    .name = "piston._piston.ThreadPool",
    .basicsize = sizeof(pn_tpexec),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC
             | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = tp_slots,
};

int
pn_thread_executor_exec(PyObject *m, pn_state *st)
{
    st->ThreadPoolType =
        (PyTypeObject *)PyType_FromModuleAndSpec(m, &tp_spec, NULL);
    if (st->ThreadPoolType == NULL) {
        return -1;
    }
    return PyModule_AddObjectRef(m, "ThreadPool",
                                 (PyObject *)st->ThreadPoolType);
}
