"""The stream transport under hostile peers, broken fds, fork() and GC:
parity with asyncio's selector transport where both can run the test,
piston-only checks after."""
import asyncio
import errno
import gc
import logging
import os
import socket
import warnings

import pytest

import piston
# kind, loop: the asyncio/piston fixtures.
from _stream_util import (Rec, kind, loop, raw_peer, reset,  # noqa: F401
                          run, shutdown, tcp_pair)


# Hostile peers and broken fds.

def test_peer_reset_mid_write(loop):
    async def main():
        sp = Rec(loop)
        srv, raw = await raw_peer(loop, sp)
        t = sp.transport
        t.write(b"r" * (4 << 20))
        assert t.get_write_buffer_size() > 0
        reset(raw)
        while not sp.lost.done():
            t.write(b"more")        # never raises
            await asyncio.sleep(0.01)
        exc = sp.lost.result()
        assert isinstance(exc, (ConnectionResetError, BrokenPipeError))
        assert t.is_closing()
        srv.close()
        await srv.wait_closed()
    run(loop, main())
    # An OSError is the peer's doing: not logged (not in debug mode).
    assert loop.errors == []


def test_write_to_closed_peer_epipe(loop):
    """The peer closes; we keep the connection half-open and write until
    the kernel refuses (EPIPE/ECONNRESET): connection_lost(exc), no log."""
    async def main():
        sp = Rec(loop)
        sp.eof_result = True
        srv, raw = await raw_peer(loop, sp)
        raw.close()
        await sp.eof
        for _ in range(1000):
            if sp.lost.done():
                break
            sp.transport.write(b"p" * 1000)
            await asyncio.sleep(0.005)
        exc = await sp.lost
        assert isinstance(exc, (BrokenPipeError, ConnectionResetError))
        srv.close()
        await srv.wait_closed()
    run(loop, main())
    assert loop.errors == []


def test_unconnected_socket_enotconn(loop):
    async def main():
        sock = socket.socket()
        sock.setblocking(False)
        p = Rec(loop)
        t = loop._make_socket_transport(sock, p)
        assert t.get_extra_info("peername") is None
        exc = await p.lost
        assert isinstance(exc, OSError) and exc.errno == errno.ENOTCONN
    run(loop, main())
    assert loop.errors == []


def test_peer_reset_while_reading(loop):
    async def main():
        sp = Rec(loop)
        srv, raw = await raw_peer(loop, sp)
        raw.sendall(b"hi")
        await sp.wait_bytes(2)
        reset(raw)
        exc = await sp.lost
        assert isinstance(exc, ConnectionResetError)
        srv.close()
        await srv.wait_closed()
    run(loop, main())
    assert loop.errors == []


def test_fd_closed_behind_our_back(loop):
    async def main():
        srv, sp, cp = await tcp_pair(loop)
        t = cp.transport
        t.pause_reading()
        os.close(t.get_extra_info("socket").fileno())
        t.write(b"x")
        exc = await cp.lost
        assert isinstance(exc, OSError) and exc.errno == errno.EBADF
        # Closing the socket object then fails with EBADF as well, which
        # the loop reports as a callback error, and carries on.
        await asyncio.sleep(0.01)
        assert all(isinstance(c.get("exception"), OSError)
                   for c in loop.errors)
        loop.errors.clear()
        sp.transport.close()
        await sp.lost
        srv.close()
        await srv.wait_closed()
    run(loop, main())


def test_connect_to_closed_port(loop):
    async def main():
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        with pytest.raises(ConnectionRefusedError):
            await loop.create_connection(lambda: Rec(loop), "127.0.0.1",
                                         port)
    run(loop, main())


# piston only.

def test_fork_child_gets_clear_error():
    loop = piston.new_event_loop()

    async def main():
        srv, sp, cp = await tcp_pair(loop)
        return srv, sp, cp

    srv, sp, cp = run(loop, main())
    with warnings.catch_warnings():
        # The child only calls write() and _exit(): no lock to inherit.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        code = 1
        try:
            cp.transport.write(b"x")
        except RuntimeError as exc:
            code = 0 if "fork" in str(exc) else 2
        except BaseException:
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's transport is untouched.
    cp.transport.write(b"still fine")
    run(loop, sp.wait_bytes(10))
    run(loop, shutdown(srv, sp, cp))
    loop.close()


def test_transport_needs_piston_loop():
    a, b = socket.socketpair()
    try:
        with pytest.raises(TypeError, match="piston loop"):
            piston._loop_net.StreamTransport(object(), a, asyncio.Protocol())
    finally:
        a.close()
        b.close()


def test_finished_transport_freed_without_gc():
    """After connection_lost nothing refers back to the transport: it goes
    with its last reference, not at the next cycle collection."""
    import weakref
    loop = piston.new_event_loop()

    async def main():
        srv, sp, cp = await tcp_pair(loop)
        refs = [weakref.ref(sp.transport), weakref.ref(cp.transport)]
        cp.transport.write(b"x" * 100)
        await sp.wait_bytes(100)
        await shutdown(srv, sp, cp)
        sp.transport = cp.transport = None
        await asyncio.sleep(0)
        return refs

    gc.disable()
    try:
        refs = run(loop, main())
        assert [r() for r in refs] == [None, None]
    finally:
        gc.enable()
        loop.close()


def test_debug_mode_logs_socket_errors(loop, caplog):
    """In debug mode a peer's reset is logged at DEBUG (never ERROR)."""
    loop.set_debug(True)

    async def main():
        sp = Rec(loop)
        srv, raw = await raw_peer(loop, sp)
        reset(raw)
        assert isinstance(await sp.lost, ConnectionResetError)
        srv.close()
        await srv.wait_closed()

    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        run(loop, main())
    records = [r for r in caplog.records
               if "Fatal read error on socket transport" in r.getMessage()]
    assert records and all(r.levelno == logging.DEBUG for r in records)
    assert records[0].exc_info is not None
    assert loop.errors == []


def test_abort_in_resume_writing_loses_once():
    loop = piston.new_event_loop()

    class P(Rec):
        def resume_writing(self):
            super().resume_writing()
            self.transport.abort()

    async def main():
        srv, sp, cp = await tcp_pair(loop, P(loop))
        cp.transport.pause_reading()
        while "pause" not in sp.events:
            sp.transport.write(b"k" * 65536)
        cp.transport.resume_reading()
        assert await sp.lost is None
        await asyncio.sleep(0.05)
        assert sp.events.count("lost") == 1
        cp.transport.close()
        await cp.lost
        srv.close()
        await srv.wait_closed()

    try:
        run(loop, main())
    finally:
        loop.close()
