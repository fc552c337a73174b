/* C tests of the shared-memory buffer arena. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "core/pn_arena.h"
#include "core/pn_futex.h"
#include "core/pn_shm.h"

#include "pn_test.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void
test_round(void)
{
    uint32_t cls, prev = 0;
    PN_CHECK(pn_arena_round(1, &cls) == 4096 && cls == 0);
    PN_CHECK(pn_arena_round(4096, &cls) == 4096 && cls == 0);
    PN_CHECK(pn_arena_round(4097, &cls) == 5120 && cls == 1);
    PN_CHECK(pn_arena_round(8192, &cls) == 8192 && cls == 4);
    PN_CHECK(pn_arena_round(8193, &cls) == 10240 && cls == 5);
    /* Classes grow with size and waste at most a quarter. */
    for (uint64_t n = 4097; n < (UINT64_C(1) << 34); n = n * 9 / 7) {
        uint64_t cap = pn_arena_round(n, &cls);
        PN_CHECK(cap >= n && cap - n <= n / 4 + 1);
        PN_CHECK(cls >= prev && cls < PN_ARENA_NCLASS);
        prev = cls;
    }
}

static void
test_alloc_reuse_flat(void)
{
    pn_shm shm;
    PN_CHECK(pn_shm_create(&shm, 1, 4, 64 << 20, 1 << 20) == 0);
    pn_shm_header *h = pn_shm_hdr(&shm);
    pn_arena a;
    pn_arena_init(&a, shm.base, h->arena_off, h->arena_size);
    /* A million alloc/free cycles of mixed sizes never grow the arena
     * past its first high-water mark. */
    uint64_t sizes[] = {100, 5000, 70000, 1 << 20, 3 << 20};
    uint64_t live[5] = {0};
    uint64_t high = 0;
    for (int i = 0; i < 1000000; i++) {
        int k = i % 5;
        if (live[k] != 0) {
            PN_CHECK(pn_arena_free(shm.base, shm.size, live[k]) == 1);
        }
        live[k] = pn_arena_alloc(&a, sizes[k]);
        PN_CHECK(live[k] != 0 && (live[k] & 63) == 0);
        PN_CHECK(live[k] >= h->arena_off
              && live[k] + sizes[k] <= h->arena_off + h->arena_size);
        memset(shm.base + live[k], k, 64);
        if (i == 100) {
            high = a.bump;
        }
    }
    PN_CHECK(a.bump == high);
    for (int k = 0; k < 5; k++) {
        PN_CHECK(shm.base[live[k]] == k);
        PN_CHECK(pn_arena_block_state(shm.base, shm.size, live[k])
              == PN_BLOCK_USED);
        PN_CHECK(pn_arena_free(shm.base, shm.size, live[k]) == 1);
        /* A second free is refused, not corrupting. */
        PN_CHECK(pn_arena_free(shm.base, shm.size, live[k]) == 0);
        PN_CHECK(pn_arena_block_state(shm.base, shm.size, live[k])
              == PN_BLOCK_FREED);
    }
    PN_CHECK(pn_arena_reclaim(&a) == 5);
    PN_CHECK(a.used == 0);
    /* Garbage offsets are refused. */
    PN_CHECK(pn_arena_free(shm.base, shm.size, 0) == -EINVAL);
    PN_CHECK(pn_arena_free(shm.base, shm.size, h->arena_off + 64 * 1001)
          == -EINVAL);
    PN_CHECK(pn_arena_free(shm.base, shm.size, shm.size + 64) == -EINVAL);
    pn_shm_detach(&shm, 1);
}

static void
test_full_then_bigger_block(void)
{
    pn_shm shm;
    PN_CHECK(pn_shm_create(&shm, 1, 4, 1 << 20, 1 << 20) == 0);
    pn_shm_header *h = pn_shm_hdr(&shm);
    pn_arena a;
    pn_arena_init(&a, shm.base, h->arena_off, h->arena_size);
    uint64_t big = pn_arena_alloc(&a, 600 << 10);
    PN_CHECK(big != 0);
    PN_CHECK(pn_arena_alloc(&a, 600 << 10) == 0);      /* full */
    PN_CHECK(pn_arena_alloc(&a, 2 << 20) == 0);        /* larger than all */
    PN_CHECK(pn_arena_free(shm.base, shm.size, big) == 1);
    /* A small request reuses the big free block rather than failing. */
    uint64_t small = 0;
    while ((small = pn_arena_alloc(&a, 100000)) != 0 && small != big) {
    }
    PN_CHECK(small == big);
    pn_shm_detach(&shm, 1);
}

/* Another process frees blocks concurrently with the owner's allocations;
 * every block comes back exactly once. */
static void
test_cross_process_free(void)
{
    pn_shm shm;
    PN_CHECK(pn_shm_create(&shm, 1, 4, 256 << 20, 1 << 20) == 0);
    pn_shm_header *h = pn_shm_hdr(&shm);
    pn_arena a;
    pn_arena_init(&a, shm.base, h->arena_off, h->arena_size);
    /* A mailbox of offsets in the first worker arena's space. */
    _Atomic uint64_t *box = (_Atomic uint64_t *)(shm.base + h->warena_off);
    const int n = 200000, nbox = 1024;
    pid_t pid = fork();
    PN_CHECK(pid >= 0);
    if (pid == 0) {
        for (int i = 0; i < n; i++) {
            uint64_t off;
            while ((off = atomic_exchange_explicit(&box[i % nbox], 0,
                                                   memory_order_acquire))
                   == 0) {
                pn_cpu_relax();
            }
            PN_CHECK(*(uint32_t *)(shm.base + off) == (uint32_t)i);
            PN_CHECK(pn_arena_free(shm.base, shm.size, off) == 1);
        }
        _exit(0);
    }
    for (int i = 0; i < n; i++) {
        uint64_t off;
        while ((off = pn_arena_alloc(&a, 4096 + (i % 7) * 10000)) == 0) {
            pn_cpu_relax();
        }
        *(uint32_t *)(shm.base + off) = (uint32_t)i;
        while (atomic_load_explicit(&box[i % nbox], memory_order_relaxed)) {
            pn_cpu_relax();
        }
        atomic_store_explicit(&box[i % nbox], off, memory_order_release);
    }
    PN_CHECK(pn_test_wait(pid) == 0);
    pn_arena_reclaim(&a);
    PN_CHECK(a.used == 0);
    PN_CHECK(a.bump - a.off < (64u << 20));
    pn_shm_detach(&shm, 1);
}

static const pn_test_case cases[] = {
    PN_CASE(round),
    PN_CASE(alloc_reuse_flat),
    PN_CASE(full_then_bigger_block),
    PN_CASE(cross_process_free),
    {NULL, NULL},
};

PN_TEST_MAIN(cases)
