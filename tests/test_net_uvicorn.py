"""A Starlette app (tests/net_asgi_app.py) served by `uvicorn --loop
piston:new_event_loop` in a subprocess (or uvicorn's asyncio loop, the
baseline), fetched by httpx and a websockets client on the loop under
test; the server must stop cleanly on SIGTERM."""
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest

from net_support import (  # noqa: F401 - fixtures
    blob, env_with_piston, httpx_echo_and_blob, kind, loop,
    loop_factory_path, require, run)

httpx = require("httpx")
require("uvicorn")
require("starlette")
websockets = require("websockets")
from websockets.asyncio.client import connect, unix_connect  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
BIG = 8 << 20


class Uvicorn:
    """`python -m uvicorn net_asgi_app:app` on a free 127.0.0.1 port or a
    Unix socket, its output in a log file."""

    def __init__(self, kind, tmp_path, uds=None):
        self.uds = uds
        self.logpath = tmp_path / "uvicorn.log"
        self.log = open(self.logpath, "wb")
        where = ["--uds", uds] if uds else ["--host", "127.0.0.1",
                                            "--port", "0"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "net_asgi_app:app",
             "--app-dir", HERE, "--loop", loop_factory_path(kind),
             "--no-access-log", "--timeout-graceful-shutdown", "10",
             *where],
            env=env_with_piston(), stdout=self.log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.base = self._wait_running()

    def text(self):
        return self.logpath.read_text(errors="replace")

    def _wait_running(self, timeout=60):
        end = time.monotonic() + timeout
        while True:
            m = re.search(r"Uvicorn running on (\S+)", self.text())
            if m:
                url = m.group(1)
                return "http://localhost" if self.uds else url
            if self.proc.poll() is not None or time.monotonic() > end:
                self.kill()
                pytest.fail("uvicorn did not start:\n" + self.text(),
                            pytrace=False)
            time.sleep(0.05)

    def stop(self):
        """SIGTERM; asserts that uvicorn shut down gracefully.  (Recent
        uvicorn re-raises the signal it caught once it has finished, so
        death by SIGTERM after "Finished server process" is a clean exit.)
        """
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail("uvicorn ignored SIGTERM:\n" + self.text(),
                        pytrace=False)
        finally:
            self.log.close()
        assert rc in (0, -signal.SIGTERM), self.text()
        assert "Finished server process" in self.text(), self.text()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(params=["tcp", "unix"])
def server(kind, tmp_path, request):
    uds = str(tmp_path / "uv.sock") if request.param == "unix" else None
    srv = Uvicorn(kind, tmp_path, uds)
    try:
        yield srv
    finally:
        srv.kill()


def _client(uds):
    transport = httpx.AsyncHTTPTransport(uds=uds) if uds else None
    return httpx.AsyncClient(transport=transport, timeout=30,
                             limits=httpx.Limits(max_connections=20))


def test_http(loop, kind, server):
    base = server.base

    async def main():
        async with _client(server.uds) as client:
            r = await client.get(base + "/loop")
            assert r.text == ("piston._loop.Loop" if kind == "piston"
                              else "asyncio.unix_events._UnixSelectorEventLoop")

            rng = random.Random(3)
            bodies = [rng.randbytes(rng.choice([0, 7, 5000, 100000]))
                      for _ in range(100)]
            await httpx_echo_and_blob(client, base, bodies, 4, 5, BIG)

    run(loop, main())
    server.stop()
    assert not loop.errors


def test_websocket(loop, server):
    if server.uds:
        open_ws = unix_connect(server.uds, "ws://localhost/ws",
                               max_size=BIG * 2)
    else:
        open_ws = connect(server.base.replace("http", "ws") + "/ws",
                          max_size=BIG * 2)

    async def main():
        async with open_ws as ws:
            rng = random.Random(6)
            for i in range(50):
                text = "".join(rng.choice("aé€😀") for _ in range(i * 10))
                await ws.send(text)
                assert await ws.recv() == text
                data = rng.randbytes(i * 1000)
                await ws.send(data)
                assert await ws.recv() == data
            big = blob(7, BIG)
            await ws.send(big)
            assert await ws.recv() == big
            await (await ws.ping(b"hello"))
            await ws.send("close-me")
            with pytest.raises(websockets.ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd.code == 4001
            assert info.value.rcvd.reason == "asked to"

    run(loop, main())
    server.stop()
    assert not loop.errors
