"""Shared pieces of the network tests (test_net_*.py): the loop fixture
that runs each body on asyncio's loop and on piston's, a runner with a
time limit, the import rule for third-party clients and servers, and the
protocols several tests send and count bytes with."""
import asyncio
import hashlib
import importlib
import os
import random
import socket
import struct

import pytest

# kind, loop: the asyncio/piston fixtures; run: a runner with a time limit.
from loop_fixtures import (  # noqa: F401
    PYPATH, T, kind, loop_fixture, new_loop, run)

# CI installs the `test` extra and sets PISTON_REQUIRE=1: there a missing
# package is a failure, elsewhere a skip.
REQUIRED = os.environ.get("PISTON_REQUIRE") == "1"


def _have_ipv6():
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


# Whether this host can bind ::1 (containers often cannot).
HAS_IPV6 = _have_ipv6()


def reset(sock):
    """Closes sock with SO_LINGER 0: the kernel sends RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                    struct.pack("ii", 1, 0))
    sock.close()


def require(name):
    """Imports module `name`; skips the calling test module when it is
    missing, unless PISTON_REQUIRE=1 (then the ImportError fails)."""
    if REQUIRED:
        return importlib.import_module(name)
    return pytest.importorskip(
        name, reason=f"{name} not installed (pip install -e '.[test]'; "
        "PISTON_REQUIRE=1 makes this a failure)")


def loop_factory_path(kind):
    """What `uvicorn --loop` takes to build this kind of loop."""
    return "asyncio" if kind == "asyncio" else "piston:new_event_loop"


# Errors handed to the loop's exception handler are recorded in
# `loop.errors` and logged as asyncio would.
loop = loop_fixture(record_errors=True)


def env_with_piston(**extra):
    """os.environ with this process's piston first on PYTHONPATH."""
    env = dict(os.environ)
    path = [PYPATH] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(path)
    env.update({k: str(v) for k, v in extra.items()})
    return env


class HashSink(asyncio.Protocol):
    """Counts and SHA-1-hashes what it receives; `done` resolves to
    (byte count, digest) at EOF."""

    def __init__(self):
        self.h = hashlib.sha1()
        self.n = 0
        self.done = asyncio.get_running_loop().create_future()

    def data_received(self, data):
        self.h.update(data)
        self.n += len(data)

    def eof_received(self):
        self.done.set_result((self.n, self.h.digest()))


class FlowControlled(asyncio.BaseProtocol):
    """A writer's protocol: `can_write` is clear while the transport has
    paused it, and `pauses` counts how often it did."""

    def __init__(self):
        self.can_write = asyncio.Event()
        self.can_write.set()
        self.pauses = 0

    def pause_writing(self):
        self.pauses += 1
        self.can_write.clear()

    def resume_writing(self):
        self.can_write.set()


def blob(seed, n):
    """n reproducible pseudo-random bytes."""
    return random.Random(seed).randbytes(n)


async def httpx_echo_and_blob(client, base, bodies, blob_seed, big_seed, n):
    """Drives an HTTP app's /echo (returns the body, its SHA-256 in
    X-SHA256) and /blob (streams blob(seed, n)) through an httpx client:
    `bodies` posted at once, one blob streamed, one n-byte body echoed."""
    async def one(body):
        r = await client.post(base + "/echo", content=body)
        assert r.status_code == 200
        assert r.headers["x-sha256"] == hashlib.sha256(body).hexdigest()
        return r.content

    assert await asyncio.gather(*map(one, bodies)) == bodies

    h = hashlib.sha256()
    async with client.stream("GET", base + "/blob",
                             params={"seed": blob_seed, "n": n}) as r:
        async for chunk in r.aiter_raw():
            h.update(chunk)
    assert h.digest() == hashlib.sha256(blob(blob_seed, n)).digest()

    big = blob(big_seed, n)
    r = await client.post(base + "/echo", content=big)
    assert r.content == big
