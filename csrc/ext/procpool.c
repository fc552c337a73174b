/* ProcessPoolCore: the C side of piston.ProcessPoolExecutor (parent and
 * worker loops over the shared-memory rings of core/pn_shm.h). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "ext/module.h"
#include "ext/future.h"
#include "ext/procpool.h"
#include "ext/wait.h"
#include "core/pn_arena.h"
#include "core/pn_fork.h"
#include "core/pn_futex.h"
#include "core/pn_proc.h"
#include "core/pn_shm.h"
#include "core/pn_spin.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>


/* How the parent and the workers share the work
 * ------------------------------------------------
 * The submitting thread pickles (fn, args, kwargs) with protocol 5: big
 * out-of-band buffers are copied once into the parent's arena, the pickle
 * body goes inline into the task or into the arena.  The task then goes to
 * the ring of the least loaded worker (or to the `pending` FIFO when every
 * ring is full) and the worker is woken through its futex doorbell.  No
 * feeder thread: submit writes the ring itself.
 *
 * Workers run a C loop: take the slot (CAS), unpickle with the buffers
 * viewed in place (zero copy; each view frees its block when the last
 * reference goes), call, pickle the result into their own arena, mark the
 * slot DONE and ring the parent's doorbell.
 *
 * One collector thread per pool, asleep on the parent doorbell without the
 * GIL, takes the GIL only to turn DONE slots into future results, refill
 * the rings from `pending`, and handle dead workers: the fork server reaps
 * them and writes their wait status into the control block; the collector
 * fails only the task that was RUNNING, puts QUEUED ones back at the front
 * of `pending`, releases the arena blocks the worker held and asks for a
 * replacement.  It also kills workers whose task overran its timeout (and,
 * when enabled, whose task was cancelled) through their pidfd.
 *
 * Locking: `mu` guards the pool's C state (pending, rings' produce side,
 * the parent arena, counters).  Nobody waits for the GIL while holding
 * `mu`, and threads holding the GIL take `mu` with the GIL released when it
 * is contended (lock_mu), so no Python code runs under `mu`. */

#define HEARTBEAT_NS (100 * 1000 * 1000)
/* The most the collector spins for a result while tasks are out, and a
 * thread in result() polls for its own result, before each sleeps (idle
 * workers: procpool_worker.c); learnt down from there (pn_spin_budget)
 * when waits run longer, so a busy machine stops paying for spins.  A
 * futex sleep and wake-up costs 5-15 us on a 2-core VM: one-at-a-time
 * latency and 1 MiB arrays (benchmarks/proc.py) chose them. */
#define COLLECT_SPIN_NS (100 * 1000)
#define HELP_SPIN_NS (200 * 1000)
#define BUF_THRESHOLD_DEFAULT (64 * 1024)
#define STOP_GRACE_NS (INT64_C(3) * 1000 * 1000 * 1000)
/* Tasks a worker gets ahead is about this much work (at least 2, at most
 * the ring): deep rings for tiny tasks (a 20 us task: 2 vs 64 deep was
 * 70k vs 130k tasks/s on 2 cores, /tmp bench of this commit), shallow ones
 * for long tasks so they stay cancellable and balanced, as the stdlib
 * keeps only max_workers + 1 in its call queue. */
#define PREFETCH_WORK_NS (5 * 1000 * 1000)

enum { W_FREE, W_STARTING, W_LIVE };
enum { KILL_NONE, KILL_TIMEOUT, KILL_CANCEL, KILL_TERMINATE, KILL_STOP };

typedef struct task {
    struct task *next;
    PyObject *future;
    struct pool *pool;
    uint64_t id;
    int64_t timeout_ns;         /* 0: none */
    int worker;                 /* -1 while pending */
    uint64_t index;             /* ring index on that worker */
    int running_set;            /* future already RUNNING */
    pn_msg msg;
    uint32_t inline_len;
    uint32_t inl_cap;
    unsigned char *inl;         /* inline body, recycled with the record */
} task;

typedef struct worker {
    int state;                  /* W_* */
    uint32_t gen;
    pid_t pid;
    int pidfd;
    uint64_t produced;          /* ring indices: next to write */
    uint64_t collected;         /* next to collect (collector only) */
    uint64_t assigned;          /* tasks given since start */
    int kill_reason;
    int was_ready;
    int collecting;             /* a thread is collecting its slots (mu) */
    int direct;                 /* our own child (not the fork server's):
                                 * the collector reaps it */
    task **tasks;               /* ring_cap shadow entries */
    uint64_t *retained;         /* parent blocks the worker kept alive */
    size_t nretained, cap_retained;
} worker;

typedef struct pool {
    PyObject_HEAD
    pn_state *st;
    pn_shm shm;
    pn_arena arena;             /* parent's; under mu */
    uint32_t nworkers, ring_cap;
    uint64_t limit_per_worker;
    uint64_t max_tasks;         /* per child, 0: unlimited */
    int64_t task_timeout_ns;
    int cancel_running;
    Py_ssize_t threshold;
    uint64_t fork_gen;
    pid_t owner_pid;

    PyObject *dumps, *loads, *cloud_dumps, *rebuild_exc, *spawn_cb;
    PyObject *kw_buffer_callback, *kw_buffers;

    pthread_mutex_t mu;
    task *pending_head, *pending_tail;
    task *free_tasks;
    worker *w;
    uint64_t next_id;
    uint64_t outstanding;       /* submitted, future not yet completed */
    int shutting_down;
    int broken;
    PyObject *broken_reason;    /* str, under the GIL */
    int nstartfail;
    pid_t server_pid;
    int server_pidfd;

    pthread_t thread;
    int thread_started;
    int thread_joined;
    _Atomic uint32_t stop_thread;
    _Atomic uint32_t thread_done;   /* futex word: 1 when it exited */
    int64_t next_heartbeat;
    int64_t ewma_ns;            /* recent task run time, under mu */
    pn_spin_budget collect_budget;  /* the collector thread's */
} pool;

/* Process-wide: how long result() polls for its own result is a property
 * of the machine's load, like future.c's wait budget. */
static pn_spin_budget help_budget = PN_SPIN_BUDGET_INIT(HELP_SPIN_NS);

/* ---------------------------------------------------------------- utils */

static void
lock_mu(pool *p)
{
    if (pthread_mutex_trylock(&p->mu) != 0) {
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&p->mu);
        Py_END_ALLOW_THREADS
    }
}

static void
unlock_mu(pool *p)
{
    pthread_mutex_unlock(&p->mu);
}

/* Sleeps with the GIL released while *word == seen, in slices so signal
 * handlers (Ctrl-C) run; 0 when it changed or the deadline passed, -1 with
 * an exception if a handler raised. */
static int
wait_word_gil(_Atomic uint32_t *word, uint32_t seen, int64_t deadline)
{
    for (;;) {
        if (atomic_load_explicit(word, memory_order_acquire) != seen) {
            return 0;
        }
        int64_t now = pn_monotonic_ns();
        if (deadline != PN_FOREVER && now >= deadline) {
            return 0;
        }
        int64_t until = now + 50 * 1000 * 1000;
        if (deadline != PN_FOREVER && deadline < until) {
            until = deadline;
        }
        Py_BEGIN_ALLOW_THREADS
        pn_futex_wait(word, seen, until, 0);
        Py_END_ALLOW_THREADS
        if (PyErr_CheckSignals() < 0) {
            return -1;
        }
    }
}

/* ------------------------------------------------------- task records */

static task *
task_alloc_locked(pool *p)
{
    task *t = p->free_tasks;
    if (t != NULL) {
        p->free_tasks = t->next;
    }
    else {
        t = malloc(sizeof(task));
        if (t == NULL) {
            return NULL;
        }
        t->inl = NULL;
        t->inl_cap = 0;
    }
    t->next = NULL;
    t->future = NULL;
    t->pool = p;
    t->worker = -1;
    t->running_set = 0;
    t->timeout_ns = 0;
    return t;
}

static void
task_free_locked(pool *p, task *t)
{
    t->next = p->free_tasks;
    p->free_tasks = t;
}

static void
pending_push_back(pool *p, task *t)
{
    t->next = NULL;
    t->worker = -1;
    if (p->pending_tail) {
        p->pending_tail->next = t;
    }
    else {
        p->pending_head = t;
    }
    p->pending_tail = t;
}

static void
pending_push_front(pool *p, task *t)
{
    t->worker = -1;
    t->next = p->pending_head;
    p->pending_head = t;
    if (p->pending_tail == NULL) {
        p->pending_tail = t;
    }
}

static task *
pending_pop(pool *p)
{
    task *t = p->pending_head;
    if (t != NULL) {
        p->pending_head = t->next;
        if (p->pending_head == NULL) {
            p->pending_tail = NULL;
        }
        t->next = NULL;
    }
    return t;
}

/* --------------------------------------------------- future completion */

/* Completes t's future with an exception instance (GIL held), then drops
 * the task.  Must not hold mu. */
static void
finish_task(pool *p, task *t, PyObject *value, PyObject *exc)
{
    PyObject *f = t->future;
    int r = 1;
    if (!t->running_set) {
        /* Pending while running (cancel_running mode, or never marked):
         * a future cancelled meanwhile keeps its cancellation. */
        r = pn_future_set_running_or_notify_cancel(f);
    }
    if (r == 1) {
        t->running_set = 1;
        r = exc ? pn_future_set_exception(f, exc)
                : pn_future_set_result(f, value);
    }
    if (r < 0) {
        PyErr_WriteUnraisable(f);
    }
    t->future = NULL;
    lock_mu(p);
    p->outstanding--;
    task_free_locked(p, t);
    unlock_mu(p);
    Py_DECREF(f);
}

static void
fail_task(pool *p, task *t, PyObject *type, const char *fmt, ...)
{
    va_list va;
    va_start(va, fmt);
    PyObject *msg = PyUnicode_FromFormatV(fmt, va);
    va_end(va);
    PyObject *e = msg ? PyObject_CallOneArg(type, msg) : NULL;
    Py_XDECREF(msg);
    if (e == NULL) {
        e = pn_fetch_exception();
    }
    finish_task(p, t, NULL, e);
    Py_XDECREF(e);
}

/* ------------------------------------------------------------ dispatch */

static int
worker_has_room(pool *p, worker *w)
{
    if (w->state == W_FREE || w->kill_reason != KILL_NONE) {
        return 0;
    }
    uint64_t limit = 2;
    if (p->ewma_ns > 0) {
        limit = PREFETCH_WORK_NS / (uint64_t)p->ewma_ns;
        limit = limit < 2 ? 2 : limit;
    }
    if (limit > p->limit_per_worker) {
        limit = p->limit_per_worker;
    }
    if (w->produced - w->collected >= limit) {
        return 0;
    }
    /* The slot at `produced` must be past the worker (a stolen slot of
     * the previous lap it has not skipped yet). */
    if (w->produced >= p->ring_cap) {
        uint64_t prev = w->produced - p->ring_cap;
        pn_worker_ctl *ctl = pn_shm_ctl(&p->shm, (uint32_t)(w - p->w));
        if (prev >= w->collected || !pn_ring_passed(ctl, prev)) {
            if (prev >= w->collected) {
                return 0;
            }
        }
    }
    if (p->max_tasks && w->assigned >= p->max_tasks) {
        return 0;
    }
    return 1;
}

static worker *
pick_worker_locked(pool *p)
{
    worker *best = NULL;
    for (uint32_t k = 0; k < p->nworkers; k++) {
        worker *w = &p->w[k];
        if (!worker_has_room(p, w)) {
            continue;
        }
        if (best == NULL
            || w->produced - w->collected < best->produced - best->collected) {
            best = w;
        }
    }
    return best;
}

/* Writes t into w's ring at `index` (mu held or the index reserved). */
static void
write_slot(pool *p, worker *w, task *t, uint64_t index, int stolen)
{
    uint32_t k = (uint32_t)(w - p->w);
    pn_worker_ctl *ctl = pn_shm_ctl(&p->shm, k);
    pn_slot *s = pn_ctl_slot(&p->shm, ctl, index);
    if (stolen) {
        /* A reserved index whose task was cancelled: the worker skips it.
         * Pairs with the acquire load in pn_ring_take. */
        atomic_store_explicit(&s->state, pn_slot_word(index, PN_SLOT_STOLEN),
                              memory_order_release);
        pn_bell_ring(&ctl->bell);
        return;
    }
    s->task_id = t->id;
    atomic_store_explicit(&s->start_ns, 0, memory_order_relaxed);
    s->msg = t->msg;
    if (t->inline_len) {
        memcpy(s->data, t->inl, t->inline_len);
    }
    pn_ring_publish(ctl, s, index);
}

/* Moves pending tasks into rings while there is room (GIL held, mu not
 * held).  Futures are marked running on the way, as the stdlib marks
 * them when they enter its call queue; a cancelled one is skipped. */
static void
dispatch(pool *p)
{
    for (;;) {
        lock_mu(p);
        if (p->pending_head == NULL || p->broken) {
            unlock_mu(p);
            return;
        }
        worker *w = pick_worker_locked(p);
        if (w == NULL) {
            unlock_mu(p);
            return;
        }
        task *t = pending_pop(p);
        uint64_t index = w->produced++;
        w->assigned++;
        w->tasks[index & (p->ring_cap - 1)] = t;
        t->worker = (int)(w - p->w);
        t->index = index;
        unlock_mu(p);

        int r = 1;
        if (!t->running_set && !p->cancel_running) {
            r = pn_future_set_running_or_notify_cancel(t->future);
            if (r < 0) {
                PyErr_WriteUnraisable(t->future);
                r = 1;
            }
            t->running_set = r;
        }
        else if (p->cancel_running) {
            PyObject *c = PyObject_CallMethodNoArgs(t->future,
                                                    p->st->str_cancelled);
            r = c != Py_True;
            Py_XDECREF(c);
            PyErr_Clear();
        }
        lock_mu(p);
        if (r == 0) {
            w->tasks[index & (p->ring_cap - 1)] = NULL;
            w->assigned--;
            write_slot(p, w, t, index, 1);
            pn__free_msg(&p->shm, &t->msg);
            unlock_mu(p);
            PyObject *f = t->future;
            t->future = NULL;
            lock_mu(p);
            p->outstanding--;
            task_free_locked(p, t);
            unlock_mu(p);
            Py_DECREF(f);
            continue;
        }
        write_slot(p, w, t, index, 0);
        unlock_mu(p);
    }
}

/* Asks the fork server for a worker in slot k (GIL held, mu not held). */
static int
start_worker(pool *p, uint32_t k)
{
    lock_mu(p);
    worker *w = &p->w[k];
    if (w->state != W_FREE) {
        unlock_mu(p);
        return 0;
    }
    pn_worker_ctl *ctl = pn_shm_ctl(&p->shm, k);
    pn_ring_reset(&p->shm, ctl);
    w->state = W_STARTING;
    w->gen++;
    w->pid = 0;
    w->pidfd = -1;
    w->produced = w->collected = w->assigned = 0;
    w->kill_reason = KILL_NONE;
    w->was_ready = 0;
    w->direct = 0;
    atomic_store_explicit(&ctl->wstatus, 0, memory_order_relaxed);
    atomic_store_explicit(&ctl->stop, 0, memory_order_relaxed);
    atomic_store_explicit(&ctl->pid, 0, memory_order_relaxed);
    atomic_store_explicit(&ctl->gen, w->gen, memory_order_relaxed);
    /* Pairs with the acquire load in the collector: STARTING is visible
     * with the reset ring (the fork server's pipe read orders the rest). */
    atomic_store_explicit(&ctl->state, PN_W_STARTING, memory_order_release);
    uint32_t gen = w->gen;
    unlock_mu(p);
    PyObject *r = PyObject_CallFunction(p->spawn_cb, "kk", (unsigned long)k,
                                        (unsigned long)gen);
    if (r == NULL) {
        lock_mu(p);
        w->state = W_FREE;
        atomic_store_explicit(&ctl->state, PN_W_FREE, memory_order_relaxed);
        unlock_mu(p);
        return -1;
    }
    Py_DECREF(r);
    return 0;
}

/* Starts workers lazily: one more whenever every started one has work. */
static int
maybe_start_workers(pool *p)
{
    uint32_t free_k = UINT32_MAX;
    int idle = 0;
    lock_mu(p);
    if (p->shutting_down || p->broken) {
        unlock_mu(p);
        return 0;
    }
    for (uint32_t k = 0; k < p->nworkers; k++) {
        worker *w = &p->w[k];
        if (w->state == W_FREE) {
            if (free_k == UINT32_MAX) {
                free_k = k;
            }
        }
        else if (w->produced == w->collected && w->kill_reason == KILL_NONE
                 && (!p->max_tasks || w->assigned < p->max_tasks)) {
            idle = 1;
        }
    }
    int need = free_k != UINT32_MAX && !idle
               && (p->pending_head != NULL || p->outstanding > 0);
    unlock_mu(p);
    return need ? start_worker(p, free_k) : 0;
}

/* -------------------------------------------------------------- submit */

static void
break_pool(pool *p, PyObject *reason);
static void
on_future_done(PyObject *fut, void *arg);
static const pn_future_driver pool_driver;

static PyObject *
pool_submit(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
            PyObject *kwnames)
{
    pool *p = (pool *)self;
    pn_state *st = p->st;
    if (nargs != 4 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError,
                        "submit(fn, args, kwargs, timeout) takes 4 args");
        return NULL;
    }
    PyObject *fn = args[0], *fargs = args[1], *fkw = args[2];
    double timeout = 0;
    if (args[3] != Py_None) {
        timeout = PyFloat_AsDouble(args[3]);
        if (timeout == -1.0 && PyErr_Occurred()) {
            return NULL;
        }
        if (!(timeout > 0)) {
            PyErr_SetString(PyExc_ValueError, "timeout must be > 0");
            return NULL;
        }
    }
    if (p->fork_gen != pn_fork_generation() || getpid() != p->owner_pid) {
        PyErr_SetString(PyExc_RuntimeError,
                        "this ProcessPoolExecutor belongs to the parent "
                        "process (fork); create a new one in the child");
        return NULL;
    }
    if (p->broken) {
        PyErr_SetObject(st->BrokenProcessPool, p->broken_reason);
        return NULL;
    }
    if (p->shutting_down) {
        PyErr_SetString(PyExc_RuntimeError,
                        "cannot schedule new futures after shutdown");
        return NULL;
    }
    if (!PyCallable_Check(fn)) {
        PyErr_Format(PyExc_TypeError, "%R is not callable", fn);
        return NULL;
    }

    pn__bufsink *sink = pn__bufsink_new(st, p->threshold);
    if (sink == NULL) {
        return NULL;
    }
    PyObject *payload = PyTuple_Pack(3, fn, fargs, fkw);
    PyObject *body = payload ? pn__dumps5(p->dumps, p->cloud_dumps,
                                      p->kw_buffer_callback, payload, sink)
                             : NULL;
    Py_XDECREF(payload);
    if (body == NULL) {
        Py_DECREF(sink);
        return NULL;
    }
    /* A single pickle larger than the whole arena can never be sent. */
    uint64_t need = pn__msg_size(body, sink);
    if (need + need / 4 + 65536 > p->arena.size) {
        Py_DECREF(body);
        Py_DECREF(sink);
        return PyErr_Format(PyExc_ValueError,
                            "task pickles to %llu bytes, more than the "
                            "pool's arena (%llu bytes; see arena_size=)",
                            (unsigned long long)need,
                            (unsigned long long)p->arena.size);
    }
    PyObject *fut = pn_future_new(st);
    if (fut == NULL) {
        Py_DECREF(body);
        Py_DECREF(sink);
        return NULL;
    }
    lock_mu(p);
    task *t = task_alloc_locked(p);
    unlock_mu(p);
    if (t == NULL) {
        Py_DECREF(fut);
        Py_DECREF(body);
        Py_DECREF(sink);
        return PyErr_NoMemory();
    }
    {
        /* The record keeps its inline buffer when recycled: no
         * allocation per task once warm. */
        size_t blen = (size_t)PyBytes_GET_SIZE(body);
        if (blen <= PN_SLOT_INLINE && blen > t->inl_cap) {
            size_t cap = blen < 256 ? 256 : PN_SLOT_INLINE;
            unsigned char *n = realloc(t->inl, cap);
            if (n == NULL) {
                PyErr_NoMemory();
                goto error;
            }
            t->inl = n;
            t->inl_cap = (uint32_t)cap;
        }
    }
    for (;;) {
        lock_mu(p);
        int r = pn__store_msg(&p->arena, p->shm.base, body, sink, &t->msg, t->inl,
                          &t->inline_len);
        if (r == 1) {
            /* Full of free blocks of the wrong sizes with nothing in use:
             * start the arena over (no process holds any of its blocks). */
            pn_arena_reclaim(&p->arena);
            if (p->arena.used == 0) {
                pn_arena_init(&p->arena, p->shm.base, p->arena.off,
                              p->arena.size);
                r = pn__store_msg(&p->arena, p->shm.base, body, sink, &t->msg,
                              t->inl, &t->inline_len);
            }
        }
        unlock_mu(p);
        if (r == 0) {
            break;
        }
        if (r < 0 || p->broken) {
            goto error;
        }
        /* The arena is full of arguments of running tasks: wait for some
         * to finish (back-pressure), Ctrl-C still works. */
        _Atomic uint32_t dummy = 0;
        if (wait_word_gil(&dummy, 0, pn_monotonic_ns() + 1000000) < 0) {
            goto error;
        }
    }
    Py_DECREF(body);
    body = NULL;
    Py_CLEAR(sink);
    t->future = Py_NewRef(fut);
    pn_future_set_driver(fut, &pool_driver, self);
    t->timeout_ns = timeout > 0 ? (int64_t)(timeout * 1e9) : p->task_timeout_ns;
    lock_mu(p);
    t->id = p->next_id++;
    p->outstanding++;
    pending_push_back(p, t);
    unlock_mu(p);
    if (p->cancel_running
        && pn_future_set_done_hook(fut, on_future_done, t) < 0) {
        PyErr_WriteUnraisable(fut);
    }
    if (maybe_start_workers(p) < 0) {
        /* The fork server is gone: the pool cannot run anything. */
        PyObject *exc = pn_fetch_exception();
        PyObject *reason = PyUnicode_FromFormat(
            "cannot start a worker process: %S", exc);
        Py_XDECREF(exc);
        if (reason == NULL) {
            PyErr_Clear();
            reason = PyUnicode_FromString("cannot start a worker process");
        }
        if (reason != NULL) {
            break_pool(p, reason);
            Py_DECREF(reason);
        }
        PyErr_Clear();
    }
    dispatch(p);
    return fut;

error:
    Py_XDECREF(body);
    Py_XDECREF(sink);
    Py_DECREF(fut);
    lock_mu(p);
    task_free_locked(p, t);
    unlock_mu(p);
    if (!PyErr_Occurred()) {
        PyErr_SetObject(st->BrokenProcessPool, p->broken_reason);
    }
    return NULL;
}

/* ---------------------------------------------------- cancel running */

/* The future's completion hook (cancel_running=True only), GIL held.  A
 * cancel of a task still in a ring takes it back; of a running one kills
 * its worker (the death handler then finds the future cancelled). */
static void
on_future_done(PyObject *fut, void *arg)
{
    task *t = arg;
    pool *p = t->pool;
    if (t->future != fut || t->running_set) {
        return;                 /* completed by us, not a cancel */
    }
    PyObject *c = PyObject_CallMethodNoArgs(fut, p->st->str_cancelled);
    int cancelled = c == Py_True;
    Py_XDECREF(c);
    PyErr_Clear();
    if (!cancelled) {
        return;
    }
    lock_mu(p);
    if (t->worker >= 0) {
        worker *w = &p->w[t->worker];
        pn_worker_ctl *ctl = pn_shm_ctl(&p->shm, (uint32_t)t->worker);
        pn_slot *s = pn_ctl_slot(&p->shm, ctl, t->index);
        if (!pn_ring_steal(s, t->index)
            && pn_ring_state(s, t->index) == PN_SLOT_RUNNING
            && w->kill_reason == KILL_NONE && w->pidfd >= 0) {
            w->kill_reason = KILL_CANCEL;
            pn_pidfd_kill(w->pidfd, SIGKILL);
        }
    }
    unlock_mu(p);
}

/* ------------------------------------------------ collecting results */

/* Turns a DONE slot into its future's outcome (GIL held, mu not held). */
static void
complete_from_slot(pool *p, uint32_t k, pn_slot *s, task *t)
{
    unsigned char *base = p->shm.base;
    PyObject *value = NULL, *exc = NULL, *bufs = NULL, *body = NULL;
    pn_msg *m = &s->msg;

    bufs = PyList_New(m->nbufs);
    if (bufs == NULL) {
        goto error;
    }
    for (uint32_t i = 0; i < m->nbufs; i++) {
        /* One copy out of the worker's arena: results may live as long as
         * the caller likes, and the worker reuses its arena at once. */
        PyObject *b = PyByteArray_FromStringAndSize(
            (char *)base + m->buf_off[i], (Py_ssize_t)m->buf_len[i]);
        if (b == NULL) {
            goto error;
        }
        PyList_SET_ITEM(bufs, i, b);
    }
    body = PyMemoryView_FromMemory((char *)pn__msg_body(base, s),
                                   (Py_ssize_t)m->body_len, PyBUF_READ);
    if (body == NULL) {
        goto error;
    }
    if (s->status == PN_RES_ERROR) {
        PyObject *text = PyUnicode_DecodeUTF8((char *)pn__msg_body(base, s),
                                              (Py_ssize_t)m->body_len,
                                              "replace");
        exc = text ? PyObject_CallOneArg(p->st->PistonError, text) : NULL;
        Py_XDECREF(text);
        if (exc == NULL) {
            goto error;
        }
    }
    else {
        PyObject *argv[2] = {body, bufs};
        PyObject *obj = PyObject_Vectorcall(p->loads, argv, 1, p->kw_buffers);
        if (obj == NULL) {
            goto error;
        }
        if (s->status == PN_RES_OK) {
            value = obj;
        }
        else {
            exc = PyObject_CallOneArg(p->rebuild_exc, obj);
            Py_DECREF(obj);
            if (exc == NULL) {
                goto error;
            }
        }
    }
    goto done;
error:
    Py_CLEAR(value);
    exc = pn_fetch_exception();
done:
    if (body != NULL) {
        PyObject *r = PyObject_CallMethodNoArgs(body, p->st->str_release);
        Py_XDECREF(r);
        PyErr_Clear();
        Py_DECREF(body);
    }
    Py_XDECREF(bufs);
    pn__free_msg(&p->shm, m);
    /* Arguments the worker still holds (kept in a global, say) stay
     * allocated until that worker exits. */
    lock_mu(p);
    worker *w = &p->w[k];
    int64_t run = s->run_ns > 0 ? s->run_ns : 1;
    p->ewma_ns = p->ewma_ns ? (p->ewma_ns * 7 + run) / 8 : run;
    for (uint32_t i = 0; i <= t->msg.nbufs; i++) {
        uint64_t off = i < t->msg.nbufs ? t->msg.buf_off[i] : t->msg.body_off;
        if (off == 0 || pn_arena_block_state(p->shm.base, p->shm.size, off)
                            != PN_BLOCK_USED) {
            continue;
        }
        if (w->nretained == w->cap_retained) {
            size_t nc = w->cap_retained ? 2 * w->cap_retained : 16;
            uint64_t *nr = realloc(w->retained, nc * sizeof(uint64_t));
            if (nr == NULL) {
                continue;       /* leaks the block rather than crash */
            }
            w->retained = nr;
            w->cap_retained = nc;
        }
        w->retained[w->nretained++] = off;
    }
    unlock_mu(p);
    finish_task(p, t, value, exc);
    Py_XDECREF(value);
    Py_XDECREF(exc);
}

static void
release_retained_locked(pool *p, worker *w)
{
    for (size_t i = 0; i < w->nretained; i++) {
        pn_arena_free(p->shm.base, p->shm.size, w->retained[i]);
    }
    w->nretained = 0;
}

/* Claims worker k's slots for collecting (GIL held): collecting may
 * release the GIL (unpickling, callbacks), and a slot must be completed
 * once.  0 when another thread holds them. */
static int
claim_worker(pool *p, worker *w)
{
    lock_mu(p);
    int ok = !w->collecting;
    w->collecting = 1;
    unlock_mu(p);
    return ok;
}

static void
unclaim_worker(pool *p, worker *w)
{
    lock_mu(p);
    w->collecting = 0;
    unlock_mu(p);
}

/* Collects every finished slot of worker k, claimed by the caller;
 * returns how many.  `plain_only` stops at a future whose completion
 * would run Python code (a thread waiting in result() leaves those to the
 * collector thread, where callbacks always ran). */
static int
collect_claimed(pool *p, uint32_t k, int plain_only)
{
    worker *w = &p->w[k];
    pn_worker_ctl *ctl = pn_shm_ctl(&p->shm, k);
    int n = 0;
    for (;;) {
        lock_mu(p);
        uint64_t idx = w->collected;
        if (idx >= w->produced) {
            unlock_mu(p);
            break;
        }
        pn_slot *s = pn_ctl_slot(&p->shm, ctl, idx);
        unsigned state = pn_ring_state(s, idx);
        task *t = w->tasks[idx & (p->ring_cap - 1)];
        if (state == PN_SLOT_STOLEN) {
            /* Moved to another worker, or cancelled while queued. */
            w->tasks[idx & (p->ring_cap - 1)] = NULL;
            w->collected++;
            unlock_mu(p);
            if (t != NULL && t->worker == (int)k && t->index == idx) {
                /* Cancelled (not moved): drop it. */
                pn__free_msg(&p->shm, &t->msg);
                PyObject *f = t->future;
                t->future = NULL;
                lock_mu(p);
                p->outstanding--;
                task_free_locked(p, t);
                unlock_mu(p);
                Py_XDECREF(f);
            }
            n++;
            continue;
        }
        unlock_mu(p);
        if (state != PN_SLOT_DONE
            || (plain_only && pn_future_observed(t->future))) {
            break;
        }
        complete_from_slot(p, k, s, t);
        lock_mu(p);
        w->tasks[idx & (p->ring_cap - 1)] = NULL;
        w->collected++;
        unlock_mu(p);
        n++;
    }
    return n;
}

/* Collects worker k's finished slots unless another thread is at it. */
static int
collect_worker(pool *p, uint32_t k, int plain_only)
{
    worker *w = &p->w[k];
    if (!claim_worker(p, w)) {
        return 0;
    }
    int n = collect_claimed(p, k, plain_only);
    unclaim_worker(p, w);
    return n;
}

/* -------------------------------------------------------- dead workers */

/* A dead worker's tasks and replacement.  Returns without doing anything
 * while another thread collects the worker's slots (the collector comes
 * back: the worker still shows as exited). */
static void
handle_exit(pool *p, uint32_t k, int wstatus)
{
    worker *w = &p->w[k];
    pn_worker_ctl *ctl = pn_shm_ctl(&p->shm, k);
    char why[96];
    if (!claim_worker(p, w)) {
        return;
    }
    pn_wstatus_text(wstatus, why, sizeof(why));
    collect_claimed(p, k, 0);
    int startfail = !w->was_ready;
    uint32_t wstate = atomic_load_explicit(&ctl->state, memory_order_acquire);
    (void)wstate;

    for (;;) {
        lock_mu(p);
        uint64_t idx = w->collected;
        if (idx >= w->produced) {
            unlock_mu(p);
            break;
        }
        pn_slot *s = pn_ctl_slot(&p->shm, ctl, idx);
        task *t = w->tasks[idx & (p->ring_cap - 1)];
        unsigned state = pn_ring_state(s, idx);
        w->tasks[idx & (p->ring_cap - 1)] = NULL;
        w->collected++;
        if (t == NULL || t->worker != (int)k || t->index != idx) {
            unlock_mu(p);
            continue;
        }
        if (state == PN_SLOT_QUEUED && !p->broken
            && w->kill_reason != KILL_TERMINATE) {
            /* Never started: runs elsewhere, nothing lost. */
            pending_push_front(p, t);
            unlock_mu(p);
            continue;
        }
        unlock_mu(p);
        /* The task it was running (or everything, when the pool is being
         * torn down): its blocks die with the worker. */
        pn__free_msg(&p->shm, &t->msg);
        if (state == PN_SLOT_DONE) {
            complete_from_slot(p, k, s, t);
        }
        else if (w->kill_reason == KILL_TIMEOUT && state == PN_SLOT_RUNNING) {
            char secs[32];
            snprintf(secs, sizeof(secs), "%g", t->timeout_ns / 1e9);
            fail_task(p, t, p->st->TaskTimeoutError,
                      "task ran longer than its timeout of %s s; worker "
                      "process %d was killed and replaced", secs,
                      (int)w->pid);
        }
        else if (w->kill_reason == KILL_TERMINATE) {
            fail_task(p, t, p->st->BrokenProcessPool,
                      "worker process %d was terminated by "
                      "terminate_workers()/kill_workers() (%s)",
                      (int)w->pid, why);
        }
        else if (p->broken && state != PN_SLOT_RUNNING) {
            fail_task(p, t, p->st->BrokenProcessPool, "%S",
                      p->broken_reason);
        }
        else {
            fail_task(p, t, p->st->WorkerCrashedError,
                      "worker process %d died while running the task "
                      "(%s)%s", (int)w->pid, why,
                      p->broken || p->shutting_down
                          ? "" : "; the pool started a replacement");
        }
    }
    if (w->direct && w->pidfd >= 0) {
        /* Our own child, not reaped yet when it reported a failed
         * initializer: make sure it is gone and reap it (no zombie). */
        int ws;
        if (pn_pidfd_reap(w->pidfd, &ws) == 0) {
            pn_pidfd_kill(w->pidfd, SIGKILL);
            pn_pidfd_wait(w->pidfd, 5000);
            pn_pidfd_reap(w->pidfd, &ws);
        }
    }
    lock_mu(p);
    release_retained_locked(p, w);
    if (w->pidfd >= 0) {
        close(w->pidfd);
        w->pidfd = -1;
    }
    w->state = W_FREE;
    w->produced = w->collected = 0;
    w->collecting = 0;
    atomic_store_explicit(&ctl->state, PN_W_FREE, memory_order_relaxed);
    int restart = !p->shutting_down && !p->broken;
    if (startfail && wstate != PN_W_INITFAIL && w->kill_reason == KILL_NONE) {
        p->nstartfail++;
    }
    int too_many = p->nstartfail >= 3;
    unlock_mu(p);
    if (wstate == PN_W_INITFAIL) {
        pn_slot *s0 = pn_ctl_slot(&p->shm, ctl, 0);
        PyObject *text = PyUnicode_DecodeUTF8(
            (char *)s0->data,
            (Py_ssize_t)strnlen((char *)s0->data, PN_SLOT_INLINE - 1),
            "replace");
        PyObject *reason = text ? PyUnicode_FromFormat(
            "A child process terminated abruptly, the process pool is not "
            "usable anymore: the initializer raised:\n%U", text) : NULL;
        Py_XDECREF(text);
        if (reason) {
            break_pool(p, reason);
            Py_DECREF(reason);
        }
        PyErr_Clear();
        return;
    }
    if (too_many) {
        PyObject *reason = PyUnicode_FromFormat(
            "worker processes keep dying before they start (last: %s)", why);
        if (reason) {
            break_pool(p, reason);
            Py_DECREF(reason);
        }
        PyErr_Clear();
        return;
    }
    if (restart) {
        lock_mu(p);
        int want = p->pending_head != NULL || p->outstanding > 0;
        unlock_mu(p);
        if (want && start_worker(p, k) < 0) {
            PyErr_Clear();
        }
    }
}

/* Fails everything not finished and refuses new work (GIL held). */
static void
break_pool(pool *p, PyObject *reason)
{
    lock_mu(p);
    if (!p->broken) {
        p->broken = 1;
        Py_XSETREF(p->broken_reason, Py_NewRef(reason));
    }
    task *list = p->pending_head;
    p->pending_head = p->pending_tail = NULL;
    for (uint32_t k = 0; k < p->nworkers; k++) {
        worker *w = &p->w[k];
        if (w->state != W_FREE && w->pidfd >= 0) {
            w->kill_reason = KILL_STOP;
            pn_pidfd_kill(w->pidfd, SIGKILL);
        }
    }
    unlock_mu(p);
    while (list) {
        task *t = list;
        list = t->next;
        pn__free_msg(&p->shm, &t->msg);
        fail_task(p, t, p->st->BrokenProcessPool, "%S", reason);
    }
}

/* ----------------------------------------------------- the collector */

typedef struct {
    pool *p;
} ready_arg;

/* A started worker's control-block state `cs` that only the collector
 * handles: it came up, its initializer failed, or it exited. */
static inline int
worker_changed(const worker *w, uint32_t cs)
{
    return cs == PN_W_EXITED || cs == PN_W_INITFAIL
           || (cs == PN_W_READY && !w->was_ready);
}

static int
any_done(void *arg)
{
    pool *p = ((ready_arg *)arg)->p;
    if (atomic_load_explicit(&p->stop_thread, memory_order_acquire)) {
        return 1;
    }
    for (uint32_t k = 0; k < p->nworkers; k++) {
        worker *w = &p->w[k];
        if (w->state == W_FREE) {
            continue;
        }
        pn_worker_ctl *ctl = pn_shm_ctl(&p->shm, k);
        uint32_t cs = atomic_load_explicit(&ctl->state, memory_order_acquire);
        if (worker_changed(w, cs)) {
            return 1;
        }
        uint64_t idx = w->collected;
        if (idx < w->produced) {
            unsigned s = pn_ring_state(pn_ctl_slot(&p->shm, ctl, idx), idx);
            if (s == PN_SLOT_DONE || s == PN_SLOT_STOLEN) {
                return 1;
            }
        }
    }
    return 0;
}

/* Timeouts and pidfd checks (mu held, no GIL); returns the next deadline
 * and sets *events when something needs the GIL. */
static int64_t
check_workers_locked(pool *p, int heartbeat, int *events)
{
    int64_t now = pn_monotonic_ns(), next = now + HEARTBEAT_NS;
    for (uint32_t k = 0; k < p->nworkers; k++) {
        worker *w = &p->w[k];
        if (w->state == W_FREE) {
            continue;
        }
        pn_worker_ctl *ctl = pn_shm_ctl(&p->shm, k);
        uint32_t cs = atomic_load_explicit(&ctl->state, memory_order_acquire);
        if (worker_changed(w, cs)) {
            *events = 1;
        }
        if (w->pidfd < 0) {
            pid_t pid = atomic_load_explicit(&ctl->pid, memory_order_acquire);
            if (pid > 0) {
                w->pid = pid;
                w->pidfd = pn_pidfd_open(pid);
            }
        }
        else if (heartbeat && pn_pidfd_exited(w->pidfd) == 1
                 && cs != PN_W_EXITED) {
            /* Exited but the fork server did not report it: it is gone
             * too.  Treated as a crash. */
            *events = 1;
        }
        if (w->kill_reason != KILL_NONE || w->collected >= w->produced) {
            continue;
        }
        uint64_t taken = atomic_load_explicit(&ctl->taken,
                                              memory_order_acquire);
        if (taken == 0 || taken - 1 < w->collected) {
            continue;
        }
        uint64_t idx = taken - 1;
        task *t = w->tasks[idx & (p->ring_cap - 1)];
        pn_slot *s = pn_ctl_slot(&p->shm, ctl, idx);
        if (t == NULL || t->timeout_ns <= 0
            || pn_ring_state(s, idx) != PN_SLOT_RUNNING) {
            continue;
        }
        int64_t start = atomic_load_explicit(&s->start_ns,
                                             memory_order_relaxed);
        if (start == 0) {
            start = now;
        }
        int64_t deadline = start + t->timeout_ns;
        if (now >= deadline && w->pidfd >= 0) {
            w->kill_reason = KILL_TIMEOUT;
            pn_pidfd_kill(w->pidfd, SIGKILL);
        }
        else if (deadline < next) {
            next = deadline;
        }
    }
    return next;
}

/* The GIL part of one collector round. */
static void
collector_round(pool *p)
{
    /* First, so the deaths it causes are reported as such. */
    if (p->server_pidfd >= 0 && !p->broken && !p->shutting_down
        && pn_pidfd_exited(p->server_pidfd) == 1) {
        PyObject *reason = PyUnicode_FromString(
            "the pool's fork server process died; the pool is not usable "
            "anymore");
        if (reason) {
            break_pool(p, reason);
            Py_DECREF(reason);
        }
        PyErr_Clear();
    }
    for (uint32_t k = 0; k < p->nworkers; k++) {
        worker *w = &p->w[k];
        if (w->state == W_FREE) {
            continue;
        }
        pn_worker_ctl *ctl = pn_shm_ctl(&p->shm, k);
        uint32_t cs = atomic_load_explicit(&ctl->state, memory_order_acquire);
        if (cs == PN_W_READY && !w->was_ready) {
            lock_mu(p);
            w->was_ready = 1;
            w->state = W_LIVE;
            p->nstartfail = 0;
            unlock_mu(p);
        }
        collect_worker(p, k, 0);
        int dead = cs == PN_W_EXITED || cs == PN_W_INITFAIL;
        int wstatus = atomic_load_explicit(&ctl->wstatus,
                                           memory_order_relaxed);
        if (!dead && w->direct && w->pidfd >= 0) {
            /* Our own child: nobody reports it, we reap it. */
            int reaped = pn_pidfd_reap(w->pidfd, &wstatus);
            if (reaped == -ECHILD) {
                /* Reaped by someone else (os.wait()): status lost. */
                reaped = pn_pidfd_exited(w->pidfd);
                wstatus = SIGKILL;
            }
            dead = reaped == 1;
        }
        else if (!dead && w->pidfd >= 0 && pn_pidfd_exited(w->pidfd) == 1) {
            if (cs != PN_W_EXITED) {
                /* No report from the fork server (it died): give it a
                 * moment, then assume the worker was killed. */
                dead = p->server_pidfd >= 0
                       && pn_pidfd_exited(p->server_pidfd) == 1;
                wstatus = SIGKILL;
            }
        }
        if (dead) {
            handle_exit(p, k, wstatus);
        }
    }
    if (maybe_start_workers(p) < 0) {
        PyErr_WriteUnraisable((PyObject *)p);
    }
    dispatch(p);
    /* Work stealing: an idle worker takes queued tasks of a busy one. */
    lock_mu(p);
    int stole = 0;
    if (p->pending_head == NULL) {
        for (uint32_t k = 0; k < p->nworkers; k++) {
            worker *idle = &p->w[k];
            if (idle->state != W_LIVE || idle->produced != idle->collected
                || idle->kill_reason != KILL_NONE) {
                continue;
            }
            for (uint32_t j = 0; j < p->nworkers; j++) {
                worker *v = &p->w[j];
                if (j == k || v->state == W_FREE
                    || v->produced - v->collected < 2) {
                    continue;
                }
                pn_worker_ctl *vc = pn_shm_ctl(&p->shm, j);
                uint64_t half = (v->produced - v->collected) / 2;
                for (uint64_t i = v->produced; i-- > v->produced - half;) {
                    task *t = v->tasks[i & (p->ring_cap - 1)];
                    if (t == NULL
                        || !pn_ring_steal(pn_ctl_slot(&p->shm, vc, i), i)) {
                        break;
                    }
                    v->tasks[i & (p->ring_cap - 1)] = NULL;
                    v->assigned--;
                    t->running_set = t->running_set || !p->cancel_running;
                    pending_push_front(p, t);
                    stole++;
                }
                break;
            }
        }
    }
    unlock_mu(p);
    if (stole) {
        dispatch(p);
    }
}

/* ------------------------------------- result() collecting its own */

/* One stand-in round (GIL held): collects the finished slots of started
 * workers.  Returns how many, or -1 when something only the collector
 * thread handles is there (a worker started, failed or died). */
static int
help_collect(pool *p)
{
    int n = 0;
    for (uint32_t k = 0; k < p->nworkers; k++) {
        worker *w = &p->w[k];
        if (w->state == W_FREE) {
            continue;
        }
        pn_worker_ctl *ctl = pn_shm_ctl(&p->shm, k);
        uint32_t cs = atomic_load_explicit(&ctl->state, memory_order_acquire);
        if (cs == PN_W_STARTING) {
            continue;
        }
        if (cs != PN_W_READY || !w->was_ready) {
            return -1;
        }
        n += collect_worker(p, k, 1);
    }
    if (n > 0) {
        /* Collected slots are ring room: refill it from `pending` as the
         * collector would (it sleeps while we poll), or workers run dry
         * (100k submits then results: 136k -> 32k tasks/s without). */
        dispatch(p);
    }
    return n;
}

/* pn_future_drive of the pool's futures: the thread in result() polls the
 * shared region itself (GIL released) and, when a result is there, turns
 * it into its future with the GIL it is about to take anyway.  So no
 * futex wake-up and no GIL hand-off from the collector thread sit between
 * a worker's answer and the caller; the collector sleeps meanwhile (the
 * worker's lazy ring does not wake it) and gets rung when the waiter
 * leaves work behind.  Polls for at most the learnt help budget. */
static int
pool_drive(PyObject *driver, PyObject *fut, int64_t deadline,
           int64_t *spun_ns)
{
    pool *p = (pool *)driver;
    pn_future *f = (pn_future *)fut;
    if (pn_ncpus() < 2 || getpid() != p->owner_pid
        || p->fork_gen != pn_fork_generation()) {
        return 0;
    }
    pn_bell *bell = &pn_shm_hdr(&p->shm)->parent_bell;
    ready_arg ra = {p};
    int64_t started = pn_monotonic_ns();
    int64_t ns = pn_spin_budget_get(&help_budget);
    if (deadline != PN_FOREVER && deadline - started < ns) {
        ns = deadline - started;
    }
    pn_spinner spin;
    pn_spinner_init(&spin, ns);
    int done = 0, err = 0;
    pn_bell_poll_enter(bell);
    for (;;) {
        int ready = 0;
        Py_BEGIN_ALLOW_THREADS
        do {
            /* Pairs with the seq_cst store of a completion. */
            if (atomic_load_explicit(&f->state, memory_order_acquire)
                >= PN_FUT_CANCELLED) {
                break;
            }
            if (any_done(&ra)) {
                ready = 1;
                break;
            }
        } while (pn_spinner_step(&spin));
        Py_END_ALLOW_THREADS
        done = atomic_load_explicit(&f->state, memory_order_acquire)
               >= PN_FUT_CANCELLED;
        if (done || !ready || help_collect(p) <= 0) {
            break;
        }
        if (PyErr_CheckSignals() < 0) {
            err = 1;
            break;
        }
    }
    pn_bell_poll_leave(bell, any_done, &ra);
    *spun_ns = pn_monotonic_ns() - started;
    if (done) {
        pn_spin_budget_learn(&help_budget, *spun_ns);
    }
    else if (err) {
        pn_spin_budget_learn(&help_budget, INT64_MAX);
    }
    return err ? -1 : done;
}

/* The wait pool_drive gave up on took waited_ns in all. */
static void
pool_drive_learn(PyObject *driver, int64_t spun_ns, int64_t waited_ns)
{
    (void)driver;
    pn_spin_budget_missed(&help_budget, spun_ns, waited_ns);
}

static const pn_future_driver pool_driver = {pool_drive, pool_drive_learn};

static int
all_workers_gone_locked(pool *p)
{
    for (uint32_t k = 0; k < p->nworkers; k++) {
        if (p->w[k].state != W_FREE) {
            return 0;
        }
    }
    return 1;
}

static void *
collector_main(void *arg)
{
    pool *p = arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    pn_shm_header *h = pn_shm_hdr(&p->shm);
    int64_t stop_deadline = 0;
    int64_t next_hb = pn_monotonic_ns() + HEARTBEAT_NS;

    for (;;) {
        int events = 0;
        pthread_mutex_lock(&p->mu);
        int64_t now = pn_monotonic_ns();
        int hb = now >= next_hb;
        if (hb) {
            next_hb = now + HEARTBEAT_NS;
        }
        int64_t deadline = check_workers_locked(p, hb, &events);
        if (deadline > next_hb) {
            deadline = next_hb;
        }
        int draining = p->shutting_down && p->outstanding == 0;
        int gone = all_workers_gone_locked(p);
        pthread_mutex_unlock(&p->mu);

        if (draining) {
            if (gone) {
                break;
            }
            /* Ask every worker to exit, then insist. */
            now = pn_monotonic_ns();
            pthread_mutex_lock(&p->mu);
            if (stop_deadline == 0) {
                stop_deadline = now + STOP_GRACE_NS;
                for (uint32_t k = 0; k < p->nworkers; k++) {
                    if (p->w[k].state != W_FREE) {
                        pn_worker_ctl *c = pn_shm_ctl(&p->shm, k);
                        atomic_store_explicit(&c->stop, 1,
                                              memory_order_release);
                        pn_bell_ring(&c->bell);
                    }
                }
            }
            else if (now >= stop_deadline) {
                for (uint32_t k = 0; k < p->nworkers; k++) {
                    worker *w = &p->w[k];
                    if (w->state != W_FREE && w->pidfd >= 0) {
                        w->kill_reason = KILL_STOP;
                        pn_pidfd_kill(w->pidfd, SIGKILL);
                    }
                }
                stop_deadline = now + STOP_GRACE_NS;
            }
            pthread_mutex_unlock(&p->mu);
            if (deadline > now + 10 * 1000 * 1000) {
                deadline = now + 10 * 1000 * 1000;
            }
        }
        if (!events) {
            ready_arg ra = {p};
            int r = pn_bell_wait(&h->parent_bell, any_done, &ra, deadline,
                                 p->outstanding ? &p->collect_budget
                                                : NULL);
            if (atomic_load_explicit(&p->stop_thread, memory_order_acquire)) {
                break;
            }
            if (r != 1 && !any_done(&ra) && !draining
                && pn_monotonic_ns() < next_hb) {
                /* Timeout check or spurious wake: loop to recheck. */
                pthread_mutex_lock(&p->mu);
                events = 0;
                check_workers_locked(p, 0, &events);
                pthread_mutex_unlock(&p->mu);
                if (!events) {
                    continue;
                }
            }
        }
        PyGILState_STATE g = PyGILState_Ensure();
        collector_round(p);
        PyGILState_Release(g);
    }
    atomic_store_explicit(&p->thread_done, 1, memory_order_release);
    pn_futex_wake(&p->thread_done, INT32_MAX, 0);
    /* The thread's own reference (taken when it started), dropped last:
     * the pool outlives every round of the collector. */
#if PY_VERSION_HEX >= 0x030D0000
    if (!Py_IsFinalizing()) {
#else
    if (!_Py_IsFinalizing()) {
#endif
        PyGILState_STATE g = PyGILState_Ensure();
        Py_DECREF(p);
        PyGILState_Release(g);
    }
    return NULL;
}

/* ============================================================ the type */

static int
pool_init_impl(pool *p, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"nworkers", "dumps", "loads", "cloud_dumps",
                             "rebuild_exc", "spawn_cb", "ring_cap",
                             "arena_size", "worker_arena_size", "threshold",
                             "max_tasks_per_child", "task_timeout",
                             "cancel_running", "per_worker", NULL};
    unsigned int nworkers, ring_cap = 64, per_worker = 0;
    unsigned long long arena_size = UINT64_C(4) << 30;
    unsigned long long warena_size = UINT64_C(1) << 30;
    unsigned long long max_tasks = 0;
    Py_ssize_t threshold = BUF_THRESHOLD_DEFAULT;
    double task_timeout = 0;
    int cancel_running = 0;
    PyObject *dumps, *loads, *cloud, *rebuild, *spawn;
    if (!PyArg_ParseTupleAndKeywords(
            args, kw, "IOOOOO|IKKnKdpI:ProcessPoolCore", kwlist, &nworkers,
            &dumps, &loads, &cloud, &rebuild, &spawn, &ring_cap, &arena_size,
            &warena_size, &threshold, &max_tasks, &task_timeout,
            &cancel_running, &per_worker)) {
        return -1;
    }
    if (nworkers == 0 || nworkers > 4096) {
        PyErr_SetString(PyExc_ValueError, "max_workers must be in 1..4096");
        return -1;
    }
    p->nworkers = nworkers;
    p->ring_cap = ring_cap;
    p->limit_per_worker = per_worker ? per_worker : ring_cap;
    if (p->limit_per_worker > ring_cap) {
        p->limit_per_worker = ring_cap;
    }
    p->max_tasks = max_tasks;
    p->task_timeout_ns = task_timeout > 0 ? (int64_t)(task_timeout * 1e9) : 0;
    p->cancel_running = cancel_running;
    p->threshold = threshold > 0 ? threshold : BUF_THRESHOLD_DEFAULT;
    p->dumps = Py_NewRef(dumps);
    p->loads = Py_NewRef(loads);
    p->cloud_dumps = cloud == Py_None ? NULL : Py_NewRef(cloud);
    p->rebuild_exc = Py_NewRef(rebuild);
    p->spawn_cb = Py_NewRef(spawn);
    p->kw_buffer_callback = Py_BuildValue("(s)", "buffer_callback");
    p->kw_buffers = Py_BuildValue("(s)", "buffers");
    p->broken_reason = PyUnicode_FromString("the pool is broken");
    if (!p->kw_buffer_callback || !p->kw_buffers || !p->broken_reason) {
        return -1;
    }
    int err = pn_shm_create(&p->shm, nworkers, ring_cap, arena_size,
                            warena_size);
    if (err < 0) {
        pn_raise_errno(-err);
        return -1;
    }
    pn_shm_header *h = pn_shm_hdr(&p->shm);
    pn_arena_init(&p->arena, p->shm.base, h->arena_off, h->arena_size);
    p->w = calloc(nworkers, sizeof(worker));
    if (p->w == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (uint32_t k = 0; k < nworkers; k++) {
        p->w[k].pidfd = -1;
        p->w[k].tasks = calloc(ring_cap, sizeof(task *));
        if (p->w[k].tasks == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    p->fork_gen = pn_fork_generation();
    p->owner_pid = getpid();
    return 0;
}

static PyObject *
pool_new(PyTypeObject *tp, PyObject *args, PyObject *kw)
{
    pool *p = (pool *)tp->tp_alloc(tp, 0);
    if (p == NULL) {
        return NULL;
    }
    p->st = pn_state_from_type(tp);
    p->shm.fd = -1;
    p->server_pidfd = -1;
    p->collect_budget = (pn_spin_budget)PN_SPIN_BUDGET_INIT(COLLECT_SPIN_NS);
    pthread_mutex_init(&p->mu, NULL);
    if (p->st == NULL || pool_init_impl(p, args, kw) < 0) {
        Py_DECREF(p);
        return NULL;
    }
    return (PyObject *)p;
}

static int
pool_traverse(PyObject *self, visitproc visit, void *arg)
{
    pool *p = (pool *)self;
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(p->dumps);
    Py_VISIT(p->loads);
    Py_VISIT(p->cloud_dumps);
    Py_VISIT(p->rebuild_exc);
    Py_VISIT(p->spawn_cb);
    Py_VISIT(p->broken_reason);
    return 0;
}

static int
pool_clear(PyObject *self)
{
    pool *p = (pool *)self;
    Py_CLEAR(p->dumps);
    Py_CLEAR(p->loads);
    Py_CLEAR(p->cloud_dumps);
    Py_CLEAR(p->rebuild_exc);
    Py_CLEAR(p->spawn_cb);
    Py_CLEAR(p->kw_buffer_callback);
    Py_CLEAR(p->kw_buffers);
    Py_CLEAR(p->broken_reason);
    return 0;
}

static void
pool_dealloc(PyObject *self)
{
    pool *p = (pool *)self;
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (p->thread_started && !p->thread_joined) {
        /* The collector holds a reference while it runs, so it has
         * finished; this may even be its own last decref. */
        if (pthread_equal(pthread_self(), p->thread)) {
            pthread_detach(p->thread);
        }
        else {
            pthread_join(p->thread, NULL);
        }
        p->thread_joined = 1;
    }
    pool_clear(self);
    if (p->w != NULL) {
        for (uint32_t k = 0; k < p->nworkers; k++) {
            free(p->w[k].tasks);
            free(p->w[k].retained);
            if (p->w[k].pidfd >= 0) {
                close(p->w[k].pidfd);
            }
        }
        free(p->w);
    }
    while (p->free_tasks) {
        task *t = p->free_tasks;
        p->free_tasks = t->next;
        free(t->inl);
        free(t);
    }
    if (p->server_pidfd >= 0) {
        close(p->server_pidfd);
    }
    if (p->shm.base != NULL) {
        pn_shm_detach(&p->shm, 1);
    }
    pthread_mutex_destroy(&p->mu);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyObject *
pool_start(PyObject *self, PyObject *args)
{
    pool *p = (pool *)self;
    int server_pid;
    if (!PyArg_ParseTuple(args, "i:start", &server_pid)) {
        return NULL;
    }
    if (p->thread_started) {
        PyErr_SetString(PyExc_RuntimeError, "already started");
        return NULL;
    }
    p->server_pid = server_pid;
    p->server_pidfd = pn_pidfd_open(server_pid);
    if (p->server_pidfd < 0) {
        return pn_raise_errno(-p->server_pidfd);
    }
    Py_INCREF(p);       /* the collector's reference */
    int err = pthread_create(&p->thread, NULL, collector_main, p);
    if (err != 0) {
        Py_DECREF(p);
        return pn_raise_errno(err);
    }
    p->thread_started = 1;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(pool_shutdown_doc,
"shutdown(cancel_futures) -> None\n\n"
"Stops accepting work, cancels pending (not yet dispatched) futures when\n"
"asked; the collector exits once every task finished and the workers\n"
"stopped.  join() waits for that.");

static PyObject *
pool_shutdown(PyObject *self, PyObject *arg)
{
    pool *p = (pool *)self;
    int cancel = PyObject_IsTrue(arg);
    if (cancel < 0) {
        return NULL;
    }
    lock_mu(p);
    p->shutting_down = 1;
    task *list = NULL;
    if (cancel) {
        list = p->pending_head;
        p->pending_head = p->pending_tail = NULL;
    }
    unlock_mu(p);
    while (list) {
        task *t = list;
        list = t->next;
        pn__free_msg(&p->shm, &t->msg);
        if (!t->running_set) {
            if (pn_future_cancel(t->future) < 0) {
                PyErr_WriteUnraisable(t->future);
            }
            PyObject *f = t->future;
            t->future = NULL;
            lock_mu(p);
            p->outstanding--;
            task_free_locked(p, t);
            unlock_mu(p);
            Py_DECREF(f);
        }
        else {
            /* Put back by a dead worker: already running, must finish. */
            fail_task(p, t, p->st->BrokenProcessPool,
                      "the pool was shut down with cancel_futures=True "
                      "before this task could be restarted");
        }
    }
    if (p->thread_started) {
        pn_bell_ring(&pn_shm_hdr(&p->shm)->parent_bell);
    }
    Py_RETURN_NONE;
}

static PyObject *
pool_join(PyObject *self, PyObject *args)
{
    pool *p = (pool *)self;
    PyObject *timeout = Py_None;
    if (!PyArg_ParseTuple(args, "|O:join", &timeout)) {
        return NULL;
    }
    if (!p->thread_started || p->thread_joined
        || getpid() != p->owner_pid) {
        Py_RETURN_TRUE;
    }
    int64_t deadline = PN_FOREVER;
    if (timeout != Py_None) {
        double secs = PyFloat_AsDouble(timeout);
        if (secs == -1.0 && PyErr_Occurred()) {
            return NULL;
        }
        deadline = pn_monotonic_ns() + (int64_t)(secs * 1e9);
    }
    pn_bell_ring(&pn_shm_hdr(&p->shm)->parent_bell);
    if (wait_word_gil(&p->thread_done, 0, deadline) < 0) {
        return NULL;
    }
    if (!atomic_load_explicit(&p->thread_done, memory_order_acquire)) {
        Py_RETURN_FALSE;
    }
    Py_BEGIN_ALLOW_THREADS
    pthread_join(p->thread, NULL);
    Py_END_ALLOW_THREADS
    p->thread_joined = 1;
    Py_RETURN_TRUE;
}

static PyObject *
pool_kill_workers(PyObject *self, PyObject *args)
{
    pool *p = (pool *)self;
    int sig;
    if (!PyArg_ParseTuple(args, "i:kill_workers", &sig)) {
        return NULL;
    }
    lock_mu(p);
    for (uint32_t k = 0; k < p->nworkers; k++) {
        worker *w = &p->w[k];
        pn_worker_ctl *ctl = pn_shm_ctl(&p->shm, k);
        if (w->state == W_FREE) {
            continue;
        }
        if (w->pidfd < 0) {
            pid_t pid = atomic_load_explicit(&ctl->pid, memory_order_acquire);
            if (pid > 0) {
                w->pid = pid;
                w->pidfd = pn_pidfd_open(pid);
            }
        }
        w->kill_reason = KILL_TERMINATE;
        if (w->pidfd >= 0) {
            pn_pidfd_kill(w->pidfd, sig);
        }
    }
    unlock_mu(p);
    Py_RETURN_NONE;
}

static PyObject *
pool_worker_pids(PyObject *self, PyObject *Py_UNUSED(arg))
{
    pool *p = (pool *)self;
    PyObject *l = PyList_New(0);
    if (l == NULL) {
        return NULL;
    }
    for (uint32_t k = 0; k < p->nworkers; k++) {
        pid_t pid = atomic_load_explicit(&pn_shm_ctl(&p->shm, k)->pid,
                                         memory_order_acquire);
        if (p->w[k].state != W_FREE && pid > 0) {
            PyObject *v = PyLong_FromLong(pid);
            if (v == NULL || PyList_Append(l, v) < 0) {
                Py_XDECREF(v);
                Py_DECREF(l);
                return NULL;
            }
            Py_DECREF(v);
        }
    }
    return l;
}

static PyObject *
pool_stats(PyObject *self, PyObject *Py_UNUSED(arg))
{
    pool *p = (pool *)self;
    lock_mu(p);
    unsigned long long pending = 0, live = 0;
    for (task *t = p->pending_head; t; t = t->next) {
        pending++;
    }
    for (uint32_t k = 0; k < p->nworkers; k++) {
        live += p->w[k].state != W_FREE;
    }
    PyObject *d = Py_BuildValue(
        "{sKsKsKsKsKsisi}", "pending", pending, "outstanding",
        (unsigned long long)p->outstanding, "workers", live,
        "arena_used", (unsigned long long)p->arena.used, "arena_high",
        (unsigned long long)(p->arena.bump - p->arena.off), "broken",
        p->broken, "shutting_down", p->shutting_down);
    unlock_mu(p);
    return d;
}

static PyObject *
pool_get_fd(PyObject *self, void *Py_UNUSED(c))
{
    return PyLong_FromLong(((pool *)self)->shm.fd);
}

static PyObject *
pool_get_broken(PyObject *self, void *Py_UNUSED(c))
{
    pool *p = (pool *)self;
    if (!p->broken) {
        Py_RETURN_NONE;
    }
    return Py_NewRef(p->broken_reason);
}

static PyObject *
pool_break(PyObject *self, PyObject *reason)
{
    if (!PyUnicode_Check(reason)) {
        PyErr_SetString(PyExc_TypeError, "reason must be str");
        return NULL;
    }
    break_pool((pool *)self, reason);
    Py_RETURN_NONE;
}

static PyObject *
pool_start_workers(PyObject *self, PyObject *arg)
{
    pool *p = (pool *)self;
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) {
        return NULL;
    }
    for (uint32_t k = 0; k < p->nworkers && n > 0; k++) {
        if (p->w[k].state == W_FREE) {
            if (start_worker(p, k) < 0) {
                return NULL;
            }
            n--;
        }
    }
    Py_RETURN_NONE;
}

/* The worker in slot k is our own child `pid` (forked by the executor
 * itself, not by the fork server). */
static PyObject *
pool_adopt(PyObject *self, PyObject *args)
{
    pool *p = (pool *)self;
    unsigned int k;
    int pid;
    if (!PyArg_ParseTuple(args, "Ii:_adopt", &k, &pid)) {
        return NULL;
    }
    if (k >= p->nworkers || pid <= 0) {
        PyErr_SetString(PyExc_ValueError, "bad worker slot or pid");
        return NULL;
    }
    int fd = pn_pidfd_open(pid);
    if (fd < 0) {
        return pn_raise_errno(-fd);
    }
    lock_mu(p);
    worker *w = &p->w[k];
    if (w->state != W_STARTING || w->pidfd >= 0) {
        unlock_mu(p);
        close(fd);
        PyErr_SetString(PyExc_RuntimeError, "worker slot is not starting");
        return NULL;
    }
    w->direct = 1;
    w->pid = pid;
    w->pidfd = fd;
    atomic_store_explicit(&pn_shm_ctl(&p->shm, k)->pid, pid,
                          memory_order_release);
    unlock_mu(p);
    Py_RETURN_NONE;
}

static PyObject *
pool_set_spawner(PyObject *self, PyObject *cb)
{
    pool *p = (pool *)self;
    Py_XSETREF(p->spawn_cb, Py_NewRef(cb));
    Py_RETURN_NONE;
}

static PyMethodDef pool_methods[] = {
    {"_set_spawner", pool_set_spawner, METH_O, "spawner(slot, gen)"},
    {"_adopt", pool_adopt, METH_VARARGS,
     "_adopt(slot, pid): slot's worker is our own child"},
    {"start_workers", pool_start_workers, METH_O,
     "start_workers(n): ask for n more workers now"},
    {"submit", (PyCFunction)(void (*)(void))pool_submit, METH_FASTCALL
     | METH_KEYWORDS, "submit(fn, args, kwargs, timeout) -> Future"},
    {"start", pool_start, METH_VARARGS, "start(fork_server_pid)"},
    {"shutdown", pool_shutdown, METH_O, pool_shutdown_doc},
    {"join", pool_join, METH_VARARGS, "join(timeout=None) -> bool"},
    {"kill_workers", pool_kill_workers, METH_VARARGS, "kill_workers(sig)"},
    {"worker_pids", pool_worker_pids, METH_NOARGS, "live worker pids"},
    {"stats", pool_stats, METH_NOARGS, "counters, for tests"},
    {"break_pool", pool_break, METH_O, "fail everything with reason"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef pool_getset[] = {
    {"fd", pool_get_fd, NULL, "the shared region's memfd", NULL},
    {"broken", pool_get_broken, NULL, "None, or why the pool broke", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot pool_slots[] = {
    {Py_tp_new, pool_new},
    {Py_tp_dealloc, pool_dealloc},
    {Py_tp_traverse, pool_traverse},
    {Py_tp_clear, pool_clear},
    {Py_tp_methods, pool_methods},
    {Py_tp_getset, pool_getset},
    {Py_tp_doc, "The C engine of piston.ProcessPoolExecutor."},
    {0, NULL},
};

static PyType_Spec pool_spec = {
    .name = "piston._piston.ProcessPoolCore",
    .basicsize = sizeof(pool),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = pool_slots,
};


int
pn_procpool_exec(PyObject *m, pn_state *st)
{
    st->ProcessPoolCoreType =
        (PyTypeObject *)PyType_FromModuleAndSpec(m, &pool_spec, NULL);
    if (st->ProcessPoolCoreType == NULL
        || PyModule_AddObjectRef(m, "ProcessPoolCore",
                                 (PyObject *)st->ProcessPoolCoreType) < 0
        || pn__procpool_msg_exec(m, st) < 0) {
        return -1;
    }
    return pn__procpool_worker_exec(m, st);
}
