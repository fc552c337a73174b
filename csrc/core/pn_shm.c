/* The process pool's shared region: memfd creation, validation, doorbells. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "core/pn_shm.h"
#include "core/pn_futex.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define ROUND_UP(x, a) (((x) + (uint64_t)(a) - 1) & ~((uint64_t)(a) - 1))
#define PAGE 4096

static uint64_t
ctl_stride(uint32_t ring_cap)
{
    return ROUND_UP(sizeof(pn_worker_ctl) + (uint64_t)ring_cap * PN_SLOT_SIZE,
                    PN_CACHELINE);
}

int
pn_shm_create(pn_shm *shm, uint32_t nworkers, uint32_t ring_cap,
              uint64_t arena_size, uint64_t warena_size)
{
    if (nworkers == 0 || ring_cap < 2 || (ring_cap & (ring_cap - 1)) != 0
        || arena_size < PAGE || warena_size < PAGE) {
        return -EINVAL;
    }
    uint64_t stride = ctl_stride(ring_cap);
    uint64_t ctl_off = ROUND_UP(sizeof(pn_shm_header), PAGE);
    uint64_t arena_off = ROUND_UP(ctl_off + nworkers * stride, PAGE);
    arena_size = ROUND_UP(arena_size, PAGE);
    warena_size = ROUND_UP(warena_size, PAGE);
    uint64_t warena_off = arena_off + arena_size;
    uint64_t total = warena_off + nworkers * warena_size;

    int fd = memfd_create("piston-procpool", MFD_CLOEXEC);
    if (fd < 0) {
        return -errno;
    }
    /* Sparse: pages cost memory only once touched. */
    if (ftruncate(fd, (off_t)total) < 0) {
        int err = errno;
        close(fd);
        return -err;
    }
    void *base = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        int err = errno;
        close(fd);
        return -err;
    }
    shm->base = base;
    shm->size = total;
    shm->fd = fd;

    /* A fresh memfd reads as zeros: every state is 0 (EMPTY/FREE). */
    pn_shm_header *h = base;
    h->version = PN_SHM_VERSION;
    h->header_size = sizeof(pn_shm_header);
    h->total_size = total;
    h->nworkers = nworkers;
    h->ring_cap = ring_cap;
    h->ctl_off = ctl_off;
    h->ctl_stride = stride;
    h->arena_off = arena_off;
    h->arena_size = arena_size;
    h->warena_off = warena_off;
    h->warena_size = warena_size;
    /* Pairs with the acquire load in pn_shm_validate: a process that sees
     * the magic sees the whole header. */
    atomic_store_explicit((_Atomic uint64_t *)&h->magic, PN_SHM_MAGIC,
                          memory_order_release);
    return 0;
}

int
pn_shm_validate(const void *base, size_t size)
{
    const pn_shm_header *h = base;
    if (base == NULL || size < sizeof(pn_shm_header)) {
        return -EINVAL;
    }
    /* Pairs with the release store of the magic in pn_shm_create. */
    uint64_t magic = atomic_load_explicit((_Atomic uint64_t *)&h->magic,
                                          memory_order_acquire);
    if (magic != PN_SHM_MAGIC || h->version != PN_SHM_VERSION
        || h->header_size != sizeof(pn_shm_header) || h->total_size != size
        || h->nworkers == 0 || h->ring_cap < 2
        || (h->ring_cap & (h->ring_cap - 1)) != 0
        || h->ctl_stride != ctl_stride(h->ring_cap)
        || h->ctl_off < sizeof(pn_shm_header)) {
        return -EINVAL;
    }
    /* Every part inside the region, in order, without overflow. */
    uint64_t ctl_end = h->ctl_off + (uint64_t)h->nworkers * h->ctl_stride;
    if (ctl_end < h->ctl_off || h->arena_off < ctl_end
        || h->arena_size > size || h->arena_off > size - h->arena_size
        || h->warena_off < h->arena_off + h->arena_size
        || h->warena_off > size || h->warena_size == 0
        || h->warena_size > (size - h->warena_off) / h->nworkers) {
        return -EINVAL;
    }
    return 0;
}

int
pn_shm_attach(pn_shm *shm, int fd)
{
    struct stat sb;
    if (fstat(fd, &sb) < 0) {
        return -errno;
    }
    if (sb.st_size < (off_t)sizeof(pn_shm_header)) {
        return -EINVAL;
    }
    size_t size = (size_t)sb.st_size;
    void *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        return -errno;
    }
    int err = pn_shm_validate(base, size);
    if (err < 0) {
        munmap(base, size);
        return err;
    }
    shm->base = base;
    shm->size = size;
    shm->fd = fd;
    return 0;
}

void
pn_shm_detach(pn_shm *shm, int close_fd)
{
    if (shm->base != NULL) {
        munmap(shm->base, shm->size);
        shm->base = NULL;
    }
    if (close_fd && shm->fd >= 0) {
        close(shm->fd);
    }
    shm->fd = -1;
}

void
pn_bell_ring(pn_bell *b)
{
    /* Pairs with the fence in pn_bell_wait (Dekker): either the owner's
     * recheck sees what we published before this fence, or we see its
     * sleepers increment and wake it. */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&b->sleepers, memory_order_relaxed) != 0) {
        /* Pairs with the load of seq in pn_bell_wait: the futex compares
         * against the value the owner saw before rechecking. */
        atomic_fetch_add_explicit(&b->seq, 1, memory_order_release);
        pn_futex_wake(&b->seq, 1, 1);
    }
}

void
pn_bell_ring_lazy(pn_bell *b)
{
    /* Pairs with the fence in pn_bell_poll_leave (Dekker): either we see
     * the stand-in still polling, and its check after leaving sees what
     * we published, or we ring as usual. */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&b->pollers, memory_order_relaxed) != 0) {
        return;
    }
    pn_bell_ring(b);
}

void
pn_bell_poll_enter(pn_bell *b)
{
    atomic_fetch_add_explicit(&b->pollers, 1, memory_order_seq_cst);
}

void
pn_bell_poll_leave(pn_bell *b, int (*ready)(void *), void *arg)
{
    atomic_fetch_sub_explicit(&b->pollers, 1, memory_order_seq_cst);
    /* Pairs with the fence in pn_bell_ring_lazy. */
    atomic_thread_fence(memory_order_seq_cst);
    if (ready(arg)) {
        pn_bell_ring(b);
    }
}

int
pn_bell_spin(pn_bell *b, int (*ready)(void *), void *arg,
             int64_t deadline_ns, int64_t spin_ns)
{
    pn_spinner spin;
    if (deadline_ns != PN_FOREVER && spin_ns > 0) {
        int64_t left = deadline_ns - pn_monotonic_ns();
        spin_ns = left < spin_ns ? left : spin_ns;
    }
    pn_spinner_init(&spin, spin_ns);
    do {
        if (ready(arg)) {
            return 1;
        }
        /* A stand-in polls: leave the core to it. */
        if (atomic_load_explicit(&b->pollers, memory_order_relaxed) != 0) {
            return 0;
        }
    } while (pn_spinner_step(&spin));
    return 0;
}

int
pn_bell_wait(pn_bell *b, int (*ready)(void *), void *arg,
             int64_t deadline_ns, pn_spin_budget *budget)
{
    int r = 1;
    int64_t started = 0, spun = 0;
    if (budget != NULL) {
        started = pn_monotonic_ns();
        if (pn_bell_spin(b, ready, arg, deadline_ns,
                         pn_spin_budget_get(budget))) {
            pn_spin_budget_learn(budget, pn_monotonic_ns() - started);
            return 1;
        }
        /* A spin cut short by a stand-in teaches nothing. */
        if (atomic_load_explicit(&b->pollers, memory_order_relaxed) == 0) {
            spun = pn_monotonic_ns() - started;
        }
    }
    /* Pairs with the fetch_add in pn_bell_ring. */
    uint32_t seen = atomic_load_explicit(&b->seq, memory_order_acquire);
    atomic_fetch_add_explicit(&b->sleepers, 1, memory_order_relaxed);
    /* Pairs with the fence in pn_bell_ring. */
    atomic_thread_fence(memory_order_seq_cst);
    if (!ready(arg)) {
        r = pn_futex_wait(&b->seq, seen, deadline_ns, 1);
    }
    atomic_fetch_sub_explicit(&b->sleepers, 1, memory_order_relaxed);
    if (spun > 0 && r >= 0) {
        pn_spin_budget_missed(budget, spun, pn_monotonic_ns() - started);
    }
    else if (spun > 0) {
        pn_spin_budget_learn(budget, INT64_MAX);
    }
    return r;
}

int
pn_worker_spin_enter(pn_shm_header *h, uint32_t max)
{
    uint32_t n = atomic_load_explicit(&h->idle_spinners,
                                      memory_order_relaxed);
    while (n < max) {
        /* Only a count: no data is published through it. */
        if (atomic_compare_exchange_weak_explicit(
                &h->idle_spinners, &n, n + 1, memory_order_relaxed,
                memory_order_relaxed)) {
            return 1;
        }
    }
    return 0;
}

void
pn_worker_spin_leave(pn_shm_header *h)
{
    atomic_fetch_sub_explicit(&h->idle_spinners, 1, memory_order_relaxed);
}

/* --- the task ring ------------------------------------------------------ */

void
pn_ring_publish(pn_worker_ctl *ctl, pn_slot *slot, uint64_t index)
{
    /* Pairs with the acquire load in pn_ring_take: the worker that sees
     * QUEUED sees the task written into the slot before. */
    atomic_store_explicit(&slot->state, pn_slot_word(index, PN_SLOT_QUEUED),
                          memory_order_release);
    pn_bell_ring(&ctl->bell);
}

static void
passed(pn_worker_ctl *ctl, uint64_t index)
{
    /* Pairs with the acquire load in pn_ring_passed: once the parent sees
     * the worker past a stolen slot, it may reuse the slot. */
    atomic_store_explicit(&ctl->taken, index + 1, memory_order_release);
}

int
pn_ring_take(pn_worker_ctl *ctl, pn_slot *slot, uint64_t index)
{
    /* Pairs with the release store in pn_ring_publish. */
    uint64_t s = atomic_load_explicit(&slot->state, memory_order_acquire);
    if (s == pn_slot_word(index, PN_SLOT_STOLEN)) {
        passed(ctl, index);
        return 2;
    }
    if (s != pn_slot_word(index, PN_SLOT_QUEUED)) {
        return 0;
    }
    /* Races with pn_ring_steal's CAS: exactly one of them moves the slot
     * out of QUEUED, so a task is run or taken back, never both. */
    if (!atomic_compare_exchange_strong_explicit(
            &slot->state, &s, pn_slot_word(index, PN_SLOT_RUNNING),
            memory_order_acq_rel, memory_order_acquire)) {
        if (s == pn_slot_word(index, PN_SLOT_STOLEN)) {
            passed(ctl, index);
            return 2;
        }
        return 0;
    }
    passed(ctl, index);
    return 1;
}

void
pn_ring_done(pn_shm *shm, pn_slot *slot, uint64_t index)
{
    /* Pairs with the acquire load in pn_ring_state: the parent that sees
     * DONE sees the result written into the slot. */
    atomic_store_explicit(&slot->state, pn_slot_word(index, PN_SLOT_DONE),
                          memory_order_release);
    pn_bell_ring_lazy(&pn_shm_hdr(shm)->parent_bell);
}

int
pn_ring_steal(pn_slot *slot, uint64_t index)
{
    uint64_t s = pn_slot_word(index, PN_SLOT_QUEUED);
    /* Races with the CAS in pn_ring_take (see there). */
    return atomic_compare_exchange_strong_explicit(
        &slot->state, &s, pn_slot_word(index, PN_SLOT_STOLEN),
        memory_order_acq_rel, memory_order_relaxed);
}

int
pn_ring_passed(pn_worker_ctl *ctl, uint64_t index)
{
    /* Pairs with the release store in passed(). */
    return atomic_load_explicit(&ctl->taken, memory_order_acquire) > index;
}

unsigned
pn_ring_state(pn_slot *slot, uint64_t index)
{
    /* Pairs with the release stores in pn_ring_done / pn_ring_take. */
    uint64_t s = atomic_load_explicit(&slot->state, memory_order_acquire);
    if ((s >> 3) != index) {
        return PN_SLOT_EMPTY;
    }
    return (unsigned)(s & 7);
}

void
pn_ring_reset(pn_shm *shm, pn_worker_ctl *ctl)
{
    uint32_t cap = pn_shm_hdr(shm)->ring_cap;
    for (uint32_t i = 0; i < cap; i++) {
        pn_slot *slot = pn_ctl_slot(shm, ctl, i);
        /* No worker runs on this ring while it is reset; the next one
         * starts after a release (the fork request) that orders this. */
        atomic_store_explicit(&slot->state, pn_slot_word(UINT64_C(1) << 60,
                                                         PN_SLOT_EMPTY),
                              memory_order_relaxed);
        atomic_store_explicit(&slot->start_ns, 0, memory_order_relaxed);
    }
    atomic_store_explicit(&ctl->taken, 0, memory_order_relaxed);
}
