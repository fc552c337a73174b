/* piston's exception hierarchy and the one place errno becomes Python. */
#include "ext/module.h"

/* Creates module.<name> with the given bases and docstring and stores it. */
static int
add_exception(PyObject *m, PyObject **slot, const char *name,
              const char *doc, PyObject *bases)
{
    char qualname[96];
    PyOS_snprintf(qualname, sizeof(qualname), "piston.%s", name);
    *slot = PyErr_NewExceptionWithDoc(qualname, doc, bases, NULL);
    if (*slot == NULL) {
        return -1;
    }
    return PyModule_AddObjectRef(m, name, *slot);
}

static PyObject *
import_attr(const char *module, const char *attr)
{
    PyObject *mod = PyImport_ImportModule(module);
    if (mod == NULL) {
        return NULL;
    }
    PyObject *obj = PyObject_GetAttrString(mod, attr);
    Py_DECREF(mod);
    return obj;
}

int
pn_errors_exec(PyObject *m, pn_state *st)
{
    int rc = -1;
    PyObject *cf_broken = NULL, *cf_thread_broken = NULL;
    PyObject *cf_proc_broken = NULL, *bases = NULL;

    st->CancelledError = import_attr("concurrent.futures", "CancelledError");
    st->InvalidStateError = import_attr("concurrent.futures",
                                        "InvalidStateError");
    st->cf_logger = import_attr("concurrent.futures._base", "LOGGER");
    cf_broken = import_attr("concurrent.futures", "BrokenExecutor");
    cf_thread_broken = import_attr("concurrent.futures.thread",
                                   "BrokenThreadPool");
    cf_proc_broken = import_attr("concurrent.futures.process",
                                 "BrokenProcessPool");
    if (!st->CancelledError || !st->InvalidStateError || !st->cf_logger
        || !cf_broken || !cf_thread_broken || !cf_proc_broken) {
        goto done;
    }
    if (add_exception(m, &st->PistonError, "PistonError",
                      "Base class of every error piston raises.",
                      PyExc_Exception) < 0) {
        goto done;
    }
    bases = PyTuple_Pack(2, st->PistonError, cf_broken);
    if (!bases || add_exception(m, &st->BrokenPool, "BrokenPool",
            "A pool can no longer run tasks (also a "
            "concurrent.futures.BrokenExecutor).", bases) < 0) {
        goto done;
    }
    Py_SETREF(bases, PyTuple_Pack(2, st->BrokenPool, cf_thread_broken));
    if (!bases || add_exception(m, &st->BrokenThreadPool, "BrokenThreadPool",
            "A thread pool can no longer run tasks, e.g. its initializer "
            "failed (also a concurrent.futures.thread.BrokenThreadPool).",
            bases) < 0) {
        goto done;
    }
    Py_SETREF(bases, PyTuple_Pack(2, st->BrokenPool, cf_proc_broken));
    if (!bases || add_exception(m, &st->BrokenProcessPool, "BrokenProcessPool",
            "A process pool can no longer run tasks (also a "
            "concurrent.futures.process.BrokenProcessPool).", bases) < 0) {
        goto done;
    }
    if (add_exception(m, &st->WorkerCrashedError, "WorkerCrashedError",
            "The worker process running the task died (signal or exit "
            "code in the message); only that task fails.",
            st->BrokenProcessPool) < 0) {
        goto done;
    }
    Py_SETREF(bases, PyTuple_Pack(2, st->PistonError, PyExc_TimeoutError));
    if (!bases || add_exception(m, &st->TaskTimeoutError, "TaskTimeoutError",
            "A task ran longer than its timeout and its worker was "
            "replaced (also a TimeoutError).", bases) < 0) {
        goto done;
    }
    rc = 0;
done:
    Py_XDECREF(bases);
    Py_XDECREF(cf_broken);
    Py_XDECREF(cf_thread_broken);
    Py_XDECREF(cf_proc_broken);
    return rc;
}

PyObject *
pn_raise_errno(int err)
{
    errno = err;
    return PyErr_SetFromErrno(PyExc_OSError);
}
