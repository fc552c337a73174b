/* The epoll backend of the poller contract in pn_poll.h. */
#include "core/pn_poll.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* How many kernel events one wait can return; the loop calls again on the
 * next iteration if there were more (level-triggered, nothing is lost). */
#define MAX_BATCH 256

struct pn_poll {
    int epfd;
    /* epoll_pwait2 (Linux 5.11) takes a timespec; older kernels answer
     * ENOSYS once and we fall back to millisecond epoll_wait. */
    int have_pwait2;
    struct epoll_event kev[MAX_BATCH];
};

int
pn_poll_open(pn_poll **out)
{
    pn_poll *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        return -ENOMEM;
    }
    p->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (p->epfd < 0) {
        int err = errno;
        free(p);
        return -err;
    }
#ifdef SYS_epoll_pwait2
    p->have_pwait2 = 1;
#endif
    *out = p;
    return 0;
}

void
pn_poll_close(pn_poll *p)
{
    if (p == NULL) {
        return;
    }
    close(p->epfd);
    free(p);
}

static uint32_t
to_epoll(unsigned mask)
{
    return ((mask & PN_POLL_READABLE) ? EPOLLIN : 0)
           | ((mask & PN_POLL_WRITABLE) ? EPOLLOUT : 0);
}

int
pn_poll_ctl(pn_poll *p, int fd, unsigned old_mask, unsigned new_mask)
{
    struct epoll_event ev = {0};
    int op;

    if (fd < 0) {
        return -EBADF;
    }
    if (new_mask == 0) {
        if (old_mask == 0) {
            return 0;
        }
        /* The kernel drops an fd from the set by itself when its last
         * descriptor is closed: removing it again is not an error. */
        if (epoll_ctl(p->epfd, EPOLL_CTL_DEL, fd, &ev) < 0
            && errno != ENOENT && errno != EBADF) {
            return -errno;
        }
        return 0;
    }
    ev.events = to_epoll(new_mask);
    ev.data.fd = fd;
    op = old_mask ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    if (epoll_ctl(p->epfd, op, fd, &ev) == 0) {
        return 0;
    }
    /* The fd number was closed and reused behind our back (MOD: ENOENT),
     * or a registration we did not know about survived (ADD: EEXIST):
     * retry with the other operation. */
    if (op == EPOLL_CTL_MOD && errno == ENOENT) {
        op = EPOLL_CTL_ADD;
    }
    else if (op == EPOLL_CTL_ADD && errno == EEXIST) {
        op = EPOLL_CTL_MOD;
    }
    else {
        return -errno;
    }
    if (epoll_ctl(p->epfd, op, fd, &ev) < 0) {
        return -errno;
    }
    return 0;
}

static int
wait_ms(pn_poll *p, int n, int64_t timeout_ns)
{
    int ms;
    if (timeout_ns < 0) {
        ms = -1;
    }
    else if (timeout_ns >= (int64_t)INT_MAX * 1000000) {
        ms = INT_MAX;
    }
    else {
        /* Round up, so a due-soon timer is not polled for in a spin. */
        ms = (int)((timeout_ns + 999999) / 1000000);
    }
    return epoll_wait(p->epfd, p->kev, n, ms);
}

int
pn_poll_wait(pn_poll *p, pn_poll_event *ev, int maxev, int64_t timeout_ns)
{
    int n = maxev < MAX_BATCH ? maxev : MAX_BATCH;
    int got = -1;

    if (n <= 0) {
        return -EINVAL;
    }
#ifdef SYS_epoll_pwait2
    if (p->have_pwait2 && timeout_ns > 0) {
        struct timespec ts = {
            .tv_sec = (time_t)(timeout_ns / 1000000000),
            .tv_nsec = (long)(timeout_ns % 1000000000),
        };
        got = (int)syscall(SYS_epoll_pwait2, p->epfd, p->kev, n, &ts,
                           NULL, (size_t)0);
        if (got < 0 && errno == ENOSYS) {
            p->have_pwait2 = 0;
            got = wait_ms(p, n, timeout_ns);
        }
    }
    else
#endif
    {
        got = wait_ms(p, n, timeout_ns);
    }
    if (got < 0) {
        return -errno;
    }
    for (int i = 0; i < got; i++) {
        uint32_t e = p->kev[i].events;
        ev[i].fd = p->kev[i].data.fd;
        ev[i].events = ((e & EPOLLIN) ? PN_POLL_READABLE : 0)
                       | ((e & EPOLLOUT) ? PN_POLL_WRITABLE : 0)
                       | ((e & (EPOLLERR | EPOLLHUP)) ? PN_POLL_ERROR : 0);
    }
    return got;
}
