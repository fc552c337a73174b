/* Futex wait/wake: the one primitive every piston wait is built on. */
#ifndef PN_FUTEX_H
#define PN_FUTEX_H

#include <stdint.h>
#include <time.h>

/* Deadline meaning "wait forever". */
#define PN_FOREVER ((int64_t)-1)

/* CLOCK_MONOTONIC now, in nanoseconds. */
int64_t pn_monotonic_ns(void);

/* Sleeps while *word == expected, until woken or until the absolute
 * CLOCK_MONOTONIC deadline (ns, or PN_FOREVER).  Returns 0 when woken or
 * when *word already differed, -ETIMEDOUT, or -EINTR on a signal.
 * `shared` selects a process-shared futex (word in shared memory). */
int pn_futex_wait(_Atomic uint32_t *word, uint32_t expected,
                  int64_t deadline_ns, int shared);

/* Wakes up to n sleepers on word; returns how many were woken. */
int pn_futex_wake(_Atomic uint32_t *word, int n, int shared);

/* A polite busy-wait step for short spins before sleeping. */
static inline void
pn_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

#endif
