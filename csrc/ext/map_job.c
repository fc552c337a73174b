/* ThreadPoolExecutor.map(): one queued job whose chunks workers claim, and
 * the iterator that yields results in order without a Future per item. */
#include "ext/threadpool.h"
#include "ext/future.h"
#include "core/pn_futex.h"

#include <limits.h>
#include <stdatomic.h>

/* How long next() spins for a pending item before it sleeps: learnt from
 * the waits (pn_spin_budget), separately from result()'s. */
static pn_spin_budget next_budget = PN_SPIN_BUDGET_INIT(20000);

static inline uint8_t
item_status(pn_mapjob *j, Py_ssize_t i)
{
    /* Pairs with the release store in set_item. */
    return __atomic_load_n(&j->status[i], __ATOMIC_ACQUIRE);
}

static inline void
set_item(pn_mapjob *j, Py_ssize_t i, uint8_t status, PyObject *value)
{
    j->results[i] = value;
    __atomic_store_n(&j->status[i], status, __ATOMIC_RELEASE);
}

/* Tells a consumer asleep in next() that items changed. */
static void
publish(pn_mapjob *j)
{
    /* seq_cst pairs with pn_wait_word's increment of nsleepers. */
    atomic_fetch_add_explicit(&j->seq, 1, memory_order_seq_cst);
    if (atomic_load_explicit(&j->nsleepers, memory_order_seq_cst) > 0) {
        pn_futex_wake(&j->seq, INT_MAX, 0);
    }
}

/* `count` more chunks are over; the last one drops the queue's reference. */
static void
chunks_over(pn_mapjob *j, uint32_t count)
{
    uint32_t before = atomic_fetch_add_explicit(&j->chunks_done, count,
                                                memory_order_acq_rel);
    if (before + count == j->nchunks) {
        Py_DECREF(j);
    }
}

static void
chunk_bounds(pn_mapjob *j, uint32_t chunk, Py_ssize_t *lo, Py_ssize_t *hi)
{
    *lo = (Py_ssize_t)chunk * j->chunksize;
    *hi = *lo + j->chunksize;
    if (*hi > j->n) {
        *hi = j->n;
    }
}

void
pn_mapjob_run_chunk(pn_mapjob *j, uint32_t chunk)
{
    Py_ssize_t lo, hi;
    chunk_bounds(j, chunk, &lo, &hi);
    for (Py_ssize_t i = lo; i < hi; i++) {
        if (atomic_load_explicit(&j->cancelled, memory_order_relaxed)) {
            set_item(j, i, PN_ITEM_CANCELLED, NULL);
            continue;
        }
        PyObject *args = PyList_GET_ITEM(j->items, i);
        PyObject *r = PyObject_Vectorcall(j->fn, &PyTuple_GET_ITEM(args, 0),
                                          PyTuple_GET_SIZE(args), NULL);
        if (r != NULL) {
            set_item(j, i, PN_ITEM_OK, r);
        }
        else {
            set_item(j, i, PN_ITEM_ERR, pn_fetch_exception());
        }
    }
    publish(j);
    chunks_over(j, 1);
}

void
pn_mapjob_end_chunks(pn_mapjob *j, uint32_t first, uint32_t last,
                     PyObject *(*exc_factory)(void *), void *arg)
{
    Py_ssize_t lo, hi, end;
    if (first >= last) {
        return;
    }
    chunk_bounds(j, first, &lo, &hi);
    chunk_bounds(j, last - 1, &hi, &end);
    for (Py_ssize_t i = lo; i < end; i++) {
        if (item_status(j, i) != PN_ITEM_PENDING) {
            continue;
        }
        PyObject *exc = exc_factory ? exc_factory(arg) : NULL;
        if (exc_factory && exc == NULL) {
            exc = pn_fetch_exception();   /* e.g. MemoryError: still ends */
        }
        set_item(j, i, exc ? PN_ITEM_ERR : PN_ITEM_CANCELLED, exc);
    }
    publish(j);
    chunks_over(j, last - first);
}

pn_mapjob *
pn_mapjob_new(pn_state *st, PyObject *fn, PyObject *items,
              Py_ssize_t chunksize)
{
    Py_ssize_t n = PyList_GET_SIZE(items);
    Py_ssize_t nchunks = (n + chunksize - 1) / chunksize;
    pn_mapjob *j;
    if (nchunks > (Py_ssize_t)UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError,
                        "map(): too many chunks; raise chunksize");
        return NULL;
    }
    j = PyObject_GC_New(pn_mapjob, st->MapJobType);
    if (j == NULL) {
        return NULL;
    }
    j->st = st;
    j->fn = Py_NewRef(fn);
    j->items = Py_NewRef(items);
    j->n = n;
    j->chunksize = chunksize;
    j->nchunks = (uint32_t)nchunks;
    j->qnode.kind = PN_NODE_MAP;
    atomic_init(&j->seq, 0);
    atomic_init(&j->nsleepers, 0);
    atomic_init(&j->chunks_done, 0);
    atomic_init(&j->cancelled, 0);
    j->results = PyMem_Calloc(n ? n : 1, sizeof(PyObject *));
    j->status = PyMem_Calloc(n ? n : 1, 1);
    PyObject_GC_Track(j);
    if (j->results == NULL || j->status == NULL) {
        Py_DECREF(j);
        PyErr_NoMemory();
        return NULL;
    }
    return j;
}

static int
job_traverse(pn_mapjob *j, visitproc visit, void *arg)
{
    Py_VISIT((PyObject *)Py_TYPE(j));
    Py_VISIT(j->fn);
    Py_VISIT(j->items);
    if (j->results != NULL) {
        for (Py_ssize_t i = 0; i < j->n; i++) {
            Py_VISIT(j->results[i]);
        }
    }
    return 0;
}

static int
job_clear(pn_mapjob *j)
{
    Py_CLEAR(j->fn);
    Py_CLEAR(j->items);
    if (j->results != NULL) {
        for (Py_ssize_t i = 0; i < j->n; i++) {
            Py_CLEAR(j->results[i]);
        }
    }
    return 0;
}

static void
job_dealloc(pn_mapjob *j)
{
    PyTypeObject *tp = Py_TYPE(j);
    PyObject_GC_UnTrack(j);
    job_clear(j);
    PyMem_Free(j->results);
    PyMem_Free(j->status);
    tp->tp_free((PyObject *)j);
    Py_DECREF(tp);
}

static PyType_Slot job_slots[] = {
    {Py_tp_doc, "A map() call queued on a piston thread pool."},
    {Py_tp_traverse, job_traverse},
    {Py_tp_clear, job_clear},
    {Py_tp_dealloc, job_dealloc},
    {0, NULL},
};

static PyType_Spec job_spec = {
    .name = "piston._piston.MapJob",
    .basicsize = sizeof(pn_mapjob),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC
             | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = job_slots,
};

/* ---- the iterator ------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    pn_mapjob *job;                 /* NULL once finished */
    Py_ssize_t pos;
    int64_t deadline;
} pn_mapiter;

PyObject *
pn_mapiter_new(pn_state *st, pn_mapjob *job, int64_t deadline)
{
    pn_mapiter *it = PyObject_GC_New(pn_mapiter, st->MapIteratorType);
    if (it == NULL) {
        return NULL;
    }
    it->job = (pn_mapjob *)Py_XNewRef(job);
    it->pos = 0;
    it->deadline = deadline;
    PyObject_GC_Track(it);
    return (PyObject *)it;
}

/* Like the stdlib's generator closing: items not yet run are cancelled. */
static void
iter_finish(pn_mapiter *it)
{
    pn_mapjob *j = it->job;
    if (j != NULL) {
        atomic_store_explicit(&j->cancelled, 1, memory_order_relaxed);
        it->job = NULL;
        Py_DECREF(j);
    }
}

static PyObject *
iter_next(pn_mapiter *it)
{
    pn_mapjob *j = it->job;
    Py_ssize_t i = it->pos;
    uint8_t s;

    if (j == NULL) {
        return NULL;
    }
    if (i >= j->n) {
        iter_finish(it);
        return NULL;
    }
    while ((s = item_status(j, i)) == PN_ITEM_PENDING) {
        uint32_t seen = atomic_load_explicit(&j->seq, memory_order_acquire);
        if (item_status(j, i) != PN_ITEM_PENDING) {
            continue;
        }
        int r = pn_wait_word(&j->seq, seen, &j->nsleepers, NULL,
                             &next_budget, it->deadline);
        if (r < 0) {
            return NULL;        /* Ctrl-C: the iterator stays usable */
        }
        if (r == 1 && item_status(j, i) == PN_ITEM_PENDING) {
            iter_finish(it);
            PyErr_SetNone(PyExc_TimeoutError);
            return NULL;
        }
    }
    it->pos++;
    PyObject *value = j->results[i];
    j->results[i] = NULL;   /* the consumer owns it now, as fs.pop() does */
    if (s == PN_ITEM_OK) {
        return value;
    }
    iter_finish(it);
    if (s == PN_ITEM_ERR) {
        PyErr_SetObject((PyObject *)Py_TYPE(value), value);
        Py_DECREF(value);
    }
    else {
        PyErr_SetNone(j->st->CancelledError);
    }
    return NULL;
}

static PyObject *
iter_close(pn_mapiter *it, PyObject *Py_UNUSED(ignored))
{
    iter_finish(it);
    Py_RETURN_NONE;
}

static int
iter_traverse(pn_mapiter *it, visitproc visit, void *arg)
{
    Py_VISIT((PyObject *)Py_TYPE(it));
    Py_VISIT(it->job);
    return 0;
}

static int
iter_clear(pn_mapiter *it)
{
    iter_finish(it);
    return 0;
}

static void
iter_dealloc(pn_mapiter *it)
{
    PyTypeObject *tp = Py_TYPE(it);
    PyObject_GC_UnTrack(it);
    iter_finish(it);
    tp->tp_free((PyObject *)it);
    Py_DECREF(tp);
}

static PyMethodDef iter_methods[] = {
    {"close", (PyCFunction)iter_close, METH_NOARGS,
     "Stop iterating; items that have not started are cancelled."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot iter_slots[] = {
    {Py_tp_doc, "Results of ThreadPoolExecutor.map(), in order."},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, iter_next},
    {Py_tp_methods, iter_methods},
    {Py_tp_traverse, iter_traverse},
    {Py_tp_clear, iter_clear},
    {Py_tp_dealloc, iter_dealloc},
    {0, NULL},
};

static PyType_Spec iter_spec = {
    .name = "piston._piston.MapIterator",
    .basicsize = sizeof(pn_mapiter),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC
             | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = iter_slots,
};

int
pn_map_exec(PyObject *m, pn_state *st)
{
    st->MapJobType =
        (PyTypeObject *)PyType_FromModuleAndSpec(m, &job_spec, NULL);
    if (st->MapJobType == NULL) {
        return -1;
    }
    st->MapIteratorType =
        (PyTypeObject *)PyType_FromModuleAndSpec(m, &iter_spec, NULL);
    return st->MapIteratorType ? 0 : -1;
}
