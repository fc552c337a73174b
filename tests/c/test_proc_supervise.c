/* C tests of pidfd-based worker supervision. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "core/pn_proc.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define CHECK(c)                                                             \
    do {                                                                     \
        if (!(c)) {                                                          \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, \
                    #c);                                                     \
            exit(1);                                                         \
        }                                                                    \
    } while (0)

static pid_t
fork_or_die(void)
{
    pid_t pid = fork();
    CHECK(pid >= 0);
    return pid;
}

static int
wait_child(pid_t pid)
{
    int st;
    CHECK(waitpid(pid, &st, 0) == pid);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void
test_exit_code(void)
{
    pid_t pid = fork_or_die();
    if (pid == 0) {
        usleep(20000);
        _exit(3);
    }
    int fd = pn_pidfd_open(pid);
    CHECK(fd >= 0);
    CHECK(pn_pidfd_exited(fd) == 0);
    CHECK(pn_pidfd_wait(fd, 5000) == 1);
    CHECK(pn_pidfd_exited(fd) == 1);
    int st;
    CHECK(waitpid(pid, &st, 0) == pid);
    char buf[64];
    CHECK(strcmp(pn_wstatus_text(st, buf, sizeof(buf)), "exit code 3") == 0);
    close(fd);
}

static void
test_kill_via_pidfd(void)
{
    pid_t pid = fork_or_die();
    if (pid == 0) {
        for (;;) {
            pause();
        }
    }
    int fd = pn_pidfd_open(pid);
    CHECK(fd >= 0);
    CHECK(pn_pidfd_wait(fd, 10) == 0);
    CHECK(pn_pidfd_kill(fd, SIGKILL) == 0);
    CHECK(pn_pidfd_wait(fd, 5000) == 1);
    int st;
    CHECK(waitpid(pid, &st, 0) == pid);
    char buf[64];
    pn_wstatus_text(st, buf, sizeof(buf));
    CHECK(strcmp(buf, "signal 9 (SIGKILL)") == 0);
    /* Reaped: the pidfd still names that process, never a new one. */
    CHECK(pn_pidfd_kill(fd, SIGKILL) == -ESRCH);
    close(fd);
}

/* A grandchild (the worker of a fork server) watched from its grandparent,
 * and killed by PDEATHSIG when its parent dies. */
static void
test_grandchild_pdeathsig(void)
{
    int pfd[2];
    CHECK(pipe(pfd) == 0);
    pid_t server = fork_or_die();
    if (server == 0) {
        pid_t me = getpid();
        pid_t w = fork_or_die();
        if (w == 0) {
            CHECK(pn_set_pdeathsig(SIGKILL, me) == 0);
            for (;;) {
                pause();
            }
        }
        CHECK(write(pfd[1], &w, sizeof(w)) == sizeof(w));
        pause();
        _exit(0);
    }
    pid_t worker;
    CHECK(read(pfd[0], &worker, sizeof(worker)) == sizeof(worker));
    int fd = pn_pidfd_open(worker);
    CHECK(fd >= 0);
    CHECK(pn_pidfd_wait(fd, 50) == 0);
    kill(server, SIGKILL);
    CHECK(wait_child(server) == 128 + SIGKILL);
    /* The worker follows its parent. */
    CHECK(pn_pidfd_wait(fd, 5000) == 1);
    close(fd);
    close(pfd[0]);
    close(pfd[1]);
}

static void
test_wstatus_text(void)
{
    char buf[64];
    CHECK(strcmp(pn_wstatus_text(11, buf, sizeof(buf)), "signal 11 (SIGSEGV)")
          == 0);
    CHECK(strcmp(pn_wstatus_text(11 | 0x80, buf, sizeof(buf)),
                 "signal 11 (SIGSEGV), core dumped") == 0);
    CHECK(strcmp(pn_wstatus_text(0, buf, sizeof(buf)), "exit code 0") == 0);
}

static const struct {
    const char *name;
    void (*fn)(void);
} cases[] = {
    {"exit_code", test_exit_code},
    {"kill_via_pidfd", test_kill_via_pidfd},
    {"grandchild_pdeathsig", test_grandchild_pdeathsig},
    {"wstatus_text", test_wstatus_text},
};
#define NCASES (sizeof(cases) / sizeof(cases[0]))

/* `prog --list`, `prog NAME`, or `prog` for every case in its own child. */
int
main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--list") == 0) {
        for (size_t i = 0; i < NCASES; i++) {
            puts(cases[i].name);
        }
        return 0;
    }
    int failed = 0;
    for (size_t i = 0; i < NCASES; i++) {
        if (argc > 1 && strcmp(argv[1], cases[i].name) != 0) {
            continue;
        }
        if (argc > 1) {
            cases[i].fn();
            return 0;
        }
        pid_t pid = fork_or_die();
        if (pid == 0) {
            cases[i].fn();
            _exit(0);
        }
        int rc = wait_child(pid);
        printf("%s %s\n", rc == 0 ? "ok  " : "FAIL", cases[i].name);
        failed += rc != 0;
    }
    return failed != 0;
}
