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
pn_pidfd_reap(int pidfd, int *wstatus)
{
#ifndef P_PIDFD
#define P_PIDFD 3
#endif
    siginfo_t info;
    memset(&info, 0, sizeof(info));
    int r;
    do {
        r = waitid((idtype_t)P_PIDFD, (id_t)pidfd, &info, WEXITED | WNOHANG);
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
        return -errno;
    }
    if (info.si_pid == 0) {
        return 0;
    }
    /* Back to the raw wait status waitpid() would have given. */
    switch (info.si_code) {
    case CLD_EXITED:
        *wstatus = (info.si_status & 0xff) << 8;
        break;
    case CLD_DUMPED:
        *wstatus = (info.si_status & 0x7f) | 0x80;
        break;
    default:
        *wstatus = info.si_status & 0x7f;
        break;
    }
    return 1;
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
