/* C tests of pidfd-based worker supervision. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "core/pn_proc.h"

#include "pn_test.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void
test_exit_code(void)
{
    pid_t pid = pn_test_fork();
    if (pid == 0) {
        usleep(20000);
        _exit(3);
    }
    int fd = pn_pidfd_open(pid);
    PN_CHECK(fd >= 0);
    PN_CHECK(pn_pidfd_exited(fd) == 0);
    PN_CHECK(pn_pidfd_wait(fd, 5000) == 1);
    PN_CHECK(pn_pidfd_exited(fd) == 1);
    int st;
    PN_CHECK(waitpid(pid, &st, 0) == pid);
    char buf[64];
    PN_CHECK(strcmp(pn_wstatus_text(st, buf, sizeof(buf)), "exit code 3") == 0);
    close(fd);
}

static void
test_kill_via_pidfd(void)
{
    pid_t pid = pn_test_fork();
    if (pid == 0) {
        for (;;) {
            pause();
        }
    }
    int fd = pn_pidfd_open(pid);
    PN_CHECK(fd >= 0);
    PN_CHECK(pn_pidfd_wait(fd, 10) == 0);
    PN_CHECK(pn_pidfd_kill(fd, SIGKILL) == 0);
    PN_CHECK(pn_pidfd_wait(fd, 5000) == 1);
    int st;
    PN_CHECK(waitpid(pid, &st, 0) == pid);
    char buf[64];
    pn_wstatus_text(st, buf, sizeof(buf));
    PN_CHECK(strcmp(buf, "signal 9 (SIGKILL)") == 0);
    /* Reaped: the pidfd still names that process, never a new one. */
    PN_CHECK(pn_pidfd_kill(fd, SIGKILL) == -ESRCH);
    close(fd);
}

/* A grandchild (the worker of a fork server) watched from its grandparent,
 * and killed by PDEATHSIG when its parent dies. */
static void
test_grandchild_pdeathsig(void)
{
    int pfd[2];
    PN_CHECK(pipe(pfd) == 0);
    pid_t server = pn_test_fork();
    if (server == 0) {
        pid_t me = getpid();
        pid_t w = pn_test_fork();
        if (w == 0) {
            PN_CHECK(pn_set_pdeathsig(SIGKILL, me) == 0);
            for (;;) {
                pause();
            }
        }
        PN_CHECK(write(pfd[1], &w, sizeof(w)) == sizeof(w));
        pause();
        _exit(0);
    }
    pid_t worker;
    PN_CHECK(read(pfd[0], &worker, sizeof(worker)) == sizeof(worker));
    int fd = pn_pidfd_open(worker);
    PN_CHECK(fd >= 0);
    PN_CHECK(pn_pidfd_wait(fd, 50) == 0);
    kill(server, SIGKILL);
    PN_CHECK(pn_test_wait(server) == 128 + SIGKILL);
    /* The worker follows its parent. */
    PN_CHECK(pn_pidfd_wait(fd, 5000) == 1);
    close(fd);
    close(pfd[0]);
    close(pfd[1]);
}

static void
test_wstatus_text(void)
{
    char buf[64];
    PN_CHECK(strcmp(pn_wstatus_text(11, buf, sizeof(buf)), "signal 11 (SIGSEGV)")
          == 0);
    PN_CHECK(strcmp(pn_wstatus_text(11 | 0x80, buf, sizeof(buf)),
                 "signal 11 (SIGSEGV), core dumped") == 0);
    PN_CHECK(strcmp(pn_wstatus_text(0, buf, sizeof(buf)), "exit code 0") == 0);
}

/* Our own child is reaped through its pidfd, with the raw wait status
 * waitpid() would give; once reaped it is gone (-ECHILD). */
static void
test_reap_own_child(void)
{
    int ws = -1;
    pid_t pid = fork();
    PN_CHECK(pid >= 0);
    if (pid == 0) {
        usleep(200000);
        _exit(3);
    }
    int fd = pn_pidfd_open(pid);
    PN_CHECK(fd >= 0);
    PN_CHECK(pn_pidfd_reap(fd, &ws) == 0);     /* still running */
    PN_CHECK(pn_pidfd_wait(fd, 10000) == 1);
    PN_CHECK(pn_pidfd_reap(fd, &ws) == 1);
    PN_CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 3);
    PN_CHECK(pn_pidfd_reap(fd, &ws) == -ECHILD);
    close(fd);

    pid = fork();
    PN_CHECK(pid >= 0);
    if (pid == 0) {
        pause();
        _exit(0);
    }
    fd = pn_pidfd_open(pid);
    PN_CHECK(fd >= 0);
    PN_CHECK(pn_pidfd_kill(fd, SIGKILL) == 0);
    PN_CHECK(pn_pidfd_wait(fd, 10000) == 1);
    PN_CHECK(pn_pidfd_reap(fd, &ws) == 1);
    PN_CHECK(WIFSIGNALED(ws) && WTERMSIG(ws) == SIGKILL);
    close(fd);
}

static const pn_test_case cases[] = {
    PN_CASE(exit_code),
    PN_CASE(kill_via_pidfd),
    PN_CASE(grandchild_pdeathsig),
    PN_CASE(wstatus_text),
    PN_CASE(reap_own_child),
    {NULL, NULL},
};

PN_TEST_MAIN(cases)
