"""Celery suite: tasks/s and per-task latency through Celery on this
machine, with Celery's prefork pool beside piston.celery:TaskPool (both
with --concurrency 2), one redis-server started for the run."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

from ._harness import median, p99

WORKERS = 2
_KEY = "piston-bench-" + uuid.uuid4().hex

# The app the workers load (-A bench_app) and this process submits with.
_APP = '''
import os
from celery import Celery
import piston.celery
app = Celery("piston_bench", broker=os.environ["PISTON_BENCH_URL"],
             backend=os.environ["PISTON_BENCH_URL"])
app.conf.update(worker_prefetch_multiplier=4, task_serializer="json",
                result_serializer="json", accept_content=["json"],
                worker_hijack_root_logger=False,
                broker_connection_retry_on_startup=True)
piston.celery.register(app)

@app.task(name="bench.noop")
def noop(x=None):
    return x
'''


def _why_not():
    """None if the suite can run, else what is missing."""
    if shutil.which("redis-server") is None:
        return ("no redis-server on PATH (apt-get install redis-server)")
    try:
        import celery  # noqa: F401
        import redis  # noqa: F401
    except ImportError as e:
        return ("%s (pip install 'piston[celery]')" % e)
    try:
        import piston
        piston.ProcessPoolExecutor  # noqa: B018
    except (ImportError, AttributeError):
        return "piston.ProcessPoolExecutor is not available"
    return None


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(proc, log, what, timeout=60):
    end = time.monotonic() + timeout
    while True:
        with open(log, "rb") as f:
            if what(f.read()):
                return
        if proc.poll() is not None or time.monotonic() > end:
            with open(log, "rb") as f:
                tail = f.read()[-3000:].decode("utf-8", "replace")
            raise RuntimeError("benchmark server did not start:\n" + tail)
        time.sleep(0.1)


def _stop(proc):
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


@contextlib.contextmanager
def _cluster():
    """A redis-server on a free port and the bench app, torn down after."""
    import redis
    d = tempfile.mkdtemp(prefix="piston-celery-bench-")
    port = _free_port()
    log = os.path.join(d, "redis.log")
    with open(os.path.join(d, "bench_app.py"), "w") as f:
        f.write(_APP)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
             "--dir", d, "--save", "", "--appendonly", "no"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = "redis://127.0.0.1:%d/0" % port
    old = {k: os.environ.get(k) for k in ("PISTON_BENCH_URL",)}
    try:
        client = redis.Redis.from_url(url)
        end = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                if proc.poll() is not None or time.monotonic() > end:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.05)
        client.close()
        os.environ["PISTON_BENCH_URL"] = url
        sys.path.insert(0, d)
        sys.modules.pop("bench_app", None)
        import bench_app
        yield d, url, bench_app.app
    finally:
        if d in sys.path:
            sys.path.remove(d)
        sys.modules.pop("bench_app", None)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _stop(proc)
        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def _worker(d, url, app, pool):
    """A `celery worker` with 2 processes of ``pool`` on its own queue."""
    import piston
    queue = "bench-" + uuid.uuid4().hex
    log = os.path.join(d, queue + ".log")
    pkg = os.path.dirname(os.path.dirname(os.path.abspath(piston.__file__)))
    env = dict(os.environ, PISTON_BENCH_URL=url, PISTON_CELERY_KEY=_KEY,
               CELERY_CUSTOM_WORKER_POOL="piston.celery:TaskPool",
               PYTHONPATH=os.pathsep.join(
                   [pkg, d] + ([os.environ["PYTHONPATH"]]
                               if os.environ.get("PYTHONPATH") else [])))
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "bench_app", "worker",
             "-P", pool, "-c", str(WORKERS), "-Q", queue, "-l", "WARNING",
             "-n", queue + "@localhost", "--without-gossip",
             "--without-mingle", "--without-heartbeat"],
            env=env, cwd=d, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        # With -l WARNING the banner still ends in "ready." on stdout only
        # at INFO; wait for the queue to be consumed instead.
        _wait_ready(proc, log, lambda _: _pings(app, queue))
        yield _Target(app, queue)
    finally:
        _stop(proc)


def _pings(app, queue):
    try:
        return bool(app.control.ping([queue + "@localhost"], timeout=0.5))
    except Exception:
        return False


class _Target:
    def __init__(self, app, queue):
        self.app = app
        self.queue = queue


def _pools(d, url, app):
    return {"prefork": lambda: _worker(d, url, app, "prefork"),
            "piston": lambda: _worker(d, url, app, "custom")}


def _skipped(h, case):
    why = _why_not()
    if why is None:
        return False
    h.progress.clear()
    print("piston: celery suite, %s: skipped: %s" % (case, why),
          file=sys.stderr)
    return True


def latency(h):
    """One Celery task at a time: send_task(...).get(), each timed."""
    if _skipped(h, "latency"):
        return []
    n = h.n(300)

    def one_round(t):
        clock, lat = time.perf_counter_ns, []
        for _ in range(n):
            t0 = clock()
            t.app.send_task("bench.noop", queue=t.queue).get(timeout=60)
            lat.append(clock() - t0)
        return {"median": median(lat) / 1e3, "p99": p99(lat) / 1e3}

    with _cluster() as (d, url, app):
        res = h.compare(_pools(d, url, app), one_round)
    return [res.row("send_task().get() latency, %s" % m, "us", m,
                    higher_is_better=False, baseline="prefork")
            for m in ("median", "p99")]


def throughput(h):
    """n tasks sent, then every result collected."""
    if _skipped(h, "throughput"):
        return []
    n = h.n(2000)

    def one_round(t):
        t0 = time.perf_counter()
        rs = [t.app.send_task("bench.noop", (i,), queue=t.queue)
              for i in range(n)]
        for r in rs:
            r.get(timeout=120)
        return n / (time.perf_counter() - t0)

    with _cluster() as (d, url, app):
        res = h.compare(_pools(d, url, app), one_round)
    return [res.row("%d send_task() then get()" % n, "tasks/s",
                    baseline="prefork")]


def executor(h):
    """CeleryExecutor: n submit()s, then every result."""
    if _skipped(h, "executor"):
        return []
    n = h.n(2000)
    from piston.celery import CeleryExecutor

    def one_round(t):
        t0 = time.perf_counter()
        with CeleryExecutor(t.app, t.queue, key=_KEY) as ex:
            # A builtin: workers import it wherever piston.benchmarks
            # is not installed (a source checkout).
            fs = [ex.submit(abs, i) for i in range(n)]
            for f in fs:
                f.result(timeout=120)
        return n / (time.perf_counter() - t0)

    with _cluster() as (d, url, app):
        res = h.compare(_pools(d, url, app), one_round)
    return [res.row("CeleryExecutor: %d submit() then result()" % n,
                    "tasks/s", baseline="prefork")]


CASES = [
    ("send_task().get() latency", latency),
    ("send_task() throughput", throughput),
    ("CeleryExecutor throughput", executor),
]
