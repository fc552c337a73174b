/* piston._piston: multi-phase module init, state traversal, and module-level
 * functions that belong to no engine. */
#include "ext/module.h"
#include "core/pn_features.h"
#include "core/pn_fork.h"

#include <stddef.h>

/* Every PyObject* field of pn_state, for traverse/clear (plain C fields
 * such as flags are simply not listed). */
#define PN_STATE_OBJECTS(X)                                                  \
    X(PistonError) X(BrokenPool) X(BrokenThreadPool) X(BrokenProcessPool)   \
    X(WorkerCrashedError) X(TaskTimeoutError) X(CancelledError)             \
    X(InvalidStateError) X(cf_logger) X(FutureCoreType) X(FutureType)       \
    X(RLockType) X(state_names[0]) X(state_names[1]) X(state_names[2])      \
    X(state_names[3]) X(state_names[4])                                     \
    X(ThreadPoolType) X(ThreadPoolCoreType) X(MapJobType)                   \
    X(MapIteratorType)                                                      \
    X(ProcessPoolCoreType) X(ProcBufSinkType) X(ProcArenaBufType)           \
    /* loop */                                                              \
    X(HandleType) X(TimerHandleType) X(LoopCoreType) X(handle_repr)         \
    X(extract_stack) X(aio_Future) X(aio_Task) X(aio_convert_exc)           \
    X(kwnames_task[0]) X(kwnames_task[1]) X(kwnames_task[2])                \
    X(kwnames_task[3]) X(kwnames_loop)                                      \
    /* stream */                                                            \
    X(StreamTransportType) X(aio_BufferedProtocol) X(aio_TransportSocket)   \
    X(aio_set_nodelay) X(aio_set_result_unless_cancelled) X(aio_logger)     \
    X(minus_one)

static int
module_traverse(PyObject *m, visitproc visit, void *arg)
{
    pn_state *st = PyModule_GetState(m);
#define VISIT(f) Py_VISIT(st->f);
#define VISIT_NAME(name) VISIT(str_##name)
    PN_STATE_OBJECTS(VISIT)
    PN_STATE_NAMES(VISIT_NAME)
#undef VISIT_NAME
#undef VISIT
    return 0;
}

static int
module_clear(PyObject *m)
{
    pn_state *st = PyModule_GetState(m);
#define CLEAR(f) Py_CLEAR(st->f);
#define CLEAR_NAME(name) CLEAR(str_##name)
    PN_STATE_OBJECTS(CLEAR)
    PN_STATE_NAMES(CLEAR_NAME)
#undef CLEAR_NAME
#undef CLEAR
    return 0;
}

static void
module_free(void *m)
{
    pn_state *st = PyModule_GetState((PyObject *)m);
    pn_handle_pool_clear(st);
    PyMem_RawFree(st->stream_scratch);
    st->stream_scratch = NULL;
    module_clear((PyObject *)m);
}

PyDoc_STRVAR(kernel_features_doc,
"kernel_features() -> dict\n\n"
"Which Linux features piston found, each tried for real: epoll, eventfd,\n"
"memfd, pidfd, futex, timerfd.");

static PyObject *
kernel_features(PyObject *m, PyObject *Py_UNUSED(arg))
{
    static const struct { const char *name; unsigned bit; } table[] = {
        {"epoll", PN_FEAT_EPOLL}, {"eventfd", PN_FEAT_EVENTFD},
        {"memfd", PN_FEAT_MEMFD}, {"pidfd", PN_FEAT_PIDFD},
        {"futex", PN_FEAT_FUTEX}, {"timerfd", PN_FEAT_TIMERFD},
    };
    unsigned mask = pn_features_probe();
    PyObject *d = PyDict_New();
    (void)m;
    if (d == NULL) {
        return NULL;
    }
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
        if (PyDict_SetItemString(d, table[i].name,
                                 (mask & table[i].bit) ? Py_True
                                                       : Py_False) < 0) {
            Py_DECREF(d);
            return NULL;
        }
    }
    return d;
}

int
pn_log(PyObject *logger, PyObject *level, PyObject *args, PyObject *exc_info)
{
    PyObject *meth = NULL, *kw = NULL, *r = NULL;
    if (args == NULL) {
        return -1;
    }
    if ((meth = PyObject_GetAttr(logger, level)) != NULL
        && (exc_info == NULL
            || (kw = Py_BuildValue("{sO}", "exc_info", exc_info)) != NULL)) {
        r = PyObject_Call(meth, args, kw);
    }
    Py_XDECREF(meth);
    Py_XDECREF(kw);
    Py_DECREF(args);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

static PyMethodDef module_methods[] = {
    {"kernel_features", kernel_features, METH_NOARGS, kernel_features_doc},
    {NULL, NULL, 0, NULL},
};

static int
module_exec(PyObject *m)
{
    pn_state *st = PyModule_GetState(m);
    int err = pn_fork_init();
    if (err < 0) {
        pn_raise_errno(-err);
        return -1;
    }
#define INTERN(name)                                                        \
    if ((st->str_##name = PyUnicode_InternFromString(#name)) == NULL) {     \
        return -1;                                                          \
    }
    PN_STATE_NAMES(INTERN)
#undef INTERN
    if (pn_errors_exec(m, st) < 0 || pn_future_exec(m, st) < 0
        || pn_threadpool_exec(m, st) < 0 || pn_procpool_exec(m, st) < 0
        || pn_handle_exec(m, st) < 0 || pn_loop_exec(m, st) < 0
        || pn_stream_exec(m, st) < 0) {
        return -1;
    }
    return 0;
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
#if PY_VERSION_HEX >= 0x030C0000
    /* One instance per interpreter is fine, but the engines' threads call
     * back into the interpreter that created them, so no per-interpreter
     * GIL until that has been audited. */
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_SUPPORTED},
#endif
#if PY_VERSION_HEX >= 0x030D0000
    /* Not audited for free-threading yet: keep the GIL enabled. */
    {Py_mod_gil, Py_MOD_GIL_USED},
#endif
    {0, NULL},
};

PyModuleDef pn_moduledef = {
    PyModuleDef_HEAD_INIT,
    .m_name = "piston._piston",
    .m_doc = "piston's C engines: futures, thread pool, event loop.",
    .m_size = sizeof(pn_state),
    .m_methods = module_methods,
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC
PyInit__piston(void)
{
    return PyModuleDef_Init(&pn_moduledef);
}
