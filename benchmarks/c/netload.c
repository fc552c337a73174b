/* netload: a ping-pong load generator for echo servers (piston's `net`
 * benchmark).
 *
 * N connections over TCP or a Unix socket; each sends a message of S bytes
 * and reads back its full echo before sending the next.  One thread, one
 * epoll set, level-triggered, so that it costs the same for every server
 * it drives.  After the duration (or the count) no new message starts; the
 * ones in flight are drained so the server sees a clean close, not a reset.
 *
 *   netload (-t HOST:PORT | -u PATH) [-c CONNS] [-s SIZE] [-d SECONDS]
 *           [-n COUNT] [-V]
 *
 * Prints one JSON object on stdout; errors go to stderr with exit status 1.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* The longest a drain, or a count-only run, may go without an echo. */
#define IDLE_LIMIT_S 10.0
#define READ_CHUNK (256 * 1024)

struct conn {
    int fd;
    int idx;
    int busy;          /* a message is in flight */
    int want_out;      /* EPOLLOUT is in the interest set */
    size_t sent;       /* bytes of the current message written */
    size_t recvd;      /* bytes of its echo read back */
    uint64_t seq;      /* messages started on this connection */
    unsigned char *msg; /* this connection's message, with -V */
};

static size_t msg_size = 1024;
static int verify;
static unsigned char *shared_msg;
static unsigned char *scratch;

static void
die(const char *what)
{
    fprintf(stderr, "netload: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void
fail(const char *what)
{
    fprintf(stderr, "netload: %s\n", what);
    exit(1);
}

/* CPU seconds this process has used, to tell whether it was the limit. */
static double
cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec)
           + (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
}

static double
now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* With -V every message differs (connection and sequence number mixed in),
 * so an echo of stale or misplaced bytes is caught. */
static void
fill(struct conn *c)
{
    uint32_t x = (uint32_t)c->idx * 2654435761u + (uint32_t)c->seq + 1;
    for (size_t i = 0; i < msg_size; i++) {
        x = x * 1103515245u + 12345u;
        c->msg[i] = (unsigned char)(x >> 16);
    }
}

static int
connect_to(const char *tcp, const char *unix_path)
{
    int fd;
    if (unix_path != NULL) {
        struct sockaddr_un sun;
        memset(&sun, 0, sizeof(sun));
        sun.sun_family = AF_UNIX;
        if (strlen(unix_path) >= sizeof(sun.sun_path)) {
            fail("unix socket path too long");
        }
        strcpy(sun.sun_path, unix_path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            die("socket");
        }
        if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
            die("connect");
        }
    }
    else {
        char host[256];
        const char *colon = strrchr(tcp, ':');
        struct sockaddr_in sin;
        int one = 1;
        if (colon == NULL || (size_t)(colon - tcp) >= sizeof(host)) {
            fail("-t wants HOST:PORT");
        }
        memcpy(host, tcp, (size_t)(colon - tcp));
        host[colon - tcp] = '\0';
        memset(&sin, 0, sizeof(sin));
        sin.sin_family = AF_INET;
        sin.sin_port = htons((uint16_t)atoi(colon + 1));
        if (inet_pton(AF_INET, host, &sin.sin_addr) != 1) {
            fail("-t wants a numeric IPv4 address");
        }
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            die("socket");
        }
        if (connect(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0) {
            die("connect");
        }
        /* Every message is one write; do not let Nagle hold its tail. */
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) {
        die("fcntl");
    }
    return fd;
}

static void
set_out(int ep, struct conn *c, int want)
{
    struct epoll_event ev;
    if (c->want_out == want) {
        return;
    }
    ev.events = EPOLLIN | (want ? EPOLLOUT : 0);
    ev.data.ptr = c;
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0) {
        die("epoll_ctl");
    }
    c->want_out = want;
}

/* Writes what the socket takes of the current message. */
static void
push(int ep, struct conn *c)
{
    const unsigned char *msg = verify ? c->msg : shared_msg;
    while (c->sent < msg_size) {
        ssize_t n = send(c->fd, msg + c->sent, msg_size - c->sent,
                         MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                break;
            }
            if (errno == EINTR) {
                continue;
            }
            die("send");
        }
        c->sent += (size_t)n;
    }
    set_out(ep, c, c->sent < msg_size);
}

static void
start(int ep, struct conn *c)
{
    c->busy = 1;
    c->sent = 0;
    c->recvd = 0;
    if (verify) {
        fill(c);
    }
    c->seq++;
    /* Write at once: a small message goes out without an epoll round. */
    push(ep, c);
}

/* Reads echoed bytes; returns 1 when the message's echo is complete. */
static int
pull(struct conn *c)
{
    while (c->recvd < msg_size) {
        size_t want = msg_size - c->recvd;
        ssize_t n = recv(c->fd, scratch, want < READ_CHUNK ? want : READ_CHUNK,
                         0);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                return 0;
            }
            if (errno == EINTR) {
                continue;
            }
            die("recv");
        }
        if (n == 0) {
            fail("the server closed a connection mid-message");
        }
        if (!c->busy) {
            fail("the server sent bytes nobody asked for");
        }
        if (verify && memcmp(scratch, c->msg + c->recvd, (size_t)n) != 0) {
            fail("the echo differs from the message sent");
        }
        c->recvd += (size_t)n;
        if (c->recvd > c->sent) {
            fail("the server echoed more than was sent");
        }
    }
    return 1;
}

static void
usage(void)
{
    fprintf(stderr, "usage: netload (-t HOST:PORT | -u PATH) [-c CONNS] "
                    "[-s SIZE] [-d SECONDS] [-n COUNT] [-V]\n");
    exit(2);
}

int
main(int argc, char **argv)
{
    const char *tcp = NULL, *unix_path = NULL;
    int nconn = 1, opt, ep, active;
    double duration = 0, t0, t_end, stop_at, last_echo, cpu0;
    unsigned long long count = 0, done = 0;
    struct conn *conns;
    struct epoll_event evs[256];

    while ((opt = getopt(argc, argv, "t:u:c:s:d:n:V")) != -1) {
        switch (opt) {
        case 't': tcp = optarg; break;
        case 'u': unix_path = optarg; break;
        case 'c': nconn = atoi(optarg); break;
        case 's': msg_size = (size_t)strtoull(optarg, NULL, 10); break;
        case 'd': duration = strtod(optarg, NULL); break;
        case 'n': count = strtoull(optarg, NULL, 10); break;
        case 'V': verify = 1; break;
        default: usage();
        }
    }
    if ((tcp == NULL) == (unix_path == NULL) || nconn < 1 || msg_size < 1
        || (duration <= 0 && count == 0)) {
        usage();
    }
    /* Never outlive the process that started us. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);

    shared_msg = malloc(msg_size);
    scratch = malloc(READ_CHUNK);
    conns = calloc((size_t)nconn, sizeof(*conns));
    if (shared_msg == NULL || scratch == NULL || conns == NULL) {
        fail("out of memory");
    }
    for (size_t i = 0; i < msg_size; i++) {
        shared_msg[i] = (unsigned char)('a' + i % 26);
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) {
        die("epoll_create1");
    }
    /* Connect every connection before the clock starts. */
    for (int i = 0; i < nconn; i++) {
        struct epoll_event ev;
        struct conn *c = &conns[i];
        c->idx = i;
        c->fd = connect_to(tcp, unix_path);
        if (verify && (c->msg = malloc(msg_size)) == NULL) {
            fail("out of memory");
        }
        ev.events = EPOLLIN;
        ev.data.ptr = c;
        if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) {
            die("epoll_ctl");
        }
    }

    cpu0 = cpu_seconds();
    t0 = now();
    t_end = t0;
    stop_at = duration > 0 ? t0 + duration : 0;
    last_echo = t0;
    active = nconn;
    for (int i = 0; i < nconn; i++) {
        start(ep, &conns[i]);
    }
    /* `active` counts connections with a message in flight; once stopping,
     * finished connections stay idle until all are. */
    int stopping = 0;
    while (active > 0) {
        double t = now();
        int timeout_ms = 1000;
        if (!stopping && stop_at > 0) {
            if (t >= stop_at) {
                stopping = 1;
                t_end = stop_at;
            }
            else {
                timeout_ms = (int)((stop_at - t) * 1000) + 1;
            }
        }
        if (t - last_echo > IDLE_LIMIT_S) {
            fail("no echo for 10 s: the server is stuck");
        }
        int n = epoll_wait(ep, evs, 256, timeout_ms);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if ((evs[i].events & EPOLLOUT) && c->sent < msg_size) {
                push(ep, c);
            }
            if (!(evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) {
                continue;
            }
            if (!c->busy || !pull(c)) {
                continue;
            }
            last_echo = now();
            c->busy = 0;
            active--;
            if (stopping) {
                /* Idle from now on: nothing more is read from it. */
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
            }
            else if (stop_at > 0 && last_echo >= stop_at) {
                /* Finished after the deadline: not counted. */
                stopping = 1;
                t_end = stop_at;
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
            }
            else if (++done == count) {
                stopping = 1;
                t_end = last_echo;
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
            }
            else {
                active++;
                start(ep, c);
            }
        }
    }
    /* Busy fraction of one CPU over the whole run, drain included. */
    double busy = (cpu_seconds() - cpu0) / (now() - t0);
    for (int i = 0; i < nconn; i++) {
        close(conns[i].fd);
        free(conns[i].msg);
    }
    double secs = t_end - t0;
    printf("{\"messages\": %llu, \"bytes\": %llu, \"seconds\": %.6f, "
           "\"connections\": %d, \"size\": %zu, \"messages_per_s\": %.1f, "
           "\"bytes_per_s\": %.1f, \"client_cpu\": %.3f}\n",
           done, done * (unsigned long long)msg_size, secs, nconn, msg_size,
           secs > 0 ? (double)done / secs : 0.0,
           secs > 0 ? (double)done * (double)msg_size / secs : 0.0, busy);
    free(conns);
    free(scratch);
    free(shared_msg);
    return 0;
}
