"""piston.ProcessPoolExecutor failure behaviour (piston only): dead workers,
timeouts, cancelling running tasks, unpicklables, a dying parent, Ctrl-C,
worker recycling, big arrays, and a soak with flat memory and fds."""
import ctypes
import hashlib
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from conftest import piston_pythonpath, require_piston

piston = require_piston()

SOAK = os.environ.get("PISTON_SOAK") == "1"


# ---- task functions ---------------------------------------------------------

def square(x):
    return x * x


def sleep_and_pid(t):
    time.sleep(t)
    return os.getpid()


def pid_of_worker(_=None):
    return os.getpid()


def exit_now(code):
    os._exit(code)


def segfault():
    ctypes.string_at(0)


def touch_then_sleep(path, t):
    with open(path, "w"):
        pass
    time.sleep(t)
    return "ran"


def checksum(a):
    return hashlib.sha256(memoryview(a).cast("B")).hexdigest()


def make_array(nbytes, seed):
    import numpy as np
    return np.random.default_rng(seed).integers(0, 255, nbytes,
                                                dtype=np.uint8)


class Unpicklable(Exception):
    def __init__(self, msg):
        super().__init__(msg)
        self.lock = threading.Lock()


def raise_unpicklable():
    raise Unpicklable("has a lock")


def identity(x):
    return x


# ---- helpers ----------------------------------------------------------------

@pytest.fixture
def pool():
    pools = []

    def make(*args, **kwargs):
        ex = piston.ProcessPoolExecutor(*args, **kwargs)
        pools.append(ex)
        return ex

    yield make
    for ex in pools:
        ex.shutdown(wait=True, cancel_futures=True)


def wait_workers(ex, n, timeout=30):
    end = time.monotonic() + timeout
    while len(ex._worker_pids()) < n:
        assert time.monotonic() < end, "workers did not start"
        time.sleep(0.01)
    return ex._worker_pids()


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def assert_all_exit(pids, timeout=10):
    end = time.monotonic() + timeout
    while any(alive(x) for x in pids):
        assert time.monotonic() < end, "left running: %r" % [
            x for x in pids if alive(x)]
        time.sleep(0.05)


def fd_count():
    return len(os.listdir("/proc/self/fd"))


def rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def shm_entries():
    try:
        return set(os.listdir("/dev/shm"))
    except OSError:
        return set()


def run_script(body, timeout=60, **popen):
    env = dict(os.environ)
    env["PYTHONPATH"] = piston_pythonpath() + os.pathsep + os.path.dirname(
        os.path.abspath(__file__))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(body)],
                            env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def run_clean(body, timeout=120):
    """Runs `body` in a fresh interpreter; its stdout, once it exited 0
    without a traceback on stderr."""
    p = run_script(body)
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, (out, err)
    assert "Traceback" not in err, err
    return out


# ---- dead workers -------------------------------------------------------------

def test_kill9_mid_task_fails_only_that_task(pool):
    ex = pool(2)
    fs = [ex.submit(sleep_and_pid, 0.4) for _ in range(6)]
    pids = wait_workers(ex, 2)
    time.sleep(0.15)
    victim = pids[0]
    os.kill(victim, signal.SIGKILL)
    errors, results = [], []
    for f in fs:
        try:
            results.append(f.result(timeout=60))
        except piston.WorkerCrashedError as e:
            errors.append(e)
    assert len(errors) == 1, errors
    msg = str(errors[0])
    assert str(victim) in msg and "SIGKILL" in msg
    assert isinstance(errors[0], piston.BrokenProcessPool)
    import concurrent.futures.process as cfp
    assert isinstance(errors[0], cfp.BrokenProcessPool)
    assert len(results) == 5
    # The pool healed: a replacement runs later work.
    assert [f.result(timeout=30) for f in
            [ex.submit(square, i) for i in range(20)]] == [
                i * i for i in range(20)]
    assert victim not in ex._worker_pids()


# Under AddressSanitizer the segfault is caught by ASan, which then exits 1,
# or aborts (SIGABRT) when ASAN_OPTIONS has abort_on_error=1 as in CI.
_SEGV = ("SIGSEGV|SIGABRT|exit code 1"
         if "asan" in os.environ.get("LD_PRELOAD", "") else "SIGSEGV")


@pytest.mark.parametrize("fn,args,needle", [
    (exit_now, (3,), "exit code 3"),
    (segfault, (), _SEGV),
])
def test_worker_death_reports_cause(pool, fn, args, needle):
    ex = pool(2)
    ok = ex.submit(sleep_and_pid, 0.3)
    f = ex.submit(fn, *args)
    with pytest.raises(piston.WorkerCrashedError, match=needle) as info:
        f.result(timeout=30)
    assert ok.result(timeout=30) > 0
    assert ex.submit(square, 5).result(timeout=30) == 25
    if fn is segfault:
        _consume_own_asan_report(str(info.value))


def _consume_own_asan_report(message):
    """Under the CI's ASan job every sanitizer report fails the run; the
    deliberate segfault's report is this test's own evidence, so it checks
    that report is that SEGV and removes it (any other report stays)."""
    opts = dict(kv.split("=", 1) for kv in
                os.environ.get("ASAN_OPTIONS", "").split(":") if "=" in kv)
    m = re.search(r"worker process (\d+)", message)
    if "log_path" not in opts or m is None:
        return
    path = "%s.%s" % (opts["log_path"], m.group(1))
    deadline = time.monotonic() + 10
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    if os.path.exists(path):
        with open(path) as fh:
            report = fh.read()
        assert "SEGV" in report and "string_at" in report, report
        os.unlink(path)


def test_fork_server_killed_breaks_pool_clearly(pool):
    ex = pool(2)
    assert ex.submit(square, 3).result(timeout=30) == 9
    running = ex.submit(sleep_and_pid, 10)
    time.sleep(0.2)
    os.kill(ex._server.pid, signal.SIGKILL)
    with pytest.raises(piston.BrokenProcessPool) as info:
        running.result(timeout=30)
    assert "replacement" not in str(info.value)
    with pytest.raises(piston.BrokenProcessPool, match="fork server"):
        ex.submit(square, 2)


def test_repeated_crashes_heal(pool):
    ex = pool(2)
    for _ in range(5):
        with pytest.raises(piston.WorkerCrashedError):
            ex.submit(exit_now, 1).result(timeout=30)
    assert ex.submit(square, 6).result(timeout=30) == 36


# ---- timeouts and cancel --------------------------------------------------------

def test_task_timeout_executor_wide(pool):
    ex = pool(2, task_timeout=0.3)
    slow = ex.submit(sleep_and_pid, 10)
    fast = ex.submit(square, 3)
    t0 = time.monotonic()
    with pytest.raises(piston.TaskTimeoutError) as info:
        slow.result(timeout=30)
    assert time.monotonic() - t0 < 5
    assert isinstance(info.value, TimeoutError)
    assert "0.3" in str(info.value)
    assert fast.result(timeout=30) == 9
    assert ex.submit(square, 4).result(timeout=30) == 16


def test_submit_with_timeout(pool):
    ex = pool(1)
    f = ex.submit_with_timeout(0.2, sleep_and_pid, 10)
    with pytest.raises(piston.TaskTimeoutError):
        f.result(timeout=30)
    # Without a timeout the same task is fine.
    assert ex.submit_with_timeout(5, sleep_and_pid, 0.05).result(
        timeout=30) > 0
    assert ex.submit(sleep_and_pid, 0.4).result(timeout=30) > 0


def test_cancel_running_kills_and_replaces(pool, tmp_path):
    ex = pool(1, cancel_running=True)
    marker = tmp_path / "started"
    f = ex.submit(touch_then_sleep, str(marker), 30)
    end = time.monotonic() + 30
    while not marker.exists():
        assert time.monotonic() < end
        time.sleep(0.01)
    pid = ex._worker_pids()[0]
    assert f.cancel() is True
    assert f.cancelled()
    end = time.monotonic() + 10
    while alive(pid):
        assert time.monotonic() < end, "running task's worker not killed"
        time.sleep(0.01)
    assert ex.submit(square, 7).result(timeout=30) == 49


def test_cancel_queued_never_runs(pool, tmp_path):
    ex = pool(1, cancel_running=True)
    first = ex.submit(sleep_and_pid, 0.5)
    queued = [ex.submit(touch_then_sleep, str(tmp_path / ("q%d" % i)), 0)
              for i in range(3)]
    assert all(f.cancel() for f in queued)
    assert first.result(timeout=30) > 0
    assert ex.submit(square, 2).result(timeout=30) == 4
    assert not any((tmp_path / ("q%d" % i)).exists() for i in range(3))


def test_cancel_without_option_keeps_stdlib_semantics(pool):
    ex = pool(1)
    running = ex.submit(sleep_and_pid, 0.5)
    time.sleep(0.2)
    assert running.cancel() is False
    assert running.result(timeout=30) > 0


# ---- unpicklables -----------------------------------------------------------------

def test_unpicklable_arg_raises_at_submit(pool):
    ex = pool(1)
    with pytest.raises(TypeError):
        ex.submit(square, threading.Lock())
    assert ex.submit(square, 3).result(timeout=30) == 9


def test_unpicklable_result_and_exception(pool):
    ex = pool(1)
    with pytest.raises(piston.PistonError, match="result could not be"):
        ex.submit(threading.Lock).result(timeout=30)
    with pytest.raises(piston.PistonError, match="exception could not be"):
        ex.submit(raise_unpicklable).result(timeout=30)
    assert ex.submit(square, 3).result(timeout=30) == 9


class FailsToUnpickle:
    def __getstate__(self):
        return {"a": 1}

    def __setstate__(self, state):
        raise RuntimeError("cannot unpickle me")


def test_argument_failing_to_unpickle_in_worker(pool):
    ex = pool(1)
    with pytest.raises(RuntimeError, match="cannot unpickle me"):
        ex.submit(identity, FailsToUnpickle()).result(timeout=30)
    assert ex.submit(square, 3).result(timeout=30) == 9


def test_lambda_with_cloudpickle(pool):
    pytest.importorskip("cloudpickle")
    ex = pool(1)
    k = 5
    assert ex.submit(lambda x: x + k, 1).result(timeout=30) == 6


# ---- lifecycle ---------------------------------------------------------------------

def test_failing_initializer_reports_cause(pool):
    ex = pool(1, initializer=_bad_init)
    with pytest.raises(piston.BrokenProcessPool, match="cannot init"):
        ex.submit(square, 1).result(timeout=30)
    with pytest.raises(piston.BrokenProcessPool):
        ex.submit(square, 1)


def _bad_init():
    raise RuntimeError("cannot init")


def test_max_tasks_per_child_recycles(pool):
    ex = pool(1, max_tasks_per_child=2)
    pids = [ex.submit(pid_of_worker).result(timeout=30) for _ in range(6)]
    assert len(set(pids)) == 3
    assert pids[0] == pids[1] and pids[2] == pids[3]


def test_terminate_and_kill_workers(pool):
    for how in ("terminate_workers", "kill_workers"):
        ex = pool(2)
        fs = [ex.submit(sleep_and_pid, 30) for _ in range(2)]
        pids = wait_workers(ex, 2)
        time.sleep(0.1)
        getattr(ex, how)()
        for f in fs:
            with pytest.raises(piston.BrokenProcessPool):
                f.result(timeout=30)
        assert not any(alive(p) for p in pids)
        with pytest.raises(RuntimeError):
            ex.submit(square, 1)


@pytest.mark.parametrize("ctx", ["fork", "spawn", "forkserver"])
def test_mp_context(pool, ctx):
    import multiprocessing
    ex = pool(1, mp_context=multiprocessing.get_context(ctx))
    assert ex.submit(square, 9).result(timeout=60) == 81


def test_fork_child_cannot_use_parent_pool(pool):
    ex = pool(1)
    assert ex.submit(square, 2).result(timeout=30) == 4
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            ex.submit(square, 2)
            code = 1
        except RuntimeError:
            code = 0
        except BaseException:
            code = 2
        os._exit(code)
    os.close(r)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_map_auto_chunks_and_progress(pool, capsys):
    ex = pool(2)
    got = list(ex.map(square, range(1000), chunksize=None, progress=True))
    assert got == [i * i for i in range(1000)]
    err = capsys.readouterr().err
    assert "1000" in err


def test_parent_killed_leaves_no_orphans(tmp_path):
    before = shm_entries()
    p = run_script("""
        import os, sys, time, signal
        import piston
        from test_process_pool_faults import sleep_and_pid
        ex = piston.ProcessPoolExecutor(2)
        fs = [ex.submit(sleep_and_pid, 30) for _ in range(4)]
        while len(ex._worker_pids()) < 2:
            time.sleep(0.01)
        print(ex._server.pid, *ex._worker_pids(), flush=True)
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    out, err = p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL, err
    pids = [int(x) for x in out.split()]
    assert len(pids) == 3
    assert_all_exit(pids)
    assert shm_entries() - before == set()


def test_exit_without_shutdown_runs_pending_work():
    p = run_script("""
        import gc, piston
        from test_process_pool_faults import sleep_and_pid
        ex = piston.ProcessPoolExecutor(2)
        fs = [ex.submit(sleep_and_pid, 0.2) for _ in range(3)]
        fs[0].add_done_callback(lambda f: print("done", flush=True))
        dropped = piston.ProcessPoolExecutor(1)
        dropped.submit(sleep_and_pid, 0.2).add_done_callback(
            lambda f: print("dropped done", flush=True))
        del dropped
        gc.collect()
        print("exiting", flush=True)
    """)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert out.split() == ["exiting", "done", "dropped", "done"] or sorted(
        out.split()) == sorted(["exiting", "done", "dropped", "done"]), out
    assert "Traceback" not in err, err


def test_ctrl_c_in_parent_exits_cleanly():
    p = run_script("""
        import signal, time
        signal.signal(signal.SIGINT, signal.default_int_handler)
        import piston
        from test_process_pool_faults import sleep_and_pid
        with piston.ProcessPoolExecutor(2) as ex:
            fs = [ex.submit(sleep_and_pid, 0.5) for _ in range(4)]
            print("ready", flush=True)
            fs[-1].result()
            time.sleep(60)
    """, start_new_session=True)
    assert p.stdout.readline().strip() == "ready"
    time.sleep(0.7)
    # Ctrl-C goes to the whole foreground process group.
    os.killpg(p.pid, signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode != 0
    assert err.count("Traceback") == 1, err
    assert "KeyboardInterrupt" in err


# ---- data ------------------------------------------------------------------------

@pytest.mark.parametrize("mib", [1, 16, 128])
def test_numpy_arrays_checksums(pool, mib):
    np = pytest.importorskip("numpy")
    ex = pool(2)
    a = make_array(mib << 20, mib)
    assert ex.submit(checksum, a).result(timeout=60) == checksum(a)
    # And back: a big result arrives intact.
    b = ex.submit(make_array, mib << 20, mib).result(timeout=60)
    assert isinstance(b, np.ndarray) and b.nbytes == mib << 20
    assert checksum(b) == checksum(a)
    c = ex.submit(identity, a[::2]).result(timeout=60)   # non-contiguous
    assert np.array_equal(c, a[::2])


def test_too_big_for_the_arenas(pool):
    np = pytest.importorskip("numpy")
    ex = pool(1, arena_size=1 << 20, result_arena_size=1 << 20)
    with pytest.raises(ValueError, match="arena"):
        ex.submit(checksum, np.ones(2 << 20, dtype=np.uint8))
    with pytest.raises(piston.PistonError, match="result arena"):
        ex.submit(make_array, 2 << 20, 1).result(timeout=30)
    a = make_array(256 << 10, 3)
    assert ex.submit(checksum, a).result(timeout=30) == checksum(a)


def test_arena_fragmented_by_mixed_sizes(pool):
    np = pytest.importorskip("numpy")
    ex = pool(1, arena_size=8 << 20)
    for mib in (1, 2, 3, 5, 6, 1, 6, 4):
        a = np.ones(mib << 20, dtype=np.uint8)
        assert ex.submit(len, a).result(timeout=30) == a.nbytes


def test_arena_reused_over_many_big_tasks(pool):
    np = pytest.importorskip("numpy")
    ex = pool(2)
    a = np.ones(4 << 20, dtype=np.uint8)
    for _ in range(3):
        assert ex.submit(checksum, a).result(timeout=60) == checksum(a)
    high = ex._stats()["arena_high"]
    for _ in range(50):
        assert ex.submit(checksum, a).result(timeout=60) == checksum(a)
    assert ex._stats()["arena_high"] <= high + (5 << 20)


def test_soak_flat_rss_and_fds(pool):
    n = 1_000_000 if SOAK else 100_000
    ex = pool(2)
    batch = 10_000
    rss = []
    fds = []
    blocks = []
    for i in range(0, n, batch):
        fs = [ex.submit(square, j) for j in range(batch)]
        assert fs[-1].result(timeout=120) == (batch - 1) ** 2
        for f in fs:
            f.result(timeout=120)
        del fs
        rss.append(rss_kib())
        fds.append(fd_count())
        blocks.append(sys.getallocatedblocks())
    assert max(fds) == min(fds[1:] or fds)
    # No Python objects leak per task (a leak of one object per task would
    # be 10k blocks per batch).
    assert blocks[-1] - blocks[1] < 2000, blocks
    # Flat: the second half grows by less than 16 MiB over the first.
    half = len(rss) // 2
    assert max(rss[half:]) - max(rss[:half]) < 16 * 1024, rss


# ---- the first worker, forked by the executor itself ---------------------------
# (in a fresh single-threaded process: the test runner may have threads of
# its own, e.g. faulthandler's watchdog, and then the pool never forks)

def test_first_worker_direct_child_reaped_and_healed():
    p = run_script("""
        import os, signal, threading, time
        import piston
        from test_process_pool_faults import (pid_of_worker, sleep_and_pid,
                                              square)

        def state(pid):
            try:
                with open("/proc/%d/stat" % pid) as fh:
                    return fh.read().rsplit(")", 1)[1].split()[0]
            except OSError:
                return None         # gone, reaped

        # A thread that just ended does not stop the pool from forking.
        t = threading.Thread(target=time.sleep, args=(0.01,))
        t.start()
        t.join()
        ex = piston.ProcessPoolExecutor(1)
        first = ex.submit(pid_of_worker).result(timeout=30)
        assert ex._server.method == "fork", ex._server.method
        assert open("/proc/%d/stat" % first).read().rsplit(")", 1)[1] \
            .split()[1] == str(os.getpid()), "not a direct child"
        running = ex.submit(sleep_and_pid, 10)
        time.sleep(0.3)
        os.kill(first, signal.SIGKILL)
        try:
            running.result(timeout=30)
        except piston.WorkerCrashedError as e:
            assert "SIGKILL" in str(e), e
        else:
            raise AssertionError("no crash reported")
        assert state(first) is None, state(first)
        assert ex.submit(square, 4).result(timeout=30) == 16
        pids = set(ex._worker_pids())
        ex.shutdown(wait=True)
        deadline = time.monotonic() + 10
        while any(state(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert {p: state(p) for p in pids} == {p: None for p in pids}
        print("ok", flush=True)
    """)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0 and out.split() == ["ok"], (out, err)


def test_a_thread_that_stays_is_waited_for_once():
    # A thread threading does not know (as a BLAS pool's) keeps the process
    # multi-threaded: the first check gives it the grace to end, later
    # checks see it is the same thread and answer at once.  Once it ends,
    # pools fork again.
    p = run_script("""
        import _thread, threading, time
        import piston
        from piston import _process_pool as pp
        from test_process_pool_faults import square
        stop = threading.Event()
        _thread.start_new_thread(stop.wait, ())
        assert not pp._single_threaded(grace=0.2)
        t0 = time.monotonic()
        assert not pp._single_threaded(grace=30)
        assert time.monotonic() - t0 < 10, "waited for a known thread"
        with piston.ProcessPoolExecutor(1) as ex:
            assert ex._server.method == "forkserver", ex._server.method
            assert ex.submit(square, 3).result(timeout=60) == 9
        stop.set()
        deadline = time.monotonic() + 10
        while not pp._single_threaded():
            assert time.monotonic() < deadline, "the thread never ended"
        assert not pp._lasting_threads, pp._lasting_threads
        with piston.ProcessPoolExecutor(1) as ex:
            assert ex._server.method == "fork", ex._server.method
            assert ex.submit(square, 4).result(timeout=60) == 16
        print("ok", flush=True)
    """)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0 and out.split() == ["ok"], (out, err)


def test_shutdown_with_a_later_fork_pool_alive():
    # The later pool's workers inherit the fork server's command pipe:
    # shutdown must not wait for that pipe's EOF.
    p = run_script("""
        import concurrent.futures, multiprocessing, piston
        from test_process_pool_faults import square
        a = piston.ProcessPoolExecutor(2)
        assert a.submit(square, 2).result(timeout=30) == 4
        b = concurrent.futures.ProcessPoolExecutor(
            2, mp_context=multiprocessing.get_context("fork"))
        assert b.submit(square, 3).result(timeout=30) == 9
        a.shutdown()
        print("piston down", flush=True)
        b.shutdown()
        print("stdlib down", flush=True)
    """)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0 and out.split() == ["piston", "down", "stdlib",
                                                  "down"], (out, err)
