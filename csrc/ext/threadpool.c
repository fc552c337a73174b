/* piston's thread pool: the core its workers run, waiting for work without
 * the GIL (the executor type around it is thread_executor.c). */
#include "ext/threadpool.h"
#include "ext/future.h"
#include "core/pn_fork.h"
#include "core/pn_spin.h"

#include <errno.h>
#include <limits.h>

/* A worker that always finds more work keeps the GIL; every this many units
 * it lets a thread that asked for the GIL have it (C callables never reach
 * the eval loop's own switch check). */
#define PN_YIELD_EVERY 64

/* The most an idle worker spins for new work before it sleeps, and the
 * most a worker that found a task waits for its submitter to release the
 * GIL in result(); both are learnt down from there (pn_spin_budget), so a
 * busy machine stops paying for spins.  A sleep/wake pair costs 5-20 us on
 * an idle VM's vCPU: `python -m piston bench thread` (one-at-a-time
 * latency) and tests' round trips next to busy processes chose them. */
#define PN_WORKER_SPIN_NS 20000
#define PN_GIL_HANDOFF_SPIN_NS 5000

/* Process-wide, a C value: the handoff wait depends on the machine's
 * load, not on a pool. */
static pn_spin_budget handoff_budget =
    PN_SPIN_BUDGET_INIT(PN_GIL_HANDOFF_SPIN_NS);

static const char initializer_failed[] =
    "A thread initializer failed, the thread pool is not usable anymore";

/* ---- ending work that will never run ------------------------------------ */

typedef struct {
    pn_state *st;
    PyObject *message;
} broken_arg;

static PyObject *
make_broken(void *arg)
{
    broken_arg *b = arg;
    return PyObject_CallOneArg(b->st->BrokenThreadPool, b->message);
}

/* Ends units [first, last) of a node nobody will run: cancelled when
 * `message` is NULL, else failed with BrokenThreadPool(message).  Takes
 * over the queue's reference when the node is done. */
static void
end_node(pn_tpcore *core, pn_qnode *node, uint32_t first, uint32_t last,
         PyObject *message)
{
    broken_arg b = {core->st, message};
    if (node->kind == PN_NODE_MAP) {
        pn_mapjob_end_chunks(PN_CONTAINER_OF(node, pn_mapjob, qnode), first,
                             last, message ? make_broken : NULL, &b);
        return;
    }
    pn_future *f = PN_CONTAINER_OF(node, pn_future, qnode);
    uint32_t s = atomic_load_explicit(&f->state, memory_order_acquire);
    int r = 0;
    if (atomic_load_explicit(&f->publishing, memory_order_acquire)) {
        /* A forked child caught a worker between staging and publishing:
         * the outcome is complete, so publish it here. */
        pn_future_publish_staged(f);
        Py_DECREF(f);
        return;
    }
    if (s == PN_FUT_FINISHED) {
        Py_DECREF(f);           /* done already: only the reference left */
        return;
    }
    pn_future_clear_work(f);
    if (message == NULL) {
        /* Cancel, then notify cf.wait() waiters as a worker would have. */
        r = pn_future_cancel((PyObject *)f);
        if (r > 0) {
            r = pn_future_set_running_or_notify_cancel((PyObject *)f);
        }
    }
    else if (s == PN_FUT_PENDING || s == PN_FUT_RUNNING) {
        PyObject *exc = make_broken(&b);
        r = exc ? pn_future_set_exception((PyObject *)f, exc) : -1;
        Py_XDECREF(exc);
    }
    else {
        /* Cancelled while queued: its waiters still hear of it. */
        r = pn_future_set_running_or_notify_cancel((PyObject *)f);
    }
    if (r < 0) {
        PyErr_WriteUnraisable((PyObject *)f);
    }
    Py_DECREF(f);
}

static void
end_list(pn_tpcore *core, pn_qnode *list, PyObject *message)
{
    while (list != NULL) {
        pn_qnode *next = list->next;
        end_node(core, list, list->units_total - list->units_left,
                 list->units_total, message);
        list = next;
    }
}

/* In a child after fork(): the parent's workers are gone.  Queued work and
 * work they were running is failed here (it runs in the parent), and the
 * pool starts fresh threads on the next submit. */
static void
core_after_fork(pn_tpcore *core)
{
    PyObject *msg = PyUnicode_FromString(
        "the task was submitted before fork(); it runs in the parent "
        "process, not in this child");
    pn_qnode *list = pn_workq_after_fork(&core->q);
    if (msg == NULL) {
        PyErr_WriteUnraisable(NULL);
        return;
    }
    for (Py_ssize_t i = 0; i < core->nslots; i++) {
        pn_worker_slot *s = &core->slots[i];
        if (s->in_use && s->node != NULL) {
            end_node(core, s->node, s->unit, s->unit + 1, msg);
        }
        s->in_use = 0;
        s->node = NULL;
    }
    end_list(core, list, msg);
    Py_DECREF(msg);
}

void
pn__tpcore_check_fork(pn_tpcore *core)
{
    if (core->q_ready && core->q.fork_gen != pn_fork_generation()) {
        core_after_fork(core);
    }
}

/* ---- the worker ---------------------------------------------------------- */

static void
log_critical(pn_state *st, const char *msg, PyObject *exc)
{
    if (pn_log(st->cf_logger, st->str_critical, Py_BuildValue("(s)", msg),
               exc) < 0) {
        PyErr_WriteUnraisable(st->cf_logger);
    }
}

/* The initializer failed: like the stdlib, the pool is broken and every
 * queued task fails with BrokenThreadPool. */
static void
core_break(pn_tpcore *core)
{
    if (core->broken == NULL) {
        core->broken = PyUnicode_FromString(initializer_failed);
        if (core->broken == NULL) {
            PyErr_WriteUnraisable(NULL);
            return;
        }
    }
    end_list(core, pn_workq_drain(&core->q), core->broken);
}

/* Runs a task.  Returns the future when its outcome was staged (the caller
 * publishes it once the GIL is released, then drops the queue's reference),
 * else NULL with the reference dropped. */
static pn_future *
run_task(pn_state *st, pn_future *f, int may_stage)
{
    int r = pn_future_set_running_or_notify_cancel((PyObject *)f);
    if (r > 0) {
        PyObject *res;
        if (f->kwargs == NULL) {
            res = PyObject_Vectorcall(f->fn, &PyTuple_GET_ITEM(f->args, 0),
                                      PyTuple_GET_SIZE(f->args), NULL);
        }
        else {
            res = PyObject_Call(f->fn, f->args, f->kwargs);
        }
        /* Drop the call's references before completing, as the stdlib
         * worker does, so callbacks do not see them alive. */
        pn_future_clear_work(f);
        PyObject *exc = res ? NULL : pn_fetch_exception();
        if (may_stage && pn_future_stage((PyObject *)f, res, exc)) {
            Py_XDECREF(res);
            Py_XDECREF(exc);
            return f;
        }
        r = res ? pn_future_set_result((PyObject *)f, res)
                : pn_future_set_exception((PyObject *)f, exc);
        Py_XDECREF(res);
        Py_XDECREF(exc);
    }
    else {
        pn_future_clear_work(f);
    }
    if (r < 0) {
        /* The future was completed behind the pool's back, or a done-
         * callback raised a BaseException: logged as the stdlib's worker
         * does, but this worker carries on. */
        PyObject *exc = pn_fetch_exception();
        log_critical(st, "Exception in worker", exc);
        Py_DECREF(exc);
    }
    Py_DECREF(f);      /* the queue's reference */
    return NULL;
}

/* A worker that just claimed a task while its submitter still holds the
 * GIL waits briefly for result() to release it, rather than sleep in the
 * GIL's own condvar and need a wake-up. */
static void
await_gil_handoff(pn_qnode *node)
{
    pn_future *f;
    pn_spinner spin;
    if (node->kind != PN_NODE_TASK) {
        return;
    }
    f = PN_CONTAINER_OF(node, pn_future, qnode);
    int64_t started = pn_monotonic_ns();
    pn_spinner_init(&spin, pn_spin_budget_get(&handoff_budget));
    do {
        /* Pairs with the release increment in pn_wait_word. */
        if (atomic_load_explicit(&f->nspinners, memory_order_acquire) > 0) {
            pn_spin_budget_learn(&handoff_budget,
                                 pn_monotonic_ns() - started);
            return;
        }
        /* A future with a callback or hook (asyncio.wrap_future) is not
         * waited on with result(): no handoff will come.  A racy read of a
         * pointer the GIL holder sets; a stale NULL only costs the spin. */
        if (__atomic_load_n(&f->callbacks, __ATOMIC_RELAXED) != NULL
            || __atomic_load_n(&f->hooks[0], __ATOMIC_RELAXED) != NULL) {
            return;
        }
    } while (pn_spinner_step(&spin));
    /* Never came: spinning was wasted. */
    pn_spin_budget_learn(&handoff_budget, INT64_MAX);
}

/* A slot for a starting worker (GIL held): an index, since the array
 * grows; -1 only when memory runs out (the worker then runs untracked). */
static Py_ssize_t
claim_slot(pn_tpcore *core)
{
    Py_ssize_t i, n;
    pn_worker_slot *grown;
    for (i = 0; i < core->nslots; i++) {
        if (!core->slots[i].in_use) {
            break;
        }
    }
    if (i == core->nslots) {
        n = core->nslots ? core->nslots * 2 : 4;
        grown = PyMem_Realloc(core->slots, (size_t)n * sizeof(*grown));
        if (grown == NULL) {
            return -1;
        }
        for (Py_ssize_t k = core->nslots; k < n; k++) {
            grown[k].in_use = 0;
            grown[k].node = NULL;
        }
        core->slots = grown;
        core->nslots = n;
    }
    core->slots[i].in_use = 1;
    core->slots[i].node = NULL;
    return i;
}

/* Records what the worker in slot `idx` runs (GIL held). */
static inline void
slot_set(pn_tpcore *core, Py_ssize_t idx, pn_qnode *node, uint32_t unit)
{
    if (idx >= 0) {
        core->slots[idx].node = node;
        core->slots[idx].unit = unit;
    }
}

static PyObject *
core_worker_main(pn_tpcore *core, PyObject *Py_UNUSED(ignored))
{
    unsigned ran = 0;
    Py_ssize_t idx;

    if (!core->q_ready) {
        PyErr_SetString(PyExc_RuntimeError, "thread pool not configured");
        return NULL;
    }
    idx = claim_slot(core);
    if (core->initializer != NULL) {
        PyObject *r = PyObject_Call(core->initializer, core->initargs, NULL);
        if (r == NULL) {
            PyObject *exc = pn_fetch_exception();
            log_critical(core->st, "Exception in initializer:", exc);
            Py_DECREF(exc);
            core_break(core);
            pn_workq_thread_exit(&core->q);
            if (idx >= 0) {
                core->slots[idx].in_use = 0;
            }
            Py_RETURN_NONE;
        }
        Py_DECREF(r);
    }
    pn_future *staged = NULL;
    int exiting = 0, spun = 0;
    int64_t idle_since = 0;
    for (;;) {
        uint32_t unit;
        pn_qnode *node = NULL;
        if (staged == NULL) {
            node = pn_workq_trypop(&core->q, &unit);
        }
        if (node == NULL) {
            ran = 0;
            Py_BEGIN_ALLOW_THREADS
            if (staged != NULL) {
                pn_future_publish_staged(staged);
            }
            if (!spun) {
                idle_since = pn_monotonic_ns();
            }
            node = pn_workq_pop_spin(
                &core->q, &unit,
                spun ? 0 : pn_spin_budget_get(&core->idle_budget));
            spun = 0;
            /* Going to sleep: a staged future must not stay referenced by
             * an idle worker, so its reference is dropped (GIL) first. */
            if (node == NULL && staged == NULL) {
                node = pn_workq_pop_wait(&core->q, &unit);
                if (node == NULL) {
                    exiting = 1;
                }
            }
            if (node != NULL) {
                pn_spin_budget_learn(&core->idle_budget,
                                     pn_monotonic_ns() - idle_since);
                await_gil_handoff(node);
            }
            Py_END_ALLOW_THREADS
            Py_CLEAR(staged);   /* the queue's reference */
            slot_set(core, idx, NULL, 0);
            if (exiting) {
                break;          /* closing and drained: our slot is freed */
            }
            if (node == NULL) {
                spun = 1;       /* nothing came: sleep on the next turn */
                continue;
            }
        }
        else if (++ran == PN_YIELD_EVERY) {
            ran = 0;
            Py_BEGIN_ALLOW_THREADS
            Py_END_ALLOW_THREADS
        }
        slot_set(core, idx, node, unit);
        if (node->kind == PN_NODE_MAP) {
            pn_mapjob_run_chunk(PN_CONTAINER_OF(node, pn_mapjob, qnode),
                                unit);
        }
        else {
            /* Stage only when the GIL is about to be released anyway. */
            staged = run_task(core->st,
                              PN_CONTAINER_OF(node, pn_future, qnode),
                              pn_workq_looks_empty(&core->q));
        }
        if (staged == NULL) {
            slot_set(core, idx, NULL, 0);   /* staged: kept until published */
        }
        pn_workq_unit_done(&core->q);
    }
    if (idx >= 0) {
        core->slots[idx].in_use = 0;
    }
    Py_RETURN_NONE;
}

void
pn__tpcore_close(pn_tpcore *core)
{
    if (core->q_ready) {
        pn_workq_close(&core->q);
    }
}

static PyObject *
core_close(pn_tpcore *core, PyObject *Py_UNUSED(ignored))
{
    pn__tpcore_close(core);
    Py_RETURN_NONE;
}

void
pn__tpcore_cancel_queued(pn_tpcore *core)
{
    end_list(core, pn_workq_drain(&core->q), NULL);
}

pn_tpcore *
pn__tpcore_new(pn_state *st)
{
    pn_tpcore *core = PyObject_GC_New(pn_tpcore, st->ThreadPoolCoreType);
    if (core == NULL) {
        return NULL;
    }
    core->st = st;
    core->q_ready = 0;
    core->shutdown = 0;
    core->max_workers = 0;
    core->broken = core->initializer = core->initargs = NULL;
    core->slots = NULL;
    core->nslots = 0;
    PyObject_GC_Track(core);
    return core;
}

int
pn__tpcore_configure(pn_tpcore *core, Py_ssize_t max_workers,
                     PyObject *initializer, PyObject *initargs)
{
    int r;
    if (core->q_ready) {
        PyErr_SetString(PyExc_RuntimeError, "executor already configured");
        return -1;
    }
    if (max_workers <= 0) {
        PyErr_SetString(PyExc_ValueError, "max_workers must be greater than 0");
        return -1;
    }
    /* Threads start lazily, so a huge cap is legal (as in the stdlib); the
     * queue counts threads in an unsigned. */
    r = pn_workq_init(&core->q, max_workers > (Py_ssize_t)UINT_MAX
                                    ? UINT_MAX : (unsigned)max_workers);
    if (r < 0) {
        pn_raise_errno(-r);
        return -1;
    }
    core->max_workers = max_workers;
    core->idle_budget.ns = PN_WORKER_SPIN_NS;
    core->idle_budget.max_ns = PN_WORKER_SPIN_NS;
    core->initializer = initializer == Py_None ? NULL : Py_NewRef(initializer);
    core->initargs = Py_NewRef(initargs);
    core->q_ready = 1;
    return 0;
}

static int
core_traverse(pn_tpcore *core, visitproc visit, void *arg)
{
    Py_VISIT((PyObject *)Py_TYPE(core));
    Py_VISIT(core->broken);
    Py_VISIT(core->initializer);
    Py_VISIT(core->initargs);
    return 0;
}

static int
core_clear(pn_tpcore *core)
{
    Py_CLEAR(core->broken);
    Py_CLEAR(core->initializer);
    Py_CLEAR(core->initargs);
    return 0;
}

static void
core_dealloc(pn_tpcore *core)
{
    PyTypeObject *tp = Py_TYPE(core);
    PyObject_GC_UnTrack(core);
    core_clear(core);
    /* Workers hold a reference, so none is left; the queue is empty or
     * holds work of a forked parent. */
    if (core->q_ready) {
        if (core->q.fork_gen == pn_fork_generation()) {
            end_list(core, pn_workq_drain(&core->q), NULL);
        }
        pn_workq_destroy(&core->q);
    }
    PyMem_Free(core->slots);
    tp->tp_free((PyObject *)core);
    Py_DECREF(tp);
}

static PyObject *
core_check_fork(pn_tpcore *core, PyObject *Py_UNUSED(ignored))
{
    pn__tpcore_check_fork(core);
    Py_RETURN_NONE;
}

static PyMethodDef core_methods[] = {
    {"check_fork", (PyCFunction)core_check_fork, METH_NOARGS,
     "In a child after fork(): fail the parent's work now, so nothing in "
     "the child waits for it."},
    {"worker_main", (PyCFunction)core_worker_main, METH_NOARGS,
     "Body of a worker thread: run queued work until the pool closes."},
    {"close", (PyCFunction)core_close, METH_NOARGS,
     "Let workers exit once the queue is empty."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot core_slots[] = {
    {Py_tp_doc, "The queue and workers behind a piston.ThreadPoolExecutor."},
    {Py_tp_methods, core_methods},
    {Py_tp_traverse, core_traverse},
    {Py_tp_clear, core_clear},
    {Py_tp_dealloc, core_dealloc},
    {0, NULL},
};

static PyType_Spec core_spec = {
    .name = "piston._piston.ThreadPoolCore",
    .basicsize = sizeof(pn_tpcore),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC
             | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = core_slots,
};

static PyObject *
interpreter_exiting(PyObject *m, PyObject *Py_UNUSED(ignored))
{
    ((pn_state *)PyModule_GetState(m))->interpreter_exiting = 1;
    Py_RETURN_NONE;
}

static PyMethodDef threadpool_functions[] = {
    {"_thread_pool_interpreter_exit", interpreter_exiting, METH_NOARGS,
     "From now on thread pools refuse new work (interpreter exit)."},
    {NULL, NULL, 0, NULL},
};

int
pn_threadpool_exec(PyObject *m, pn_state *st)
{
    if (pn_map_exec(m, st) < 0) {
        return -1;
    }
    st->ThreadPoolCoreType =
        (PyTypeObject *)PyType_FromModuleAndSpec(m, &core_spec, NULL);
    if (st->ThreadPoolCoreType == NULL) {
        return -1;
    }
    if (pn_thread_executor_exec(m, st) < 0) {
        return -1;
    }
    return PyModule_AddFunctions(m, threadpool_functions);
}
