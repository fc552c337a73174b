"""The process-wide zygote (piston._zygote): pools made in a process with
threads, or with mp_context="forkserver", get their fork server forked
from one fresh interpreter that is started once and reused.  Each case runs
in its own interpreter: the zygote is per-process state."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from conftest import piston_pythonpath, require_piston
from test_process_pool_faults import assert_all_exit, run_clean, run_script

require_piston()

# A process that keeps a second thread: pools then take the zygote path.
THREADED = """
    import os, sys, threading, time, signal
    import piston
    from piston import _zygote
    from test_process_pool_faults import alive, square, sleep_and_pid
    _stop = threading.Event()
    threading.Thread(target=_stop.wait, daemon=True).start()

    def ppid(pid):
        with open("/proc/%d/stat" % pid) as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
"""


def threaded(body):
    return textwrap.dedent(THREADED) + textwrap.dedent(body)


def run_threaded(body, timeout=120):
    return run_clean(threaded(body), timeout)


def test_pools_in_a_threaded_process_share_one_zygote():
    out = run_threaded("""
        servers, zygotes = [], set()
        for i in range(3):
            with piston.ProcessPoolExecutor(2) as ex:
                assert ex._server.method == "forkserver"
                assert ex.submit(square, i).result(timeout=60) == i * i
                zygotes.add(_zygote._zygote.proc.pid)
                servers.append(ex._server.pid)
                assert ppid(ex._server.pid) == _zygote._zygote.proc.pid
                w = ex.submit(sleep_and_pid, 0).result(timeout=60)
                assert ppid(w) == ex._server.pid
        assert len(zygotes) == 1 and len(set(servers)) == 3
        print("ok")
    """)
    assert out.split() == ["ok"]


def test_forkserver_context_uses_the_zygote_from_any_process():
    out = run_threaded("""
        import multiprocessing
        for ctx in ("forkserver", multiprocessing.get_context("forkserver")):
            with piston.ProcessPoolExecutor(1, mp_context=ctx) as ex:
                assert ex._server.method == "forkserver"
                assert ex.submit(square, 7).result(timeout=60) == 49
        with piston.ProcessPoolExecutor(1, mp_context="spawn") as ex:
            # spawn keeps a fresh interpreter of its own
            assert ex._server.method == "spawn"
            assert ppid(ex._server.pid) == os.getpid()
            assert ex.submit(square, 8).result(timeout=60) == 64
        print("ok")
    """)
    assert out.split() == ["ok"]


def test_initializer_and_max_tasks_through_the_zygote():
    out = run_threaded("""
        from test_process_pool_zygote import init_marker, read_marker
        with piston.ProcessPoolExecutor(
                1, initializer=init_marker, initargs=("hello",),
                max_tasks_per_child=2) as ex:
            pids = [ex.submit(read_marker).result(timeout=60)
                    for _ in range(4)]
        assert [m for m, _ in pids] == ["hello"] * 4, pids
        assert len({p for _, p in pids}) == 2, pids   # recycled after 2
        print("ok")
    """)
    assert out.split() == ["ok"]


_marker = None


def init_marker(value):
    global _marker
    _marker = value


def read_marker():
    return _marker, os.getpid()


def test_dead_zygote_is_replaced():
    out = run_threaded("""
        with piston.ProcessPoolExecutor(1) as ex:
            assert ex.submit(square, 2).result(timeout=60) == 4
        first = _zygote._zygote.proc.pid
        os.kill(first, signal.SIGKILL)
        _zygote._zygote.proc.wait()
        with piston.ProcessPoolExecutor(1) as ex:
            assert ex.submit(square, 3).result(timeout=60) == 9
        assert _zygote._zygote.proc.pid != first
        print("ok")
    """)
    assert out.split() == ["ok"]


def test_a_pool_outlives_its_zygote():
    # The fork server is the workers' parent, not the zygote: a pool keeps
    # working (and healing) when the zygote dies under it.
    out = run_threaded("""
        ex = piston.ProcessPoolExecutor(2)
        assert ex.submit(square, 2).result(timeout=60) == 4
        os.kill(_zygote._zygote.proc.pid, signal.SIGKILL)
        w = ex.submit(sleep_and_pid, 0).result(timeout=60)
        os.kill(w, signal.SIGKILL)
        time.sleep(0.2)
        assert [f.result(timeout=60) for f in
                [ex.submit(square, i) for i in range(20)]] == \\
            [i * i for i in range(20)]
        ex.shutdown()
        print("ok")
    """)
    assert out.split() == ["ok"]


def test_forked_child_starts_its_own_zygote():
    out = run_threaded("""
        with piston.ProcessPoolExecutor(1) as ex:
            assert ex.submit(square, 2).result(timeout=60) == 4
        parent_zygote = _zygote._zygote.proc.pid
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                assert _zygote._zygote is None
                with piston.ProcessPoolExecutor(
                        1, mp_context="forkserver") as ex:
                    assert ex.submit(square, 5).result(timeout=60) == 25
                    os.write(w, b"%d" % _zygote._zygote.proc.pid)
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        child_zygote = int(os.read(r, 64))
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert child_zygote != parent_zygote
        assert alive(parent_zygote)
        with piston.ProcessPoolExecutor(1) as ex:   # still the parent's
            assert ex.submit(square, 6).result(timeout=60) == 36
        assert _zygote._zygote.proc.pid == parent_zygote
        print("ok")
    """)
    assert out.split() == ["ok"]


def test_exit_takes_the_zygote_down():
    p = run_script(threaded("""
        ex = piston.ProcessPoolExecutor(1)
        assert ex.submit(square, 2).result(timeout=60) == 4
        print(_zygote._zygote.proc.pid, ex._server.pid, flush=True)
    """))
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0 and "Traceback" not in err, err
    assert_all_exit([int(x) for x in out.split()])


def test_parent_killed_leaves_no_orphans_through_the_zygote():
    p = run_script(threaded("""
        ex = piston.ProcessPoolExecutor(2)
        fs = [ex.submit(sleep_and_pid, 30) for _ in range(4)]
        while len(ex._worker_pids()) < 2:
            time.sleep(0.01)
        print(_zygote._zygote.proc.pid, ex._server.pid, *ex._worker_pids(),
              flush=True)
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGKILL)
    """))
    out, err = p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL, err
    pids = [int(x) for x in out.split()]
    assert len(pids) == 4
    assert_all_exit(pids)


def test_unguarded_main_script_gets_a_clear_error_and_no_hang(tmp_path):
    # A script that makes its pool at top level: the zygote re-imports it
    # as the main module, which must not make a pool (nor wait for the
    # script's threads) there; the script itself still gets its result.
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent("""
        import threading
        import piston
        from test_process_pool_faults import square
        stop = threading.Event()
        threading.Thread(target=stop.wait).start()   # not a daemon
        try:
            with piston.ProcessPoolExecutor(1) as ex:
                print("result", ex.submit(square, 4).result(timeout=60),
                      flush=True)
        finally:
            stop.set()
    """))
    env = dict(os.environ)
    env["PYTHONPATH"] = piston_pythonpath() + os.pathsep + os.path.dirname(
        os.path.abspath(__file__))
    p = subprocess.run([sys.executable, str(script)], env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["result", "16"], p.stdout
    assert "if __name__ == '__main__':" in p.stderr, p.stderr


def test_unpicklable_initializer_raises_at_the_call_and_leaks_nothing():
    out = run_threaded("""
        import pickle
        from test_process_pool_faults import fd_count, identity
        with piston.ProcessPoolExecutor(1) as ex:   # the zygote is up
            assert ex.submit(square, 2).result(timeout=60) == 4
        before = fd_count()
        for _ in range(3):
            try:
                piston.ProcessPoolExecutor(1, initializer=identity,
                                           initargs=(threading.Lock(),))
            except (pickle.PicklingError, TypeError) as e:
                assert "lock" in str(e), e
            else:
                raise AssertionError("no error at the call")
        assert fd_count() == before, (before, fd_count())
        with piston.ProcessPoolExecutor(1) as ex:   # the zygote still serves
            assert ex.submit(square, 3).result(timeout=60) == 9
        print("ok")
    """)
    assert out.split() == ["ok"]


def test_closure_initializer_travels_with_cloudpickle():
    pytest.importorskip("cloudpickle")
    out = run_threaded("""
        box = {}
        def init(v):
            import builtins
            builtins._piston_zygote_marker = (v, len(box))
        with piston.ProcessPoolExecutor(1, initializer=init,
                                        initargs=("closure",)) as ex:
            assert ex._server.method == "forkserver"
            got = ex.submit(eval, "_piston_zygote_marker").result(timeout=60)
        assert got == ("closure", 0), got
        print("ok")
    """)
    assert out.split() == ["ok"]


def test_spare_fork_server_killed_is_replaced():
    # The zygote forks a spare fork server while idle; a pool made after
    # that spare died gets a new one.
    out = run_threaded("""
        with piston.ProcessPoolExecutor(1) as ex:
            assert ex.submit(square, 2).result(timeout=60) == 4
        zpid = _zygote._zygote.proc.pid

        def spares():
            with open("/proc/%d/task/%d/children" % (zpid, zpid)) as fh:
                return [int(p) for p in fh.read().split()]

        deadline = time.monotonic() + 10
        while not spares():
            assert time.monotonic() < deadline, "no spare forked"
            time.sleep(0.01)
        for pid in spares():
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
        with piston.ProcessPoolExecutor(1) as ex:
            assert ex.submit(square, 5).result(timeout=60) == 25
            assert ppid(ex._server.pid) == zpid
        print("ok")
    """)
    assert out.split() == ["ok"]
