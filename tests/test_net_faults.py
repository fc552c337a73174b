"""Stream transports when things go wrong, on asyncio's loop and on
piston's: EMFILE while accepting, peers resetting mid-write, connecting to
a closed port, an fd closed behind the transport's back, and writes after
close()."""
import asyncio
import errno
import os
import random
import selectors
import socket
import subprocess
import sys
import time

import pytest

from net_support import (  # noqa: F401 - fixtures
    HAS_IPV6, env_with_piston, kind, loop, reset, run)


def _open_fds():
    return len(os.listdir("/proc/self/fd"))


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


class Client(asyncio.Protocol):
    """Collects data; `lost` completes with connection_lost's argument and
    `losses` counts the calls."""

    def __init__(self):
        loop = asyncio.get_running_loop()
        self.data = bytearray()
        self.lost = loop.create_future()
        self.losses = 0
        self.eof = False

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.data += data

    def eof_received(self):
        self.eof = True

    def connection_lost(self, exc):
        self.losses += 1
        if not self.lost.done():
            self.lost.set_result(exc)


async def _echo_server(loop):
    server = await loop.create_server(Echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _echo_works(loop, port):
    """One fresh connection echoes random bytes; returns its fd."""
    tr, c = await loop.create_connection(Client, "127.0.0.1", port)
    payload = os.urandom(100000)
    tr.write(payload)
    while len(c.data) < len(payload):
        await asyncio.sleep(0.001)
    assert c.data == payload
    fd = tr.get_extra_info("socket").fileno()
    tr.close()
    assert await c.lost is None
    return fd


# EMFILE: a server in a subprocess whose RLIMIT_NOFILE leaves room for a
# few connections only.  Its accepts fail with EMFILE (asyncio logs it and
# retries a second later); as clients finish and their fds are freed, the
# waiting clients must be accepted and served.
EMFILE_SERVER = r"""
import asyncio, os, resource, sys
kind, free = sys.argv[1], int(sys.argv[2])
if kind == "piston":
    import piston
    loop = piston.new_event_loop()
else:
    loop = asyncio.new_event_loop()

class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
    def data_received(self, data):
        self.transport.write(data)

async def main():
    server = await loop.create_server(Echo, "127.0.0.1", 0, backlog=64)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE,
                       (len(os.listdir("/proc/self/fd")) + free, hard))
    print(server.sockets[0].getsockname()[1], flush=True)
    await loop.create_future()

loop.run_until_complete(main())
"""


def _recv_exactly(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


def test_emfile_during_accept(kind, tmp_path):
    n_clients = 16
    log = tmp_path / "server.log"
    with open(log, "wb") as errf:
        proc = subprocess.Popen(
            [sys.executable, "-c", EMFILE_SERVER, kind, "4"],
            env=env_with_piston(), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=errf)
    socks = []
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            assert sel.select(60), "server did not start: " + log.read_text()
        port = int(proc.stdout.readline())
        payloads = {}
        for i in range(n_clients):
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            payloads[s] = b"%04d" % i + os.urandom(60)
            s.sendall(payloads[s])
            socks.append(s)
        # The fault really happened: the server ran out of fds.
        end = time.monotonic() + 30
        while "out of system resource" not in log.read_text():
            assert time.monotonic() < end, \
                "no EMFILE in the server's log:\n" + log.read_text()
            time.sleep(0.02)
        # Every client is served in the end: each one that got its echo
        # hangs up, which frees a server fd for a waiting one.
        served = 0
        with selectors.DefaultSelector() as sel:
            for s in socks:
                sel.register(s, selectors.EVENT_READ)
            while served < n_clients:
                ready = sel.select(30)
                assert ready, (f"server stopped accepting after {served} "
                               "clients:\n" + log.read_text())
                for key, _ in ready:
                    s = key.fileobj
                    assert _recv_exactly(s, 64) == payloads[s]
                    sel.unregister(s)
                    s.close()
                    served += 1
        assert proc.poll() is None, log.read_text()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"x" * 64)
            assert _recv_exactly(s, 64) == b"x" * 64
    finally:
        for s in socks:
            s.close()
        proc.kill()
        proc.wait()
        proc.stdout.close()


def test_peer_resets_mid_write(loop):
    """Peers that reset while the server is writing to them (or only
    reading): each server transport sees connection_lost once, with a
    connection error, and the server keeps serving."""
    rng = random.Random(51)
    servers = []

    class Firehose(asyncio.Protocol):
        """Writes until the peer goes away."""

        def connection_made(self, transport):
            self.transport = transport
            self.losses = []
            self.done = asyncio.get_running_loop().create_future()
            self.can_write = asyncio.Event()
            self.can_write.set()
            servers.append(self)
            self.task = asyncio.ensure_future(self.pump())

        async def pump(self):
            chunk = os.urandom(256 << 10)
            while not self.transport.is_closing():
                await self.can_write.wait()
                self.transport.write(chunk)
                await asyncio.sleep(0)

        def pause_writing(self):
            self.can_write.clear()

        def resume_writing(self):
            self.can_write.set()

        def connection_lost(self, exc):
            self.losses.append(exc)
            self.can_write.set()
            self.done.set_result(exc)

    async def main():
        server = await loop.create_server(Firehose, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        for _ in range(20):
            peer = socket.socket()
            peer.setblocking(False)
            await loop.sock_connect(peer, ("127.0.0.1", port))
            for _ in range(rng.randint(0, 3)):
                await loop.sock_recv(peer, rng.randint(1, 1 << 20))
            reset(peer)
        excs = await asyncio.gather(*(s.done for s in servers))
        for s, exc in zip(servers, excs):
            assert isinstance(exc, (ConnectionResetError, BrokenPipeError)), \
                repr(exc)
            await s.task
        # A breather for any second connection_lost to show up.
        await asyncio.sleep(0.05)
        assert [len(s.losses) for s in servers] == [1] * len(servers)
        server.close()
        await server.wait_closed()

        # Peers that send and reset while the server only reads.
        lost = []

        class Reader(asyncio.Protocol):
            def connection_lost(self, exc):
                lost.append(exc)

        server = await loop.create_server(Reader, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        for _ in range(20):
            peer = socket.socket()
            peer.setblocking(False)
            await loop.sock_connect(peer, ("127.0.0.1", port))
            await loop.sock_sendall(peer, os.urandom(rng.randint(1, 50000)))
            reset(peer)
        while len(lost) < 20:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert len(lost) == 20
        assert all(e is None or isinstance(e, ConnectionError)
                   for e in lost), lost
        server.close()
        await server.wait_closed()
        server, port = await _echo_server(loop)
        await _echo_works(loop, port)
        server.close()
        await server.wait_closed()

    run(loop, main())
    assert not loop.errors


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_connect_refused(loop, family):
    if family == "ipv6" and not HAS_IPV6:
        pytest.skip("no IPv6 loopback")
    af, host = (socket.AF_INET, "127.0.0.1") if family == "ipv4" \
        else (socket.AF_INET6, "::1")
    # A port that was just free: bound, never listened on, closed.
    with socket.socket(af) as s:
        s.bind((host, 0))
        port = s.getsockname()[1]

    async def main():
        before = _open_fds()
        for _ in range(3):
            with pytest.raises(ConnectionRefusedError):
                await loop.create_connection(asyncio.Protocol, host, port)
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection(host, port)
        assert _open_fds() == before     # no socket left behind

    run(loop, main())
    assert not loop.errors


def test_unix_connect_refused(loop, tmp_path):
    bound = str(tmp_path / "bound-not-listening")
    missing = str(tmp_path / "missing")

    async def main():
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(bound)
            before = _open_fds()
            with pytest.raises(ConnectionRefusedError):
                await loop.create_unix_connection(asyncio.Protocol, bound)
            with pytest.raises(FileNotFoundError):
                await asyncio.open_unix_connection(missing)
            assert _open_fds() == before

    run(loop, main())
    assert not loop.errors


@pytest.mark.parametrize("then", ["write", "close"])
def test_fd_closed_behind_transport(loop, then):
    """os.close() on a transport's fd: a write then fails with EBADF (or a
    close() completes), connection_lost comes once, and a new connection
    that gets the same fd number works."""
    async def main():
        server, port = await _echo_server(loop)
        tr, c = await loop.create_connection(Client, "127.0.0.1", port)
        fd = tr.get_extra_info("socket").fileno()
        os.close(fd)
        if then == "write":
            tr.write(b"into the void")
            exc = await c.lost
            assert isinstance(exc, OSError) and exc.errno == errno.EBADF
        else:
            tr.close()
            assert await c.lost is None
        # Give the next socket() the same number; whatever the loop still
        # knew about the old one must not get in its way.
        assert await _echo_works(loop, port) == fd
        await asyncio.sleep(0.05)
        assert c.losses == 1
        server.close()
        await server.wait_closed()

    run(loop, main())
    # Closing the socket object of an fd that is gone may be reported
    # (asyncio does); nothing else may.
    for ctx in loop.errors:
        exc = ctx.get("exception")
        assert isinstance(exc, OSError) and exc.errno == errno.EBADF, ctx
    loop.errors.clear()


def test_writes_after_close(loop):
    async def main():
        received = bytearray()
        got_eof = loop.create_future()

        class Sink(asyncio.Protocol):
            def data_received(self, data):
                received.extend(data)

            def eof_received(self):
                if not got_eof.done():      # the first connection's EOF
                    got_eof.set_result(None)

        server = await loop.create_server(Sink, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        tr, c = await loop.create_connection(Client, "127.0.0.1", port)
        tr.write(b"before")
        await asyncio.sleep(0.01)
        tr.close()
        for _ in range(10):
            tr.write(b"after")          # ignored, not an error
        assert tr.is_closing()
        assert await c.lost is None
        await got_eof
        assert received == b"before"
        tr.write(b"after lost")
        await asyncio.sleep(0.01)
        assert c.losses == 1

        # write() after write_eof() is an error.
        tr, c = await loop.create_connection(Client, "127.0.0.1", port)
        tr.write_eof()
        with pytest.raises(RuntimeError):
            tr.write(b"x")
        tr.close()
        await c.lost

        # Streams: after close, drain() reports the lost connection.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"x")
        writer.close()
        await writer.wait_closed()
        writer.write(b"late")
        with pytest.raises(ConnectionResetError):
            await writer.drain()
        server.close()
        await server.wait_closed()

    run(loop, main())
    assert not loop.errors


def test_cancelled_connect_leaks_nothing(loop):
    """create_connection() cancelled while the SYN goes unanswered (the
    listener's accept queue is full): it raises, and closes its socket."""
    async def main():
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(0)
        addr = lsock.getsockname()
        # Fill the accept queue; later SYNs are dropped, not refused.
        fill = []
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(addr)
            fill.append(s)
        await asyncio.sleep(0.1)
        before = _open_fds()
        try:
            for _ in range(5):
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(loop.create_connection(
                        asyncio.Protocol, *addr), 0.2)
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.open_connection(*addr),
                                           0.2)
            assert _open_fds() == before
        finally:
            for s in fill:
                s.close()
            lsock.close()

    run(loop, main())
    assert not loop.errors
