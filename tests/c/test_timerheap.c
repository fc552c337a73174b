/* Tests the timer min-heap: order, ties by insertion, removal anywhere. */
#include "core/pn_timerheap.h"
#include "pn_test.h"


#define CHECK(cond) PN_CHECK(cond)

#define N 5000

typedef struct item {
    pn_timer timer;
    int id;
} item;

static item items[N];

PN_TEST(order_and_ties)
{
    pn_timerheap h;
    double prev_when = -1;
    int prev_id = -1;

    pn_timerheap_init(&h);
    /* Deadlines in 0..9 pseudo-randomly: many ties. */
    srand(42);
    for (int i = 0; i < N; i++) {
        items[i].id = i;
        pn_timer_init(&items[i].timer, (double)(rand() % 10));
        CHECK(pn_timerheap_push(&h, &items[i].timer) == 0);
        CHECK(pn_timer_queued(&items[i].timer));
    }
    CHECK(pn_timerheap_validate(&h) == 0);
    CHECK(pn_timerheap_len(&h) == N);
    for (int i = 0; i < N; i++) {
        item *it = (item *)pn_timerheap_pop(&h);
        CHECK(it != NULL);
        CHECK(!pn_timer_queued(&it->timer));
        CHECK(it->timer.when >= prev_when);
        /* Equal deadlines come out in insertion order. */
        if (it->timer.when == prev_when) {
            CHECK(it->id > prev_id);
        }
        prev_when = it->timer.when;
        prev_id = it->id;
    }
    CHECK(pn_timerheap_pop(&h) == NULL);
    pn_timerheap_destroy(&h);
}

PN_TEST(remove)
{
    pn_timerheap h;
    double prev = -1;
    size_t left = 0;

    pn_timerheap_init(&h);
    for (int i = 0; i < N; i++) {
        pn_timer_init(&items[i].timer, (double)((i * 7919) % N) / 3.0);
        CHECK(pn_timerheap_push(&h, &items[i].timer) == 0);
    }
    /* Remove every third one, from all over the heap. */
    for (int i = 0; i < N; i += 3) {
        pn_timerheap_remove(&h, &items[i].timer);
        CHECK(!pn_timer_queued(&items[i].timer));
        pn_timerheap_remove(&h, &items[i].timer);    /* idempotent */
    }
    CHECK(pn_timerheap_validate(&h) == 0);
    for (int i = 0; i < N; i++) {
        left += (i % 3) != 0;
    }
    CHECK(pn_timerheap_len(&h) == left);
    while (pn_timerheap_len(&h)) {
        pn_timer *t = pn_timerheap_pop(&h);
        CHECK(t->when >= prev);
        prev = t->when;
    }
    /* Re-push after pop works and re-sequences. */
    CHECK(pn_timerheap_push(&h, &items[0].timer) == 0);
    CHECK(pn_timerheap_peek(&h) == &items[0].timer);
    /* destroy marks the remaining timers unqueued. */
    pn_timerheap_destroy(&h);
    CHECK(!pn_timer_queued(&items[0].timer));
}


static item *taken[N];
static size_t ntaken;

static void
take(pn_timer *t, void *arg)
{
    (void)arg;
    taken[ntaken++] = (item *)t;
}

/* Takes the due timers of a heap of N (ties, negative and signed-zero
 * deadlines) and checks order, completeness and what stays. */
static void
check_take_due(double end, size_t expect_min)
{
    pn_timerheap h;
    size_t n, left = 0;

    pn_timerheap_init(&h);
    srand(7);
    for (int i = 0; i < N; i++) {
        double when = (double)(rand() % 40) - 10.0;
        if (i % 97 == 0) {
            when = (i % 2) ? -0.0 : 0.0;
        }
        items[i].id = i;
        pn_timer_init(&items[i].timer, when);
        CHECK(pn_timerheap_push(&h, &items[i].timer) == 0);
    }
    n = pn_timerheap_count_due(&h, end);
    for (int i = 0; i < N; i++) {
        left += !(items[i].timer.when < end);
    }
    CHECK(n == N - left);
    CHECK(n >= expect_min);
    ntaken = 0;
    pn_timerheap_take_due(&h, end, n, take, NULL);
    CHECK(ntaken == n);
    CHECK(pn_timerheap_validate(&h) == 0);
    CHECK(pn_timerheap_len(&h) == left);
    for (size_t i = 0; i < ntaken; i++) {
        CHECK(taken[i]->timer.when < end);
        CHECK(!pn_timer_queued(&taken[i]->timer));
        if (i > 0) {
            CHECK(taken[i - 1]->timer.when <= taken[i]->timer.when);
            /* Equal deadlines (0.0 and -0.0 too) in insertion order. */
            if (taken[i - 1]->timer.when == taken[i]->timer.when) {
                CHECK(taken[i - 1]->id < taken[i]->id);
            }
        }
    }
    /* What stays is all not due, and still removable anywhere. */
    for (int i = 0; i < N; i++) {
        CHECK(pn_timer_queued(&items[i].timer)
              == !(items[i].timer.when < end));
    }
    for (int i = 0; i < N; i += 5) {
        pn_timerheap_remove(&h, &items[i].timer);
    }
    CHECK(pn_timerheap_validate(&h) == 0);
    CHECK(pn_timerheap_count_due(&h, 1e9) == pn_timerheap_len(&h));
    pn_timerheap_destroy(&h);
}

PN_TEST(take_due_batch)
{
    /* Most of the heap: sorted out at once. */
    check_take_due(25.0, N / 2);
}

PN_TEST(take_due_all)
{
    check_take_due(1e9, N);
}

PN_TEST(take_due_few)
{
    /* A few: popped one by one. */
    check_take_due(-9.0, 1);
}

PN_TEST(take_due_none)
{
    pn_timerheap h;
    pn_timerheap_init(&h);
    CHECK(pn_timerheap_count_due(&h, 1e9) == 0);
    pn_timer_init(&items[0].timer, 5.0);
    CHECK(pn_timerheap_push(&h, &items[0].timer) == 0);
    CHECK(pn_timerheap_count_due(&h, 5.0) == 0);
    CHECK(pn_timerheap_count_due(&h, 5.5) == 1);
    pn_timerheap_destroy(&h);
}

static const pn_test_case cases[] = {
    PN_CASE(order_and_ties),
    PN_CASE(remove),
    PN_CASE(take_due_batch),
    PN_CASE(take_due_all),
    PN_CASE(take_due_few),
    PN_CASE(take_due_none),
    {NULL, NULL},
};

PN_TEST_MAIN(cases)
