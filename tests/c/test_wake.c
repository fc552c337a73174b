/* Tests eventfd wake-ups: coalescing, cross-thread wake of a poller. */
#include "core/pn_poll.h"
#include "core/pn_wake.h"
#include "pn_test.h"

#include <pthread.h>
#include <unistd.h>

#define CHECK(cond) PN_CHECK(cond)

static pn_wake wake;
static _Atomic int published;

static void *
signaller(void *arg)
{
    (void)arg;
    usleep(20000);
    atomic_store_explicit(&published, 1, memory_order_relaxed);
    CHECK(pn_wake_signal(&wake) == 0);
    return NULL;
}

PN_TEST(coalesce_and_cross_thread)
{
    pn_poll *p;
    pn_poll_event ev[4];
    pthread_t th;

    CHECK(pn_wake_open(&wake) == 0);
    CHECK(pn_poll_open(&p) == 0);
    CHECK(pn_poll_ctl(p, wake.fd, 0, PN_POLL_READABLE) == 0);

    /* Many signals coalesce into one readable edge and one drain. */
    for (int i = 0; i < 100; i++) {
        CHECK(pn_wake_signal(&wake) == 0);
    }
    CHECK(pn_poll_wait(p, ev, 4, 0) == 1);
    CHECK(ev[0].fd == wake.fd && (ev[0].events & PN_POLL_READABLE));
    pn_wake_drain(&wake);
    CHECK(pn_poll_wait(p, ev, 4, 0) == 0);

    /* A blocked poller is woken by another thread, and sees its work. */
    CHECK(pthread_create(&th, NULL, signaller, NULL) == 0);
    CHECK(pn_poll_wait(p, ev, 4, 5000000000LL) == 1);
    pn_wake_drain(&wake);
    CHECK(atomic_load_explicit(&published, memory_order_relaxed) == 1);
    CHECK(pthread_join(th, NULL) == 0);

    /* After a drain, the next signal writes again. */
    CHECK(pn_wake_signal(&wake) == 0);
    CHECK(pn_poll_wait(p, ev, 4, 0) == 1);
    pn_wake_drain(&wake);

    pn_poll_close(p);
    pn_wake_close(&wake);
}

static const pn_test_case cases[] = {
    PN_CASE(coalesce_and_cross_thread),
    {NULL, NULL},
};

PN_TEST_MAIN(cases)
