/* A tiny harness for the C tests of csrc/core: one case per process.
 *
 * Each test file defines its cases with PN_TEST and lists them in a
 * PN_TEST_LIST table; main() is PN_TEST_MAIN.  `prog --list` prints the case
 * names, `prog NAME` runs one case (tests/c/run.sh starts one process per
 * case, as libuv's runner does), and `prog` alone runs every case, each in a
 * forked child, for quick use by hand. */
#ifndef PN_TEST_H
#define PN_TEST_H

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct pn_test_case {
    const char *name;
    void (*fn)(void);
} pn_test_case;

#define PN_TEST(name) static void test_##name(void)
#define PN_CASE(name) {#name, test_##name}

/* A failed check ends the process at once: the case has failed, and a
 * half-failed case would only print noise after the first broken fact. */
#define PN_FAIL(...)                                                          \
    do {                                                                      \
        fprintf(stderr, "%s:%d: ", __FILE__, __LINE__);                       \
        fprintf(stderr, __VA_ARGS__);                                         \
        fputc('\n', stderr);                                                  \
        exit(1);                                                              \
    } while (0)

#define PN_CHECK(cond)                                                        \
    do {                                                                      \
        if (!(cond)) {                                                        \
            PN_FAIL("check failed: %s", #cond);                               \
        }                                                                     \
    } while (0)

#define PN_CHECK_EQ(a, b)                                                     \
    do {                                                                      \
        long long pn_a_ = (long long)(a), pn_b_ = (long long)(b);             \
        if (pn_a_ != pn_b_) {                                                 \
            PN_FAIL("check failed: %s == %s (%lld != %lld)", #a, #b, pn_a_,   \
                    pn_b_);                                                   \
        }                                                                     \
    } while (0)

/* fork() for a case that needs a child; failing to fork fails the case. */
static inline pid_t
pn_test_fork(void)
{
    pid_t pid = fork();
    if (pid < 0) {
        PN_FAIL("fork: %s", strerror(errno));
    }
    return pid;
}

/* Waits for a child: its exit code, or 128 + the signal that killed it. */
static inline int
pn_test_wait(pid_t pid)
{
    int st;
    while (waitpid(pid, &st, 0) < 0) {
        if (errno != EINTR) {
            PN_FAIL("waitpid: %s", strerror(errno));
        }
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* Seconds after which a case is killed by SIGALRM: a hang is a failure. */
#ifndef PN_TEST_TIMEOUT
#define PN_TEST_TIMEOUT 20
#endif

static int
pn_run_case(const pn_test_case *c)
{
    alarm(PN_TEST_TIMEOUT);
    c->fn();
    /* Leave through exit() so sanitizers see a normal end. */
    return 0;
}

static int
pn_test_main(int argc, char **argv, const pn_test_case *cases)
{
    const pn_test_case *c;
    int failed = 0, passed = 0;

    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc == 2 && strcmp(argv[1], "--list") == 0) {
        for (c = cases; c->name != NULL; c++) {
            printf("%s\n", c->name);
        }
        return 0;
    }
    if (argc == 2) {
        for (c = cases; c->name != NULL; c++) {
            if (strcmp(c->name, argv[1]) == 0) {
                return pn_run_case(c);
            }
        }
        fprintf(stderr, "%s: no case named %s\n", argv[0], argv[1]);
        return 2;
    }
    for (c = cases; c->name != NULL; c++) {
        int status;
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            return 2;
        }
        if (pid == 0) {
            exit(pn_run_case(c));
        }
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
        }
        if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
            printf("ok   %s\n", c->name);
            passed++;
        }
        else {
            printf("FAIL %s\n", c->name);
            failed++;
        }
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}

#define PN_TEST_MAIN(cases)                                                   \
    int main(int argc, char **argv)                                           \
    {                                                                         \
        return pn_test_main(argc, argv, cases);                               \
    }

#endif
