/* Tests of core/pn_workq: the thread pool's work queue. */
#include "core/pn_fork.h"
#include "core/pn_futex.h"
#include "core/pn_workq.h"
#include "pn_test.h"

#include <pthread.h>
#include <stdatomic.h>

#define MS 1000000LL

static void
sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

static void
check_counts(pn_workq *q, size_t len, unsigned busy, unsigned nthreads,
             unsigned idle)
{
    size_t l;
    unsigned b, n, i;
    pn_workq_counts(q, &l, &b, &n, &i);
    PN_CHECK_EQ(l, len);
    PN_CHECK_EQ(b, busy);
    PN_CHECK_EQ(n, nthreads);
    PN_CHECK_EQ(i, idle);
}

PN_TEST(init_empty_destroy)
{
    pn_workq q;
    uint32_t unit = 123;
    PN_CHECK_EQ(pn_workq_init(&q, 4), 0);
    check_counts(&q, 0, 0, 0, 0);
    PN_CHECK(pn_workq_trypop(&q, &unit) == NULL);
    PN_CHECK_EQ(unit, 123);
    PN_CHECK(pn_workq_drain(&q) == NULL);
    pn_workq_destroy(&q);
}

PN_TEST(fifo_single_units)
{
    pn_workq q;
    pn_qnode n[5];
    uint32_t unit;
    int start;
    PN_CHECK_EQ(pn_workq_init(&q, 100), 0);
    for (int i = 0; i < 5; i++) {
        n[i].kind = (uint32_t)i;
        PN_CHECK_EQ(pn_workq_push(&q, &n[i], 1, &start), 0);
    }
    check_counts(&q, 5, 0, 5, 0);
    for (int i = 0; i < 5; i++) {
        pn_qnode *got = pn_workq_trypop(&q, &unit);
        PN_CHECK(got == &n[i]);
        PN_CHECK_EQ(unit, 0);
        PN_CHECK_EQ(got->units_left, 0);
        PN_CHECK_EQ(got->units_total, 1);
    }
    PN_CHECK(pn_workq_trypop(&q, &unit) == NULL);
    check_counts(&q, 0, 5, 5, 0);
    for (int i = 0; i < 5; i++) {
        pn_workq_unit_done(&q);
    }
    check_counts(&q, 0, 0, 5, 0);
    pn_workq_destroy(&q);
}

/* A node of k units is handed out k times, units 0..k-1 in order, and
 * stays at the head until its last unit is claimed. */
PN_TEST(multi_unit_node)
{
    pn_workq q;
    pn_qnode big, after;
    uint32_t unit;
    int start;
    PN_CHECK_EQ(pn_workq_init(&q, 1), 0);
    PN_CHECK_EQ(pn_workq_push(&q, &big, 3, &start), 0);
    PN_CHECK_EQ(pn_workq_push(&q, &after, 1, &start), 0);
    check_counts(&q, 4, 0, 1, 0);
    for (uint32_t i = 0; i < 3; i++) {
        PN_CHECK(pn_workq_trypop(&q, &unit) == &big);
        PN_CHECK_EQ(unit, i);
        PN_CHECK_EQ(big.units_left, 2 - i);
    }
    PN_CHECK(pn_workq_trypop(&q, &unit) == &after);
    PN_CHECK_EQ(unit, 0);
    PN_CHECK(pn_workq_trypop(&q, &unit) == NULL);
    check_counts(&q, 0, 4, 1, 0);
    pn_workq_destroy(&q);
}

/* Lazy thread start as the stdlib: one more worker while the outstanding
 * units outnumber the workers, up to max_threads; the slot is reserved. */
PN_TEST(start_thread_lazily_up_to_cap)
{
    pn_workq q;
    pn_qnode n[4];
    uint32_t unit;
    int start = -1;
    PN_CHECK_EQ(pn_workq_init(&q, 2), 0);
    PN_CHECK_EQ(pn_workq_push(&q, &n[0], 1, &start), 0);
    PN_CHECK_EQ(start, 1);
    check_counts(&q, 1, 0, 1, 0);
    /* The one worker takes it and finishes: no new thread for the next. */
    PN_CHECK(pn_workq_trypop(&q, &unit) == &n[0]);
    pn_workq_unit_done(&q);
    PN_CHECK_EQ(pn_workq_push(&q, &n[1], 1, &start), 0);
    PN_CHECK_EQ(start, 0);
    PN_CHECK_EQ(pn_workq_push(&q, &n[2], 1, &start), 0);
    PN_CHECK_EQ(start, 1);
    check_counts(&q, 2, 0, 2, 0);
    PN_CHECK_EQ(pn_workq_push(&q, &n[3], 5, &start), 0);
    PN_CHECK_EQ(start, 0);      /* at the cap */
    check_counts(&q, 7, 0, 2, 0);
    /* A failed start gives its slot back; the next push asks again. */
    pn_workq_thread_exit(&q);
    check_counts(&q, 7, 0, 1, 0);
    pn_workq_destroy(&q);
}

PN_TEST(zero_max_threads_never_starts)
{
    pn_workq q;
    pn_qnode n;
    int start = -1;
    PN_CHECK_EQ(pn_workq_init(&q, 0), 0);
    PN_CHECK_EQ(pn_workq_push(&q, &n, 1, &start), 0);
    PN_CHECK_EQ(start, 0);
    pn_workq_destroy(&q);
}

PN_TEST(push_after_close_is_eshutdown)
{
    pn_workq q;
    pn_qnode a, b;
    uint32_t unit;
    int start = -1;
    PN_CHECK_EQ(pn_workq_init(&q, 4), 0);
    PN_CHECK_EQ(pn_workq_push(&q, &a, 2, &start), 0);
    pn_workq_close(&q);
    start = -1;
    PN_CHECK_EQ(pn_workq_push(&q, &b, 1, &start), -ESHUTDOWN);
    check_counts(&q, 2, 0, 1, 0);
    /* Work queued before close is still handed out... */
    PN_CHECK(pn_workq_pop_wait(&q, &unit) == &a);
    PN_CHECK_EQ(unit, 0);
    PN_CHECK(pn_workq_pop_wait(&q, &unit) == &a);
    PN_CHECK_EQ(unit, 1);
    pn_workq_unit_done(&q);
    pn_workq_unit_done(&q);
    /* ...then pop_wait returns NULL at once and releases the slot. */
    PN_CHECK(pn_workq_pop_wait(&q, &unit) == NULL);
    check_counts(&q, 0, 0, 0, 0);
    pn_workq_destroy(&q);
}

PN_TEST(remove_unclaimed_nodes)
{
    pn_workq q;
    pn_qnode n[4], later;
    uint32_t unit;
    int start;
    PN_CHECK_EQ(pn_workq_init(&q, 8), 0);
    for (int i = 0; i < 4; i++) {
        PN_CHECK_EQ(pn_workq_push(&q, &n[i], (uint32_t)i + 1, &start), 0);
    }
    check_counts(&q, 10, 0, 4, 0);
    PN_CHECK_EQ(pn_workq_remove(&q, &n[1]), 1);     /* middle */
    PN_CHECK_EQ(pn_workq_remove(&q, &n[1]), 0);     /* no longer queued */
    check_counts(&q, 8, 0, 4, 0);
    PN_CHECK_EQ(pn_workq_remove(&q, &n[3]), 1);     /* tail */
    check_counts(&q, 4, 0, 4, 0);
    /* The tail moved back: a push lands after n[2], not after n[3]. */
    PN_CHECK_EQ(pn_workq_push(&q, &later, 1, &start), 0);
    PN_CHECK_EQ(pn_workq_remove(&q, &n[0]), 1);     /* head */
    /* A node with a claimed unit stays queued. */
    PN_CHECK(pn_workq_trypop(&q, &unit) == &n[2]);
    PN_CHECK_EQ(pn_workq_remove(&q, &n[2]), 0);
    PN_CHECK(pn_workq_trypop(&q, &unit) == &n[2]);
    PN_CHECK_EQ(unit, 1);
    PN_CHECK(pn_workq_trypop(&q, &unit) == &n[2]);
    PN_CHECK(pn_workq_trypop(&q, &unit) == &later);
    PN_CHECK(pn_workq_trypop(&q, &unit) == NULL);
    check_counts(&q, 0, 4, 5, 0);   /* `later` asked for a fifth thread */
    /* Removing the only node empties head and tail alike. */
    PN_CHECK_EQ(pn_workq_push(&q, &n[0], 1, &start), 0);
    PN_CHECK_EQ(pn_workq_remove(&q, &n[0]), 1);
    PN_CHECK(pn_workq_trypop(&q, &unit) == NULL);
    PN_CHECK_EQ(pn_workq_push(&q, &n[1], 1, &start), 0);
    PN_CHECK(pn_workq_trypop(&q, &unit) == &n[1]);
    pn_workq_destroy(&q);
}

PN_TEST(drain_returns_list_in_order)
{
    pn_workq q;
    pn_qnode n[3];
    uint32_t unit;
    int start;
    PN_CHECK_EQ(pn_workq_init(&q, 8), 0);
    PN_CHECK_EQ(pn_workq_push(&q, &n[0], 3, &start), 0);
    PN_CHECK_EQ(pn_workq_push(&q, &n[1], 1, &start), 0);
    PN_CHECK_EQ(pn_workq_push(&q, &n[2], 2, &start), 0);
    PN_CHECK(pn_workq_trypop(&q, &unit) == &n[0]);
    pn_qnode *list = pn_workq_drain(&q);
    PN_CHECK(list == &n[0]);
    PN_CHECK_EQ(n[0].units_left, 2);            /* never claimed */
    PN_CHECK(n[0].next == &n[1]);
    PN_CHECK(n[1].next == &n[2]);
    PN_CHECK(n[2].next == NULL);
    PN_CHECK_EQ(n[2].units_left, 2);
    check_counts(&q, 0, 1, 3, 0);
    PN_CHECK(pn_workq_trypop(&q, &unit) == NULL);
    /* The queue is usable after a drain. */
    PN_CHECK_EQ(pn_workq_push(&q, &n[1], 1, &start), 0);
    PN_CHECK(pn_workq_trypop(&q, &unit) == &n[1]);
    pn_workq_destroy(&q);
}

/* Reserves n worker slots the way the pool's starter does: a push that
 * answers start_thread = 1 counts the slot (the nodes are removed again). */
static void
reserve_slots(pn_workq *q, int n)
{
    pn_qnode dummy[16];
    int start;
    PN_CHECK(n <= 16);
    for (int i = 0; i < n; i++) {
        PN_CHECK_EQ(pn_workq_push(q, &dummy[i], 1, &start), 0);
        PN_CHECK_EQ(start, 1);
    }
    for (int i = 0; i < n; i++) {
        PN_CHECK_EQ(pn_workq_remove(q, &dummy[i]), 1);
    }
}

/* An idle worker sleeps in pop_wait and is woken by a push. */
typedef struct popper {
    pn_workq *q;
    pn_qnode *got;
    uint32_t unit;
    _Atomic int returned;
} popper;

static void *
popper_main(void *arg)
{
    popper *p = arg;
    p->got = pn_workq_pop_wait(p->q, &p->unit);
    atomic_store(&p->returned, 1);
    return NULL;
}

static void
wait_idle(pn_workq *q, unsigned want)
{
    size_t l;
    unsigned b, n, i;
    for (int tries = 0; tries < 10000; tries++) {
        pn_workq_counts(q, &l, &b, &n, &i);
        if (i == want) {
            return;
        }
        sleep_ms(1);
    }
    PN_FAIL("workers never became idle (want %u, have %u)", want, i);
}

PN_TEST(push_wakes_idle_worker)
{
    pn_workq q;
    pn_qnode n;
    int start;
    PN_CHECK_EQ(pn_workq_init(&q, 1), 0);
    popper p = {.q = &q};
    pthread_t t;
    PN_CHECK_EQ(pthread_create(&t, NULL, popper_main, &p), 0);
    wait_idle(&q, 1);
    sleep_ms(10);
    PN_CHECK_EQ(atomic_load(&p.returned), 0);
    PN_CHECK_EQ(pn_workq_push(&q, &n, 1, &start), 0);
    PN_CHECK_EQ(pthread_join(t, NULL), 0);
    PN_CHECK(p.got == &n);
    PN_CHECK_EQ(p.unit, 0);
    pn_workq_destroy(&q);
}

PN_TEST(close_wakes_idle_workers)
{
    enum { N = 3 };
    pn_workq q;
    popper p[N];
    pthread_t t[N];
    PN_CHECK_EQ(pn_workq_init(&q, N), 0);
    reserve_slots(&q, N);
    for (int i = 0; i < N; i++) {
        p[i] = (popper){.q = &q};
        PN_CHECK_EQ(pthread_create(&t[i], NULL, popper_main, &p[i]), 0);
    }
    wait_idle(&q, N);
    check_counts(&q, 0, 0, N, N);
    pn_workq_close(&q);
    for (int i = 0; i < N; i++) {
        PN_CHECK_EQ(pthread_join(t[i], NULL), 0);
        PN_CHECK(p[i].got == NULL);
    }
    check_counts(&q, 0, 0, 0, 0);
    pn_workq_destroy(&q);
}

/* Producers and consumers at full speed: every unit of every node is
 * claimed exactly once, and closing lets every consumer exit. */
enum { PRODUCERS = 3, CONSUMERS = 4, NODES_PER_PRODUCER = 3000 };

typedef struct job {
    pn_qnode node;              /* first: the queue hands back &job->node */
    _Atomic uint32_t claimed_mask;
} job;

typedef struct stress {
    pn_workq q;
    job jobs[PRODUCERS][NODES_PER_PRODUCER];
    _Atomic long units_run;
    _Atomic int started;
    int producer_ids[PRODUCERS];
} stress;

static stress *S;

static void *
producer_main(void *arg)
{
    int id = *(int *)arg;
    for (int i = 0; i < NODES_PER_PRODUCER; i++) {
        job *j = &S->jobs[id][i];
        int start;
        uint32_t units = (uint32_t)(i % 5) + 1;
        j->node.kind = (uint32_t)id;
        PN_CHECK_EQ(pn_workq_push(&S->q, &j->node, units, &start), 0);
        if (start) {
            /* This test runs a fixed set of consumers: give it back. */
            pn_workq_thread_exit(&S->q);
        }
    }
    return NULL;
}

static void *
consumer_main(void *arg)
{
    (void)arg;
    for (;;) {
        uint32_t unit;
        pn_qnode *n = pn_workq_pop_wait(&S->q, &unit);
        if (n == NULL) {
            return NULL;
        }
        job *j = (job *)n;
        PN_CHECK(unit < n->units_total);
        uint32_t bit = 1u << unit;
        uint32_t old = atomic_fetch_or(&j->claimed_mask, bit);
        if (old & bit) {
            PN_FAIL("unit %u of a node claimed twice", unit);
        }
        atomic_fetch_add(&S->units_run, 1);
        pn_workq_unit_done(&S->q);
    }
}

PN_TEST(stress_mpmc_every_unit_once)
{
    pthread_t prod[PRODUCERS], cons[CONSUMERS];
    long expected = 0;
    S = calloc(1, sizeof(*S));
    PN_CHECK(S != NULL);
    PN_CHECK_EQ(pn_workq_init(&S->q, 64), 0);
    reserve_slots(&S->q, CONSUMERS);
    for (int i = 0; i < CONSUMERS; i++) {
        PN_CHECK_EQ(pthread_create(&cons[i], NULL, consumer_main, NULL), 0);
    }
    for (int i = 0; i < PRODUCERS; i++) {
        S->producer_ids[i] = i;
        PN_CHECK_EQ(
            pthread_create(&prod[i], NULL, producer_main, &S->producer_ids[i]),
            0);
    }
    for (int i = 0; i < PRODUCERS; i++) {
        PN_CHECK_EQ(pthread_join(prod[i], NULL), 0);
    }
    pn_workq_close(&S->q);
    for (int i = 0; i < CONSUMERS; i++) {
        PN_CHECK_EQ(pthread_join(cons[i], NULL), 0);
    }
    for (int p = 0; p < PRODUCERS; p++) {
        for (int i = 0; i < NODES_PER_PRODUCER; i++) {
            job *j = &S->jobs[p][i];
            uint32_t units = (uint32_t)(i % 5) + 1;
            expected += units;
            PN_CHECK_EQ(j->node.units_left, 0);
            PN_CHECK_EQ(atomic_load(&j->claimed_mask), (1u << units) - 1);
        }
    }
    PN_CHECK_EQ(atomic_load(&S->units_run), expected);
    check_counts(&S->q, 0, 0, 0, 0);
    pn_workq_destroy(&S->q);
    free(S);
}

/* In a child after fork the mutex may be held by a thread that does not
 * exist there: after_fork must give a usable queue and the queued nodes. */
typedef struct holder {
    pn_workq *q;
    _Atomic int locked;
    _Atomic int release;
} holder;

static void *
holder_main(void *arg)
{
    holder *h = arg;
    pthread_mutex_lock(&h->q->mu);
    atomic_store(&h->locked, 1);
    while (!atomic_load(&h->release)) {
        sleep_ms(1);
    }
    pthread_mutex_unlock(&h->q->mu);
    return NULL;
}

PN_TEST(after_fork_with_lock_held)
{
    pn_workq q;
    pn_qnode a, b;
    uint32_t unit;
    int start;
    PN_CHECK_EQ(pn_fork_init(), 0);
    PN_CHECK_EQ(pn_workq_init(&q, 4), 0);
    PN_CHECK_EQ(pn_workq_push(&q, &a, 2, &start), 0);
    PN_CHECK_EQ(pn_workq_push(&q, &b, 1, &start), 0);
    PN_CHECK_EQ(q.fork_gen, pn_fork_generation());

    holder h = {.q = &q};
    pthread_t t;
    PN_CHECK_EQ(pthread_create(&t, NULL, holder_main, &h), 0);
    while (!atomic_load(&h.locked)) {
        sleep_ms(1);
    }
    pid_t pid = fork();
    PN_CHECK(pid >= 0);
    if (pid == 0) {
        /* Child: the generation moved, the queue is stale until reset. */
        PN_CHECK(q.fork_gen != pn_fork_generation());
        pn_qnode *list = pn_workq_after_fork(&q);
        PN_CHECK(list == &a);
        PN_CHECK(a.next == &b);
        PN_CHECK_EQ(q.fork_gen, pn_fork_generation());
        check_counts(&q, 0, 0, 0, 0);
        PN_CHECK(pn_workq_trypop(&q, &unit) == NULL);
        PN_CHECK_EQ(pn_workq_push(&q, &a, 1, &start), 0);
        PN_CHECK_EQ(start, 1);
        PN_CHECK(pn_workq_trypop(&q, &unit) == &a);
        pn_workq_unit_done(&q);
        pn_workq_thread_exit(&q);
        check_counts(&q, 0, 0, 0, 0);
        _exit(0);
    }
    int status;
    PN_CHECK_EQ(waitpid(pid, &status, 0), pid);
    atomic_store(&h.release, 1);
    PN_CHECK_EQ(pthread_join(t, NULL), 0);
    PN_CHECK(WIFEXITED(status));
    PN_CHECK_EQ(WEXITSTATUS(status), 0);
    /* The parent's queue is untouched. */
    check_counts(&q, 3, 0, 2, 0);
    PN_CHECK(pn_workq_trypop(&q, &unit) == &a);
    pn_workq_destroy(&q);
}

PN_TEST(looks_empty_follows_the_head)
{
    pn_workq q;
    pn_qnode n;
    uint32_t unit;
    int start;
    PN_CHECK_EQ(pn_workq_init(&q, 2), 0);
    PN_CHECK(pn_workq_looks_empty(&q));
    PN_CHECK_EQ(pn_workq_push(&q, &n, 2, &start), 0);
    PN_CHECK(!pn_workq_looks_empty(&q));
    PN_CHECK(pn_workq_trypop(&q, &unit) == &n);
    PN_CHECK(!pn_workq_looks_empty(&q)); /* one unit left */
    PN_CHECK(pn_workq_trypop(&q, &unit) == &n);
    PN_CHECK(pn_workq_looks_empty(&q));
    pn_workq_destroy(&q);
}

PN_TEST(pop_spin_takes_queued_work)
{
    pn_workq q;
    pn_qnode n;
    uint32_t unit = 99;
    int start;
    PN_CHECK_EQ(pn_workq_init(&q, 2), 0);
    PN_CHECK_EQ(pn_workq_push(&q, &n, 2, &start), 0);
    PN_CHECK(pn_workq_pop_spin(&q, &unit, 0) == &n);
    PN_CHECK_EQ(unit, 0);
    PN_CHECK(pn_workq_pop_spin(&q, &unit, 1000 * MS) == &n);
    PN_CHECK_EQ(unit, 1);
    check_counts(&q, 0, 2, 1, 0);
    pn_workq_destroy(&q);
}

/* An empty queue: no budget returns at once, a budget is spent (and not
 * much more), and nothing is claimed or counted. */
PN_TEST(pop_spin_empty_returns_null_after_budget)
{
    pn_workq q;
    uint32_t unit;
    PN_CHECK_EQ(pn_workq_init(&q, 2), 0);
    int64_t t0 = pn_monotonic_ns();
    PN_CHECK(pn_workq_pop_spin(&q, &unit, 0) == NULL);
    PN_CHECK(pn_workq_pop_spin(&q, &unit, -5) == NULL);
    PN_CHECK(pn_monotonic_ns() - t0 < 500 * MS);
    t0 = pn_monotonic_ns();
    PN_CHECK(pn_workq_pop_spin(&q, &unit, 20 * MS) == NULL);
    int64_t spent = pn_monotonic_ns() - t0;
    PN_CHECK(spent >= 20 * MS);
    PN_CHECK(spent < 5000 * MS);
    check_counts(&q, 0, 0, 0, 0);
    pn_workq_destroy(&q);
}

/* Closing ends a spin at once, even with work still queued (the caller
 * then goes to pop_wait, which hands out what is left). */
PN_TEST(pop_spin_stops_when_closing)
{
    pn_workq q;
    pn_qnode n;
    uint32_t unit;
    int start;
    PN_CHECK_EQ(pn_workq_init(&q, 2), 0);
    PN_CHECK_EQ(pn_workq_push(&q, &n, 1, &start), 0);
    pn_workq_close(&q);
    int64_t t0 = pn_monotonic_ns();
    PN_CHECK(pn_workq_pop_spin(&q, &unit, PN_FOREVER) == NULL);
    PN_CHECK(pn_monotonic_ns() - t0 < 1000 * MS);
    PN_CHECK(pn_workq_pop_wait(&q, &unit) == &n);
    pn_workq_unit_done(&q);
    PN_CHECK(pn_workq_pop_wait(&q, &unit) == NULL);
    check_counts(&q, 0, 0, 0, 0);
    pn_workq_destroy(&q);
}

typedef struct spinner_arg {
    pn_workq *q;
    pn_qnode *got;
    int64_t budget;
} spinner_arg;

static void *
spinner_main(void *arg)
{
    spinner_arg *a = arg;
    uint32_t unit;
    a->got = pn_workq_pop_spin(a->q, &unit, a->budget);
    return NULL;
}

/* Work pushed by another thread while a worker spins is picked up by the
 * spin itself, with no condvar signal (the spinner is not idle). */
PN_TEST(pop_spin_sees_work_pushed_meanwhile)
{
    pn_workq q;
    pn_qnode n;
    int start;
    PN_CHECK_EQ(pn_workq_init(&q, 2), 0);
    spinner_arg a = {.q = &q, .budget = 10000 * MS};
    pthread_t t;
    int64_t t0 = pn_monotonic_ns();
    PN_CHECK_EQ(pthread_create(&t, NULL, spinner_main, &a), 0);
    sleep_ms(20);
    check_counts(&q, 0, 0, 0, 0); /* spinning is not idle */
    PN_CHECK_EQ(pn_workq_push(&q, &n, 1, &start), 0);
    PN_CHECK_EQ(pthread_join(t, NULL), 0);
    PN_CHECK(a.got == &n);
    PN_CHECK(pn_monotonic_ns() - t0 < 9000 * MS);
    pn_workq_destroy(&q);
}

static const pn_test_case cases[] = {
    PN_CASE(init_empty_destroy),
    PN_CASE(fifo_single_units),
    PN_CASE(multi_unit_node),
    PN_CASE(start_thread_lazily_up_to_cap),
    PN_CASE(zero_max_threads_never_starts),
    PN_CASE(push_after_close_is_eshutdown),
    PN_CASE(remove_unclaimed_nodes),
    PN_CASE(drain_returns_list_in_order),
    PN_CASE(push_wakes_idle_worker),
    PN_CASE(close_wakes_idle_workers),
    PN_CASE(stress_mpmc_every_unit_once),
    PN_CASE(after_fork_with_lock_held),
    PN_CASE(looks_empty_follows_the_head),
    PN_CASE(pop_spin_takes_queued_work),
    PN_CASE(pop_spin_empty_returns_null_after_budget),
    PN_CASE(pop_spin_stops_when_closing),
    PN_CASE(pop_spin_sees_work_pushed_meanwhile),
    {NULL, NULL},
};

PN_TEST_MAIN(cases)
