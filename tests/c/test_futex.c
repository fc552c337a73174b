/* Tests of core/pn_futex: wait, wake, deadlines and signals. */
#include "core/pn_futex.h"
#include "pn_test.h"

#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/mman.h>

#define MS 1000000LL

static void
sleep_ns(int64_t ns)
{
    struct timespec ts = {ns / 1000000000, ns % 1000000000};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

PN_TEST(monotonic_advances)
{
    int64_t a = pn_monotonic_ns();
    sleep_ns(5 * MS);
    int64_t b = pn_monotonic_ns();
    PN_CHECK(a > 0);
    PN_CHECK(b - a >= 5 * MS);
}

/* A word that already differs from `expected` returns 0 at once, whatever
 * the deadline: the caller re-checks its condition, it never sleeps. */
PN_TEST(mismatch_returns_zero_at_once)
{
    _Atomic uint32_t word = 7;
    int64_t t0 = pn_monotonic_ns();
    PN_CHECK_EQ(pn_futex_wait(&word, 8, PN_FOREVER, 0), 0);
    PN_CHECK_EQ(pn_futex_wait(&word, 0, pn_monotonic_ns() + 5000 * MS, 0), 0);
    PN_CHECK_EQ(pn_futex_wait(&word, 8, PN_FOREVER, 1), 0);
    PN_CHECK(pn_monotonic_ns() - t0 < 1000 * MS);
}

PN_TEST(timeout_returns_etimedout)
{
    _Atomic uint32_t word = 0;
    int64_t t0 = pn_monotonic_ns();
    int r = pn_futex_wait(&word, 0, t0 + 50 * MS, 0);
    int64_t elapsed = pn_monotonic_ns() - t0;
    PN_CHECK_EQ(r, -ETIMEDOUT);
    PN_CHECK(elapsed >= 50 * MS);
    PN_CHECK(elapsed < 5000 * MS);
    PN_CHECK_EQ(atomic_load(&word), 0);
}

PN_TEST(past_deadline_times_out_at_once)
{
    _Atomic uint32_t word = 0;
    int64_t t0 = pn_monotonic_ns();
    PN_CHECK_EQ(pn_futex_wait(&word, 0, t0 - 10 * MS, 0), -ETIMEDOUT);
    PN_CHECK_EQ(pn_futex_wait(&word, 0, 0, 0), -ETIMEDOUT);
    PN_CHECK(pn_monotonic_ns() - t0 < 1000 * MS);
}

PN_TEST(shared_timeout_returns_etimedout)
{
    _Atomic uint32_t word = 3;
    int64_t t0 = pn_monotonic_ns();
    PN_CHECK_EQ(pn_futex_wait(&word, 3, t0 + 20 * MS, 1), -ETIMEDOUT);
    PN_CHECK(pn_monotonic_ns() - t0 >= 20 * MS);
}

PN_TEST(wake_without_waiters_returns_zero)
{
    _Atomic uint32_t word = 0;
    PN_CHECK_EQ(pn_futex_wake(&word, 1, 0), 0);
    PN_CHECK_EQ(pn_futex_wake(&word, INT_MAX, 0), 0);
    PN_CHECK_EQ(pn_futex_wake(&word, 1, 1), 0);
}

/* Waiters sleep until the word changes; each counts its returns so the
 * test can tell a wake-up that found a sleeper from one that did not. */
typedef struct waiters {
    _Atomic uint32_t word;
    _Atomic int returns;
    _Atomic int done;
    int64_t deadline;
    int last_result;
} waiters;

static void *
waiter_main(void *arg)
{
    waiters *w = arg;
    int r = 0;
    while (atomic_load_explicit(&w->word, memory_order_acquire) == 0) {
        r = pn_futex_wait(&w->word, 0, w->deadline, 0);
        atomic_fetch_add(&w->returns, 1);
        if (r == -ETIMEDOUT) {
            break;
        }
    }
    w->last_result = r;
    atomic_fetch_add(&w->done, 1);
    return NULL;
}

/* Calls wake(n=1) on the unchanged word until it reports a woken sleeper:
 * proves the waiter was really asleep in the kernel and that wake reached
 * it (the woken waiter sees the word unchanged and sleeps again). */
static void
wake_one_sleeper(waiters *w)
{
    int64_t give_up = pn_monotonic_ns() + 10000 * MS;
    while (pn_futex_wake(&w->word, 1, 0) != 1) {
        PN_CHECK(pn_monotonic_ns() < give_up);
        sleep_ns(1 * MS);
    }
}

PN_TEST(wake_across_threads)
{
    waiters w = {.deadline = PN_FOREVER};
    pthread_t t;
    PN_CHECK_EQ(pthread_create(&t, NULL, waiter_main, &w), 0);

    wake_one_sleeper(&w);
    /* The spurious wake-up was answered by sleeping again. */
    sleep_ns(20 * MS);
    PN_CHECK_EQ(atomic_load(&w.done), 0);

    atomic_store_explicit(&w.word, 1, memory_order_release);
    PN_CHECK(pn_futex_wake(&w.word, 1, 0) <= 1);
    PN_CHECK_EQ(pthread_join(t, NULL), 0);
    PN_CHECK_EQ(atomic_load(&w.done), 1);
    PN_CHECK_EQ(w.last_result, 0);
    PN_CHECK(atomic_load(&w.returns) >= 2);
}

PN_TEST(wake_counts_and_wakes_all)
{
    enum { N = 4 };
    waiters w = {.deadline = PN_FOREVER};
    pthread_t t[N];
    int64_t give_up = pn_monotonic_ns() + 10000 * MS;
    int woken = 0;

    for (int i = 0; i < N; i++) {
        PN_CHECK_EQ(pthread_create(&t[i], NULL, waiter_main, &w), 0);
    }
    /* Wait until all N sleep: a wake of INT_MAX on the unchanged word then
     * reports N (the woken ones go back to sleep). */
    while ((woken = pn_futex_wake(&w.word, INT_MAX, 0)) != N) {
        PN_CHECK(woken >= 0 && woken <= N);
        PN_CHECK(pn_monotonic_ns() < give_up);
        sleep_ns(2 * MS);
    }
    atomic_store_explicit(&w.word, 1, memory_order_release);
    woken = pn_futex_wake(&w.word, INT_MAX, 0);
    PN_CHECK(woken >= 0 && woken <= N);
    for (int i = 0; i < N; i++) {
        PN_CHECK_EQ(pthread_join(t[i], NULL), 0);
    }
    PN_CHECK_EQ(atomic_load(&w.done), N);
}

PN_TEST(waiter_deadline_expires_in_thread)
{
    waiters w = {.deadline = pn_monotonic_ns() + 30 * MS};
    pthread_t t;
    PN_CHECK_EQ(pthread_create(&t, NULL, waiter_main, &w), 0);
    PN_CHECK_EQ(pthread_join(t, NULL), 0);
    PN_CHECK_EQ(w.last_result, -ETIMEDOUT);
    PN_CHECK(pn_monotonic_ns() >= w.deadline);
}

static void
on_sigusr1(int sig)
{
    (void)sig;
}

/* A signal handled without SA_RESTART ends the wait with -EINTR: the
 * binding layer then runs Python's signal handlers (Ctrl-C). */
PN_TEST(signal_interrupts_wait)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_sigusr1;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;
    PN_CHECK_EQ(sigaction(SIGUSR1, &sa, NULL), 0);

    waiters w = {.deadline = PN_FOREVER};
    pthread_t t;
    PN_CHECK_EQ(pthread_create(&t, NULL, waiter_main, &w), 0);
    wake_one_sleeper(&w);   /* it is asleep now */
    int64_t give_up = pn_monotonic_ns() + 10000 * MS;
    int before = atomic_load(&w.returns);
    /* Repeat: a signal that lands just before the waiter re-enters the
     * kernel is absorbed by the handler and not seen as EINTR. */
    int saw_eintr = 0;
    while (!saw_eintr) {
        PN_CHECK(pn_monotonic_ns() < give_up);
        PN_CHECK_EQ(pthread_kill(t, SIGUSR1), 0);
        sleep_ns(5 * MS);
        if (atomic_load(&w.returns) > before) {
            saw_eintr = 1;
        }
    }
    atomic_store_explicit(&w.word, 1, memory_order_release);
    pn_futex_wake(&w.word, 1, 0);
    PN_CHECK_EQ(pthread_join(t, NULL), 0);
    PN_CHECK_EQ(atomic_load(&w.done), 1);
}

/* The same signal case, checked on the return value itself. */
typedef struct eintr_probe {
    _Atomic uint32_t word;
    _Atomic int result;
    _Atomic int finished;
} eintr_probe;

static void *
eintr_main(void *arg)
{
    eintr_probe *p = arg;
    atomic_store(&p->result, pn_futex_wait(&p->word, 0,
                                           pn_monotonic_ns() + 20000 * MS, 0));
    atomic_store(&p->finished, 1);
    return NULL;
}

PN_TEST(signal_returns_eintr)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_sigusr1;
    sigemptyset(&sa.sa_mask);
    PN_CHECK_EQ(sigaction(SIGUSR1, &sa, NULL), 0);

    eintr_probe p = {0};
    pthread_t t;
    PN_CHECK_EQ(pthread_create(&t, NULL, eintr_main, &p), 0);
    int64_t give_up = pn_monotonic_ns() + 10000 * MS;
    while (!atomic_load(&p.finished)) {
        PN_CHECK(pn_monotonic_ns() < give_up);
        /* Repeat: a signal that lands before the wait starts is absorbed
         * by the handler, the next one interrupts the sleep. */
        PN_CHECK_EQ(pthread_kill(t, SIGUSR1), 0);
        sleep_ns(5 * MS);
    }
    PN_CHECK_EQ(pthread_join(t, NULL), 0);
    PN_CHECK_EQ(atomic_load(&p.result), -EINTR);
}

/* A process-shared futex in MAP_SHARED memory wakes another process. */
PN_TEST(shared_wake_across_processes)
{
    _Atomic uint32_t *word = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
                                  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    PN_CHECK(word != MAP_FAILED);
    atomic_store(word, 0);
    pid_t pid = fork();
    PN_CHECK(pid >= 0);
    if (pid == 0) {
        int64_t deadline = pn_monotonic_ns() + 10000 * MS;
        while (atomic_load_explicit(word, memory_order_acquire) == 0) {
            if (pn_futex_wait(word, 0, deadline, 1) == -ETIMEDOUT) {
                _exit(3);
            }
        }
        _exit(atomic_load(word) == 42 ? 0 : 4);
    }
    int64_t give_up = pn_monotonic_ns() + 10000 * MS;
    /* Shared wake reaches the sleeping child: retry until it reports 1. */
    while (pn_futex_wake(word, 1, 1) != 1) {
        PN_CHECK(pn_monotonic_ns() < give_up);
        sleep_ns(1 * MS);
    }
    atomic_store_explicit(word, 42, memory_order_release);
    pn_futex_wake(word, 1, 1);
    int status;
    PN_CHECK_EQ(waitpid(pid, &status, 0), pid);
    PN_CHECK(WIFEXITED(status));
    PN_CHECK_EQ(WEXITSTATUS(status), 0);
    munmap((void *)word, 4096);
}

/* A private wake does not reach a process-shared waiter in another
 * process: the two flags must not be mixed up. */
PN_TEST(private_wake_misses_other_process)
{
    _Atomic uint32_t *word = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
                                  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    PN_CHECK(word != MAP_FAILED);
    atomic_store(word, 0);
    int status;
    pid_t pid = fork();
    PN_CHECK(pid >= 0);
    if (pid == 0) {
        int r = pn_futex_wait(word, 0, pn_monotonic_ns() + 300 * MS, 1);
        _exit(r == -ETIMEDOUT ? 0 : 6);
    }
    for (int i = 0; i < 20; i++) {
        PN_CHECK_EQ(pn_futex_wake(word, 1, 0), 0);
        sleep_ns(5 * MS);
    }
    PN_CHECK_EQ(waitpid(pid, &status, 0), pid);
    PN_CHECK(WIFEXITED(status));
    PN_CHECK_EQ(WEXITSTATUS(status), 0);
    munmap((void *)word, 4096);
}

PN_TEST(cpu_relax_is_callable)
{
    for (int i = 0; i < 1000; i++) {
        pn_cpu_relax();
    }
}

static const pn_test_case cases[] = {
    PN_CASE(monotonic_advances),
    PN_CASE(mismatch_returns_zero_at_once),
    PN_CASE(timeout_returns_etimedout),
    PN_CASE(past_deadline_times_out_at_once),
    PN_CASE(shared_timeout_returns_etimedout),
    PN_CASE(wake_without_waiters_returns_zero),
    PN_CASE(wake_across_threads),
    PN_CASE(wake_counts_and_wakes_all),
    PN_CASE(waiter_deadline_expires_in_thread),
    PN_CASE(signal_interrupts_wait),
    PN_CASE(signal_returns_eintr),
    PN_CASE(shared_wake_across_processes),
    PN_CASE(private_wake_misses_other_process),
    PN_CASE(cpu_relax_is_callable),
    {NULL, NULL},
};

PN_TEST_MAIN(cases)
