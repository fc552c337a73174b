/* Tests the ready queue ring: FIFO across wrap-around and growth. */
#include "core/pn_readyq.h"
#include "pn_test.h"

#include <stdint.h>

#define CHECK(cond) PN_CHECK(cond)

PN_TEST(fifo_wraps_and_grows)
{
    pn_readyq q;
    uintptr_t next_in = 1, next_out = 1;

    pn_readyq_init(&q);
    CHECK(pn_readyq_pop(&q) == NULL);
    /* Interleave pushes and pops so the head wraps many times, and grow
     * while wrapped. */
    for (int round = 0; round < 2000; round++) {
        int pushes = (round * 37) % 301, pops = (round * 53) % 290;
        for (int i = 0; i < pushes; i++) {
            CHECK(pn_readyq_push(&q, (void *)next_in++) == 0);
        }
        CHECK(pn_readyq_len(&q) == next_in - next_out);
        if (pn_readyq_len(&q)) {
            CHECK(pn_readyq_at(&q, 0) == (void *)next_out);
            CHECK(pn_readyq_at(&q, pn_readyq_len(&q) - 1)
                  == (void *)(next_in - 1));
        }
        for (int i = 0; i < pops && pn_readyq_len(&q); i++) {
            CHECK(pn_readyq_pop(&q) == (void *)next_out++);
        }
    }
    while (pn_readyq_len(&q)) {
        CHECK(pn_readyq_pop(&q) == (void *)next_out++);
    }
    CHECK(next_in == next_out);
    CHECK(pn_readyq_pop(&q) == NULL);
    pn_readyq_destroy(&q);
}

PN_TEST(reserve_keeps_order)
{
    pn_readyq q;
    uintptr_t next_in = 1, next_out = 1;
    size_t cap;

    pn_readyq_init(&q);
    /* Wrapped, then reserved past the capacity: order survives. */
    for (int i = 0; i < 200; i++) {
        CHECK(pn_readyq_push(&q, (void *)next_in++) == 0);
    }
    for (int i = 0; i < 150; i++) {
        CHECK(pn_readyq_pop(&q) == (void *)next_out++);
    }
    for (int i = 0; i < 150; i++) {
        CHECK(pn_readyq_push(&q, (void *)next_in++) == 0);
    }
    CHECK(pn_readyq_reserve(&q, 5000) == 0);
    cap = q.cap;
    CHECK(cap - pn_readyq_len(&q) >= 5000);
    for (int i = 0; i < 5000; i++) {
        CHECK(pn_readyq_push(&q, (void *)next_in++) == 0);
    }
    CHECK(q.cap == cap);        /* no growth after the reserve */
    CHECK(pn_readyq_reserve(&q, 0) == 0);
    while (pn_readyq_len(&q)) {
        CHECK(pn_readyq_pop(&q) == (void *)next_out++);
    }
    CHECK(next_in == next_out);
    pn_readyq_destroy(&q);
}

static const pn_test_case cases[] = {
    PN_CASE(fifo_wraps_and_grows),
    PN_CASE(reserve_keeps_order),
    {NULL, NULL},
};

PN_TEST_MAIN(cases)
