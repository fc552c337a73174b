/* Tests of core/pn_fork: the generation counter moves in children only. */
#include "core/pn_fork.h"
#include "pn_test.h"

#include <pthread.h>

/* Runs `child` in a forked process and returns its exit status (the
 * child's checks end it with 1, success is 0). */
static int
in_child(int (*child)(uint64_t), uint64_t arg)
{
    int status;
    pid_t pid = fork();
    PN_CHECK(pid >= 0);
    if (pid == 0) {
        _exit(child(arg));
    }
    PN_CHECK_EQ(waitpid(pid, &status, 0), pid);
    PN_CHECK(WIFEXITED(status));
    return WEXITSTATUS(status);
}

PN_TEST(init_is_idempotent)
{
    PN_CHECK_EQ(pn_fork_init(), 0);
    PN_CHECK_EQ(pn_fork_init(), 0);
    PN_CHECK_EQ(pn_fork_init(), 0);
}

static int
child_sees_bump(uint64_t before)
{
    return pn_fork_generation() == before + 1 ? 0 : 7;
}

PN_TEST(child_generation_bumps_parent_does_not)
{
    PN_CHECK_EQ(pn_fork_init(), 0);
    uint64_t g0 = pn_fork_generation();
    PN_CHECK_EQ(in_child(child_sees_bump, g0), 0);
    PN_CHECK_EQ(pn_fork_generation(), g0);
    PN_CHECK_EQ(in_child(child_sees_bump, g0), 0);
    PN_CHECK_EQ(pn_fork_generation(), g0);
}

/* A second init in the child must not install a second handler (which
 * would bump twice on the next fork). */
static int
child_forks_again(uint64_t before)
{
    if (pn_fork_init() != 0 || pn_fork_generation() != before + 1) {
        return 8;
    }
    int status;
    pid_t pid = fork();
    if (pid < 0) {
        return 9;
    }
    if (pid == 0) {
        _exit(pn_fork_generation() == before + 2 ? 0 : 10);
    }
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) {
        return 11;
    }
    if (WEXITSTATUS(status) != 0) {
        return WEXITSTATUS(status);
    }
    return pn_fork_generation() == before + 1 ? 0 : 12;
}

PN_TEST(grandchild_bumps_twice)
{
    PN_CHECK_EQ(pn_fork_init(), 0);
    PN_CHECK_EQ(pn_fork_init(), 0);
    uint64_t g0 = pn_fork_generation();
    PN_CHECK_EQ(in_child(child_forks_again, g0), 0);
    PN_CHECK_EQ(pn_fork_generation(), g0);
}

typedef struct fork_job {
    uint64_t generation;    /* in: the parent's generation */
    int child_status;       /* out: in_child's result */
} fork_job;

static void *
fork_from_thread(void *arg)
{
    fork_job *job = arg;
    job->child_status = in_child(child_sees_bump, job->generation);
    return NULL;
}

/* pthread_atfork handlers run whichever thread forks. */
PN_TEST(fork_from_another_thread_bumps)
{
    PN_CHECK_EQ(pn_fork_init(), 0);
    fork_job job = {pn_fork_generation(), 99};
    pthread_t t;
    PN_CHECK_EQ(pthread_create(&t, NULL, fork_from_thread, &job), 0);
    PN_CHECK_EQ(pthread_join(t, NULL), 0);
    PN_CHECK_EQ(job.child_status, 0);
    PN_CHECK_EQ(pn_fork_generation(), job.generation);
}

static void *
init_concurrently(void *arg)
{
    *(int *)arg = pn_fork_init();
    return NULL;
}

PN_TEST(concurrent_init_installs_once)
{
    enum { N = 8 };
    pthread_t t[N];
    int results[N];
    for (int i = 0; i < N; i++) {
        results[i] = -1;
        PN_CHECK_EQ(
            pthread_create(&t[i], NULL, init_concurrently, &results[i]), 0);
    }
    for (int i = 0; i < N; i++) {
        PN_CHECK_EQ(pthread_join(t[i], NULL), 0);
        PN_CHECK_EQ(results[i], 0);
    }
    uint64_t g0 = pn_fork_generation();
    PN_CHECK_EQ(in_child(child_sees_bump, g0), 0);
}

static const pn_test_case cases[] = {
    PN_CASE(init_is_idempotent),
    PN_CASE(child_generation_bumps_parent_does_not),
    PN_CASE(grandchild_bumps_twice),
    PN_CASE(fork_from_another_thread_bumps),
    PN_CASE(concurrent_init_installs_once),
    {NULL, NULL},
};

PN_TEST_MAIN(cases)
