"""Stream transports under load, on asyncio's loop and on piston's: 10k
concurrent connections, 1 GiB through one connection, random read/write
sizes with random pause_reading/resume_reading checked against a model,
and a peer that never reads (writes pause, the loop stays idle)."""
import asyncio
import contextlib
import hashlib
import random
import resource
import socket
import sys
import time

import pytest

from net_support import (  # noqa: F401 - fixtures
    FlowControlled, HashSink, env_with_piston, kind, loop, run)

N_CONN = 10_000
GIB = 1 << 30
BLOCK = 4 << 20


@contextlib.contextmanager
def nofile_at_least(n):
    """RLIMIT_NOFILE raised to n for the block (skips when it cannot be)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= n:
        yield
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, max(hard, n)))
    except (ValueError, OSError) as exc:
        pytest.skip(f"needs {n} fds: RLIMIT_NOFILE hard limit is {hard} "
                    f"and cannot be raised ({exc})")
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# The client half of test_10k_connections, in its own process so that
# neither process needs more than ~10k fds: it opens N connections on a
# loop of the same kind, says "open", waits for "go", sends each a distinct
# 32-byte payload, checks every echo and that the server closed each, and
# prints the sha1 of its sorted payloads.
CLIENTS_10K = r"""
import asyncio, hashlib, os, sys
kind, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if kind == "piston":
    import piston
    loop = piston.new_event_loop()
else:
    loop = asyncio.new_event_loop()

class Client(asyncio.Protocol):
    def __init__(self):
        self.data = b""
        self.lost = loop.create_future()
    def connection_made(self, transport):
        self.transport = transport
    def data_received(self, data):
        self.data += data
    def connection_lost(self, exc):
        self.lost.set_result(exc)

async def main():
    clients = []
    for start in range(0, n, 500):
        pairs = await asyncio.gather(*(
            loop.create_connection(Client, "127.0.0.1", port)
            for _ in range(start, min(start + 500, n))))
        clients += [p for _, p in pairs]
    print("open", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    payloads = [i.to_bytes(4, "big") + os.urandom(28) for i in range(n)]
    for c, p in zip(clients, payloads):
        c.transport.write(p)
    assert await asyncio.gather(*(c.lost for c in clients)) == [None] * n
    bad = sum(c.data != p for c, p in zip(clients, payloads))
    assert not bad, f"{bad} echoes differ"
    print("ok", hashlib.sha1(b"".join(sorted(payloads))).hexdigest(),
          flush=True)

loop.run_until_complete(main())
loop.run_until_complete(loop.shutdown_default_executor())
loop.close()
"""


def test_10k_connections(loop, kind):
    """10k connections open at once: the server on the loop under test,
    the clients in a subprocess on a loop of the same kind (started and
    talked to through the loop's own subprocess pipes)."""
    live = set()
    received = []

    class EchoOnce(asyncio.Protocol):
        """Echoes a client's 32 bytes and closes: the server side closes
        first, so TIME_WAIT lands on the listening port, not on 10k
        ephemeral ones."""

        def connection_made(self, transport):
            self.transport = transport
            self.data = b""
            live.add(self)

        def data_received(self, data):
            self.data += data
            if len(self.data) >= 32:
                received.append(self.data)
                self.transport.write(self.data)
                self.transport.close()

        def connection_lost(self, exc):
            live.discard(self)

    async def main():
        server = await loop.create_server(EchoOnce, "127.0.0.1", 0,
                                          backlog=4096)
        port = server.sockets[0].getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CLIENTS_10K, kind, str(port),
            str(N_CONN), env=env_with_piston(),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        assert await proc.stdout.readline() == b"open\n"
        while len(live) < N_CONN:
            await asyncio.sleep(0.01)
        assert len(live) == N_CONN
        proc.stdin.write(b"go\n")
        line = await proc.stdout.readline()
        assert await proc.wait() == 0
        assert sorted(received) == sorted(set(received))
        assert line.split() == [
            b"ok", hashlib.sha1(b"".join(sorted(received))).hexdigest()
            .encode()]
        while live:
            await asyncio.sleep(0.01)
        server.close()
        await server.wait_closed()

    with nofile_at_least(N_CONN + 500):
        run(loop, main(), timeout=100)
    assert not loop.errors


_expected_gib = []


def _gib_chunks():
    """1 GiB as 256 distinct 4 MiB chunks (rotations of one random block);
    the same every time, so its digest is computed once per session."""
    block = random.Random(31).randbytes(BLOCK)
    for i in range(GIB // BLOCK):
        k = (i * 7919) % BLOCK
        yield block[k:] + block[:k]


def _gib_digest():
    if not _expected_gib:
        h = hashlib.sha1()
        for chunk in _gib_chunks():
            h.update(chunk)
        _expected_gib.append(h.digest())
    return _expected_gib[0]


def test_one_gib_one_connection(loop):
    expected = _gib_digest()

    async def main():
        sink = HashSink()
        server = await loop.create_server(lambda: sink, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        tr, src = await loop.create_connection(FlowControlled, "127.0.0.1", port)
        for chunk in _gib_chunks():
            await src.can_write.wait()
            tr.write(chunk)
        tr.write_eof()
        assert await sink.done == (GIB, expected)
        assert src.pauses > 0       # the writer was really held back
        tr.close()
        server.close()
        await server.wait_closed()

    run(loop, main(), timeout=100)
    assert not loop.errors


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_sizes_and_pauses(loop, seed):
    """Random write sizes, random read-buffer sizes (BufferedProtocol) and
    random pause_reading/resume_reading: the receiver must see exactly the
    sent byte sequence, and nothing at all while paused."""
    # One generator per decision maker: each one's choices are the same on
    # every run, however the loop interleaves them.
    stream = random.Random(seed).randbytes(8 << 20)
    rx_rng, tx_rng, pause_rng = (random.Random(f"{seed}-{role}")
                                 for role in ("rx", "tx", "pause"))
    state = {"paused": False, "calls": 0, "while_paused": 0}
    received = bytearray()

    class Rx(asyncio.BufferedProtocol):
        def __init__(self):
            self.eof = loop.create_future()

        def connection_made(self, transport):
            rx_transport.set_result(transport)

        def get_buffer(self, sizehint):
            self.buf = bytearray(rx_rng.randint(1, 65536))
            return self.buf

        def buffer_updated(self, nbytes):
            state["calls"] += 1
            if state["paused"]:
                state["while_paused"] += 1
            received.extend(self.buf[:nbytes])

        def eof_received(self):
            self.eof.set_result(None)

    class Tx(asyncio.Protocol):
        def __init__(self):
            self.can_write = asyncio.Event()
            self.can_write.set()

        def pause_writing(self):
            self.can_write.clear()

        def resume_writing(self):
            self.can_write.set()

    async def send(tr, tx):
        pos = 0
        while pos < len(stream):
            await tx.can_write.wait()
            n = tx_rng.choice([1, 7, 1000, 65536, 300000])
            kind_ = tx_rng.choice([bytes, bytearray, memoryview])
            tr.write(kind_(stream[pos:pos + n]))
            pos += n
            if tx_rng.random() < 0.3:
                await asyncio.sleep(0)
        tr.write_eof()

    async def toggle(rx_tr, sending):
        while not sending.done():
            for _ in range(pause_rng.randint(0, 5)):
                await asyncio.sleep(0)
            rx_tr.pause_reading()
            state["paused"] = True
            assert not rx_tr.is_reading()
            before = state["calls"]
            for _ in range(pause_rng.randint(1, 5)):
                await asyncio.sleep(0)
            await asyncio.sleep(0.001)
            assert state["calls"] == before
            state["paused"] = False
            rx_tr.resume_reading()
            assert rx_tr.is_reading()

    async def main():
        nonlocal rx_transport
        rx_transport = loop.create_future()
        rx = Rx()
        server = await loop.create_server(lambda: rx, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        tr, tx = await loop.create_connection(Tx, "127.0.0.1", port)
        tr.set_write_buffer_limits(high=tx_rng.choice([1, 4096, 1 << 20]))
        rx_tr = await rx_transport
        sending = asyncio.ensure_future(send(tr, tx))
        await asyncio.gather(sending, toggle(rx_tr, sending))
        await rx.eof
        tr.close()
        server.close()
        await server.wait_closed()

    rx_transport = None
    run(loop, main())
    assert state["while_paused"] == 0
    assert state["calls"] > 0
    assert bytes(received) == stream, f"seed {seed}: byte stream differs"
    assert not loop.errors


def test_peer_never_reads(loop, kind):
    """A peer that never reads: the writer is paused, the loop sleeps
    (no busy polling on the unwritable socket), and once the peer reads
    every byte arrives."""
    total = 64 << 20
    data = random.Random(41).randbytes(1 << 20)
    expected = hashlib.sha1(data * (total // len(data))).digest()

    class Writer(asyncio.Protocol):
        def __init__(self):
            self.paused = loop.create_future()
            self.resumes = 0
            self.can_write = asyncio.Event()
            self.can_write.set()

        def connection_made(self, transport):
            self.transport = transport
            self.task = loop.create_task(self.pump())

        async def pump(self):
            for _ in range(total // len(data)):
                await self.can_write.wait()
                self.transport.write(data)
            self.transport.close()

        def pause_writing(self):
            self.can_write.clear()
            if not self.paused.done():
                self.paused.set_result(None)

        def resume_writing(self):
            self.resumes += 1
            self.can_write.set()

    async def main():
        w = Writer()
        server = await loop.create_server(lambda: w, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        peer = socket.socket()
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        peer.setblocking(False)
        await loop.sock_connect(peer, ("127.0.0.1", port))
        await w.paused
        assert w.transport.get_write_buffer_size() > 0
        # Idle while the peer is stuck: the loop must block in its poll.
        stats = getattr(loop, "stats", None)
        it0 = stats()["iterations"] if stats else None
        cpu0 = time.process_time()
        await asyncio.sleep(0.5)
        cpu = time.process_time() - cpu0
        assert w.resumes == 0 and not w.can_write.is_set()
        if stats:
            iterations = stats()["iterations"] - it0
            assert iterations < 50, f"{iterations} loop iterations in 0.5 s"
        assert cpu < 0.3, f"{cpu:.2f} s of CPU while idle for 0.5 s"
        h = hashlib.sha1()
        n = 0
        buf = bytearray(1 << 20)
        while True:
            k = await loop.sock_recv_into(peer, buf)
            if not k:
                break
            h.update(memoryview(buf)[:k])
            n += k
        peer.close()
        assert (n, h.digest()) == (total, expected)
        assert w.resumes > 0
        await w.task
        server.close()
        await server.wait_closed()

    run(loop, main())
    assert not loop.errors


def test_sendfile(loop, tmp_path):
    """loop.sendfile() of a 64 MiB file, whole and a slice of it, to one
    connection: the receiver gets exactly those bytes."""
    data = random.Random(91).randbytes(64 << 20)
    path = tmp_path / "blob"
    path.write_bytes(data)
    lo, count = 12345, (8 << 20) + 1
    expected = hashlib.sha1(data + data[lo:lo + count]).digest()

    async def main():
        sink = HashSink()
        server = await loop.create_server(lambda: sink, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        tr, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1",
                                             port)
        with open(path, "rb") as f:
            assert await loop.sendfile(tr, f) == len(data)
            assert await loop.sendfile(tr, f, lo, count) == count
            assert f.tell() == lo + count
        tr.write_eof()
        assert await sink.done == (len(data) + count, expected)
        tr.close()
        server.close()
        await server.wait_closed()

    run(loop, main())
    assert not loop.errors
