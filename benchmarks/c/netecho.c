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
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* asyncio's own read size, so every server moves the same chunks. */
#define BUF_SIZE (256 * 1024)

struct conn {
    int fd;
    size_t off; /* first byte of buf not yet written back */
    size_t len; /* bytes in buf */
    int writing; /* waiting for EPOLLOUT rather than EPOLLIN */
    unsigned char *buf;
};

static void
die(const char *what)
{
    fprintf(stderr, "netecho: %s: %s\n", what, strerror(errno));
    exit(1);
}

static int
listen_on(const char *tcp, const char *unix_path, int *port)
{
    int fd, one = 1;
    *port = 0;
    if (unix_path != NULL) {
        struct sockaddr_un sun;
        memset(&sun, 0, sizeof(sun));
        sun.sun_family = AF_UNIX;
        if (strlen(unix_path) >= sizeof(sun.sun_path)) {
            fprintf(stderr, "netecho: unix socket path too long\n");
            exit(1);
        }
        strcpy(sun.sun_path, unix_path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            die("socket");
        }
        if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
            die("bind");
        }
    }
    else {
        char host[256];
        const char *colon = strrchr(tcp, ':');
        struct sockaddr_in sin;
        socklen_t slen = sizeof(sin);
        if (colon == NULL || (size_t)(colon - tcp) >= sizeof(host)) {
            fprintf(stderr, "netecho: -t wants HOST:PORT\n");
            exit(2);
        }
        memcpy(host, tcp, (size_t)(colon - tcp));
        host[colon - tcp] = '\0';
        memset(&sin, 0, sizeof(sin));
        sin.sin_family = AF_INET;
        sin.sin_port = htons((uint16_t)atoi(colon + 1));
        if (inet_pton(AF_INET, host, &sin.sin_addr) != 1) {
            fprintf(stderr, "netecho: -t wants a numeric IPv4 address\n");
            exit(2);
        }
        fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            die("socket");
        }
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0) {
            die("bind");
        }
        if (getsockname(fd, (struct sockaddr *)&sin, &slen) < 0) {
            die("getsockname");
        }
        *port = ntohs(sin.sin_port);
    }
    if (listen(fd, 1024) < 0) {
        die("listen");
    }
    return fd;
}

static void
watch(int ep, struct conn *c, uint32_t events, int op)
{
    struct epoll_event ev;
    ev.events = events;
    ev.data.ptr = c;
    if (epoll_ctl(ep, op, c->fd, &ev) < 0) {
        die("epoll_ctl");
    }
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
            fprintf(stderr, "netecho: out of memory\n");
            exit(1);
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
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) {
        die("epoll_create1");
    }
    listener.fd = lfd;
    watch(ep, &listener, EPOLLIN, EPOLL_CTL_ADD);
    printf("READY %d\n", port);
    fflush(stdout);
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            die("epoll_wait");
        }
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
