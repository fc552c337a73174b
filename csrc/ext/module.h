/* Module state of piston._piston and the hooks each binding file provides. */
#ifndef PN_MODULE_H
#define PN_MODULE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* Everything Python-level the extension keeps lives here (PEP 489/573):
 * no static PyObject anywhere.  Grouped by the file that owns the field;
 * each file's exec hook fills its group and module_traverse/clear in
 * module.c visit every PyObject field. */
/* How many dead Handles the module keeps for reuse: enough for a burst of
 * call_soon between two loop iterations without going to the allocator. */
#define PN_HANDLE_POOL_SIZE 1024

struct pn_handle;

/* Attribute and method names the C code looks up or calls, interned once by
 * module_exec into pn_state.str_<name>.  A call through one builds no string;
 * a fresh name string per call (PyObject_CallMethod with a C string) would
 * also be kept alive by the type method cache, one copy per slot its address
 * hashes to, which reads as slow memory growth. */
#define PN_STATE_NAMES(X)                                                    \
    /* future.c */                                                          \
    X(acquire) X(release) X(add_result) X(add_exception) X(add_cancelled)   \
    X(exception) X(critical)                                                \
    /* threadpool.c, procpool*.c */                                         \
    X(_start_worker) X(cancelled)                                           \
    /* loop */                                                              \
    X(context) X(cancel) X(set_result) X(set_exception) X(fileno)           \
    X(_pn_create_task) X(_pn_callback_error) X(_pn_slow_callback)           \
    /* stream */                                                            \
    X(data_received) X(eof_received) X(get_buffer) X(buffer_updated)        \
    X(connection_made) X(connection_lost) X(pause_writing)                  \
    X(resume_writing) X(call_soon) X(call_exception_handler) X(peername)    \
    X(sockname) X(getpeername) X(getsockname) X(_extra) X(create_future)    \
    X(close) X(_transports) X(_pn_start_reading) X(_call_connection_lost)   \
    X(_attach) X(_detach) X(debug) X(warning)

typedef struct pn_state {
#define PN_NAME_FIELD(name) PyObject *str_##name;
    PN_STATE_NAMES(PN_NAME_FIELD)
#undef PN_NAME_FIELD

    /* errors.c */
    PyObject *PistonError;
    PyObject *BrokenPool;
    PyObject *BrokenThreadPool;
    PyObject *BrokenProcessPool;
    PyObject *WorkerCrashedError;
    PyObject *TaskTimeoutError;
    PyObject *CancelledError;       /* concurrent.futures.CancelledError */
    PyObject *InvalidStateError;    /* concurrent.futures.InvalidStateError */
    PyObject *cf_logger;            /* logging.getLogger("concurrent.futures") */

    /* future.c */
    PyTypeObject *FutureCoreType;   /* the C base */
    PyTypeObject *FutureType;       /* piston.Future(FutureCore, cf.Future) */
    PyObject *RLockType;            /* _thread.RLock, for Future._condition */
    PyObject *state_names[5];       /* 'PENDING', ... as concurrent.futures */

    /* threadpool.c, map_job.c */
    PyTypeObject *ThreadPoolType;   /* C base of piston.ThreadPoolExecutor */
    PyTypeObject *ThreadPoolCoreType;
    PyTypeObject *MapJobType;
    PyTypeObject *MapIteratorType;
    int interpreter_exiting;        /* set by piston's threading atexit hook */

    /* procpool.c */
    PyTypeObject *ProcessPoolCoreType;
    PyTypeObject *ProcBufSinkType;  /* pickle buffer_callback */
    PyTypeObject *ProcArenaBufType; /* a worker's view of an arena block */

    /* loop */
    PyTypeObject *HandleType;
    PyTypeObject *TimerHandleType;
    PyTypeObject *LoopCoreType;
    PyObject *handle_repr;          /* piston._loop's Handle repr helper */
    PyObject *extract_stack;        /* piston._loop's debug-mode stack */
    PyObject *aio_Future;           /* asyncio.Future, imported lazily */
    PyObject *aio_Task;             /* asyncio.Task, imported lazily */
    PyObject *aio_convert_exc;      /* asyncio.futures._convert_future_exc */
    PyObject *kwnames_task[4];      /* ("loop",), +"name", +"context", both */
    PyObject *kwnames_loop;         /* ("loop",) for Future(loop=...) */
    /* stream.c: the type is made by _stream_setup once asyncio is
     * imported; its base is asyncio.Transport. */
    PyTypeObject *StreamTransportType;
    PyObject *aio_BufferedProtocol;
    PyObject *aio_TransportSocket;  /* asyncio.trsock.TransportSocket */
    PyObject *aio_set_nodelay;      /* asyncio.base_events._set_nodelay */
    PyObject *aio_set_result_unless_cancelled;
    PyObject *aio_logger;           /* asyncio.log.logger */
    PyObject *minus_one;
    /* Where reads land before they become bytes (PN_STREAM_MAX_SIZE,
     * allocated on first use, freed by module_free); used with the GIL
     * held from recv() to the copy. */
    char *stream_scratch;
    /* Dead handles kept for reuse (handle.c): no references held, not
     * visited by traverse, freed by module_free. */
    struct pn_handle *handle_pool[PN_HANDLE_POOL_SIZE];
    int handle_pool_len;
} pn_state;

extern PyModuleDef pn_moduledef;

/* The state of the module that defined `tp` (or one of its bases). */
static inline pn_state *
pn_state_from_type(PyTypeObject *tp)
{
    PyObject *m = PyType_GetModuleByDef(tp, &pn_moduledef);
    return m ? (pn_state *)PyModule_GetState(m) : NULL;
}

/* Per-file exec hooks, run in this order by module_exec. 0 or -1. */
int pn_errors_exec(PyObject *m, pn_state *st);
int pn_future_exec(PyObject *m, pn_state *st);
int pn_threadpool_exec(PyObject *m, pn_state *st);
int pn_procpool_exec(PyObject *m, pn_state *st);
int pn_handle_exec(PyObject *m, pn_state *st);
int pn_loop_exec(PyObject *m, pn_state *st);
int pn_stream_exec(PyObject *m, pn_state *st);

/* handle.c: frees the pooled dead handles (module_free). */
void pn_handle_pool_clear(pn_state *st);

/* Turns a negative errno from the engine into a Python exception (always
 * returns NULL so callers can `return pn_raise_errno(-r);`). */
PyObject *pn_raise_errno(int err);

/* logger.<level>(*args, exc_info=exc_info) for a level name from the
 * interned names; `args` is a new tuple (stolen; NULL when building it
 * failed, then this fails too), `exc_info` NULL for none.  0, or -1 with
 * an exception set. */
int pn_log(PyObject *logger, PyObject *level, PyObject *args,
           PyObject *exc_info);

#endif
