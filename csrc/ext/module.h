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

typedef struct pn_state {
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
    PyObject *str_acquire;
    PyObject *str_release;
    PyObject *str_add_result;
    PyObject *str_add_exception;
    PyObject *str_add_cancelled;
    PyObject *str_exception;

    /* threadpool.c, map_job.c */
    PyTypeObject *ThreadPoolType;   /* C base of piston.ThreadPoolExecutor */
    PyTypeObject *ThreadPoolCoreType;
    PyObject *str_start_worker;
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
    PyObject *str_context;          /* "context", interned: keyword checks */
    PyObject *str_cancelled;        /* asyncio.Future method names */
    PyObject *str_cancel;
    PyObject *str_set_result;
    PyObject *str_set_exception;
    /* stream.c: the type is made by _stream_setup once asyncio is
     * imported; its base is asyncio.Transport. */
    PyTypeObject *StreamTransportType;
    PyObject *aio_BufferedProtocol;
    PyObject *aio_TransportSocket;  /* asyncio.trsock.TransportSocket */
    PyObject *aio_set_nodelay;      /* asyncio.base_events._set_nodelay */
    PyObject *aio_set_result_unless_cancelled;
    PyObject *aio_logger;           /* asyncio.log.logger */
    PyObject *str_data_received;
    PyObject *str_eof_received;
    PyObject *str_get_buffer;
    PyObject *str_buffer_updated;
    PyObject *str_connection_made;
    PyObject *str_connection_lost;
    PyObject *str_pause_writing;
    PyObject *str_resume_writing;
    PyObject *str_call_soon;
    PyObject *str_call_exception_handler;
    PyObject *str_peername;
    PyObject *str_extra;
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

#endif
