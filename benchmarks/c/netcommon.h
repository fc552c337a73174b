/* netcommon.h: what netecho and netload share: fatal errors, the -t/-u
 * address, sockets and epoll calls that either work or end the program.
 *
 * Each program defines NET_PROG (its name, for messages) before including
 * this; both are single files built with one `cc` call, so the helpers are
 * static inline rather than a separate object.
 */
#ifndef NETCOMMON_H
#define NETCOMMON_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>

#ifndef NET_PROG
#error "define NET_PROG (the program's name) before including netcommon.h"
#endif

/* A failed system call: says which, with errno's text, and exits 1. */
static inline _Noreturn void
die(const char *what)
{
    fprintf(stderr, NET_PROG ": %s: %s\n", what, strerror(errno));
    exit(1);
}

/* Anything else fatal: prints `what` and exits with `status`. */
static inline _Noreturn void
fail_with(int status, const char *what)
{
    fprintf(stderr, NET_PROG ": %s\n", what);
    exit(status);
}

static inline _Noreturn void
fail(const char *what)
{
    fail_with(1, what);
}

union net_addr {
    struct sockaddr sa;
    struct sockaddr_in sin;
    struct sockaddr_un sun;
};

/* Fills *addr from -t HOST:PORT (a numeric IPv4 address) or -u PATH,
 * whichever is not NULL, and returns its length.  A malformed one is
 * fatal with exit status `bad_arg_status`. */
static inline socklen_t
net_address(const char *tcp, const char *unix_path, union net_addr *addr,
            int bad_arg_status)
{
    memset(addr, 0, sizeof(*addr));
    if (unix_path != NULL) {
        if (strlen(unix_path) >= sizeof(addr->sun.sun_path)) {
            fail("unix socket path too long");
        }
        addr->sun.sun_family = AF_UNIX;
        strcpy(addr->sun.sun_path, unix_path);
        return sizeof(addr->sun);
    }
    char host[256];
    const char *colon = strrchr(tcp, ':');
    if (colon == NULL || (size_t)(colon - tcp) >= sizeof(host)) {
        fail_with(bad_arg_status, "-t wants HOST:PORT");
    }
    memcpy(host, tcp, (size_t)(colon - tcp));
    host[colon - tcp] = '\0';
    addr->sin.sin_family = AF_INET;
    addr->sin.sin_port = htons((uint16_t)atoi(colon + 1));
    if (inet_pton(AF_INET, host, &addr->sin.sin_addr) != 1) {
        fail_with(bad_arg_status, "-t wants a numeric IPv4 address");
    }
    return sizeof(addr->sin);
}

/* A close-on-exec stream socket of addr's family; `flags` may add
 * SOCK_NONBLOCK. */
static inline int
net_socket(const union net_addr *addr, int flags)
{
    int fd = socket(addr->sa.sa_family, SOCK_STREAM | SOCK_CLOEXEC | flags,
                    0);
    if (fd < 0) {
        die("socket");
    }
    return fd;
}

static inline int
net_epoll_create(void)
{
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) {
        die("epoll_create1");
    }
    return ep;
}

/* epoll_ctl for fd with `ptr` as its data. */
static inline void
net_epoll_ctl(int ep, int op, int fd, uint32_t events, void *ptr)
{
    struct epoll_event ev;
    ev.events = events;
    ev.data.ptr = ptr;
    if (epoll_ctl(ep, op, fd, &ev) < 0) {
        die("epoll_ctl");
    }
}

/* epoll_wait; returns -1 only when a signal interrupted it, so the caller
 * can recompute its timeout. */
static inline int
net_epoll_wait(int ep, struct epoll_event *evs, int max, int timeout_ms)
{
    int n = epoll_wait(ep, evs, max, timeout_ms);
    if (n < 0 && errno != EINTR) {
        die("epoll_wait");
    }
    return n;
}

#endif /* NETCOMMON_H */
