/* Tests of core/pn_features: the kernel feature probe. */
#include "core/pn_features.h"
#include "pn_test.h"

#include <dirent.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>

static int
count_open_fds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    PN_CHECK(d != NULL);
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] != '.') {
            n++;
        }
    }
    closedir(d);
    return n;
}

PN_TEST(core_linux_features_found)
{
    unsigned mask = pn_features_probe();
    /* Every kernel piston supports has these (all older than 2.6.27). */
    PN_CHECK(mask & PN_FEAT_EPOLL);
    PN_CHECK(mask & PN_FEAT_EVENTFD);
    PN_CHECK(mask & PN_FEAT_FUTEX);
    PN_CHECK(mask & PN_FEAT_TIMERFD);
}

PN_TEST(only_known_bits)
{
    unsigned known = PN_FEAT_EPOLL | PN_FEAT_EVENTFD | PN_FEAT_MEMFD
                     | PN_FEAT_PIDFD | PN_FEAT_FUTEX | PN_FEAT_TIMERFD;
    PN_CHECK_EQ(pn_features_probe() & ~known, 0);
}

PN_TEST(probe_is_stable)
{
    unsigned first = pn_features_probe();
    for (int i = 0; i < 50; i++) {
        PN_CHECK_EQ(pn_features_probe(), first);
    }
}

/* The probe opens one descriptor per feature: all must be closed again. */
PN_TEST(probe_leaks_no_fd)
{
    int before = count_open_fds();
    for (int i = 0; i < 200; i++) {
        pn_features_probe();
    }
    PN_CHECK_EQ(count_open_fds(), before);
}

/* What the probe reports agrees with trying the syscall here. */
PN_TEST(memfd_and_pidfd_agree_with_syscalls)
{
    unsigned mask = pn_features_probe();
    int fd = memfd_create("pn-test", MFD_CLOEXEC);
    PN_CHECK_EQ(!!(mask & PN_FEAT_MEMFD), fd >= 0);
    if (fd >= 0) {
        close(fd);
    }
#ifdef SYS_pidfd_open
    fd = (int)syscall(SYS_pidfd_open, getpid(), 0);
    PN_CHECK_EQ(!!(mask & PN_FEAT_PIDFD), fd >= 0);
    if (fd >= 0) {
        close(fd);
    }
#else
    PN_CHECK_EQ(mask & PN_FEAT_PIDFD, 0);
#endif
}

PN_TEST(bits_are_distinct)
{
    const unsigned bits[] = {PN_FEAT_EPOLL, PN_FEAT_EVENTFD, PN_FEAT_MEMFD,
                             PN_FEAT_PIDFD, PN_FEAT_FUTEX,   PN_FEAT_TIMERFD};
    unsigned seen = 0;
    for (size_t i = 0; i < sizeof(bits) / sizeof(bits[0]); i++) {
        PN_CHECK(bits[i] != 0 && (bits[i] & (bits[i] - 1)) == 0);
        PN_CHECK_EQ(seen & bits[i], 0);
        seen |= bits[i];
    }
}

static const pn_test_case cases[] = {
    PN_CASE(core_linux_features_found),
    PN_CASE(only_known_bits),
    PN_CASE(probe_is_stable),
    PN_CASE(probe_leaks_no_fd),
    PN_CASE(memfd_and_pidfd_agree_with_syscalls),
    PN_CASE(bits_are_distinct),
    {NULL, NULL},
};

PN_TEST_MAIN(cases)
