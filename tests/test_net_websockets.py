"""A `websockets` server and client on the loop under test, over TCP and
a Unix socket: text and binary messages, a large message, fragmented
messages, ping/pong, and close codes seen by both ends."""
import asyncio
import hashlib
import random

import pytest

from net_support import kind, loop, require, run  # noqa: F401 - fixtures

websockets = require("websockets")
from websockets.asyncio.client import connect, unix_connect  # noqa: E402
from websockets.asyncio.server import serve, unix_serve  # noqa: E402

BIG = 4 << 20


async def _handler(ws):
    """Echoes every message; "sha:" asks for the checksum of the next one;
    "close:CODE" closes with that code."""
    async for msg in ws:
        if isinstance(msg, str) and msg.startswith("close:"):
            await ws.close(int(msg[6:]), "bye")
            return
        if msg == "sha:":
            data = await ws.recv()
            await ws.send(hashlib.sha256(data).hexdigest())
            continue
        await ws.send(msg)


@pytest.fixture(params=["tcp", "unix"])
def client(loop, request, tmp_path):
    """An async function returning a connect(...) context for a server
    running on `loop`; the server is closed at teardown."""
    # serve() wants a running loop from its constructor on.
    async def start(make_server, *args):
        return await make_server(_handler, *args, max_size=BIG * 2)

    if request.param == "unix":
        path = str(tmp_path / "ws.sock")
        server = run(loop, start(unix_serve, path))

        def make(**kw):
            return unix_connect(path, "ws://localhost/", max_size=BIG * 2,
                                **kw)
    else:
        server = run(loop, start(serve, "127.0.0.1", 0))
        port = server.sockets[0].getsockname()[1]

        def make(**kw):
            return connect(f"ws://127.0.0.1:{port}/", max_size=BIG * 2,
                           **kw)
    yield make
    server.close()
    run(loop, server.wait_closed())


def test_messages(loop, client):
    async def main():
        async with client() as ws:
            rng = random.Random(11)
            for i in range(200):
                text = "".join(rng.choice("az€😀\n") for _ in range(i))
                await ws.send(text)
                assert await ws.recv() == text
                data = rng.randbytes(rng.randint(0, 20000))
                await ws.send(data)
                assert await ws.recv() == data
            # A fragmented message arrives whole.
            parts = [rng.randbytes(10000) for _ in range(10)]
            await ws.send(iter(parts))
            assert await ws.recv() == b"".join(parts)

    run(loop, main())
    assert not loop.errors


def test_large_message(loop, client):
    big = random.Random(12).randbytes(BIG)

    async def main():
        async with client() as ws:
            await ws.send("sha:")
            await ws.send(big)
            assert await ws.recv() == hashlib.sha256(big).hexdigest()
            await ws.send(big)
            assert await ws.recv() == big

    run(loop, main())
    assert not loop.errors


def test_many_clients(loop, client):
    async def one(i):
        async with client() as ws:
            data = random.Random(i).randbytes(1000 + i)
            for _ in range(5):
                await ws.send(data)
                assert await ws.recv() == data
        return i

    async def main():
        return await asyncio.gather(*map(one, range(100)))

    assert run(loop, main()) == list(range(100))
    assert not loop.errors


def test_ping_pong(loop, client):
    async def main():
        async with client(ping_interval=None) as ws:
            waiters = [await ws.ping(b"p%d" % i) for i in range(20)]
            latencies = await asyncio.gather(*waiters)
            assert all(lat >= 0 for lat in latencies)
            # The connection still carries data after the pings.
            await ws.send("after")
            assert await ws.recv() == "after"

    run(loop, main())
    assert not loop.errors


@pytest.mark.parametrize("code", [1000, 1001, 4000, 4999])
def test_server_close_code(loop, client, code):
    async def main():
        async with client() as ws:
            await ws.send(f"close:{code}")
            with pytest.raises(websockets.ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd.code == code
            assert info.value.rcvd.reason == "bye"
            expected = websockets.ConnectionClosedOK if code in (1000, 1001) \
                else websockets.ConnectionClosedError
            assert isinstance(info.value, expected)

    run(loop, main())
    assert not loop.errors


def test_client_close_code(loop, client):
    async def main():
        async with client() as ws:
            await ws.send("x")
            assert await ws.recv() == "x"
            await ws.close(4321, "client says bye")
            assert ws.close_code == 4321
            with pytest.raises(websockets.ConnectionClosed):
                await ws.send("late")

    run(loop, main())
    assert not loop.errors
