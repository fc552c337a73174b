/* netecho: a minimal epoll echo server, the physical limit that piston's
 * `net` benchmark compares the Python servers with.
 *
 * One thread, level-triggered epoll, one reused buffer per connection:
 * read what is there, write it back; when the peer does not take it all,
 * stop reading that connection until the rest is written.
 *
 *   netecho (-t HOST:PORT | -u PATH)
 *
 * Once listening it prints "READY <port>" (0 for a Unix socket) on stdout.
 */
#define _GNU_SOURCE
#define NET_PROG "netecho"
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "netcommon.h"

/* asyncio's own read size, so every server moves the same chunks. */
#define BUF_SIZE (256 * 1024)

struct conn {
    int fd;
    size_t off; /* first byte of buf not yet written back */
    size_t len; /* bytes in buf */
    int writing; /* waiting for EPOLLOUT rather than EPOLLIN */
    unsigned char *buf;
};

static int
listen_on(const char *tcp, const char *unix_path, int *port)
{
    union net_addr addr;
    socklen_t len = net_address(tcp, unix_path, &addr, 2);
    int fd = net_socket(&addr, SOCK_NONBLOCK), one = 1;
    if (tcp != NULL) {
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    }
    if (bind(fd, &addr.sa, len) < 0) {
        die("bind");
    }
    *port = 0;
    if (tcp != NULL) {
        if (getsockname(fd, &addr.sa, &len) < 0) {
            die("getsockname");
        }
        *port = ntohs(addr.sin.sin_port);
    }
    if (listen(fd, 1024) < 0) {
        die("listen");
    }
    return fd;
}

static void
watch(int ep, struct conn *c, uint32_t events, int op)
{
    net_epoll_ctl(ep, op, c->fd, events, c);
}

static void
drop(struct conn *c)
{
    close(c->fd); /* also leaves the epoll set */
    free(c->buf);
    free(c);
}

/* Writes the rest of buf; returns 0 when done, 1 if the socket is full,
 * -1 if the connection is gone. */
static int
flush(struct conn *c)
{
    while (c->off < c->len) {
        ssize_t n = send(c->fd, c->buf + c->off, c->len - c->off,
                         MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                return 1;
            }
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        c->off += (size_t)n;
    }
    c->off = c->len = 0;
    return 0;
}

/* Echoes until the socket has nothing more to read or cannot take more. */
static void
echo(int ep, struct conn *c)
{
    int r = flush(c);
    while (r == 0) {
        ssize_t n = recv(c->fd, c->buf, BUF_SIZE, 0);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        }
        if (n <= 0) {
            r = -1;
            break;
        }
        c->len = (size_t)n;
        r = flush(c);
        if (r == 0 && n < BUF_SIZE) {
            /* Short read: the socket is most likely empty, and epoll is
             * level-triggered, so skip the recv that would say EAGAIN. */
            break;
        }
    }
    if (r < 0) {
        drop(c);
    }
    else if (r > 0 && !c->writing) {
        /* The peer is slow: wait for room, read nothing meanwhile. */
        watch(ep, c, EPOLLOUT, EPOLL_CTL_MOD);
        c->writing = 1;
    }
    else if (r == 0 && c->writing) {
        watch(ep, c, EPOLLIN, EPOLL_CTL_MOD);
        c->writing = 0;
    }
}

static void
accept_all(int ep, int lfd, int tcp)
{
    for (;;) {
        int one = 1;
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) {
                continue;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                return;
            }
            die("accept4");
        }
        if (tcp) {
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        }
        struct conn *c = calloc(1, sizeof(*c));
        if (c == NULL || (c->buf = malloc(BUF_SIZE)) == NULL) {
            fail("out of memory");
        }
        c->fd = fd;
        watch(ep, c, EPOLLIN, EPOLL_CTL_ADD);
    }
}

int
main(int argc, char **argv)
{
    const char *tcp = NULL, *unix_path = NULL;
    int opt, ep, lfd, port;
    struct epoll_event evs[256];
    static struct conn listener; /* tells the listening socket apart */

    while ((opt = getopt(argc, argv, "t:u:")) != -1) {
        switch (opt) {
        case 't': tcp = optarg; break;
        case 'u': unix_path = optarg; break;
        default:
            fprintf(stderr, "usage: netecho (-t HOST:PORT | -u PATH)\n");
            return 2;
        }
    }
    if ((tcp == NULL) == (unix_path == NULL)) {
        fprintf(stderr, "usage: netecho (-t HOST:PORT | -u PATH)\n");
        return 2;
    }
    /* Never outlive the process that started us. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    lfd = listen_on(tcp, unix_path, &port);
    ep = net_epoll_create();
    listener.fd = lfd;
    watch(ep, &listener, EPOLLIN, EPOLL_CTL_ADD);
    printf("READY %d\n", port);
    fflush(stdout);
    for (;;) {
        int n = net_epoll_wait(ep, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c == &listener) {
                accept_all(ep, lfd, tcp != NULL);
            }
            else {
                echo(ep, c);
            }
        }
    }
}
