/* Tests eventfd wake-ups: coalescing, cross-thread wake of a poller. */
#include "core/pn_poll.h"
#include "core/pn_wake.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define CHECK(cond)                                                        \
    do {                                                                   \
        if (!(cond)) {                                                     \
            fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__,         \
                    __LINE__, #cond);                                      \
            exit(1);                                                       \
        }                                                                  \
    } while (0)

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

int
main(void)
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
    printf("test_wake: ok\n");
    return 0;
}
