"""An aiohttp server on the loop under test, hit by aiohttp's client and
by httpx (AsyncClient) on the same loop, over 127.0.0.1, ::1 and a Unix
socket: echoed payloads and checksums of random bytes, many requests."""
import asyncio
import hashlib
import random

import pytest

from net_support import (  # noqa: F401 - fixtures
    HAS_IPV6, blob, httpx_echo_and_blob, kind, loop, require, run)

aiohttp = require("aiohttp")
httpx = require("httpx")
from aiohttp import web  # noqa: E402

# httpx's pool is slow under contention: fewer requests keep it quick.
N_AIOHTTP = 300
N_HTTPX = 100
BIG = 16 << 20


async def _echo(request):
    body = await request.read()
    return web.Response(body=body, headers={
        "X-SHA256": hashlib.sha256(body).hexdigest()})


async def _blob_handler(request):
    """A deterministic random body, streamed chunked in random slices."""
    seed = int(request.query["seed"])
    data = blob(seed, int(request.query["n"]))
    resp = web.StreamResponse()
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    rng = random.Random(seed + 1)
    pos = 0
    while pos < len(data):
        step = rng.randint(1, 256 << 10)
        await resp.write(data[pos:pos + step])
        pos += step
    await resp.write_eof()
    return resp


@pytest.fixture(params=["127.0.0.1", "::1", "unix"])
def where(request):
    if request.param == "::1" and not HAS_IPV6:
        pytest.skip("no IPv6 loopback on this machine")
    return request.param


@pytest.fixture
def server(loop, where, tmp_path):
    """(base_url, unix_path or None) of an aiohttp app on `loop`."""
    app = web.Application(client_max_size=BIG * 2)
    app.router.add_post("/echo", _echo)
    app.router.add_get("/blob", _blob_handler)
    # A file: aiohttp sends it with loop.sendfile() (os.sendfile, or the
    # loop's fallback when the transport cannot).
    (tmp_path / "static").mkdir()
    (tmp_path / "static" / "file.bin").write_bytes(blob(5, BIG))
    app.router.add_static("/static", tmp_path / "static")
    runner = web.AppRunner(app)
    run(loop, runner.setup())
    if where == "unix":
        path = str(tmp_path / "aiohttp.sock")
        site = web.UnixSite(runner, path)
        base, uds = "http://localhost", path
    else:
        site = web.TCPSite(runner, where, 0)
        base, uds = None, None
    run(loop, site.start())
    if base is None:
        port = runner.addresses[0][1]
        host = "[::1]" if where == "::1" else where
        base = f"http://{host}:{port}"
    yield base, uds
    run(loop, runner.cleanup())


def _aiohttp_session(uds):
    connector = aiohttp.UnixConnector(path=uds) if uds else \
        aiohttp.TCPConnector(limit=50)
    return aiohttp.ClientSession(connector=connector)


def _httpx_client(uds):
    transport = httpx.AsyncHTTPTransport(uds=uds) if uds else None
    return httpx.AsyncClient(transport=transport,
                             limits=httpx.Limits(max_connections=50),
                             timeout=30)


def _payloads(seed, n):
    rng = random.Random(seed)
    return [rng.randbytes(rng.choice([0, 1, 100, 4096, 70000]))
            for _ in range(n)]


def test_aiohttp_client(loop, server):
    base, uds = server

    async def main():
        async with _aiohttp_session(uds) as session:
            async def one(body):
                async with session.post(base + "/echo", data=body) as r:
                    assert r.status == 200
                    got = await r.read()
                    assert r.headers["X-SHA256"] == \
                        hashlib.sha256(body).hexdigest()
                    return got

            bodies = _payloads(1, N_AIOHTTP)
            assert await asyncio.gather(*map(one, bodies)) == bodies

            async with session.get(base + "/blob",
                                   params={"seed": 7, "n": BIG}) as r:
                h = hashlib.sha256()
                async for chunk in r.content.iter_any():
                    h.update(chunk)
            assert h.digest() == hashlib.sha256(blob(7, BIG)).digest()

            big = blob(8, BIG)
            async with session.post(base + "/echo", data=big) as r:
                assert await r.read() == big

            async with session.get(base + "/static/file.bin") as r:
                assert await r.read() == blob(5, BIG)
            # Ranges of it, many at once.
            ranges = [(i * 100003, i * 100003 + 65535) for i in range(40)]

            async def part(lo, hi):
                async with session.get(base + "/static/file.bin",
                                       headers={"Range": f"bytes={lo}-{hi}"}
                                       ) as r:
                    assert r.status == 206
                    return await r.read()
            parts = await asyncio.gather(*(part(*rg) for rg in ranges))
            whole = blob(5, BIG)
            assert parts == [whole[lo:hi + 1] for lo, hi in ranges]

    run(loop, main())
    assert not loop.errors


def test_httpx_client(loop, server):
    base, uds = server

    async def main():
        async with _httpx_client(uds) as client:
            await httpx_echo_and_blob(client, base, _payloads(2, N_HTTPX),
                                      9, 10, BIG)

    run(loop, main())
    assert not loop.errors
