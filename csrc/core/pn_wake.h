/* eventfd wake-ups that coalesce: many signals, one write, one read. */
#ifndef PN_WAKE_H
#define PN_WAKE_H

#include <stdatomic.h>

typedef struct pn_wake {
    int fd;                 /* non-blocking, close-on-exec eventfd */
    atomic_int pending;     /* 1 between a signal's write and the drain */
} pn_wake;

/* 0 or -errno. */
int pn_wake_open(pn_wake *w);

void pn_wake_close(pn_wake *w);

/* Any thread: makes fd readable unless a wake-up is already pending.
 * Whatever the caller published before the call is visible to the waiter
 * after its pn_wake_drain.  0 or -errno. */
int pn_wake_signal(pn_wake *w);

/* The waiting thread, after fd polled readable: consumes the wake-up.  Read
 * the published work *after* this call. */
void pn_wake_drain(pn_wake *w);

#endif
