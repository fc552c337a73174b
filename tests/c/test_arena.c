/* C tests of the shared-memory buffer arena. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "core/pn_arena.h"
#include "core/pn_futex.h"
#include "core/pn_shm.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define CHECK(c)                                                             \
    do {                                                                     \
        if (!(c)) {                                                          \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, \
                    #c);                                                     \
            exit(1);                                                         \
        }                                                                    \
    } while (0)

static pid_t
fork_or_die(void)
{
    pid_t pid = fork();
    CHECK(pid >= 0);
    return pid;
}

static int
wait_child(pid_t pid)
{
    int st;
    CHECK(waitpid(pid, &st, 0) == pid);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void
test_round(void)
{
    uint32_t cls, prev = 0;
    CHECK(pn_arena_round(1, &cls) == 4096 && cls == 0);
    CHECK(pn_arena_round(4096, &cls) == 4096 && cls == 0);
    CHECK(pn_arena_round(4097, &cls) == 5120 && cls == 1);
    CHECK(pn_arena_round(8192, &cls) == 8192 && cls == 4);
    CHECK(pn_arena_round(8193, &cls) == 10240 && cls == 5);
    /* Classes grow with size and waste at most a quarter. */
    for (uint64_t n = 4097; n < (UINT64_C(1) << 34); n = n * 9 / 7) {
        uint64_t cap = pn_arena_round(n, &cls);
        CHECK(cap >= n && cap - n <= n / 4 + 1);
        CHECK(cls >= prev && cls < PN_ARENA_NCLASS);
        prev = cls;
    }
}

static void
test_alloc_reuse_flat(void)
{
    pn_shm shm;
    CHECK(pn_shm_create(&shm, 1, 4, 64 << 20, 1 << 20) == 0);
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
            CHECK(pn_arena_free(shm.base, shm.size, live[k]) == 1);
        }
        live[k] = pn_arena_alloc(&a, sizes[k]);
        CHECK(live[k] != 0 && (live[k] & 63) == 0);
        CHECK(live[k] >= h->arena_off
              && live[k] + sizes[k] <= h->arena_off + h->arena_size);
        memset(shm.base + live[k], k, 64);
        if (i == 100) {
            high = a.bump;
        }
    }
    CHECK(a.bump == high);
    for (int k = 0; k < 5; k++) {
        CHECK(shm.base[live[k]] == k);
        CHECK(pn_arena_block_state(shm.base, shm.size, live[k])
              == PN_BLOCK_USED);
        CHECK(pn_arena_free(shm.base, shm.size, live[k]) == 1);
        /* A second free is refused, not corrupting. */
        CHECK(pn_arena_free(shm.base, shm.size, live[k]) == 0);
        CHECK(pn_arena_block_state(shm.base, shm.size, live[k])
              == PN_BLOCK_FREED);
    }
    CHECK(pn_arena_reclaim(&a) == 5);
    CHECK(a.used == 0);
    /* Garbage offsets are refused. */
    CHECK(pn_arena_free(shm.base, shm.size, 0) == -EINVAL);
    CHECK(pn_arena_free(shm.base, shm.size, h->arena_off + 64 * 1001)
          == -EINVAL);
    CHECK(pn_arena_free(shm.base, shm.size, shm.size + 64) == -EINVAL);
    pn_shm_detach(&shm, 1);
}

static void
test_full_then_bigger_block(void)
{
    pn_shm shm;
    CHECK(pn_shm_create(&shm, 1, 4, 1 << 20, 1 << 20) == 0);
    pn_shm_header *h = pn_shm_hdr(&shm);
    pn_arena a;
    pn_arena_init(&a, shm.base, h->arena_off, h->arena_size);
    uint64_t big = pn_arena_alloc(&a, 600 << 10);
    CHECK(big != 0);
    CHECK(pn_arena_alloc(&a, 600 << 10) == 0);      /* full */
    CHECK(pn_arena_alloc(&a, 2 << 20) == 0);        /* larger than all */
    CHECK(pn_arena_free(shm.base, shm.size, big) == 1);
    /* A small request reuses the big free block rather than failing. */
    uint64_t small = 0;
    while ((small = pn_arena_alloc(&a, 100000)) != 0 && small != big) {
    }
    CHECK(small == big);
    pn_shm_detach(&shm, 1);
}

/* Another process frees blocks concurrently with the owner's allocations;
 * every block comes back exactly once. */
static void
test_cross_process_free(void)
{
    pn_shm shm;
    CHECK(pn_shm_create(&shm, 1, 4, 256 << 20, 1 << 20) == 0);
    pn_shm_header *h = pn_shm_hdr(&shm);
    pn_arena a;
    pn_arena_init(&a, shm.base, h->arena_off, h->arena_size);
    /* A mailbox of offsets in the first worker arena's space. */
    _Atomic uint64_t *box = (_Atomic uint64_t *)(shm.base + h->warena_off);
    const int n = 200000, nbox = 1024;
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        for (int i = 0; i < n; i++) {
            uint64_t off;
            while ((off = atomic_exchange_explicit(&box[i % nbox], 0,
                                                   memory_order_acquire))
                   == 0) {
                pn_cpu_relax();
            }
            CHECK(*(uint32_t *)(shm.base + off) == (uint32_t)i);
            CHECK(pn_arena_free(shm.base, shm.size, off) == 1);
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
    CHECK(wait_child(pid) == 0);
    pn_arena_reclaim(&a);
    CHECK(a.used == 0);
    CHECK(a.bump - a.off < (64u << 20));
    pn_shm_detach(&shm, 1);
}

static const struct {
    const char *name;
    void (*fn)(void);
} cases[] = {
    {"round", test_round},
    {"alloc_reuse_flat", test_alloc_reuse_flat},
    {"full_then_bigger_block", test_full_then_bigger_block},
    {"cross_process_free", test_cross_process_free},
};
#define NCASES (sizeof(cases) / sizeof(cases[0]))

/* `prog --list`, `prog NAME`, or `prog` for every case in its own child. */
int
main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--list") == 0) {
        for (size_t i = 0; i < NCASES; i++) {
            puts(cases[i].name);
        }
        return 0;
    }
    int failed = 0;
    for (size_t i = 0; i < NCASES; i++) {
        if (argc > 1 && strcmp(argv[1], cases[i].name) != 0) {
            continue;
        }
        if (argc > 1) {
            cases[i].fn();
            return 0;
        }
        pid_t pid = fork_or_die();
        if (pid == 0) {
            cases[i].fn();
            _exit(0);
        }
        int rc = wait_child(pid);
        printf("%s %s\n", rc == 0 ? "ok  " : "FAIL", cases[i].name);
        failed += rc != 0;
    }
    return failed != 0;
}
