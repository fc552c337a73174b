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


static const pn_test_case cases[] = {
    PN_CASE(order_and_ties),
    PN_CASE(remove),
    {NULL, NULL},
};

PN_TEST_MAIN(cases)
