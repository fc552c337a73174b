"""piston.celery against real components: a redis-server, `celery worker`
subprocesses (prefork and piston.celery:TaskPool), CeleryExecutor in the
test process."""
import asyncio
import base64
import concurrent.futures as cf
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest

if os.environ.get("PISTON_REQUIRE_REDIS") == "1":
    # CI installs both: a missing one must fail the run, not skip it.
    import celery  # noqa: F401
    import redis  # noqa: F401
pytest.importorskip("celery", reason="piston.celery needs celery: "
                    "pip install 'celery[redis]' redis")
pytest.importorskip("redis", reason="piston.celery tests need redis-py")

import piston  # noqa: E402
import piston.celery  # noqa: E402
from piston.celery import (  # noqa: E402
    CeleryExecutor, PayloadRejected, RemoteTraceback, _signing)

import celery_funcs as F  # noqa: E402
from celery_fixtures import (  # noqa: E402,F401 - fixtures
    app, make_worker, pools, redis_url, worker)
from celery_key import TEST_KEY as KEY  # noqa: E402

T = 60   # the longest any single wait in these tests may take


@pytest.fixture
def ex(app, worker):
    e = CeleryExecutor(app, worker.queue)
    yield e
    e.shutdown(wait=True, cancel_futures=True)


def _wait_for(pred, timeout=T, what="condition"):
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            pytest.fail("timed out after %ss waiting for %s"
                        % (timeout, what))
        time.sleep(0.05)


def _read_pid(path, timeout=T):
    _wait_for(lambda: os.path.exists(path), timeout, "the task to start")
    with open(path) as f:
        return int(f.read())


# ------------------------------------------------ signing, no broker needed

def test_sign_verify_roundtrip_and_tamper():
    key = _signing.get_key(KEY)
    data, sig = _signing.sign(key, b"task", "id1", b"payload")
    assert _signing.verify(key, b"task", "id1", data, sig) == b"payload"
    bad = base64.b64encode(b"payloaX").decode()
    for args in [("id1", bad, sig), ("id2", data, sig),
                 ("id1", data, sig[:-1] + ("0" if sig[-1] != "0" else "1")),
                 ("id1", data, None), ("id1", data, ""),
                 ("id1", None, sig), ("id1", "!!!not base64", sig)]:
        with pytest.raises(PayloadRejected):
            _signing.verify(key, b"task", *args)
    # A task signature is not a result signature.
    with pytest.raises(PayloadRejected):
        _signing.verify(key, b"result", "id1", data, sig)
    # Another key does not verify.
    with pytest.raises(PayloadRejected):
        _signing.verify(b"x" * 32, b"task", "id1", data, sig)
    with pytest.raises(PayloadRejected):
        _signing.verify(None, b"task", "id1", data, sig)


def test_key_required(monkeypatch, app):
    monkeypatch.delenv("PISTON_CELERY_KEY", raising=False)
    with pytest.raises(ValueError, match="PISTON_CELERY_KEY"):
        CeleryExecutor(app)
    with pytest.raises(ValueError, match="at least 16"):
        CeleryExecutor(app, key="short")
    with pytest.raises(TypeError):
        CeleryExecutor(app, key=12345678901234567890)


def test_refuses_pickle_results(redis_url):
    from celery import Celery
    a = Celery("p", broker=redis_url, backend=redis_url)
    a.conf.result_serializer = "pickle"
    with pytest.raises(ValueError, match="pickle"):
        CeleryExecutor(a, key=KEY)


def test_import_without_celery():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'celery' or name.startswith('celery.'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import piston\n"
        "try:\n"
        "    import piston.celery\n"
        "except ImportError as e:\n"
        "    print('IMPORTERROR', e)\n")
    env = dict(os.environ,
               PYTHONPATH=os.path.dirname(os.path.dirname(piston.__file__)))
    out = subprocess.run([sys.executable, "-c", code], env=env, text=True,
                         capture_output=True, timeout=T)
    assert out.returncode == 0, out.stderr
    assert "IMPORTERROR" in out.stdout and "piston[celery]" in out.stdout


# ------------------------------------------------ the executor on a worker

def test_submit_results(ex):
    f = ex.submit(F.add, 1, 2, c=4)
    assert isinstance(f, piston.Future)
    assert isinstance(f, cf.Future)
    assert f.result(timeout=T) == 7
    fs = [ex.submit(F.square, i) for i in range(50)]
    assert [f.result(timeout=T) for f in fs] == [i * i for i in range(50)]
    # Builtins and bound methods travel by reference too.
    assert ex.submit(sorted, [3, 1, 2]).result(timeout=T) == [1, 2, 3]


def test_remote_exception_with_traceback(ex):
    f = ex.submit(F.fail, "boom from the worker")
    with pytest.raises(ValueError, match="boom from the worker") as ei:
        f.result(timeout=T)
    cause = ei.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "celery_funcs.py" in str(cause) and "in fail" in str(cause)
    assert isinstance(f.exception(timeout=T), ValueError)


def test_unpicklable_argument_raises_at_submit(ex):
    import threading
    with pytest.raises((TypeError, pickle.PicklingError)):
        ex.submit(F.square, threading.Lock())
    with pytest.raises(TypeError):
        ex.submit(42)
    assert ex.submit(F.square, 3).result(timeout=T) == 9


def test_map_10k(ex):
    n = 10_000
    assert list(ex.map(F.square, range(n))) == [i * i for i in range(n)]
    assert list(ex.map(F.add, range(100), range(100), chunksize=7)) == \
        [2 * i for i in range(100)]
    with pytest.raises(ValueError):
        list(ex.map(F.fail, ["x"]))


def test_wait_as_completed_wrap_future(ex):
    fs = [ex.submit(F.square, i) for i in range(20)]
    done, not_done = cf.wait(fs, timeout=T)
    assert not not_done and len(done) == 20
    fs = [ex.submit(F.sleep_then, 0.01 * i, i) for i in range(10)]
    got = sorted(f.result() for f in cf.as_completed(fs, timeout=T))
    assert got == list(range(10))
    fs = [ex.submit(F.square, 5), ex.submit(F.fail, "x")]
    done, _ = cf.wait(fs, timeout=T, return_when=cf.FIRST_EXCEPTION)
    assert fs[1] in done

    async def main():
        a = await asyncio.wait_for(asyncio.wrap_future(ex.submit(F.add, 2,
                                                                 3)), T)
        loop = asyncio.get_running_loop()
        b = await asyncio.wait_for(
            loop.run_in_executor(ex, F.square, 6), T)
        return a, b

    assert asyncio.run(main()) == (5, 36)


def test_running_state_and_submit_after_shutdown(app, worker):
    e = CeleryExecutor(app, worker.queue)
    f = e.submit(F.sleep_then, 1.0, "done")
    _wait_for(lambda: f.running() or f.done(), what="STARTED state")
    assert f.result(timeout=T) == "done"
    e.shutdown()
    with pytest.raises(RuntimeError):
        e.submit(F.square, 1)


def test_time_limits(app, worker):
    from celery.exceptions import TimeLimitExceeded
    with CeleryExecutor(app, worker.queue, time_limit=1.0) as e:
        f = e.submit(F.sleep_then, 30)
        with pytest.raises(TimeLimitExceeded):
            f.result(timeout=T)
        assert e.submit(F.square, 4).result(timeout=T) == 16
    with CeleryExecutor(app, worker.queue, soft_time_limit=0.5,
                        time_limit=20) as e:
        assert e.submit(F.soft_limited, 10).result(timeout=T) == \
            "soft limit caught"


def test_result_timeout(app, redis_url):
    # No worker consumes this queue: the future must not wait forever.
    with CeleryExecutor(app, "nobody-listens", result_timeout=1.0) as e:
        f = e.submit(F.square, 2)
        with pytest.raises(piston.TaskTimeoutError):
            f.result(timeout=T)


def test_shutdown_cancel_futures_revokes(app, make_worker, tmp_path):
    w = make_worker(concurrency=1).start()
    e = CeleryExecutor(app, w.queue)
    first = e.submit(F.sleep_then, 1.5, "first")
    _wait_for(lambda: first.running() or first.done(), what="first task")
    marks = [str(tmp_path / ("m%d" % i)) for i in range(4)]
    rest = [e.submit(F.touch, m) for m in marks]
    e.shutdown(wait=True, cancel_futures=True)
    assert first.result(timeout=0) == "first"
    assert all(f.cancelled() for f in rest)
    # Cancelled futures count as done for wait() and as_completed().
    done, not_done = cf.wait(rest, timeout=5)
    assert len(done) == 4 and not not_done
    assert len(list(cf.as_completed(rest, timeout=5))) == 4
    time.sleep(2.5)   # time for the worker to (not) run them
    assert not any(os.path.exists(m) for m in marks)


def test_cancelled_future_is_revoked(app, make_worker, tmp_path):
    w = make_worker(concurrency=1).start()
    with CeleryExecutor(app, w.queue) as e:
        first = e.submit(F.sleep_then, 1.5)
        _wait_for(lambda: first.running() or first.done())
        mark = str(tmp_path / "cancelled")
        f = e.submit(F.touch, mark)
        assert f.cancel()
        ok = e.submit(F.square, 3)
        assert ok.result(timeout=T) == 9
    assert not os.path.exists(mark)


# ------------------------------------------------ crashes


def test_child_killed_mid_task(app, worker, tmp_path):
    from celery.exceptions import WorkerLostError
    pidfile = str(tmp_path / "pid")
    with CeleryExecutor(app, worker.queue) as e:
        f = e.submit(F.sleep_then, 30, "never", pidfile)
        pid = _read_pid(pidfile)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(WorkerLostError):
            f.result(timeout=T)
        # The pool healed: other tasks still run.
        assert [x for x in e.map(F.square, range(10))] == \
            [i * i for i in range(10)]
        assert e.submit(F.square, 5).result(timeout=T) == 25


def test_child_exits_mid_task(app, worker):
    from celery.exceptions import WorkerLostError
    with CeleryExecutor(app, worker.queue) as e:
        with pytest.raises(WorkerLostError):
            e.submit(F.die, 3).result(timeout=T)
        assert e.submit(F.square, 6).result(timeout=T) == 36


@pytest.mark.parametrize("pool", pools())
def test_whole_worker_killed_and_restarted(app, make_worker, tmp_path,
                                           pool):
    env = {"PISTON_TEST_VISIBILITY": "3"}
    queue = "restart-" + os.urandom(4).hex()
    w1 = make_worker(queue, pool=pool, concurrency=1, env=env).start()
    pidfile = str(tmp_path / "pid")
    with CeleryExecutor(app, queue) as e:
        f = e.submit(F.sleep_then, 1.0, "after restart", pidfile)
        _read_pid(pidfile)
        w1.kill(signal.SIGKILL)
        w1.proc.wait(T)
        os.unlink(pidfile)
        assert not f.done()
        w2 = make_worker(queue, pool=pool, concurrency=1, env=env).start()
        # acks_late: the unacknowledged message comes back once the
        # visibility timeout passed and the new worker runs it.
        assert f.result(timeout=T) == "after restart"
        assert e.submit(F.square, 7).result(timeout=T) == 49
        w2.stop()


# ------------------------------------------------ forged payloads


def _send_raw(app, queue, args):
    return app.send_task(piston.celery.TASK_NAME, args=args, queue=queue,
                         serializer="json")


def _assert_rejected(res, worker):
    from celery.exceptions import TimeoutError as CeleryTimeout
    try:
        res.get(timeout=T, propagate=False)
    except CeleryTimeout:
        pytest.fail("rejected task never completed:\n" + worker.text())
    assert res.state == "FAILURE"
    assert isinstance(res.result, PayloadRejected), res.result
    res.forget()


def test_forged_and_unsigned_payloads_not_unpickled(app, worker, tmp_path):
    marker = str(tmp_path / "unpickled")
    payload = pickle.dumps((F.square, (F.Marker(marker),), {}))
    data = base64.b64encode(payload).decode()
    # Unsigned, wrongly signed, signed with another key, no arguments.
    other = _signing.sign(b"another key, 32 bytes long......", b"task",
                          "whatever", payload)[1]
    for args in [(data,), (data, None), (data, "00" * 32), (data, other),
                 ()]:
        _assert_rejected(_send_raw(app, worker.queue, args), worker)
    assert not os.path.exists(marker), "a forged payload was unpickled"
    assert "rejected task" in worker.text()
    # The executor with a wrong key: its tasks fail, nothing is unpickled.
    with CeleryExecutor(app, worker.queue, key="a wrong key, long enough") \
            as e:
        with pytest.raises(PayloadRejected):
            e.submit(F.square, F.Marker(marker)).result(timeout=T)
    assert not os.path.exists(marker), "a forged payload was unpickled"
    # Control: with the right key the same payload *is* unpickled, so the
    # absence of the marker above really means "not unpickled".
    with CeleryExecutor(app, worker.queue) as e:
        with pytest.raises(TypeError):
            e.submit(F.square, F.Marker(marker)).result(timeout=T)
    assert os.path.exists(marker)


def test_forged_result_rejected(app, worker):
    # A result written to the backend by someone without the key.
    with CeleryExecutor(app, "nobody-listens-either") as e:
        f = e.submit(F.square, 3)
        task_id = next(iter(e._collector.pending))
        evil = base64.b64encode(pickle.dumps(42)).decode()
        app.backend.store_result(task_id, {"piston": 1, "data": evil,
                                           "sig": "00" * 32}, "SUCCESS")
        with pytest.raises(PayloadRejected):
            f.result(timeout=T)


# ------------------------------------------------ TaskPool (-P custom)

def _inspect(app, w, what, timeout=5.0, tries=6):
    """One worker's reply to `celery inspect <what>` (retried: a busy
    worker may miss a broadcast window)."""
    for _ in range(tries):
        reply = getattr(app.control.inspect([w.name], timeout=timeout),
                        what)()
        if reply and w.name in reply:
            return reply[w.name]
    pytest.fail("no %s reply from %s:\n%s" % (what, w.name, w.text()))


@pytest.fixture
def custom_worker(make_worker):
    if "custom" not in pools():
        pytest.skip("piston.ProcessPoolExecutor is not available")

    def make(**kw):
        return make_worker(pool="custom", **kw).start()
    return make


def test_taskpool_plain_tasks_and_inspect(app, custom_worker, tmp_path):
    w = custom_worker(concurrency=3)
    r = app.send_task("t.add", (2, 3), queue=w.queue)
    assert r.get(timeout=T) == 5
    pids = {app.send_task("t.pid", queue=w.queue).get(timeout=T)
            for _ in range(12)}
    assert w.proc.pid not in pids          # ran in pool children
    stats = _inspect(app, w, "stats")
    pool = stats["pool"]
    assert pool["implementation"] == "piston.celery._pool:TaskPool"
    assert pool["max-concurrency"] == 3
    assert 1 <= len(pool["processes"]) <= 3   # children start on demand
    assert pids <= set(pool["processes"])
    # --concurrency 3: three tasks run at once, in three children.
    files = [str(tmp_path / ("p%d" % i)) for i in range(3)]
    rs = [app.send_task("t.sleep", (3.0, i, f), queue=w.queue)
          for i, f in enumerate(files)]
    running = {_read_pid(f) for f in files}
    assert len(running) == 3
    assert not any(r.ready() for r in rs)
    assert [r.get(timeout=T) for r in rs] == [0, 1, 2]
    assert len(_inspect(app, w, "stats")["pool"]["processes"]) == 3
    assert app.control.ping([w.name], timeout=5)
    # A running task shows in `inspect active`.
    r = app.send_task("t.sleep", (1.5, "slept"), queue=w.queue)
    # (Earlier tasks leave the list once the worker handled their
    # completion, a moment after their result is stored.)
    _wait_for(lambda: [t["id"] for t in _inspect(app, w, "active")]
              == [r.id], what="exactly the sleeping task to be active")
    # Accepted when a child started it, with that child's pid.
    _wait_for(lambda: _inspect(app, w, "active")[0]["worker_pid"]
              in _inspect(app, w, "stats")["pool"]["processes"],
              what="the active task's child pid")
    assert r.get(timeout=T) == "slept"


def test_taskpool_max_tasks_per_child(app, custom_worker):
    w = custom_worker(concurrency=1, extra=("--max-tasks-per-child", "2"))
    pids = [app.send_task("t.pid", queue=w.queue).get(timeout=T)
            for _ in range(6)]
    # Two tasks per child, then a fresh child.
    assert pids[0] == pids[1] and pids[2] == pids[3] and pids[4] == pids[5]
    assert len(set(pids)) == 3
    assert _inspect(app, w, "stats")["pool"]["max-tasks-per-child"] == 2


def test_taskpool_time_limits(app, custom_worker):
    from celery.exceptions import TimeLimitExceeded
    w = custom_worker(concurrency=2)
    r = app.send_task("t.sleep", (30,), queue=w.queue, time_limit=1.0)
    with pytest.raises(TimeLimitExceeded):
        r.get(timeout=T)
    # The soft limit (task option 0.5 s) raises inside the task.
    assert app.send_task("t.soft", (10,), queue=w.queue).get(timeout=T) \
        == "soft limit caught"
    # The worker-wide limit applies when the task sets none.
    w2 = custom_worker(concurrency=1, extra=("--time-limit", "1"))
    with pytest.raises(TimeLimitExceeded):
        app.send_task("t.sleep", (30,), queue=w2.queue).get(timeout=T)
    assert app.send_task("t.add", (1, 1), queue=w2.queue).get(timeout=T) \
        == 2


def test_taskpool_child_killed(app, custom_worker, tmp_path):
    from celery.exceptions import WorkerLostError
    w = custom_worker(concurrency=2)
    pidfile = str(tmp_path / "pid")
    r = app.send_task("t.sleep", (30, None, pidfile), queue=w.queue)
    other = app.send_task("t.sleep", (1.0, "other"), queue=w.queue)
    os.kill(_read_pid(pidfile), signal.SIGKILL)
    with pytest.raises(WorkerLostError):
        r.get(timeout=T)
    assert other.get(timeout=T) == "other"   # only its own task failed
    # Healed: both slots run tasks again.
    rs = [app.send_task("t.add", (i, i), queue=w.queue) for i in range(20)]
    assert [x.get(timeout=T) for x in rs] == [2 * i for i in range(20)]
    _wait_for(lambda: len(_inspect(app, w, "stats")["pool"]["processes"])
              == 2, what="a replacement child")


def test_taskpool_revoke_terminate(app, custom_worker, tmp_path):
    w = custom_worker(concurrency=1)
    pidfile = str(tmp_path / "pid")
    r = app.send_task("t.sleep", (30, None, pidfile), queue=w.queue)
    pid = _read_pid(pidfile)
    _wait_for(lambda: [t["id"] for t in _inspect(app, w, "active")]
              == [r.id], what="the task to be active")
    app.control.revoke(r.id, terminate=True, signal="SIGKILL")
    _wait_for(lambda: r.state == "REVOKED", what="REVOKED state")
    _wait_for(lambda: not os.path.exists("/proc/%d" % pid)
              or open("/proc/%d/stat" % pid).read().split()[2] == "Z",
              what="the child to die")
    assert app.send_task("t.add", (4, 4), queue=w.queue).get(timeout=T) == 8
    _wait_for(lambda: _inspect(app, w, "active") == [],
              what="no active task")


def test_taskpool_warm_shutdown_finishes_tasks(app, custom_worker, tmp_path):
    w = custom_worker(concurrency=1)
    pidfile = str(tmp_path / "pid")
    r = app.send_task("t.sleep", (1.5, "finished", pidfile), queue=w.queue)
    _read_pid(pidfile)
    w.proc.send_signal(signal.SIGTERM)      # warm shutdown
    w.proc.wait(T)
    assert r.get(timeout=T) == "finished"


def test_taskpool_pool_restart(app, custom_worker):
    w = custom_worker(concurrency=1)
    before = app.send_task("t.pid", queue=w.queue).get(timeout=T)
    reply = app.control.pool_restart(destination=[w.name], reply=True,
                                     timeout=10)
    assert reply and "ok" in reply[0][w.name], reply
    _wait_for(lambda: app.send_task("t.pid", queue=w.queue).get(timeout=T)
              != before, what="a task in a new child")
