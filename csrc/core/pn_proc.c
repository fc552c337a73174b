/* pidfd-based process supervision helpers. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "core/pn_proc.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif

int
pn_pidfd_open(pid_t pid)
{
    /* pidfds are close-on-exec from birth. */
    long fd = syscall(SYS_pidfd_open, pid, 0);
    return fd < 0 ? -errno : (int)fd;
}

int
pn_pidfd_kill(int pidfd, int sig)
{
    long r = syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
    return r < 0 ? -errno : 0;
}

int
pn_pidfd_wait(int pidfd, int timeout_ms)
{
    struct pollfd p = {.fd = pidfd, .events = POLLIN};
    int r = poll(&p, 1, timeout_ms);
    if (r < 0) {
        return -errno;
    }
    return r > 0 ? 1 : 0;
}

int
pn_pidfd_exited(int pidfd)
{
    int r;
    do {
        r = pn_pidfd_wait(pidfd, 0);
    } while (r == -EINTR);
    return r;
}

int
pn_set_pdeathsig(int sig, pid_t expected_parent)
{
    if (prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) < 0) {
        return -errno;
    }
    /* The parent may have died between fork and prctl. */
    if (expected_parent > 0 && getppid() != expected_parent) {
        return -ESRCH;
    }
    return 0;
}

char *
pn_wstatus_text(int wstatus, char *buf, size_t n)
{
    if (WIFSIGNALED(wstatus)) {
        int sig = WTERMSIG(wstatus);
        const char *name = sigabbrev_np(sig);
        snprintf(buf, n, "signal %d (SIG%s)%s", sig, name ? name : "?",
                 WCOREDUMP(wstatus) ? ", core dumped" : "");
    }
    else if (WIFEXITED(wstatus)) {
        snprintf(buf, n, "exit code %d", WEXITSTATUS(wstatus));
    }
    else {
        snprintf(buf, n, "wait status 0x%x", (unsigned)wstatus);
    }
    return buf;
}
