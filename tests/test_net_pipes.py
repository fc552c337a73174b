"""Pipe transports on asyncio's loop and on piston's: connect_read_pipe
and connect_write_pipe on an os.pipe(), with checksums, flow control,
pause_reading, EOF and a reader that goes away."""
import asyncio
import hashlib
import os
import random

from net_support import (  # noqa: F401 - fixtures
    FlowControlled, kind, loop, run)


class PipeReader(asyncio.Protocol):
    def __init__(self):
        loop = asyncio.get_running_loop()
        self.h = hashlib.sha1()
        self.n = 0
        self.calls = 0
        self.eof = False
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.calls += 1
        self.h.update(data)
        self.n += len(data)

    def eof_received(self):
        self.eof = True

    def connection_lost(self, exc):
        self.lost.set_result(exc)


class PipeWriter(FlowControlled):
    def __init__(self):
        super().__init__()
        self.lost = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc):
        self.can_write.set()
        self.lost.set_result(exc)


async def _pipe_pair(loop):
    r, w = os.pipe()
    rtr, rp = await loop.connect_read_pipe(PipeReader, os.fdopen(r, "rb", 0))
    wtr, wp = await loop.connect_write_pipe(PipeWriter,
                                            os.fdopen(w, "wb", 0))
    return rtr, rp, wtr, wp


def test_stream_through_pipe(loop):
    rng = random.Random(71)
    data = rng.randbytes(32 << 20)

    async def main():
        rtr, rp, wtr, wp = await _pipe_pair(loop)
        pos = 0
        while pos < len(data):
            await wp.can_write.wait()
            n = rng.choice([1, 100, 65536, 1 << 20])
            wtr.write(data[pos:pos + n])
            pos += n
        wtr.close()
        assert await wp.lost is None
        assert await rp.lost is None
        assert rp.eof
        assert (rp.n, rp.h.digest()) == (len(data),
                                         hashlib.sha1(data).digest())
        assert wp.pauses > 0

    run(loop, main())
    assert not loop.errors


def test_read_pipe_pause(loop):
    async def main():
        rtr, rp, wtr, wp = await _pipe_pair(loop)
        wtr.write(b"a" * 1000)
        while rp.n < 1000:
            await asyncio.sleep(0.001)
        rtr.pause_reading()
        assert not rtr.is_reading()
        calls = rp.calls
        wtr.write(b"b" * 1000)
        for _ in range(5):
            await asyncio.sleep(0.005)
        assert rp.calls == calls        # paused: nothing delivered
        rtr.resume_reading()
        while rp.n < 2000:
            await asyncio.sleep(0.001)
        assert rp.h.digest() == hashlib.sha1(b"a" * 1000 + b"b" * 1000) \
            .digest()
        wtr.close()
        await rp.lost

    run(loop, main())
    assert not loop.errors


def test_reader_goes_away(loop):
    """The read end closes while the writer is blocked on a full pipe: the
    write transport is lost (BrokenPipeError, or None if its buffer was
    empty), no SIGPIPE kills us, nothing hangs."""
    async def main():
        rtr, rp, wtr, wp = await _pipe_pair(loop)
        rtr.pause_reading()
        chunk = os.urandom(1 << 16)
        while wp.can_write.is_set():
            wtr.write(chunk)
            await asyncio.sleep(0)
        rtr.close()
        await rp.lost
        exc = await wp.lost
        assert exc is None or isinstance(exc, BrokenPipeError), repr(exc)
        assert wtr.is_closing()

    run(loop, main())
    assert not loop.errors


def test_stream_reader_on_pipe(loop):
    lines = [b"line %d %s\n" % (i, os.urandom(8).hex().encode())
             for i in range(2000)]

    async def main():
        r, w = os.pipe()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader),
            os.fdopen(r, "rb", 0))
        wtr, wp = await loop.connect_write_pipe(PipeWriter,
                                                os.fdopen(w, "wb", 0))
        wtr.write(b"".join(lines))
        wtr.close()
        got = [await reader.readline() for _ in lines]
        assert got == lines
        assert await reader.read() == b""
        assert reader.at_eof()

    run(loop, main())
    assert not loop.errors
