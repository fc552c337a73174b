"""Fixtures for the piston.celery tests: a real redis-server and real
`celery worker` subprocesses, each on a free port / in a temp dir and
stopped at teardown.  (A plain module imported by test_celery.py, not a
conftest.py: two modules named `conftest` would shadow main's.)"""
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
# The shared redis-server helper lives in tests/.
if os.path.dirname(HERE) not in sys.path:
    sys.path.insert(0, os.path.dirname(HERE))
from celery_key import TEST_KEY as KEY  # noqa: E402
from redis_server import redis_server  # noqa: E402


def _env(url, **extra):
    env = dict(os.environ)
    # The piston this test process imported (a venv in CI, python/ in a
    # checkout built in place), never blindly the source tree.
    import piston
    pypath = [os.path.dirname(os.path.dirname(piston.__file__)), HERE]
    if env.get("PYTHONPATH"):
        pypath.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(pypath)
    env["PISTON_TEST_REDIS_URL"] = url
    env["PISTON_CELERY_KEY"] = KEY
    env.update({k: str(v) for k, v in extra.items()})
    return env


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        os.environ["PISTON_TEST_REDIS_URL"] = server.url
        os.environ["PISTON_CELERY_KEY"] = KEY
        yield server.url


@pytest.fixture(scope="session")
def app(redis_url):
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    import celery_app
    yield celery_app.app


class Worker:
    """One `celery worker` subprocess in its own session (process group),
    so that it and its pool children can be stopped together."""

    def __init__(self, url, tmp, queue, pool, concurrency=2, extra=(),
                 env=None):
        self.queue = queue
        self.name = "w%s@localhost" % uuid.uuid4().hex[:8]
        self.logpath = os.path.join(str(tmp), self.name + ".log")
        self.args = [sys.executable, "-m", "celery", "-A", "celery_app",
                     "worker", "-P", pool, "-c", str(concurrency),
                     "-Q", queue, "-n", self.name, "-l", "INFO",
                     "--without-gossip", "--without-mingle",
                     "--without-heartbeat", *extra]
        self.env = _env(url, CELERY_CUSTOM_WORKER_POOL="piston.celery:"
                        "TaskPool", **(env or {}))
        self.proc = None

    def start(self, timeout=60):
        self.log = open(self.logpath, "ab")
        self.proc = subprocess.Popen(self.args, env=self.env, cwd=HERE,
                                     stdout=self.log,
                                     stderr=subprocess.STDOUT,
                                     start_new_session=True)
        end = time.monotonic() + timeout
        while b" ready." not in self.read():
            if self.proc.poll() is not None:
                raise RuntimeError("celery worker exited (%s):\n%s"
                                   % (self.proc.returncode, self.text()))
            if time.monotonic() > end:
                self.stop()
                raise RuntimeError("celery worker not ready in %ss:\n%s"
                                   % (timeout, self.text()))
            time.sleep(0.1)
        return self

    def read(self):
        with open(self.logpath, "rb") as f:
            return f.read()

    def text(self):
        return self.read().decode("utf-8", "replace")[-6000:]

    def kill(self, sig=signal.SIGKILL):
        """Signal the whole process group (worker and its children)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, timeout=20):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.kill(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
                self.proc.wait(10)
        # Children left behind in the group (e.g. a fork server) go too.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.log.close()
        self.proc = None


def pools():
    """The pools the worker tests run under: PISTON_CELERY_POOLS, default
    both Celery's prefork and piston's TaskPool when it is importable."""
    names = os.environ.get("PISTON_CELERY_POOLS")
    if names:
        return names.split(",")
    try:
        import piston
        piston.ProcessPoolExecutor  # noqa: B018
    except (ImportError, AttributeError):
        return ["prefork"]
    return ["prefork", "custom"]


@pytest.fixture
def make_worker(redis_url, tmp_path):
    started = []

    def make(queue=None, pool="prefork", **kw):
        w = Worker(redis_url, tmp_path, queue or "q-" + uuid.uuid4().hex,
                   pool, **kw)
        started.append(w)
        return w

    yield make
    for w in started:
        w.stop()


@pytest.fixture(scope="module", params=pools())
def worker(request, redis_url, tmp_path_factory):
    """A shared 2-process worker for the tests that do not kill it."""
    w = Worker(redis_url, tmp_path_factory.mktemp("worker"),
               "shared-" + uuid.uuid4().hex, request.param, concurrency=2)
    w.start()
    yield w
    w.stop()
