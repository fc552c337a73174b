/* The process pool's worker side: the loop a worker process runs over its
 * ring (take, unpickle in place, call, pickle the outcome, answer), and the
 * fork server's reports into shared memory. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "ext/procpool.h"
#include "ext/wait.h"
#include "core/pn_futex.h"
#include "core/pn_proc.h"
#include "core/pn_spin.h"

#include <errno.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

/* The most an idle worker that just finished a task spins for the next
 * one before it sleeps, learnt down from there (pn_spin_budget): one
 * round trip of a 1 MiB argument (copy, then sum: ~60-150 us on a 2-core
 * VM) must fit, or both sides pay a futex sleep and wake-up
 * (benchmarks/proc.py latency and array cases). */
#define WORKER_SPIN_NS (200 * 1000)
/* A worker maps an argument's pages in one call from this size on; below,
 * a reused block is mostly mapped already and the madvise call is pure
 * cost (1 MiB arguments: 3.9 -> 3.7..5.2 GB/s, within this machine's
 * noise). */
#define WORKER_POPULATE_MIN (8u << 20)

/* ============================================================ worker side */

/* A worker's view of one parent arena block holding an argument buffer:
 * exported in place (no copy), freed for the parent's reuse when the last
 * view goes away. */
typedef struct {
    PyObject_HEAD
    unsigned char *base;
    uint64_t size;
    uint64_t off, len;
} arenabuf;

static int
arenabuf_getbuffer(PyObject *self, Py_buffer *view, int flags)
{
    arenabuf *b = (arenabuf *)self;
    return PyBuffer_FillInfo(view, self, b->base + b->off, (Py_ssize_t)b->len,
                             0, flags);
}

static void
arenabuf_dealloc(PyObject *self)
{
    arenabuf *b = (arenabuf *)self;
    PyTypeObject *tp = Py_TYPE(self);
    pn_arena_free(b->base, b->size, b->off);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyType_Slot arenabuf_slots[] = {
    {Py_bf_getbuffer, arenabuf_getbuffer},
    {Py_tp_dealloc, arenabuf_dealloc},
    {0, NULL},
};

static PyType_Spec arenabuf_spec = {
    .name = "piston._piston._ArenaBuffer",
    .basicsize = sizeof(arenabuf),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = arenabuf_slots,
};

typedef struct {
    pn_worker_ctl *ctl;
    pn_shm *shm;
    uint64_t index;
} wready_arg;

static int
worker_ready(void *arg)
{
    wready_arg *a = arg;
    pn_slot *s = pn_ctl_slot(a->shm, a->ctl, a->index);
    unsigned st = pn_ring_state(s, a->index);
    return st == PN_SLOT_QUEUED || st == PN_SLOT_STOLEN
           || atomic_load_explicit(&a->ctl->stop, memory_order_acquire);
}

/* Runs one task whose request is in slot s; leaves the pickled outcome in
 * the slot.  Returns 0, or -1 for a failure that must end the worker
 * (KeyboardInterrupt/SystemExit raised by the task escape too). */
static int
run_task(pn_state *st, pn_shm *shm, pn_arena *wa, pn_slot *s,
         PyObject *loads, PyObject *dumps, PyObject *cloud_dumps,
         PyObject *format_exc, PyObject *kw_buffers, PyObject *kw_bufcb,
         Py_ssize_t threshold)
{
    PyObject *obj = NULL, *result = NULL, *exc = NULL, *payload = NULL;
    PyObject *body = NULL, *bufs = NULL, *out = NULL;
    pn__bufsink *sink = NULL;
    unsigned status = PN_RES_OK;
    pn_msg req = s->msg;

    bufs = PyList_New(req.nbufs);
    if (bufs == NULL) {
        goto task_error;
    }
    for (uint32_t i = 0; i < req.nbufs; i++) {
        arenabuf *b = PyObject_New(arenabuf, st->ProcArenaBufType);
        if (b == NULL) {
            goto task_error;
        }
        Py_INCREF(st->ProcArenaBufType);
        b->base = shm->base;
        b->size = shm->size;
        b->off = req.buf_off[i];
        b->len = req.buf_len[i];
        if (b->len >= WORKER_POPULATE_MIN) {
            pn__populate(shm->base + b->off, b->len, MADV_POPULATE_READ);
        }
        PyObject *mv = PyMemoryView_FromObject((PyObject *)b);
        Py_DECREF(b);
        if (mv == NULL) {
            goto task_error;
        }
        PyList_SET_ITEM(bufs, i, mv);
    }
    body = PyMemoryView_FromMemory((char *)pn__msg_body(shm->base, s),
                                   (Py_ssize_t)req.body_len, PyBUF_READ);
    if (body == NULL) {
        goto task_error;
    }
    {
        PyObject *argv[2] = {body, bufs};
        obj = PyObject_Vectorcall(loads, argv, 1, kw_buffers);
    }
    Py_CLEAR(bufs);
    {
        /* The view must not outlive the block; keep loads' error. */
        PyObject *saved = obj == NULL ? pn_fetch_exception() : NULL;
        PyObject *r = PyObject_CallMethodNoArgs(body, st->str_release);
        Py_XDECREF(r);
        PyErr_Clear();
        if (saved != NULL) {
            pn__restore_exc(saved);
        }
    }
    Py_CLEAR(body);
    if (req.body_off) {
        pn_arena_free(shm->base, shm->size, req.body_off);
    }
    if (obj == NULL) {
        goto task_error;
    }
    if (!PyTuple_Check(obj) || PyTuple_GET_SIZE(obj) != 3
        || !PyTuple_Check(PyTuple_GET_ITEM(obj, 1))
        || !PyDict_Check(PyTuple_GET_ITEM(obj, 2))) {
        PyErr_SetString(PyExc_TypeError, "malformed task");
        goto task_error;
    }
    /* The timeout counts from here: importing the function's module
     * while unpickling (a fresh worker) is not the task's fault.  Read by
     * the parent's timeout check. */
    atomic_store_explicit(&s->start_ns, pn_monotonic_ns(),
                          memory_order_relaxed);
    result = PyObject_Call(PyTuple_GET_ITEM(obj, 0), PyTuple_GET_ITEM(obj, 1),
                           PyTuple_GET_ITEM(obj, 2));
    /* Drop the arguments before answering, so their arena blocks are
     * free again by the time the parent sees the result. */
    Py_CLEAR(obj);
    if (result == NULL) {
        goto task_error;
    }
    payload = Py_NewRef(result);
    goto pickle;

task_error:
    if (PyErr_ExceptionMatches(PyExc_SystemExit)
        || PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)) {
        /* As in the stdlib pool, these end the worker; the parent reports
         * the task's worker as crashed. */
        Py_XDECREF(obj);
        Py_XDECREF(bufs);
        Py_XDECREF(body);
        return -1;
    }
    Py_CLEAR(obj);
    Py_CLEAR(bufs);
    Py_CLEAR(body);
    exc = pn_fetch_exception();
    if (exc == NULL) {
        PyErr_SetString(PyExc_SystemError,
                        "task failed without an exception");
        exc = pn_fetch_exception();
        if (exc == NULL) {
            goto fatal_text;
        }
    }
    {
        PyObject *tb = PyObject_CallOneArg(format_exc, exc);
        if (tb == NULL) {
            PyErr_Clear();
            tb = PyUnicode_FromString("");
        }
        payload = tb ? PyTuple_Pack(2, exc, tb) : NULL;
        Py_XDECREF(tb);
    }
    status = PN_RES_EXC;
    if (payload == NULL) {
        goto fatal_text;
    }

pickle:
    sink = pn__bufsink_new(st, threshold);
    if (sink == NULL) {
        goto fatal_text;
    }
    out = pn__dumps5(dumps, cloud_dumps, kw_bufcb, payload, sink);
    if (out == NULL) {
        /* The result or exception does not pickle: say so, as text. */
        PyObject *e = pn_fetch_exception();
        PyObject *what = status == PN_RES_OK ? result : exc;
        PyObject *text = PyUnicode_FromFormat(
            "the task's %s could not be pickled to send it back: %R "
            "(%s: %S)",
            status == PN_RES_OK ? "result" : "exception", what,
            e ? Py_TYPE(e)->tp_name : "?", e ? e : Py_None);
        Py_XDECREF(e);
        if (text == NULL) {
            goto fatal_text;
        }
        out = PyUnicode_AsEncodedString(text, "utf-8", "replace");
        Py_DECREF(text);
        if (out == NULL) {
            goto fatal_text;
        }
        pn__bufsink_reset(sink);
        status = PN_RES_ERROR;
    }
    {
        /* A result that can never fit in this worker's arena fails now
         * rather than waiting forever for space. */
        uint64_t need = pn__msg_size(out, sink);
        if (need + need / 4 + 65536 > wa->size) {
            char text[160];
            int n = snprintf(text, sizeof(text),
                             "the task's result pickles to %llu bytes, more "
                             "than a worker's result arena (%llu bytes)",
                             (unsigned long long)need,
                             (unsigned long long)wa->size);
            Py_SETREF(out, PyBytes_FromStringAndSize(text, n));
            if (out == NULL) {
                goto fatal_text;
            }
            pn__bufsink_reset(sink);
            status = PN_RES_ERROR;
        }
    }
    for (;;) {
        uint32_t inl = 0;
        int r = pn__store_msg(wa, shm->base, out, sink, &s->msg, s->data, &inl);
        if (r == 0) {
            break;
        }
        if (r < 0) {
            goto fatal_text;
        }
        /* Our arena is full of results the parent has not copied out yet:
         * wait for it. */
        Py_BEGIN_ALLOW_THREADS
        usleep(200);
        Py_END_ALLOW_THREADS
    }
    s->status = status;
    goto done;

fatal_text:
    PyErr_Clear();
    {
        static const char msg[] = "piston worker: cannot encode the outcome";
        memcpy(s->data, msg, sizeof(msg) - 1);
        memset(&s->msg, 0, sizeof(s->msg));
        s->msg.body_len = sizeof(msg) - 1;
        s->status = PN_RES_ERROR;
    }
done:
    Py_XDECREF(out);
    Py_XDECREF(sink);
    Py_XDECREF(payload);
    Py_XDECREF(result);
    Py_XDECREF(exc);
    return 0;
}

/* Maps the pool's shared region `fd` into this process and returns worker
 * slot k's control block; NULL with an exception (nothing stays mapped). */
static pn_worker_ctl *
attach_slot(pn_shm *shm, int fd, unsigned int k)
{
    int err = pn_shm_attach(shm, fd);
    if (err < 0) {
        pn_raise_errno(-err);
        return NULL;
    }
    if (k >= pn_shm_hdr(shm)->nworkers) {
        pn_shm_detach(shm, 0);
        PyErr_SetString(PyExc_ValueError, "bad worker slot");
        return NULL;
    }
    return pn_shm_ctl(shm, k);
}

PyDoc_STRVAR(worker_main_doc,
"_procpool_worker_main(fd, slot, gen, max_tasks, dumps, loads, cloud_dumps,\n"
"                      format_exc, threshold) -> int\n\n"
"Runs a process pool worker on the shared region `fd` as worker `slot`\n"
"until told to stop or max_tasks (0: unlimited) ran.  Returns how many\n"
"tasks it ran.");

static PyObject *
procpool_worker_main(PyObject *m, PyObject *args)
{
    pn_state *st = PyModule_GetState(m);
    int fd;
    unsigned int k, gen;
    unsigned long long max_tasks;
    PyObject *dumps, *loads, *cloud_dumps, *format_exc;
    Py_ssize_t threshold;
    if (!PyArg_ParseTuple(args, "iIIKOOOOn:_procpool_worker_main", &fd, &k,
                          &gen, &max_tasks, &dumps, &loads, &cloud_dumps,
                          &format_exc, &threshold)) {
        return NULL;
    }
    if (cloud_dumps == Py_None) {
        cloud_dumps = NULL;
    }
    pn_shm shm;
    pn_worker_ctl *ctl = attach_slot(&shm, fd, k);
    if (ctl == NULL) {
        return NULL;
    }
    pn_shm_header *h = pn_shm_hdr(&shm);
    pn_arena wa;
    pn_arena_init(&wa, shm.base, h->warena_off + (uint64_t)k * h->warena_size,
                  h->warena_size);
    PyObject *kw_buffers = Py_BuildValue("(s)", "buffers");
    PyObject *kw_bufcb = Py_BuildValue("(s)", "buffer_callback");
    if (kw_buffers == NULL || kw_bufcb == NULL) {
        Py_XDECREF(kw_buffers);
        Py_XDECREF(kw_bufcb);
        return NULL;
    }
    atomic_store_explicit(&ctl->pid, getpid(), memory_order_relaxed);
    /* Pairs with the acquire loads of ctl->state in the collector. */
    atomic_store_explicit(&ctl->state, PN_W_READY, memory_order_release);
    pn_bell_ring(&h->parent_bell);

    uint64_t index = 0, ran = 0;
    int hot = 0;                /* just ran a task: spin before sleeping */
    pn_spin_budget idle_budget = PN_SPIN_BUDGET_INIT(WORKER_SPIN_NS);
    /* Idle workers spin only while they leave the parent a core; on 2
     * cores a spinner more than that doubled the latency
     * (benchmarks/proc.py latency case). */
    uint32_t max_spinners = pn_ncpus() > 1 ? (uint32_t)pn_ncpus() - 1 : 0;
    PyObject *ret = NULL;
    wready_arg wa_arg = {ctl, &shm, 0};
    for (;;) {
        pn_slot *s = pn_ctl_slot(&shm, ctl, index);
        int r = pn_ring_take(ctl, s, index);
        if (r == 2) {
            index++;
            continue;
        }
        if (r == 1) {
            int64_t t0 = pn_monotonic_ns();
            if (run_task(st, &shm, &wa, s, loads, dumps, cloud_dumps,
                         format_exc, kw_buffers, kw_bufcb, threshold) < 0) {
                goto done;
            }
            s->run_ns = pn_monotonic_ns() - t0;
            hot = 1;
            pn_ring_done(&shm, s, index);
            index++;
            ran++;
            if (max_tasks && ran >= max_tasks) {
                break;
            }
            continue;
        }
        if (atomic_load_explicit(&ctl->stop, memory_order_acquire)) {
            break;
        }
        wa_arg.index = index;
        int w = 1;
        Py_BEGIN_ALLOW_THREADS
        /* Spin for the next task only while a parent thread waits in
         * result() for this one (a stand-in polls): a caller going one
         * task at a time submits the next right away.  A parent busy
         * submitting or collecting needs the cores itself (100k submits
         * on 2 cores: 90k -> 55k tasks/s with workers spinning). */
        int spun = hot
                   && atomic_load_explicit(&h->parent_bell.pollers,
                                           memory_order_relaxed) != 0
                   && pn_worker_spin_enter(h, max_spinners);
        int64_t t0 = 0, spun_ns = 0;
        if (spun) {
            /* Learnt as pn_bell_wait does, but the spinner's place is
             * given back before sleeping. */
            t0 = pn_monotonic_ns();
            w = pn_bell_spin(&ctl->bell, worker_ready, &wa_arg, PN_FOREVER,
                             pn_spin_budget_get(&idle_budget));
            pn_worker_spin_leave(h);
            spun_ns = pn_monotonic_ns() - t0;
            if (w) {
                pn_spin_budget_learn(&idle_budget, spun_ns);
            }
        }
        if (!spun || !w) {
            w = pn_bell_wait(&ctl->bell, worker_ready, &wa_arg, PN_FOREVER,
                             NULL);
            if (spun && w >= 0) {
                pn_spin_budget_missed(&idle_budget, spun_ns,
                                      pn_monotonic_ns() - t0);
            }
        }
        hot = 0;
        Py_END_ALLOW_THREADS
        if (w == -EINTR && PyErr_CheckSignals() < 0) {
            goto done;
        }
    }
    ret = PyLong_FromUnsignedLongLong(ran);
done:
    Py_DECREF(kw_buffers);
    Py_DECREF(kw_bufcb);
    /* The mapping stays: argument views may outlive this call until the
     * process exits. */
    return ret;
}

PyDoc_STRVAR(report_doc,
"_procpool_report(fd, slot, pid, wstatus, initfail_text=None)\n\n"
"Fork server side: records that worker `slot` (process `pid`) exited with\n"
"the raw wait status, or (wstatus=-1) that it started; wakes the parent.");

static PyObject *
procpool_report(PyObject *m, PyObject *args)
{
    int fd, pid, wstatus;
    unsigned int k;
    PyObject *text = Py_None;
    (void)m;
    if (!PyArg_ParseTuple(args, "iIii|O:_procpool_report", &fd, &k, &pid,
                          &wstatus, &text)) {
        return NULL;
    }
    pn_shm shm;
    pn_worker_ctl *ctl = attach_slot(&shm, fd, k);
    if (ctl == NULL) {
        return NULL;
    }
    pn_shm_header *h = pn_shm_hdr(&shm);
    if (text != Py_None) {
        /* The initializer failed: its traceback goes where slot 0's data
         * would be (no task runs on this worker). */
        Py_ssize_t n;
        const char *u = PyUnicode_AsUTF8AndSize(text, &n);
        if (u == NULL) {
            pn_shm_detach(&shm, 0);
            return NULL;
        }
        pn_slot *s0 = pn_ctl_slot(&shm, ctl, 0);
        size_t len = (size_t)n < PN_SLOT_INLINE - 1 ? (size_t)n
                                                    : PN_SLOT_INLINE - 1;
        memcpy(s0->data, u, len);
        s0->data[len] = 0;
        atomic_store_explicit(&ctl->state, PN_W_INITFAIL,
                              memory_order_release);
    }
    else if (wstatus == -1) {
        atomic_store_explicit(&ctl->pid, pid, memory_order_release);
    }
    else {
        atomic_store_explicit(&ctl->wstatus, wstatus, memory_order_relaxed);
        /* Pairs with the acquire loads of ctl->state in the collector:
         * EXITED comes with the status.  An INITFAIL stays (its text is
         * the better report). */
        uint32_t cur = atomic_load_explicit(&ctl->state,
                                            memory_order_relaxed);
        if (cur != PN_W_INITFAIL) {
            atomic_store_explicit(&ctl->state, PN_W_EXITED,
                                  memory_order_release);
        }
    }
    pn_bell_ring(&h->parent_bell);
    pn_shm_detach(&shm, 0);
    Py_RETURN_NONE;
}

static PyObject *
procpool_set_pdeathsig(PyObject *m, PyObject *args)
{
    int sig, ppid;
    (void)m;
    if (!PyArg_ParseTuple(args, "ii:_procpool_set_pdeathsig", &sig, &ppid)) {
        return NULL;
    }
    int err = pn_set_pdeathsig(sig, ppid);
    if (err < 0) {
        return pn_raise_errno(-err);
    }
    Py_RETURN_NONE;
}

static PyMethodDef procpool_functions[] = {
    {"_procpool_worker_main", procpool_worker_main, METH_VARARGS,
     worker_main_doc},
    {"_procpool_report", procpool_report, METH_VARARGS, report_doc},
    {"_procpool_set_pdeathsig", procpool_set_pdeathsig, METH_VARARGS,
     "_procpool_set_pdeathsig(sig, expected_parent_pid)"},
    {NULL, NULL, 0, NULL},
};

int
pn__procpool_worker_exec(PyObject *m, pn_state *st)
{
    st->ProcArenaBufType =
        (PyTypeObject *)PyType_FromModuleAndSpec(m, &arenabuf_spec, NULL);
    if (st->ProcArenaBufType == NULL) {
        return -1;
    }
    return PyModule_AddFunctions(m, procpool_functions);
}
