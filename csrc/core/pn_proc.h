/* Worker supervision: pidfds, death detection and wait-status text. */
#ifndef PN_PROC_H
#define PN_PROC_H

#include <stddef.h>
#include <sys/types.h>

/* A pidfd for `pid` (close-on-exec), or -errno.  Unlike a pid it can
 * never name a recycled process. */
int pn_pidfd_open(pid_t pid);

/* Sends `sig` through the pidfd; 0, or -errno (-ESRCH once it exited). */
int pn_pidfd_kill(int pidfd, int sig);

/* 1 if the process behind the pidfd has exited, 0 if it runs, -errno. */
int pn_pidfd_exited(int pidfd);

/* Waits up to `timeout_ms` (-1 forever) for the process to exit: 1 exited,
 * 0 timeout, -errno (-EINTR on a signal). */
int pn_pidfd_wait(int pidfd, int timeout_ms);

/* Reaps our own child behind the pidfd if it exited: 1 with its raw wait
 * status in *wstatus, 0 if it still runs, -errno (-ECHILD when somebody
 * else reaped it). */
int pn_pidfd_reap(int pidfd, int *wstatus);

/* Asks the kernel to send `sig` to this process when its parent dies
 * (then checks the parent did not die already).  0 or -errno. */
int pn_set_pdeathsig(int sig, pid_t expected_parent);

/* "exit code 3", "signal 9 (SIGKILL)", ... from a raw wait status; returns
 * buf. */
char *pn_wstatus_text(int wstatus, char *buf, size_t n);

#endif
