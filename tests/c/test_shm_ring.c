/* C tests of the process pool's shared region, doorbells and task ring. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "core/pn_futex.h"
#include "core/pn_shm.h"

#include "pn_test.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static void
test_create_validate(void)
{
    pn_shm shm;
    PN_CHECK(pn_shm_create(&shm, 3, 8, 1 << 20, 1 << 16) == 0);
    pn_shm_header *h = pn_shm_hdr(&shm);
    PN_CHECK(h->magic == PN_SHM_MAGIC && h->nworkers == 3 && h->ring_cap == 8);
    PN_CHECK(pn_shm_validate(shm.base, shm.size) == 0);
    PN_CHECK(pn_shm_validate(shm.base, shm.size - 1) == -EINVAL);
    /* The fd is not a /dev/shm name and is close-on-exec. */
    char path[64], link[256];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", shm.fd);
    ssize_t n = readlink(path, link, sizeof(link) - 1);
    PN_CHECK(n > 0);
    link[n] = 0;
    PN_CHECK(strncmp(link, "/memfd:piston-procpool", 22) == 0);

    /* A second mapping through the fd validates and sees the same bytes. */
    pn_shm two;
    PN_CHECK(pn_shm_attach(&two, shm.fd) == 0);
    PN_CHECK(pn_shm_ctl(&two, 2)->slots - two.base
          == pn_shm_ctl(&shm, 2)->slots - shm.base);
    pn_shm_ctl(&two, 1)->pid = 1234;
    PN_CHECK(pn_shm_ctl(&shm, 1)->pid == 1234);
    pn_shm_detach(&two, 0);

    /* Corruptions are caught. */
    uint64_t saved = h->arena_off;
    h->arena_off = shm.size;
    PN_CHECK(pn_shm_validate(shm.base, shm.size) == -EINVAL);
    h->arena_off = saved;
    h->ring_cap = 6;
    PN_CHECK(pn_shm_validate(shm.base, shm.size) == -EINVAL);
    h->ring_cap = 8;
    h->version = 99;
    PN_CHECK(pn_shm_validate(shm.base, shm.size) == -EINVAL);
    h->version = PN_SHM_VERSION;
    h->warena_size = UINT64_C(1) << 62;
    PN_CHECK(pn_shm_validate(shm.base, shm.size) == -EINVAL);
    PN_CHECK(pn_shm_create(&two, 1, 6, 1 << 20, 1 << 20) == -EINVAL);
    pn_shm_detach(&shm, 1);
}

typedef struct {
    pn_slot *slot;
    uint64_t index;
} want_t;

static int
slot_done(void *arg)
{
    want_t *w = arg;
    return pn_ring_state(w->slot, w->index) == PN_SLOT_DONE;
}

typedef struct {
    pn_shm *shm;
    pn_worker_ctl *ctl;
    uint64_t index;
} take_t;

/* A learnt spin budget starting (and capped) at ns, or none for 0. */
#define BUDGET(name, ns) \
    pn_spin_budget name##_b = PN_SPIN_BUDGET_INIT(ns); \
    pn_spin_budget *name = (ns) > 0 ? &name##_b : NULL

static int
slot_queued(void *arg)
{
    take_t *t = arg;
    pn_slot *s = pn_ctl_slot(t->shm, t->ctl, t->index);
    unsigned st = pn_ring_state(s, t->index);
    return st == PN_SLOT_QUEUED || st == PN_SLOT_STOLEN
           || atomic_load_explicit(&t->ctl->stop, memory_order_acquire);
}

/* A worker process: doubles each task's number until told to stop. */
static void
worker(pn_shm *shm, uint32_t k, int spin)
{
    pn_worker_ctl *ctl = pn_shm_ctl(shm, k);
    take_t t = {shm, ctl, 0};
    BUDGET(budget, spin);
    for (;;) {
        pn_slot *s = pn_ctl_slot(shm, ctl, t.index);
        int r = pn_ring_take(ctl, s, t.index);
        if (r == 1) {
            uint64_t v;
            memcpy(&v, s->data, sizeof(v));
            v *= 2;
            memcpy(s->data, &v, sizeof(v));
            s->status = PN_RES_OK;
            pn_ring_done(shm, s, t.index);
            t.index++;
            continue;
        }
        if (r == 2) {
            t.index++;
            continue;
        }
        if (atomic_load_explicit(&ctl->stop, memory_order_acquire)) {
            _exit(0);
        }
        int w = pn_bell_wait(&ctl->bell, slot_queued, &t, PN_FOREVER,
                             budget);
        PN_CHECK(w >= 0 || w == -EINTR);
    }
}

static void
ping_pong(int spin, int rounds)
{
    pn_shm shm;
    PN_CHECK(pn_shm_create(&shm, 1, 4, 1 << 16, 1 << 16) == 0);
    pn_worker_ctl *ctl = pn_shm_ctl(&shm, 0);
    BUDGET(budget, spin);
    pid_t pid = pn_test_fork();
    if (pid == 0) {
        worker(&shm, 0, spin);
    }
    int64_t t0 = pn_monotonic_ns();
    for (uint64_t i = 0; i < (uint64_t)rounds; i++) {
        pn_slot *s = pn_ctl_slot(&shm, ctl, i);
        PN_CHECK(pn_ring_state(s, i) == PN_SLOT_EMPTY);
        memcpy(s->data, &i, sizeof(i));
        pn_ring_publish(ctl, s, i);
        want_t w = {s, i};
        int r;
        do {
            r = pn_bell_wait(&pn_shm_hdr(&shm)->parent_bell, slot_done, &w,
                             PN_FOREVER, budget);
        } while (r == 0 || r == -EINTR);
        PN_CHECK(r == 1);
        uint64_t v;
        memcpy(&v, s->data, sizeof(v));
        PN_CHECK(v == 2 * i);
    }
    int64_t dt = pn_monotonic_ns() - t0;
    fprintf(stderr, "spin=%dns: %.2f us per round trip\n", spin,
            dt / 1000.0 / rounds);
    atomic_store_explicit(&ctl->stop, 1, memory_order_release);
    pn_bell_ring(&ctl->bell);
    PN_CHECK(pn_test_wait(pid) == 0);
    pn_shm_detach(&shm, 1);
}

static void
test_ping_pong_sleeping(void)
{
    ping_pong(0, 20000);
}

static void
test_ping_pong_spinning(void)
{
    ping_pong(50000, 50000);
}

/* Many tasks queued at once; the parent steals some back while the worker
 * runs: every task is either done by the worker or stolen, never both. */
static void
test_steal_race(void)
{
    pn_shm shm;
    const uint32_t cap = 64;
    PN_CHECK(pn_shm_create(&shm, 1, cap, 1 << 16, 1 << 16) == 0);
    pn_worker_ctl *ctl = pn_shm_ctl(&shm, 0);
    pid_t pid = pn_test_fork();
    if (pid == 0) {
        worker(&shm, 0, 5000);
    }
    uint64_t produced = 0, collected = 0, stolen = 0, done = 0;
    BUDGET(budget, 5000);
    const uint64_t total = 200000;
    while (collected < total) {
        while (produced < total && produced - collected < cap) {
            pn_slot *s = pn_ctl_slot(&shm, ctl, produced);
            memcpy(s->data, &produced, sizeof(produced));
            pn_ring_publish(ctl, s, produced);
            produced++;
        }
        /* Try to steal the newest queued task now and then. */
        if (produced % 3 == 0 && produced > collected) {
            uint64_t last = produced - 1;
            if (pn_ring_steal(pn_ctl_slot(&shm, ctl, last), last)) {
                stolen++;
            }
        }
        pn_slot *s = pn_ctl_slot(&shm, ctl, collected);
        unsigned st = pn_ring_state(s, collected);
        if (st == PN_SLOT_DONE) {
            uint64_t v;
            memcpy(&v, s->data, sizeof(v));
            PN_CHECK(v == 2 * collected);
            done++;
            collected++;
        }
        else if (st == PN_SLOT_STOLEN && pn_ring_passed(ctl, collected)) {
            collected++;
        }
        else {
            want_t w = {s, collected};
            pn_bell_wait(&pn_shm_hdr(&shm)->parent_bell, slot_done, &w,
                         pn_monotonic_ns() + 1000000, budget);
        }
    }
    PN_CHECK(done + stolen == total);
    PN_CHECK(stolen > 0);
    fprintf(stderr, "done %llu stolen %llu\n", (unsigned long long)done,
            (unsigned long long)stolen);
    atomic_store_explicit(&ctl->stop, 1, memory_order_release);
    pn_bell_ring(&ctl->bell);
    PN_CHECK(pn_test_wait(pid) == 0);
    pn_shm_detach(&shm, 1);
}

/* A sleeping owner wakes on a deadline, and a killed peer leaves the
 * region usable (the ring is reset and a new worker carries on). */
static void
test_deadline_and_reset(void)
{
    pn_shm shm;
    PN_CHECK(pn_shm_create(&shm, 1, 4, 1 << 16, 1 << 16) == 0);
    pn_worker_ctl *ctl = pn_shm_ctl(&shm, 0);
    pn_slot *s0 = pn_ctl_slot(&shm, ctl, 0);
    want_t w = {s0, 0};
    BUDGET(budget, 10);
    int64_t t0 = pn_monotonic_ns();
    int r = pn_bell_wait(&pn_shm_hdr(&shm)->parent_bell, slot_done, &w,
                         t0 + 20000000, budget);
    PN_CHECK(r == -ETIMEDOUT);
    PN_CHECK(pn_monotonic_ns() - t0 >= 19000000);

    pid_t pid = pn_test_fork();
    if (pid == 0) {
        pause();
        _exit(0);
    }
    /* Queued to a worker that never takes it, then the worker dies. */
    pn_ring_publish(ctl, s0, 0);
    kill(pid, SIGKILL);
    PN_CHECK(pn_test_wait(pid) == 128 + SIGKILL);
    PN_CHECK(pn_ring_state(s0, 0) == PN_SLOT_QUEUED);
    pn_ring_reset(&shm, ctl);
    PN_CHECK(pn_ring_state(s0, 0) == PN_SLOT_EMPTY);
    pid = pn_test_fork();
    if (pid == 0) {
        worker(&shm, 0, 0);
    }
    uint64_t v = 21;
    memcpy(s0->data, &v, sizeof(v));
    pn_ring_publish(ctl, s0, 0);
    do {
        r = pn_bell_wait(&pn_shm_hdr(&shm)->parent_bell, slot_done, &w,
                         PN_FOREVER, NULL);
    } while (r == 0 || r == -EINTR);
    memcpy(&v, s0->data, sizeof(v));
    PN_CHECK(v == 42);
    atomic_store_explicit(&ctl->stop, 1, memory_order_release);
    pn_bell_ring(&ctl->bell);
    PN_CHECK(pn_test_wait(pid) == 0);
    pn_shm_detach(&shm, 1);
}

/* A worker whose spin is spent goes to sleep on its bell and is still
 * woken by a task published after it fell asleep; a spin spent in vain
 * halves the learnt budget. */
static void
test_spin_then_sleep_is_woken(void)
{
    pn_shm shm;
    PN_CHECK(pn_shm_create(&shm, 1, 4, 1 << 16, 1 << 16) == 0);
    pn_worker_ctl *ctl = pn_shm_ctl(&shm, 0);
    pid_t pid = pn_test_fork();
    if (pid == 0) {
        worker(&shm, 0, 200000);    /* spins 200 us before each sleep */
    }
    for (uint64_t i = 0; i < 50; i++) {
        /* Wait until the worker sleeps: its spin is over. */
        int64_t until = pn_monotonic_ns() + 5 * INT64_C(1000000000);
        while (atomic_load_explicit(&ctl->bell.sleepers,
                                    memory_order_acquire) == 0) {
            PN_CHECK(pn_monotonic_ns() < until);
            usleep(50);
        }
        pn_slot *s = pn_ctl_slot(&shm, ctl, i);
        memcpy(s->data, &i, sizeof(i));
        pn_ring_publish(ctl, s, i);
        want_t w = {s, i};
        int r;
        do {
            r = pn_bell_wait(&pn_shm_hdr(&shm)->parent_bell, slot_done, &w,
                             pn_monotonic_ns() + 5 * INT64_C(1000000000),
                             NULL);
        } while (r == 0 || r == -EINTR);
        PN_CHECK(r == 1);
        uint64_t v;
        memcpy(&v, s->data, sizeof(v));
        PN_CHECK(v == 2 * i);
    }
    atomic_store_explicit(&ctl->stop, 1, memory_order_release);
    pn_bell_ring(&ctl->bell);
    PN_CHECK(pn_test_wait(pid) == 0);

    /* Nothing comes: the spin is spent and the budget halves. */
    BUDGET(budget, 1000000);
    want_t none = {pn_ctl_slot(&shm, ctl, 99), 99};
    int r = pn_bell_wait(&pn_shm_hdr(&shm)->parent_bell, slot_done, &none,
                         pn_monotonic_ns() + 3000000, budget);
    PN_CHECK(r == -ETIMEDOUT);
    PN_CHECK(pn_spin_budget_get(budget) == 500000);
    pn_shm_detach(&shm, 1);
}

/* Idle spinners are capped; the cap frees up again. */
static void
test_worker_spin_cap(void)
{
    pn_shm shm;
    PN_CHECK(pn_shm_create(&shm, 2, 4, 1 << 16, 1 << 16) == 0);
    pn_shm_header *h = pn_shm_hdr(&shm);
    PN_CHECK(pn_worker_spin_enter(h, 0) == 0);
    PN_CHECK(pn_worker_spin_enter(h, 1) == 1);
    PN_CHECK(pn_worker_spin_enter(h, 1) == 0);
    PN_CHECK(pn_worker_spin_enter(h, 2) == 1);
    pn_worker_spin_leave(h);
    pn_worker_spin_leave(h);
    PN_CHECK(pn_worker_spin_enter(h, 1) == 1);
    pn_worker_spin_leave(h);
    PN_CHECK(atomic_load(&h->idle_spinners) == 0);
    pn_shm_detach(&shm, 1);
}

/* A stand-in polls for results while the owner sleeps on the parent bell:
 * the worker's lazy rings wake nobody, and every result the stand-in
 * leaves behind still reaches the owner (no lost wake-up), over many
 * racing rounds. */
typedef struct {
    pn_shm *shm;
    pn_worker_ctl *ctl;
    _Atomic uint64_t next;      /* index the owner waits for */
    _Atomic uint64_t owned;     /* results the owner collected */
    _Atomic uint32_t quit;
    int timed_out;
} owner_t;

static int
owner_ready(void *arg)
{
    owner_t *o = arg;
    uint64_t i = atomic_load_explicit(&o->next, memory_order_acquire);
    return atomic_load_explicit(&o->quit, memory_order_acquire)
           || pn_ring_state(pn_ctl_slot(o->shm, o->ctl, i), i)
                  == PN_SLOT_DONE;
}

static void *
owner_main(void *arg)
{
    owner_t *o = arg;
    pn_bell *bell = &pn_shm_hdr(o->shm)->parent_bell;
    while (!atomic_load_explicit(&o->quit, memory_order_acquire)) {
        /* A lost wake-up leaves the owner asleep with work there: the
         * deadline catches it. */
        int r = pn_bell_wait(bell, owner_ready, o,
                             pn_monotonic_ns() + 5 * INT64_C(1000000000),
                             NULL);
        if (r == -ETIMEDOUT && owner_ready(o)) {
            o->timed_out = 1;
        }
        /* Whoever moves `next` on (owner or stand-in) took the result. */
        uint64_t i = atomic_load_explicit(&o->next, memory_order_acquire);
        if (pn_ring_state(pn_ctl_slot(o->shm, o->ctl, i), i) == PN_SLOT_DONE
            && atomic_compare_exchange_strong(&o->next, &i, i + 1)) {
            atomic_fetch_add(&o->owned, 1);
        }
    }
    return NULL;
}

static void
test_stand_in_no_lost_wakeup(void)
{
    pn_shm shm;
    PN_CHECK(pn_shm_create(&shm, 1, 4, 1 << 16, 1 << 16) == 0);
    pn_worker_ctl *ctl = pn_shm_ctl(&shm, 0);
    pn_bell *bell = &pn_shm_hdr(&shm)->parent_bell;
    pid_t pid = pn_test_fork();
    if (pid == 0) {
        worker(&shm, 0, 20000);
    }
    owner_t o = {&shm, ctl, 0, 0, 0, 0};
    pthread_t th;
    PN_CHECK(pthread_create(&th, NULL, owner_main, &o) == 0);
    const uint64_t rounds = 20000;
    uint64_t by_stand_in = 0;
    unsigned seed = 1;
    for (uint64_t i = 0; i < rounds; i++) {
        pn_slot *s = pn_ctl_slot(&shm, ctl, i);
        memcpy(s->data, &i, sizeof(i));
        pn_bell_poll_enter(bell);
        pn_ring_publish(ctl, s, i);
        /* Poll a random while: sometimes the stand-in takes the result
         * itself, sometimes it leaves before the worker answers. */
        seed = seed * 1103515245 + 12345;
        unsigned spins = (seed >> 16) % 4000;
        int took = 0;
        for (unsigned n = 0; n < spins; n++) {
            uint64_t e = i;
            if (pn_ring_state(s, i) == PN_SLOT_DONE
                && atomic_compare_exchange_strong(&o.next, &e, i + 1)) {
                took = 1;
                break;
            }
            pn_cpu_relax();
        }
        by_stand_in += (uint64_t)took;
        pn_bell_poll_leave(bell, owner_ready, &o);
        /* The owner collects whatever the stand-in left. */
        int64_t until = pn_monotonic_ns() + 10 * INT64_C(1000000000);
        while (atomic_load_explicit(&o.next, memory_order_acquire) <= i) {
            PN_CHECK(pn_monotonic_ns() < until);
            PN_CHECK(!o.timed_out);
            pn_cpu_relax();
        }
    }
    atomic_store_explicit(&o.quit, 1, memory_order_release);
    pn_bell_ring(bell);
    PN_CHECK(pthread_join(th, NULL) == 0);
    PN_CHECK(!o.timed_out);
    PN_CHECK(by_stand_in + atomic_load(&o.owned) == rounds);
    fprintf(stderr, "stand-in took %llu of %llu\n",
            (unsigned long long)by_stand_in, (unsigned long long)rounds);
    atomic_store_explicit(&ctl->stop, 1, memory_order_release);
    pn_bell_ring(&ctl->bell);
    PN_CHECK(pn_test_wait(pid) == 0);
    pn_shm_detach(&shm, 1);
}

static const pn_test_case cases[] = {
    PN_CASE(create_validate),
    PN_CASE(ping_pong_sleeping),
    PN_CASE(ping_pong_spinning),
    PN_CASE(steal_race),
    PN_CASE(deadline_and_reset),
    PN_CASE(spin_then_sleep_is_woken),
    PN_CASE(worker_spin_cap),
    PN_CASE(stand_in_no_lost_wakeup),
    {NULL, NULL},
};

PN_TEST_MAIN(cases)
