"""Standby workers (piston._fork_server.Standby): a fork server forks its
next worker ahead, while idle, and hands it a slot when the pool asks.
Each case runs in its own interpreter, so what counts as this process's
threads (and so the start method) is known."""
import os
import signal
import textwrap
import time

from conftest import require_piston
from test_process_pool_faults import assert_all_exit, run_clean, run_script

require_piston()

HELPERS = """
    import os, sys, threading, time, signal
    import piston
    from piston import _zygote
    import tempfile
    from test_process_pool_faults import alive, sleep_and_pid, square
    from test_process_pool_standby import setting_after_go, wait_for_go
    go = os.path.join(tempfile.mkdtemp(), "go")

    def children(pid):
        try:
            with open("/proc/%d/task/%d/children" % (pid, pid)) as fh:
                return [int(p) for p in fh.read().split()]
        except FileNotFoundError:
            return []

    def await_children(pid, n, why):
        deadline = time.monotonic() + 10
        while len(children(pid)) != n:
            assert time.monotonic() < deadline, (why, children(pid))
            time.sleep(0.01)
        return children(pid)

    def standby_of(ex, n, other_than=()):
        # The fork server's one child that is not a worker, once the pool
        # knows its n workers (one the executor forked itself is this
        # process's child, not the server's).
        deadline = time.monotonic() + 10
        while True:
            workers = set(ex._worker_pids())
            served = workers - set(children(os.getpid()))
            kids = set(children(ex._server.pid))
            if (len(workers) == n and len(kids) == len(served) + 1
                    and served <= kids and not kids & set(other_than)):
                return (kids - served).pop()
            assert time.monotonic() < deadline, (
                "no standby", workers, kids)
            time.sleep(0.01)

    def grown_to(ex, n):
        deadline = time.monotonic() + 10
        while len(ex._worker_pids()) < n:
            assert time.monotonic() < deadline, ex._worker_pids()
            time.sleep(0.01)
        return ex._worker_pids()

"""
# A second thread that stays: pools then take the zygote path.
THREADED = """
    _stop = threading.Event()
    threading.Thread(target=_stop.wait, daemon=True).start()
"""


def wait_for_go(path):
    """A task that runs until `path` exists; returns its worker's pid."""
    while not os.path.exists(path):
        time.sleep(0.01)
    return os.getpid()


def setting_after_go(path):
    """wait_for_go, and what the worker's __main__ says SETTING is."""
    import __main__
    return wait_for_go(path), getattr(__main__, "SETTING", None)


def run(body, threaded=False, timeout=120):
    src = textwrap.dedent(HELPERS)
    if threaded:
        src += textwrap.dedent(THREADED)
    return run_clean(src + textwrap.dedent(body), timeout)


def test_a_zygote_pools_first_worker_was_forked_before_the_pool():
    # The zygote's spare fork server forks a standby before any pool asks;
    # the next pool's first worker is that process.
    out = run("""
        with piston.ProcessPoolExecutor(1) as ex:    # the zygote is up
            assert ex.submit(square, 2).result(timeout=60) == 4
        zpid = _zygote._zygote.proc.pid
        deadline = time.monotonic() + 10
        while True:
            spares = children(zpid)
            if len(spares) == 1 and len(children(spares[0])) == 1:
                break
            assert time.monotonic() < deadline, "no spare with a standby"
            time.sleep(0.01)
        standby = children(spares[0])[0]
        with piston.ProcessPoolExecutor(2) as ex:
            assert ex._server.pid == spares[0]
            pid = ex.submit(sleep_and_pid, 0).result(timeout=60)
            assert pid == standby, (pid, standby)
        print("ok")
    """, threaded=True)
    assert out.split() == ["ok"]


def test_the_next_worker_is_the_standby_until_the_pool_is_full():
    out = run("""
        # While every worker is busy, the pool starts one more: the first
        # task makes two workers.
        with piston.ProcessPoolExecutor(4) as ex:
            fs = [ex.submit(wait_for_go, go)]
            assert len(grown_to(ex, 2)) == 2
            standby = standby_of(ex, 2)
            fs.append(ex.submit(wait_for_go, go))
            assert standby in grown_to(ex, 3), (standby, ex._worker_pids())
            standby = standby_of(ex, 3)
            fs.append(ex.submit(wait_for_go, go))
            assert standby in grown_to(ex, 4), (standby, ex._worker_pids())
            open(go, "w").close()
            assert len({f.result(timeout=60) for f in fs}) == 3
            # Full: the server keeps no standby beside its workers.
            time.sleep(0.3)
            assert sorted(children(ex._server.pid)) == sorted(
                ex._worker_pids()), children(ex._server.pid)
        print("ok")
    """, threaded=True)
    assert out.split() == ["ok"]


def test_a_killed_standby_is_replaced_and_costs_no_task():
    out = run("""
        with piston.ProcessPoolExecutor(4) as ex:
            fs = [ex.submit(wait_for_go, go)]
            grown_to(ex, 2)
            first = standby_of(ex, 2)
            os.kill(first, signal.SIGKILL)
            # Reaped, and another forked once the server has been idle.
            second = standby_of(ex, 2, other_than=[first])
            assert not alive(first)
            # Killed before a request: the request forks a worker instead.
            os.kill(second, signal.SIGKILL)
            fs += [ex.submit(wait_for_go, go) for _ in range(2)]
            grown_to(ex, 4)
            open(go, "w").close()
            assert len({f.result(timeout=60) for f in fs}) == 3
            assert second not in ex._worker_pids()
            assert [ex.submit(square, i).result(timeout=60)
                    for i in range(4)] == [0, 1, 4, 9]
        print("ok")
    """, threaded=True)
    assert out.split() == ["ok"]


def test_recycled_workers_come_from_the_standby():
    # While a worker runs its last task, the server forks a standby; the
    # worker's replacement is that standby.
    out = run("""
        with piston.ProcessPoolExecutor(1, max_tasks_per_child=1) as ex:
            pids, standbys = [], []
            for i in range(3):
                f = ex.submit(wait_for_go, go + str(i))
                standbys.append(standby_of(ex, 1, other_than=pids))
                open(go + str(i), "w").close()
                pids.append(f.result(timeout=60))
            assert len(set(pids)) == 3, pids
            assert pids[1:] == standbys[:-1], (pids, standbys)
        print("ok")
    """, threaded=True)
    assert out.split() == ["ok"]


def test_shutdown_takes_the_standby_down():
    out = run("""
        ex = piston.ProcessPoolExecutor(3)
        f = ex.submit(wait_for_go, go)
        grown_to(ex, 2)
        print(standby_of(ex, 2), ex._server.pid, *ex._worker_pids(),
              flush=True)
        open(go, "w").close()
        f.result(timeout=60)
        ex.shutdown(wait=True)
    """, threaded=True)
    pids = [int(x) for x in out.split()]
    assert len(pids) == 4, pids
    assert_all_exit(pids)


def test_parent_killed_takes_the_standby_down():
    p = run_script(textwrap.dedent(HELPERS) + textwrap.dedent("""
        ex = piston.ProcessPoolExecutor(4)
        ex.submit(wait_for_go, go)
        grown_to(ex, 2)
        print(standby_of(ex, 2), ex._server.pid, *ex._worker_pids(),
              flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """))
    out, err = p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL, err
    pids = [int(x) for x in out.split()]
    assert len(pids) == 4, pids
    assert_all_exit(pids)


def test_a_forked_servers_standby_has_the_parents_state():
    # mp_context "fork": the standby is a copy of the server, itself a copy
    # of this process when the pool started, so what __main__ held then
    # reaches it (and what changed after does not).
    out = run("""
        import __main__
        __main__.SETTING = "at start"

        with piston.ProcessPoolExecutor(3, mp_context="fork") as ex:
            assert ex._server.method == "fork"
            fs = [ex.submit(setting_after_go, go)]
            grown_to(ex, 2)
            standby = standby_of(ex, 2)
            __main__.SETTING = "changed later"
            fs.append(ex.submit(setting_after_go, go))   # the idle worker
            grown_to(ex, 3)                     # all busy: the standby
            fs.append(ex.submit(setting_after_go, go))   # runs on it
            open(go, "w").close()
            got = dict(f.result(timeout=60) for f in fs)
            assert got.get(standby) == "at start", (standby, got)
            assert set(got.values()) == {"at start"}, got
        print("ok")
    """)
    assert out.split() == ["ok"]


def test_a_one_worker_forked_pool_keeps_no_standby():
    # Its one worker was forked by the executor itself: the server will
    # not be asked for another unless that worker dies.
    out = run("""
        with piston.ProcessPoolExecutor(1) as ex:
            assert ex._server.method == "fork"
            assert ex.submit(square, 2).result(timeout=60) == 4
            time.sleep(0.3)
            assert children(ex._server.pid) == [], children(ex._server.pid)
        print("ok")
    """)
    assert out.split() == ["ok"]


def test_a_standby_that_cannot_be_forked_leaves_the_pool_working():
    # Out of processes or memory: the standby is only ahead of need, so
    # the server goes on and forks each worker when asked.
    out = run("""
        import errno
        from piston import _fork_server

        def no_fork(self, pool, in_child):
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

        _fork_server.Standby.__init__ = no_fork     # the server is a copy
        with piston.ProcessPoolExecutor(3, mp_context="fork") as ex:
            fs = [ex.submit(wait_for_go, go)]
            grown_to(ex, 2)
            time.sleep(0.3)                 # well past the idle delay
            assert sorted(children(ex._server.pid)) == sorted(
                set(ex._worker_pids()) - set(children(os.getpid())))
            fs += [ex.submit(wait_for_go, go) for _ in range(2)]
            grown_to(ex, 3)
            open(go, "w").close()
            assert len({f.result(timeout=60) for f in fs}) == 3
            assert ex.submit(square, 5).result(timeout=60) == 25
        print("ok")
    """)
    assert out.split() == ["ok"]
