/* The poller contract: the loop's only view of the kernel's readiness API. */
#ifndef PN_POLL_H
#define PN_POLL_H

#include <stdint.h>

/* Interest and result bits.  PN_POLL_ERROR is only ever reported (error
 * or hang-up on the fd); the loop wakes both directions on it, as a
 * selector reports EPOLLERR/EPOLLHUP as readable and writable. */
#define PN_POLL_READABLE 1u
#define PN_POLL_WRITABLE 2u
#define PN_POLL_ERROR 4u

typedef struct pn_poll pn_poll;

typedef struct pn_poll_event {
    int fd;
    unsigned events;
} pn_poll_event;

/* Creates a poller (close-on-exec).  0 or -errno. */
int pn_poll_open(pn_poll **out);

/* Closes the kernel object and frees the poller; NULL is allowed. */
void pn_poll_close(pn_poll *p);

/* Changes the interest of fd from old_mask to new_mask (READABLE|WRITABLE;
 * 0 means not registered).  Copes with an fd that was closed behind the
 * poller's back: a stale registration is replaced, a removal of an fd the
 * kernel already forgot succeeds.  0 or -errno (the interest is then
 * unchanged). */
int pn_poll_ctl(pn_poll *p, int fd, unsigned old_mask, unsigned new_mask);

/* Waits up to timeout_ns (negative: forever; 0: just look) and stores at
 * most maxev events.  Returns how many, or -errno (-EINTR on a signal).
 * Never rounds a timeout down: a timer due in 0.3 ms is not woken early
 * into a busy loop. */
int pn_poll_wait(pn_poll *p, pn_poll_event *ev, int maxev,
                 int64_t timeout_ns);

#endif
