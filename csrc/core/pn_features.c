/* Kernel feature probe: each feature is tried for real, then released. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1     /* memfd_create */
#endif
#include "core/pn_features.h"
#include "core/pn_futex.h"

#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <unistd.h>

static int
closed_ok(int fd)
{
    if (fd < 0) {
        return 0;
    }
    close(fd);
    return 1;
}

unsigned
pn_features_probe(void)
{
    unsigned mask = 0;
    _Atomic uint32_t word = 0;

    if (closed_ok(epoll_create1(EPOLL_CLOEXEC))) {
        mask |= PN_FEAT_EPOLL;
    }
    if (closed_ok(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK))) {
        mask |= PN_FEAT_EVENTFD;
    }
    if (closed_ok(memfd_create("piston-probe", MFD_CLOEXEC))) {
        mask |= PN_FEAT_MEMFD;
    }
#ifdef SYS_pidfd_open
    if (closed_ok((int)syscall(SYS_pidfd_open, getpid(), 0))) {
        mask |= PN_FEAT_PIDFD;
    }
#endif
    if (closed_ok(timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC))) {
        mask |= PN_FEAT_TIMERFD;
    }
    if (pn_futex_wake(&word, 1, 0) >= 0) {
        mask |= PN_FEAT_FUTEX;
    }
    return mask;
}
