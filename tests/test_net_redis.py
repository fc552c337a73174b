"""redis-py's asyncio client (redis.asyncio) on the loop under test
against a real redis-server, over TCP and a Unix socket: values of random
bytes, many concurrent commands, pipelines and pub/sub."""
import asyncio
import hashlib
import random
import uuid

import pytest

from net_support import kind, loop, require, run  # noqa: F401 - fixtures
from redis_server import redis_server

aioredis = require("redis.asyncio")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with redis_server(tmp_path_factory.mktemp("redis-net")) as srv:
        yield srv


@pytest.fixture(params=["tcp", "unix"])
def connect(server, request):
    """connect() -> a new redis.asyncio.Redis to the server, whose pool
    makes excess concurrent commands wait for one of its 50 connections."""
    url = "unix://" + server.unix_path if request.param == "unix" \
        else server.url
    return lambda: aioredis.Redis.from_pool(
        aioredis.BlockingConnectionPool.from_url(url, max_connections=50,
                                                 timeout=30))


def _prefix():
    return "pn-test:" + uuid.uuid4().hex + ":"


def test_values(loop, connect):
    p = _prefix()
    rng = random.Random(21)
    values = {f"{p}{i}": rng.randbytes(rng.choice([0, 1, 100, 70000]))
              for i in range(500)}
    big = rng.randbytes(8 << 20)

    async def main():
        r = connect()
        try:
            await asyncio.gather(*(r.set(k, v) for k, v in values.items()))
            got = await asyncio.gather(*(r.get(k) for k in values))
            assert got == list(values.values())
            await r.set(p + "big", big)
            assert hashlib.sha256(await r.get(p + "big")).digest() == \
                hashlib.sha256(big).digest()
            assert await r.strlen(p + "big") == len(big)
            await r.delete(*values, p + "big")
        finally:
            await r.aclose()

    run(loop, main())
    assert not loop.errors


def test_pipeline(loop, connect):
    p = _prefix()
    rng = random.Random(22)
    values = [rng.randbytes(rng.randint(0, 5000)) for _ in range(1000)]

    async def main():
        r = connect()
        try:
            async with r.pipeline(transaction=True) as pipe:
                for i, v in enumerate(values):
                    pipe.set(f"{p}{i}", v)
                    pipe.incr(p + "count")
                results = await pipe.execute()
            assert results[0::2] == [True] * len(values)
            assert results[1::2] == list(range(1, len(values) + 1))

            async with r.pipeline(transaction=False) as pipe:
                for i in range(len(values)):
                    pipe.get(f"{p}{i}")
                assert await pipe.execute() == values

            # Many pipelines at once on the client's connection pool.
            async def batch(j):
                async with r.pipeline() as pipe:
                    for i in range(j, len(values), 10):
                        pipe.get(f"{p}{i}")
                    return await pipe.execute()
            batches = await asyncio.gather(*map(batch, range(10)))
            for j, got in enumerate(batches):
                assert got == values[j::10]
            await r.delete(*(f"{p}{i}" for i in range(len(values))),
                           p + "count")
        finally:
            await r.aclose()

    run(loop, main())
    assert not loop.errors


def test_pubsub(loop, connect):
    channel = _prefix() + "chan"
    rng = random.Random(23)
    messages = [rng.randbytes(rng.randint(0, 20000)) for _ in range(300)]

    async def main():
        sub, pub = connect(), connect()
        try:
            ps = sub.pubsub()
            await ps.subscribe(channel)
            await ps.psubscribe(channel[:-4] + "*")
            first = await ps.get_message(timeout=10)
            assert first["type"] == "subscribe"

            async def publish():
                for m in messages:
                    # Both subscriptions match: two receivers.
                    assert await pub.publish(channel, m) == 2

            received = {"message": [], "pmessage": []}

            async def listen():
                async for msg in ps.listen():
                    if msg["type"] in received:
                        received[msg["type"]].append(msg["data"])
                        if sum(map(len, received.values())) == \
                                2 * len(messages):
                            return

            await asyncio.gather(publish(), listen())
            assert received["message"] == messages
            assert received["pmessage"] == messages
            await ps.unsubscribe(channel)
            await ps.punsubscribe()
            await ps.aclose()
        finally:
            await sub.aclose()
            await pub.aclose()

    run(loop, main())
    assert not loop.errors
