/* Tests the epoll poller: interest changes, timeouts, fds closed behind
 * its back. */
#include "core/pn_futex.h"
#include "core/pn_poll.h"
#include "pn_test.h"

#include <errno.h>
#include <sys/socket.h>
#include <unistd.h>

#define CHECK(cond) PN_CHECK(cond)

PN_TEST(interest_timeouts_stale_fds)
{
    pn_poll *p;
    pn_poll_event ev[8];
    int sv[2];
    int64_t t0, dt;

    CHECK(pn_poll_open(&p) == 0);
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);

    /* Empty set: a 0 timeout returns at once, a short one waits at least
     * that long (never rounded down). */
    CHECK(pn_poll_wait(p, ev, 8, 0) == 0);
    t0 = pn_monotonic_ns();
    CHECK(pn_poll_wait(p, ev, 8, 1500000) == 0);
    dt = pn_monotonic_ns() - t0;
    CHECK(dt >= 1500000);

    /* Writable at once; readable only after the peer writes. */
    CHECK(pn_poll_ctl(p, sv[0], 0, PN_POLL_READABLE | PN_POLL_WRITABLE)
          == 0);
    CHECK(pn_poll_wait(p, ev, 8, 0) == 1);
    CHECK(ev[0].fd == sv[0] && ev[0].events == PN_POLL_WRITABLE);
    CHECK(pn_poll_ctl(p, sv[0], PN_POLL_READABLE | PN_POLL_WRITABLE,
                      PN_POLL_READABLE) == 0);
    CHECK(pn_poll_wait(p, ev, 8, 0) == 0);
    CHECK(write(sv[1], "x", 1) == 1);
    CHECK(pn_poll_wait(p, ev, 8, -1) == 1);
    CHECK(ev[0].events == PN_POLL_READABLE);

    /* Hang-up is reported as an error bit. */
    close(sv[1]);
    CHECK(pn_poll_wait(p, ev, 8, 0) == 1);
    CHECK(ev[0].events & PN_POLL_ERROR);

    /* Closed behind the poller's back: removal succeeds, and the same fd
     * number reused for a new socket can be registered with a stale mask. */
    close(sv[0]);
    CHECK(pn_poll_ctl(p, sv[0], PN_POLL_READABLE, 0) == 0);
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    CHECK(pn_poll_ctl(p, sv[0], PN_POLL_READABLE, PN_POLL_WRITABLE) == 0);
    CHECK(pn_poll_wait(p, ev, 8, 0) == 1);
    CHECK(ev[0].fd == sv[0]);
    CHECK(pn_poll_ctl(p, sv[0], 0, PN_POLL_READABLE) == 0);  /* EEXIST */

    /* Bad fds are refused with an errno, never crash. */
    CHECK(pn_poll_ctl(p, -1, 0, PN_POLL_READABLE) == -EBADF);
    CHECK(pn_poll_ctl(p, 1000000, 0, PN_POLL_READABLE) == -EBADF);

    close(sv[0]);
    close(sv[1]);
    pn_poll_close(p);
}

static const pn_test_case cases[] = {
    PN_CASE(interest_timeouts_stale_fds),
    {NULL, NULL},
};

PN_TEST_MAIN(cases)
