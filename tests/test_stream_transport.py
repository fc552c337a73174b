"""piston's C stream transport against asyncio's selector transport: every
test body runs on asyncio's default loop and on piston's (reading,
writing, flow control, closing; extra info, TLS, Unix sockets, sendfile)."""
import asyncio
import gc
import logging
import os
import socket
import ssl
import sys
import tempfile
import warnings

import pytest

# kind, loop: the asyncio/piston fixtures.
from _stream_util import (CERT, HAS_IPV6, KEY, Buffered,  # noqa: F401
                          EchoRec, Rec, kind, loop, run, shutdown, tcp_pair)


# Identity.

def test_is_asyncio_transport(loop, kind):
    async def main():
        srv, sp, cp = await tcp_pair(loop)
        for t in (sp.transport, cp.transport):
            assert isinstance(t, asyncio.Transport)
            assert isinstance(t, asyncio.ReadTransport)
            assert isinstance(t, asyncio.WriteTransport)
            if kind == "piston":
                assert type(t).__name__ == "StreamTransport"
            assert f"fd={t.get_extra_info('socket').fileno()}" in repr(t)
            assert "read=polling" in repr(t)
        await shutdown(srv, sp, cp)
        assert "closed" in repr(cp.transport)
    run(loop, main())
    assert loop.errors == []


# Reading and writing.

@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_protocol_echo(loop, host):
    if host == "::1" and not HAS_IPV6:
        pytest.skip("no IPv6")

    async def main():
        srv, sp, cp = await tcp_pair(loop, EchoRec(loop), host=host)
        total = b""
        for i in range(50):
            msg = bytes([i % 256]) * (1 + i * 97)
            cp.transport.write(msg)
            total += msg
            assert await cp.wait_bytes(len(total)) == total
        cp.transport.writelines([b"a", bytearray(b"bc"), memoryview(b"def")])
        total += b"abcdef"
        assert await cp.wait_bytes(len(total)) == total
        await shutdown(srv, cp, sp)
        assert sp.events[0] == "made" and sp.events[-1] == "lost"
        assert await cp.lost is None
    run(loop, main())
    assert loop.errors == []


def test_buffered_protocol_echo(loop):
    async def main():
        bp = Buffered(loop, size=100)
        srv, sp, cp = await tcp_pair(loop, EchoRec(loop), bp)
        payload = os.urandom(10000)
        bp.transport.write(payload)
        assert await bp.wait_bytes(len(payload)) == payload
        # Reads land in the protocol's buffer, at most its size each.
        assert set(bp.sizehints) == {-1}
        assert len(bp.sizehints) >= 100
        bp.transport.close()
        assert await bp.lost is None
        await shutdown(srv, sp)
    run(loop, main())
    assert loop.errors == []


def test_bytearray_written_is_copied(loop, kind):
    """A bytearray reused after write() must not change what is sent."""
    if kind == "asyncio" and sys.version_info >= (3, 12):
        pytest.skip("asyncio 3.12+ queues a view of the caller's buffer")

    async def main():
        srv, sp, cp = await tcp_pair(loop)
        cp.transport.pause_reading()
        big = bytearray(b"x" * (4 << 20))
        sp.transport.write(big)
        big[:] = b"y" * len(big)
        cp.transport.resume_reading()
        got = await cp.wait_bytes(4 << 20)
        assert got == b"x" * (4 << 20)
        await shutdown(srv, sp, cp)
    run(loop, main())


def test_flow_control(loop):
    async def main():
        srv, sp, cp = await tcp_pair(loop)
        t = sp.transport
        assert t.get_write_buffer_limits() == (16384, 65536)
        t.set_write_buffer_limits(high=1000, low=100)
        assert t.get_write_buffer_limits() == (100, 1000)
        t.set_write_buffer_limits(high=400)
        assert t.get_write_buffer_limits() == (100, 400)
        t.set_write_buffer_limits(low=100)
        assert t.get_write_buffer_limits() == (100, 400)
        t.set_write_buffer_limits(high=1000.0)
        assert t.get_write_buffer_limits() == (250, 1000)
        t.set_write_buffer_limits()
        assert t.get_write_buffer_limits() == (16384, 65536)
        with pytest.raises(ValueError):
            t.set_write_buffer_limits(high=1, low=2)
        with pytest.raises(ValueError):
            t.set_write_buffer_limits(high=-2, low=-1)
        t.set_write_buffer_limits(high=64 << 10, low=16 << 10)
        cp.transport.pause_reading()
        chunk = b"z" * 65536
        sent = 0
        while "pause" not in sp.events:
            t.write(chunk)
            sent += len(chunk)
            assert sent < 256 << 20, "pause_writing never called"
        assert sp.events.count("pause") == 1
        assert t.get_write_buffer_size() > 64 << 10
        t.write(b"more")    # still paused: no second pause_writing
        sent += 4
        assert sp.events.count("pause") == 1
        cp.transport.resume_reading()
        await cp.wait_bytes(sent)
        assert len(cp.data) == sent
        for _ in range(100):
            if "resume" in sp.events:
                break
            await asyncio.sleep(0.01)
        assert sp.events.count("resume") == 1
        assert t.get_write_buffer_size() == 0
        # Raising the limit above the buffer does not pause; lowering it
        # below does, at once.
        cp.transport.pause_reading()
        t.set_write_buffer_limits(high=1 << 30)
        while t.get_write_buffer_size() < 1 << 20:
            t.write(chunk)
            sent += len(chunk)
        assert sp.events.count("pause") == 1
        t.set_write_buffer_limits(high=1000)
        assert sp.events.count("pause") == 2
        cp.transport.resume_reading()
        await cp.wait_bytes(sent)
        await shutdown(srv, sp, cp)
    run(loop, main(), timeout=60)
    assert loop.errors == []


def test_pause_writing_errors_reported(loop):
    class Bad(Rec):
        def pause_writing(self):
            raise ZeroDivisionError("p")

        def resume_writing(self):
            raise KeyError("r")

    async def main():
        srv, sp, cp = await tcp_pair(loop, Bad(loop))
        cp.transport.pause_reading()
        sp.transport.set_write_buffer_limits(high=10)
        sent = 0
        while not loop.errors:
            sp.transport.write(b"q" * 65536)
            sent += 65536
        assert loop.errors[0]["message"] == "protocol.pause_writing() failed"
        assert isinstance(loop.errors[0]["exception"], ZeroDivisionError)
        assert loop.errors[0]["transport"] is sp.transport
        cp.transport.resume_reading()
        await cp.wait_bytes(sent)
        for _ in range(100):
            if len(loop.errors) == 2:
                break
            await asyncio.sleep(0.01)
        assert loop.errors[1]["message"] == \
            "protocol.resume_writing() failed"
        assert not sp.transport.is_closing()
        loop.errors.clear()
        await shutdown(srv, sp, cp)
    run(loop, main(), timeout=60)
    assert loop.errors == []


def test_pause_resume_reading(loop):
    async def main():
        srv, sp, cp = await tcp_pair(loop)
        t = cp.transport
        assert t.is_reading()
        t.pause_reading()
        t.pause_reading()       # idempotent
        assert not t.is_reading()
        sp.transport.write(b"hello")
        await asyncio.sleep(0.1)
        assert cp.data == b""
        t.resume_reading()
        t.resume_reading()
        assert t.is_reading()
        assert await cp.wait_bytes(5) == b"hello"
        t.close()
        assert not t.is_reading()
        t.resume_reading()      # no effect once closing
        assert not t.is_reading()
        await shutdown(srv, sp, cp)
    run(loop, main())
    assert loop.errors == []


def test_pause_reading_before_connection_made(loop):
    """Pausing in connection_made: nothing is read until resumed."""
    class P(Rec):
        def connection_made(self, transport):
            super().connection_made(transport)
            transport.pause_reading()

    async def main():
        srv, sp, cp = await tcp_pair(loop, client_proto=P(loop))
        sp.transport.write(b"data")
        await asyncio.sleep(0.1)
        assert cp.data == b""
        cp.transport.resume_reading()
        assert await cp.wait_bytes(4) == b"data"
        await shutdown(srv, sp, cp)
    run(loop, main())


def test_write_eof_half_close(loop):
    async def main():
        sp = Rec(loop)
        sp.eof_result = True        # keep the server side half-open
        srv, sp, cp = await tcp_pair(loop, sp)
        assert cp.transport.can_write_eof()
        cp.transport.write(b"request")
        cp.transport.write_eof()
        cp.transport.write_eof()    # twice is fine
        with pytest.raises(RuntimeError, match="write_eof"):
            cp.transport.write(b"x")
        with pytest.raises(RuntimeError, match="write_eof"):
            cp.transport.writelines([b"x"])
        await sp.eof
        assert sp.data == b"request"
        assert not sp.transport.is_closing()
        # The server still writes after the client's EOF.
        sp.transport.write(b"reply")
        assert await cp.wait_bytes(5) == b"reply"
        # Then the server closes its side: EOF at the client, which
        # returns None so its transport closes.
        sp.transport.write_eof()
        await cp.eof
        assert await cp.lost is None
        assert cp.events == ["made", "data", "eof", "lost"]
        # Half-open, the server no longer reads: it learns nothing more
        # and closes itself.
        assert not sp.transport.is_closing()
        sp.transport.close()
        assert await sp.lost is None
        srv.close()
        await srv.wait_closed()
    run(loop, main())
    assert loop.errors == []


def test_write_eof_after_buffered_data(loop):
    """write_eof with data queued shuts down only once it is sent."""
    async def main():
        srv, sp, cp = await tcp_pair(loop)
        cp.transport.pause_reading()
        sp.transport.write(b"w" * (8 << 20))
        assert sp.transport.get_write_buffer_size() > 0
        sp.transport.write_eof()
        cp.transport.resume_reading()
        await cp.eof
        assert len(cp.data) == 8 << 20
        await shutdown(srv, sp, cp)
    run(loop, main(), timeout=60)


def test_eof_received_none_closes(loop):
    async def main():
        srv, sp, cp = await tcp_pair(loop)
        cp.transport.write_eof()
        await sp.eof
        assert await sp.lost is None
        assert sp.transport.is_closing()
        await cp.eof
        await cp.lost
        srv.close()
        await srv.wait_closed()
    run(loop, main())


def test_abort_drops_data(loop):
    async def main():
        srv, sp, cp = await tcp_pair(loop)
        cp.transport.pause_reading()
        sp.transport.write(b"a" * (8 << 20))
        assert sp.transport.get_write_buffer_size() > 0
        sp.transport.abort()
        assert sp.transport.is_closing()
        assert sp.transport.get_write_buffer_size() == 0
        sp.transport.abort()
        sp.transport.close()
        assert await sp.lost is None
        cp.transport.resume_reading()
        await cp.lost
        assert len(cp.data) < 8 << 20
        assert sp.events.count("lost") == 1
        srv.close()
        await srv.wait_closed()
    run(loop, main(), timeout=60)


def test_close_flushes_pending_data(loop):
    async def main():
        srv, sp, cp = await tcp_pair(loop)
        cp.transport.pause_reading()
        payload = os.urandom(1 << 20) * 6
        sp.transport.write(payload[:100])
        sp.transport.write(payload[100:])
        assert sp.transport.get_write_buffer_size() > 0
        sp.transport.close()
        assert sp.transport.is_closing()
        await asyncio.sleep(0.05)
        assert not sp.lost.done()     # waits for the data to go out
        cp.transport.resume_reading()
        assert await sp.lost is None
        await cp.eof
        assert bytes(cp.data) == payload
        await cp.lost
        srv.close()
        await srv.wait_closed()
    run(loop, main(), timeout=60)
    assert loop.errors == []


def test_writes_after_close_and_lost(loop, kind, caplog):
    # asyncio 3.12+ fails writelines() after close() with a TypeError
    # (its write callback is gone); piston drops the data as write() does.
    lines_ok = kind == "piston" or sys.version_info < (3, 12)

    async def main():
        srv, sp, cp = await tcp_pair(loop)
        t = cp.transport
        t.close()
        t.write(b"dropped")         # closing: no exception
        await cp.lost
        with caplog.at_level(logging.WARNING, logger="asyncio"):
            for _ in range(10):
                t.write(b"after lost")
                if lines_ok:
                    t.writelines([b"after lost"])
        assert "socket.send() raised exception." in caplog.text
        t.close()
        t.abort()
        assert t.get_write_buffer_size() == 0
        await sp.lost
        srv.close()
        await srv.wait_closed()
    run(loop, main())
    assert loop.errors == []


def test_bad_input(loop):
    async def main():
        srv, sp, cp = await tcp_pair(loop)
        t = cp.transport
        for bad in ("text", 12, None, [b"a"], object()):
            with pytest.raises(TypeError,
                               match="data argument must be a bytes-like"):
                t.write(bad)
        with pytest.raises(TypeError):
            t.writelines([b"ok", "not ok"])
        with pytest.raises(TypeError):
            t.writelines(5)
        t.write(b"")                # empty writes are fine
        t.writelines([])
        assert t.get_write_buffer_size() == 0
        with pytest.raises(TypeError):
            t.set_write_buffer_limits(high="x")
        assert t.get_extra_info("nonexistent") is None
        assert t.get_extra_info("nonexistent", 7) == 7
        # Nothing from the failed writelines was sent.
        t.write(b"end")
        assert await sp.wait_bytes(3) == b"end"
        await shutdown(srv, sp, cp)
    run(loop, main())


def test_protocol_callback_errors(loop):
    class Bad(Rec):
        def data_received(self, data):
            super().data_received(data)
            raise ZeroDivisionError("boom")

    async def main():
        srv, sp, cp = await tcp_pair(loop, Bad(loop))
        cp.transport.write(b"x")
        exc = await sp.lost
        assert isinstance(exc, ZeroDivisionError)
        assert len(loop.errors) == 1
        ctx = loop.errors[0]
        assert ctx["message"] == \
            "Fatal error: protocol.data_received() call failed."
        assert ctx["exception"] is exc
        assert ctx["transport"] is sp.transport
        assert ctx["protocol"] is sp
        loop.errors.clear()
        await cp.lost
        srv.close()
        await srv.wait_closed()
    run(loop, main())


def test_get_buffer_errors(loop):
    class Empty(Buffered):
        def get_buffer(self, sizehint):
            return bytearray()

    async def main():
        bp = Empty(loop)
        srv, sp, cp = await tcp_pair(loop, client_proto=bp)
        sp.transport.write(b"x")
        exc = await bp.lost
        assert isinstance(exc, RuntimeError)
        assert "empty buffer" in str(exc)
        assert loop.errors[0]["message"] == \
            "Fatal error: protocol.get_buffer() call failed."
        loop.errors.clear()
        await sp.lost
        srv.close()
        await srv.wait_closed()
    run(loop, main())


# Extra info, protocols, sendfile.

def test_get_extra_info(loop):
    async def main():
        srv, sp, cp = await tcp_pair(loop)
        for t, peer in ((cp.transport, sp.transport),
                        (sp.transport, cp.transport)):
            sock = t.get_extra_info("socket")
            assert isinstance(sock, asyncio.trsock.TransportSocket)
            assert t.get_extra_info("sockname") == sock.getsockname()
            assert t.get_extra_info("peername") == \
                peer.get_extra_info("sockname")
            assert sock.getsockopt(socket.IPPROTO_TCP,
                                   socket.TCP_NODELAY) != 0
        await shutdown(srv, sp, cp)
        # After close the cached values stay.
        assert cp.transport.get_extra_info("peername") is not None
    run(loop, main())


def test_extra_passed_in(loop):
    async def main():
        a, b = socket.socketpair()
        a.setblocking(False)
        p = Rec(loop)
        t = loop._make_socket_transport(a, p, extra={"mine": 42})
        await p.made
        assert t.get_extra_info("mine") == 42
        assert t.get_extra_info("socket") is not None
        assert t.get_extra_info("peername") == ""
        b.sendall(b"via socketpair")
        assert await p.wait_bytes(14) == b"via socketpair"
        with pytest.raises(RuntimeError):
            loop.add_reader(a.fileno(), lambda: None)
        t.close()
        await p.lost
        b.close()
    run(loop, main())


def test_set_protocol_switch(loop):
    async def main():
        srv, sp, cp = await tcp_pair(loop)
        sp.transport.write(b"first")
        await cp.wait_bytes(5)
        bp = Buffered(loop, size=64)
        cp.transport.set_protocol(bp)
        assert cp.transport.get_protocol() is bp
        sp.transport.write(b"second" * 100)
        assert await bp.wait_bytes(600) == b"second" * 100
        assert bp.sizehints
        back = Rec(loop)
        back.made.set_result(None)
        cp.transport.set_protocol(back)
        sp.transport.write(b"third")
        assert await back.wait_bytes(5) == b"third"
        assert cp.data == b"first"
        sp.transport.close()
        await back.lost
        await sp.lost
        srv.close()
        await srv.wait_closed()
    run(loop, main())
    assert loop.errors == []


def test_sendfile(loop):
    async def main():
        payload = os.urandom(3 << 20)
        with tempfile.TemporaryFile() as f:
            f.write(payload)
            f.flush()
            f.seek(0)
            srv, sp, cp = await tcp_pair(loop)
            sp.transport.write(b"head:")
            n = await loop.sendfile(sp.transport, f)
            assert n == len(payload)
            assert sp.transport.is_reading()
            sp.transport.write(b":tail")
            got = await cp.wait_bytes(len(payload) + 10)
            assert got == b"head:" + payload + b":tail"
            # The transport still reads after sendfile.
            cp.transport.write(b"back")
            assert await sp.wait_bytes(4) == b"back"
            f.seek(0)
            n = await loop.sendfile(sp.transport, f, offset=10, count=100)
            assert n == 100
            got = await cp.wait_bytes(len(payload) + 110)
            assert got[-100:] == payload[10:110]
            await shutdown(srv, sp, cp)
    run(loop, main(), timeout=60)
    assert loop.errors == []


def test_tls_echo(loop):
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(CERT, KEY)
    client_ctx = ssl.create_default_context(cafile=CERT)

    async def handle(reader, writer):
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        writer.close()

    async def main():
        srv = await asyncio.start_server(handle, "127.0.0.1", 0,
                                         ssl=server_ctx)
        port = srv.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost")
        assert writer.get_extra_info("peercert")["subject"]
        assert writer.get_extra_info("cipher") is not None
        assert writer.get_extra_info("sslcontext") is client_ctx
        assert writer.get_extra_info("socket") is not None
        for size in (1, 1000, 100_000, 2_000_000):
            msg = os.urandom(size)
            writer.write(msg)
            await writer.drain()
            assert await reader.readexactly(size) == msg
        writer.close()
        await writer.wait_closed()
        srv.close()
        await srv.wait_closed()
    run(loop, main(), timeout=60)
    assert loop.errors == []


def test_start_tls(loop):
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(CERT, KEY)
    client_ctx = ssl.create_default_context(cafile=CERT)

    async def handle(reader, writer):
        assert await reader.readexactly(8) == b"STARTTLS"
        writer.write(b"OK")
        await writer.drain()
        await writer.start_tls(server_ctx)
        data = await reader.readexactly(5)
        writer.write(data.upper())
        await writer.drain()
        writer.close()

    async def main():
        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"STARTTLS")
        assert await reader.readexactly(2) == b"OK"
        await writer.start_tls(client_ctx, server_hostname="localhost")
        writer.write(b"hello")
        assert await reader.readexactly(5) == b"HELLO"
        writer.close()
        await writer.wait_closed()
        srv.close()
        await srv.wait_closed()
    if sys.version_info < (3, 11):
        pytest.skip("StreamWriter.start_tls is 3.11+")
    run(loop, main(), timeout=60)


def test_unix_socket_echo(loop, tmp_path):
    path = str(tmp_path / "echo.sock")

    async def main():
        sp = EchoRec(loop)
        srv = await loop.create_unix_server(lambda: sp, path)
        cp = Rec(loop)
        t, _ = await loop.create_unix_connection(lambda: cp, path)
        assert isinstance(t, asyncio.Transport)
        assert t.get_extra_info("peername") == path
        payload = os.urandom(300_000)
        t.write(payload)
        assert await cp.wait_bytes(len(payload)) == payload
        t.write_eof()
        await sp.eof
        await shutdown(srv, cp, sp)
        # 3.13 removes the socket file it created when the server closes.
        assert os.path.exists(path) == (sys.version_info < (3, 13))
    run(loop, main())
    assert loop.errors == []


def test_streams_readline(loop):
    async def handle(reader, writer):
        async for line in reader:
            writer.write(line[::-1])
        writer.close()

    async def main():
        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.writelines([b"abc\n", b"de", b"f\n"])
        assert await reader.readexactly(8) == b"\ncba\nfed"
        writer.close()
        await writer.wait_closed()
        srv.close()
        await srv.wait_closed()
    run(loop, main())


def test_unclosed_transport_warns(loop):
    async def main():
        a, b = socket.socketpair()
        a.setblocking(False)
        p = Rec(loop)
        loop._make_socket_transport(a, p)
        await p.made
        p.transport.pause_reading()
        return b

    b = run(loop, main())
    loop.close()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        proto = None
        gc.collect()
        gc.collect()
        del proto
    assert any(issubclass(x.category, ResourceWarning)
               and "unclosed transport" in str(x.message) for x in w), w
    b.close()


def test_connection_lost_once_with_close_and_abort(loop):
    async def main():
        srv, sp, cp = await tcp_pair(loop)
        cp.transport.close()
        cp.transport.abort()
        cp.transport.close()
        assert await cp.lost is None
        await asyncio.sleep(0.01)
        assert cp.events.count("lost") == 1
        await sp.lost
        srv.close()
        await srv.wait_closed()
    run(loop, main())
    assert loop.errors == []


def test_writelines_bad_buffer_keeps_earlier_items(loop, kind):
    """An item whose buffer cannot be taken (non-contiguous) raises; the
    transport stays usable and nothing is lost or stuck."""
    if kind == "asyncio" and sys.version_info >= (3, 12):
        pytest.skip("asyncio 3.12+ queues the view and fails the "
                    "connection when sending it")

    async def main():
        srv, sp, cp = await tcp_pair(loop)
        bad = memoryview(bytearray(b"0123456789"))[::2]
        with pytest.raises((TypeError, BufferError, ValueError)):
            cp.transport.writelines([b"first", bad])
        cp.transport.write(b"second")
        data = await sp.wait_bytes(6)
        await asyncio.sleep(0.05)
        assert bytes(sp.data) in (b"second", b"firstsecond")
        if kind == "piston":
            assert bytes(sp.data) == b"firstsecond"
        await shutdown(srv, sp, cp)
        return data
    run(loop, main())
