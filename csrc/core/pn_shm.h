/* The process pool's shared-memory region: layout, doorbells, task rings. */
#ifndef PN_SHM_H
#define PN_SHM_H

/* One memfd holds everything the parent and its workers share, so nothing
 * is ever left in /dev/shm: the memory goes away with the last process that
 * maps it.  Everything inside is addressed by offsets from the start of the
 * region (each process maps it at its own address), and the region starts
 * with a magic/version/size header that `pn_shm_validate` checks before a
 * worker trusts any offset in it.
 *
 *   [pn_shm_header][pn_worker_ctl * nworkers][parent arena][worker arenas]
 *
 * Each worker control block carries the worker's doorbell and its ring of
 * task slots.  A slot holds the task on the way in and its result on the way
 * out; the slot's atomic `state` moves
 *
 *     EMPTY -> QUEUED (parent) -> RUNNING (worker, CAS) -> DONE (worker)
 *                     \-> STOLEN (parent, CAS: taken back unrun)
 *
 * and records the slot's ring index, so a state left over from the previous
 * lap is never mistaken for the current one. */

#include "core/pn_spin.h"

#include <stdalign.h>
#include <stddef.h>
#include <stdint.h>

#define PN_SHM_MAGIC UINT64_C(0x31306d737473696e) /* "nistsm01" */
#define PN_SHM_VERSION 2
#define PN_CACHELINE 64

/* A message's out-of-band buffers carried in the slot itself; a pickle with
 * more buffers keeps the rest in-band. */
#define PN_MSG_MAXBUFS 8

/* Bytes of pickle carried inline in a slot; longer ones go to the arena. */
#define PN_SLOT_SIZE 2048

enum {
    PN_SLOT_EMPTY = 0,
    PN_SLOT_QUEUED = 1,
    PN_SLOT_RUNNING = 2,
    PN_SLOT_DONE = 3,
    PN_SLOT_STOLEN = 4,
};

/* What a worker says about a task in `pn_slot.status`. */
enum {
    PN_RES_OK = 0,          /* body: pickled result */
    PN_RES_EXC = 1,         /* body: pickled (exception, traceback text) */
    PN_RES_ERROR = 2,       /* body: utf-8 text of an error of piston's */
};

/* Worker lifecycle in pn_worker_ctl.state. */
enum {
    PN_W_FREE = 0,          /* no process */
    PN_W_STARTING = 1,      /* asked of the fork server */
    PN_W_READY = 2,         /* initializer ran; takes tasks */
    PN_W_INITFAIL = 3,      /* initializer raised; text in the slot 0 body */
    PN_W_EXITED = 4,        /* reaped: wstatus valid */
};

/* A futex word with a count of possible sleepers, so the side that rings
 * skips the syscall when nobody sleeps.  Owner: prepare, recheck, sleep;
 * ringer: publish, ring.  `pollers` counts stand-ins: threads polling for
 * the owner's work that will do it themselves (the parent thread waiting
 * in result() collects its own result); while one polls, a lazy ring
 * wakes nobody and the owner does not spin, and a stand-in that leaves
 * with work still there rings for it. */
typedef struct pn_bell {
    alignas(PN_CACHELINE) _Atomic uint32_t seq;
    _Atomic uint32_t sleepers;
    _Atomic uint32_t pollers;
    char pad_[PN_CACHELINE - 3 * sizeof(uint32_t)];
} pn_bell;

/* A pickle on its way: body inline in the slot or in an arena block, and
 * up to PN_MSG_MAXBUFS out-of-band buffers in arena blocks (offsets of the
 * data, not of the block header). */
typedef struct pn_msg {
    uint64_t body_off;      /* 0: body is inline in the slot */
    uint64_t body_len;
    uint32_t nbufs;
    uint32_t pad_;
    uint64_t buf_off[PN_MSG_MAXBUFS];
    uint64_t buf_len[PN_MSG_MAXBUFS];
} pn_msg;

typedef struct pn_slot {
    _Atomic uint64_t state;     /* (ring index << 3) | PN_SLOT_* */
    _Atomic int64_t start_ns;   /* CLOCK_MONOTONIC when the call started
                                 * (0 while unpickling: "not yet") */
    uint64_t task_id;
    uint32_t status;            /* PN_RES_*, valid in DONE */
    uint32_t pad_;
    int64_t run_ns;             /* how long the task ran, valid in DONE */
    pn_msg msg;                 /* the task, then its result */
    /* Inline pickle body up to the end of the slot. */
    alignas(16) unsigned char data[];
} pn_slot;

#define PN_SLOT_INLINE (PN_SLOT_SIZE - offsetof(pn_slot, data))

typedef struct pn_worker_ctl {
    alignas(PN_CACHELINE) _Atomic uint32_t state;   /* PN_W_* */
    _Atomic int32_t pid;
    _Atomic int32_t wstatus;    /* raw wait status once EXITED */
    _Atomic uint32_t stop;      /* parent: exit when the ring is empty */
    _Atomic uint32_t gen;       /* bumped by the parent per (re)start */
    pn_bell bell;               /* the worker sleeps here */
    /* Worker's consumer position: ring index of the next slot it takes.
     * Own cache line: written by the worker on every task. */
    alignas(PN_CACHELINE) _Atomic uint64_t taken;
    alignas(PN_CACHELINE) unsigned char slots[];    /* ring_cap slots */
} pn_worker_ctl;

typedef struct pn_shm_header {
    uint64_t magic;
    uint32_t version;
    uint32_t header_size;
    uint64_t total_size;
    uint32_t nworkers;
    uint32_t ring_cap;          /* power of two */
    uint64_t ctl_off;           /* first pn_worker_ctl */
    uint64_t ctl_stride;
    uint64_t arena_off;         /* parent's arena: task bodies, arguments */
    uint64_t arena_size;
    uint64_t warena_off;        /* worker k's arena at warena_off + k*size */
    uint64_t warena_size;
    pn_bell parent_bell;        /* the parent's collector sleeps here */
    /* Workers spinning for their next task, capped so that spinners leave
     * the parent a core (pn_worker_spin_enter). */
    alignas(PN_CACHELINE) _Atomic uint32_t idle_spinners;
} pn_shm_header;

/* A mapping of the region in this process. */
typedef struct pn_shm {
    unsigned char *base;
    size_t size;
    int fd;
} pn_shm;

/* Creates the memfd (close-on-exec unless `inheritable`), sizes it sparse,
 * maps it and writes the header and empty control blocks.  0 or -errno. */
int pn_shm_create(pn_shm *shm, uint32_t nworkers, uint32_t ring_cap,
                  uint64_t arena_size, uint64_t warena_size);

/* Maps an existing region from its fd (a worker) and validates it. */
int pn_shm_attach(pn_shm *shm, int fd);

/* Unmaps; closes the fd when `close_fd`. */
void pn_shm_detach(pn_shm *shm, int close_fd);

/* 0 if the bytes at base look like a region of this version whose every
 * offset lies inside `size`, else -EINVAL. */
int pn_shm_validate(const void *base, size_t size);

static inline pn_shm_header *
pn_shm_hdr(const pn_shm *shm)
{
    return (pn_shm_header *)shm->base;
}

static inline pn_worker_ctl *
pn_shm_ctl(const pn_shm *shm, uint32_t k)
{
    pn_shm_header *h = pn_shm_hdr(shm);
    return (pn_worker_ctl *)(shm->base + h->ctl_off + k * h->ctl_stride);
}

static inline pn_slot *
pn_ctl_slot(const pn_shm *shm, pn_worker_ctl *ctl, uint64_t index)
{
    uint32_t cap = pn_shm_hdr(shm)->ring_cap;
    return (pn_slot *)(ctl->slots + (index & (cap - 1)) * PN_SLOT_SIZE);
}

static inline uint64_t
pn_slot_word(uint64_t index, unsigned st)
{
    return (index << 3) | st;
}

/* --- doorbells (process-shared futexes) --------------------------------- */

/* Ringer side: call after publishing with a release store. */
void pn_bell_ring(pn_bell *b);

/* The same, except that while a stand-in polls nobody is woken (the
 * stand-in sees what was published, or rings when it leaves). */
void pn_bell_ring_lazy(pn_bell *b);

/* Owner side: `ready(arg)` rechecks for work (acquire loads).  Spins for
 * the learnt `budget` (NULL: no spin; a sleep and wake-up costs several
 * microseconds) unless a stand-in polls, then sleeps until rung,
 * `deadline_ns` (PN_FOREVER) passes or a signal arrives.  A spin that
 * sees the work teaches `budget` how long it took; one spent in vain
 * teaches it through pn_spin_budget_missed.  Returns 1 if ready() said so, 0 when woken with nothing
 * found (caller rechecks), -ETIMEDOUT or -EINTR. */
int pn_bell_wait(pn_bell *b, int (*ready)(void *), void *arg,
                 int64_t deadline_ns, pn_spin_budget *budget);

/* Only the spinning part of pn_bell_wait, for `spin_ns` (no learning):
 * 1 if ready() said so, else 0 (spent, deadline, or a stand-in polls). */
int pn_bell_spin(pn_bell *b, int (*ready)(void *), void *arg,
                 int64_t deadline_ns, int64_t spin_ns);

/* Stand-in side: announce polling before the first check of the work, and
 * leave after the last; leaving rings the owner if `ready(arg)` finds work
 * that the stand-in left undone. */
void pn_bell_poll_enter(pn_bell *b);
void pn_bell_poll_leave(pn_bell *b, int (*ready)(void *), void *arg);

/* A worker about to spin for its next task: 1 if it may (fewer than `max`
 * workers spin now; then call pn_worker_spin_leave after), else 0. */
int pn_worker_spin_enter(pn_shm_header *h, uint32_t max);
void pn_worker_spin_leave(pn_shm_header *h);

/* --- the task ring of one worker (parent produces, worker consumes) ---- */

/* Parent: the task is in `slot` (ring index `index`); makes it visible and
 * wakes the worker. */
void pn_ring_publish(pn_worker_ctl *ctl, pn_slot *slot, uint64_t index);

/* Worker: 1 if it took the task at `index` (now RUNNING),
 * 2 if the parent stole it back (skip it), 0 if nothing is queued there.
 * Either of the first two moves the worker's position past `index`. */
int pn_ring_take(pn_worker_ctl *ctl, pn_slot *slot, uint64_t index);

/* Worker: the result is in the slot; marks it DONE and rings the parent
 * (lazily: a parent thread polling for it needs no wake-up). */
void pn_ring_done(pn_shm *shm, pn_slot *slot, uint64_t index);

/* Parent: takes back a task no worker has started; 1 if it did. */
int pn_ring_steal(pn_slot *slot, uint64_t index);

/* Parent: 1 once the worker has moved past `index` (a STOLEN slot may be
 * reused only then; a DONE one always may). */
int pn_ring_passed(pn_worker_ctl *ctl, uint64_t index);

/* PN_SLOT_* of the slot for ring index `index` (EMPTY if it holds another
 * lap). */
unsigned pn_ring_state(pn_slot *slot, uint64_t index);

/* Parent, with no worker on the ring: every slot empty, position 0. */
void pn_ring_reset(pn_shm *shm, pn_worker_ctl *ctl);

#endif
