"""A throwaway redis-server for tests: a free 127.0.0.1 port and a Unix
socket in a temp dir, no persistence, stopped at exit.  Shared by the
celery tests and the redis.asyncio tests."""
import contextlib
import os
import shutil
import socket
import subprocess
import time

import pytest


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_server_exe():
    """The redis-server executable; skips the test when there is none,
    unless PISTON_REQUIRE_REDIS=1 (CI), where that is a failure."""
    exe = shutil.which("redis-server")
    if exe is None:
        if os.environ.get("PISTON_REQUIRE_REDIS") == "1":
            pytest.fail("redis-server not found and PISTON_REQUIRE_REDIS=1 "
                        "(apt-get install -y redis-server)")
        pytest.skip("redis-server not found: apt-get install -y "
                    "redis-server (set PISTON_REQUIRE_REDIS=1 to fail "
                    "instead of skipping)")
    return exe


def _pong(port):
    """True once the server answers PING (raw RESP: no client library)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A running redis-server: `url` (TCP), `port`, `unix_path`."""

    def __init__(self, exe, workdir):
        self.dir = str(workdir)
        self.port = _free_port()
        self.unix_path = os.path.join(self.dir, "redis.sock")
        self.url = "redis://127.0.0.1:%d/0" % self.port
        self._logpath = os.path.join(self.dir, "redis.log")
        self._log = open(self._logpath, "wb")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1",
             "--unixsocket", self.unix_path, "--unixsocketperm", "700",
             "--dir", self.dir, "--save", "", "--appendonly", "no",
             "--protected-mode", "yes"],
            stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)

    def wait_ready(self, timeout=20):
        end = time.monotonic() + timeout
        while not _pong(self.port):
            if self.proc.poll() is not None or time.monotonic() > end:
                self.stop()
                with open(self._logpath, errors="replace") as f:
                    raise RuntimeError("redis-server did not start: "
                                       + f.read())
            time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


@contextlib.contextmanager
def redis_server(workdir):
    """with redis_server(tmpdir) as server: a ready redis-server, stopped
    at the end of the block (skips or fails as redis_server_exe says)."""
    server = RedisServer(redis_server_exe(), workdir)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
