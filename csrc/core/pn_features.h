/* Probes which Linux kernel features piston can use on this machine. */
#ifndef PN_FEATURES_H
#define PN_FEATURES_H

enum {
    PN_FEAT_EPOLL = 1 << 0,
    PN_FEAT_EVENTFD = 1 << 1,
    PN_FEAT_MEMFD = 1 << 2,
    PN_FEAT_PIDFD = 1 << 3,
    PN_FEAT_FUTEX = 1 << 4,
    PN_FEAT_TIMERFD = 1 << 5,
};

/* Returns a mask of PN_FEAT_* found by trying each syscall once. */
unsigned pn_features_probe(void);

#endif
