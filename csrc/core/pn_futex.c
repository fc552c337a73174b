/* Futex wait/wake over the raw syscall, with absolute monotonic deadlines. */
#include "core/pn_futex.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

int64_t
pn_monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int
pn_futex_wait(_Atomic uint32_t *word, uint32_t expected, int64_t deadline_ns,
              int shared)
{
    struct timespec ts, *tsp = NULL;
    int op = FUTEX_WAIT_BITSET | (shared ? 0 : FUTEX_PRIVATE_FLAG);

    if (deadline_ns != PN_FOREVER) {
        /* An absolute deadline: a wait interrupted by EINTR and retried
         * never has to recompute its remaining time. */
        ts.tv_sec = deadline_ns / 1000000000;
        ts.tv_nsec = deadline_ns % 1000000000;
        tsp = &ts;
    }
    long r = syscall(SYS_futex, (uint32_t *)word, op, expected, tsp, NULL,
                     FUTEX_BITSET_MATCH_ANY);
    if (r == 0) {
        return 0;
    }
    if (errno == EAGAIN) {
        return 0;           /* the word had already changed */
    }
    return -errno;
}

int
pn_futex_wake(_Atomic uint32_t *word, int n, int shared)
{
    int op = FUTEX_WAKE | (shared ? 0 : FUTEX_PRIVATE_FLAG);
    long r = syscall(SYS_futex, (uint32_t *)word, op, n, NULL, NULL, 0);
    return r < 0 ? -errno : (int)r;
}
