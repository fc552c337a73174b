"""Subprocess tests of the thread pool: interpreter exit, fork, Ctrl-C, and piston's error classes."""
import concurrent.futures as cf
import concurrent.futures.process
import concurrent.futures.thread
import json

import pytest



# --------------------------------------------- interpreter exit, pending work

EXIT_WITH_PENDING = r'''
path = sys.argv[2]
ex = Pool(max_workers=4)

def work(i):
    time.sleep(0.01)
    with open(path, "a") as fh:
        fh.write(f"{i}\n")
    if i % 10 == 9:
        raise ValueError("stored in the future, never printed")
    return i

futures = [ex.submit(work, i) for i in range(50)]
print("SUBMITTED", flush=True)
# No shutdown(): the interpreter must run every task before exiting.
'''


def test_exit_with_pending_work_runs_everything(impl, tmp_path, run_script):
    out_file = tmp_path / "ran.txt"
    p = run_script(EXIT_WITH_PENDING, impl, out_file, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "SUBMITTED" in p.stdout
    assert "Traceback" not in p.stderr, p.stderr
    lines = out_file.read_text().split()
    assert sorted(map(int, lines)) == list(range(50))


EXIT_WITH_IDLE_POOLS = r'''
pools = [Pool(max_workers=2) for _ in range(3)]
for p in pools:
    assert p.submit(int, "7").result(timeout=30) == 7
with Pool(max_workers=2) as closed:
    closed.submit(int).result(timeout=30)
print("OK", flush=True)
sys.exit(0)
'''


def test_exit_with_idle_pools(impl, run_script):
    p = run_script(EXIT_WITH_IDLE_POOLS, impl, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "OK"
    assert "Traceback" not in p.stderr, p.stderr


# --------------------------------------------------------------------- fork

FORK_SCRIPT = r'''
import json, warnings
warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads

def ident():
    return os.getpid(), threading.get_native_id()

ex = Pool(max_workers=2)
barrier = threading.Barrier(2, timeout=30)
def both():
    barrier.wait()
    return ident()
parent_workers = {f.result(timeout=30)[1] for f in
                  [ex.submit(both), ex.submit(both)]}
assert len(parent_workers) == 2

sys.stdout.flush(); sys.stderr.flush()
pid = os.fork()
if pid == 0:
    report = {"threads": [t.name for t in threading.enumerate()]}
    try:
        fut = ex.submit(ident)
        cpid, ctid = fut.result(timeout=10)
        report["outcome"] = "ran"
        report["pid_ok"] = cpid == os.getpid()
        report["fresh_thread"] = ctid not in parent_workers
        report["again"] = ex.submit(sum, [1, 2, 3]).result(timeout=10)
    except BaseException as e:
        report["outcome"] = "raised"
        report["exc_type"] = type(e).__name__
        report["exc_mro"] = [c.__name__ for c in type(e).__mro__]
        report["exc_msg"] = str(e)
    print("CHILD " + json.dumps(report), flush=True)
    # Leave through normal interpreter exit: the exit-time join must not
    # wait on the parent's threads, which do not exist here.
    sys.exit(0)

_, status = os.waitpid(pid, 0)
print("CHILD_STATUS", status, flush=True)
ppid, ptid = ex.submit(ident).result(timeout=30)
print("PARENT " + json.dumps({"pid_ok": ppid == os.getpid(),
                              "worker_ok": ptid in parent_workers}),
      flush=True)
ex.shutdown(wait=True)
'''


def _parse_fork_output(stdout):
    child = parent = status = None
    for line in stdout.splitlines():
        if line.startswith("CHILD "):
            child = json.loads(line[6:])
        elif line.startswith("PARENT "):
            parent = json.loads(line[7:])
        elif line.startswith("CHILD_STATUS "):
            status = int(line.split()[1])
    return child, parent, status


def test_fork_with_live_pool_piston(pistonmod, run_script):
    """piston-only: after fork() the child's submit on the inherited pool
    runs on a fresh thread or raises a clear piston error; never hangs.
    (The stdlib pool hangs here: the child believes a parent worker is idle
    and queues work nobody will ever run.)"""
    p = run_script(FORK_SCRIPT, "piston", timeout=20)
    assert p.returncode == 0, p.stdout + p.stderr
    child, parent, status = _parse_fork_output(p.stdout)
    assert child is not None, p.stdout + p.stderr
    assert status == 0, (status, p.stderr)
    if child["outcome"] == "ran":
        assert child["pid_ok"] and child["fresh_thread"], child
        assert child["again"] == 6
    else:
        assert "PistonError" in child["exc_mro"], child
        assert child["exc_msg"], child
    assert parent == {"pid_ok": True, "worker_ok": True}, p.stdout
    assert "Traceback" not in p.stderr, p.stderr


# -------------------------------------------------------------------- Ctrl-C

def test_ctrl_c_while_waiting_on_pool_task(impl, sigint_while_waiting):
    body = r'''
stop = threading.Event()
ex = Pool(max_workers=2)
fut = ex.submit(stop.wait)
print("READY", flush=True)
try:
    fut.result()
    print("UNREACHABLE", flush=True)
finally:
    stop.set()  # lets the worker finish so exit-time join is prompt
'''
    rc, out, err = sigint_while_waiting(body, impl)
    assert "UNREACHABLE" not in out
    assert rc != 0
    assert "KeyboardInterrupt" in err, err


def test_ctrl_c_while_waiting_on_map(impl, sigint_while_waiting):
    body = r'''
stop = threading.Event()
ex = Pool(max_workers=2)
it = ex.map(lambda _: stop.wait(), range(4))
print("READY", flush=True)
try:
    list(it)
    print("UNREACHABLE", flush=True)
finally:
    stop.set()
'''
    rc, out, err = sigint_while_waiting(body, impl)
    assert "UNREACHABLE" not in out
    assert rc != 0 and "KeyboardInterrupt" in err, err


# ------------------------------------------------ piston-only error classes

def test_piston_broken_thread_pool_hierarchy(pistonmod):
    """piston-only."""
    B = pistonmod.BrokenThreadPool
    assert issubclass(B, pistonmod.PistonError)
    assert issubclass(B, cf.thread.BrokenThreadPool)
    assert issubclass(B, cf.BrokenExecutor)
    assert issubclass(B, pistonmod.BrokenPool)
    assert B.__module__ == "piston" or B.__module__.startswith("piston")


def test_piston_task_timeout_error_hierarchy(pistonmod):
    """piston-only."""
    E = pistonmod.TaskTimeoutError
    assert issubclass(E, TimeoutError)
    assert issubclass(E, cf.TimeoutError)
    assert issubclass(E, pistonmod.PistonError)


def test_piston_worker_crashed_error_hierarchy(pistonmod):
    """piston-only."""
    E = pistonmod.WorkerCrashedError
    assert issubclass(E, cf.process.BrokenProcessPool)
    assert issubclass(E, pistonmod.BrokenProcessPool)
    assert issubclass(E, pistonmod.PistonError)


def test_piston_errors_are_raisable_and_catchable(pistonmod):
    """piston-only: catching the stdlib class catches piston's."""
    with pytest.raises(cf.thread.BrokenThreadPool):
        raise pistonmod.BrokenThreadPool("x")
    with pytest.raises(TimeoutError):
        raise pistonmod.TaskTimeoutError("x")
    with pytest.raises(cf.process.BrokenProcessPool):
        raise pistonmod.WorkerCrashedError("x")
    assert issubclass(pistonmod.PistonError, Exception)


SUBMIT_AT_EXIT = r'''
import atexit
used = Pool(max_workers=2)
used.submit(int).result(timeout=30)
unused = Pool(max_workers=2)

def at_exit():
    for name, ex in (("used", used), ("unused", unused)):
        try:
            ex.submit(int, "4").result(timeout=10)
            print(name, "ACCEPTED", flush=True)
        except RuntimeError:
            print(name, "RuntimeError", flush=True)
atexit.register(at_exit)
'''


def test_submit_during_interpreter_exit_runtime_error(impl, run_script):
    p = run_script(SUBMIT_AT_EXIT, impl, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["used", "RuntimeError",
                                "unused", "RuntimeError"], p.stdout


FORK_WAIT_PREFORK_FUTURE = r'''
import json, warnings
warnings.simplefilter("ignore", DeprecationWarning)
ex = Pool(max_workers=1)
gate = threading.Event()
started = threading.Event()
running = ex.submit(lambda: (started.set(), gate.wait(30))[1])
queued = ex.submit(int, "1")
assert started.wait(30)
sys.stdout.flush(); sys.stderr.flush()
pid = os.fork()
if pid == 0:
    # The child waits on futures first, before touching the pool again.
    out = {}
    for name, f in (("running", running), ("queued", queued)):
        try:
            out[name] = ["result", repr(f.result(timeout=5))]
        except BaseException as e:
            out[name] = [type(e).__name__,
                         [c.__name__ for c in type(e).__mro__], str(e)]
    print("CHILD " + json.dumps(out), flush=True)
    os._exit(0)
os.waitpid(pid, 0)
gate.set()
print("PARENT " + json.dumps([running.result(timeout=30),
                              queued.result(timeout=30)]), flush=True)
ex.shutdown()
'''


def test_fork_child_waiting_on_prefork_future_piston(pistonmod, run_script):
    """piston-only: in a fork child, futures of work that lives in the
    parent (running or queued at fork time) end with a clear piston error
    even if the child waits on them before touching the pool (a hang, or a
    TimeoutError here, is the stdlib's behaviour and a failure)."""
    p = run_script(FORK_WAIT_PREFORK_FUTURE, "piston", timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    child = parent = None
    for line in p.stdout.splitlines():
        if line.startswith("CHILD "):
            child = json.loads(line[6:])
        elif line.startswith("PARENT "):
            parent = json.loads(line[7:])
    assert parent == [True, 1], p.stdout
    assert child is not None, p.stdout + p.stderr
    for name in ("running", "queued"):
        kind, mro, msg = child[name]
        assert "PistonError" in mro, (name, child[name])
        assert "fork" in msg, (name, child[name])


SUBMIT_FROM_TASK_AT_EXIT = r'''
log = open(sys.argv[2], "w")
ex = Pool(max_workers=2)

def chain(i):
    time.sleep(0.05)
    try:
        ex.submit(chain, i + 1)
        log.write(f"{i} submitted\n")
    except RuntimeError:
        log.write(f"{i} RuntimeError\n")
    log.flush()
ex.submit(chain, 0)
# Exit at once: the running task's own submit() meets interpreter exit.
'''


def test_task_submitting_during_exit_gets_runtime_error(impl, tmp_path,
                                                        run_script):
    log = tmp_path / "chain.txt"
    p = run_script(SUBMIT_FROM_TASK_AT_EXIT, impl, log, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    assert log.read_text().splitlines() == ["0 RuntimeError"]


def test_ctrl_c_while_shutdown_waits(impl, sigint_while_waiting):
    body = r'''
stop = threading.Event()
try:
    with Pool(max_workers=2) as ex:
        ex.submit(stop.wait)
        print("READY", flush=True)
    print("UNREACHABLE", flush=True)
finally:
    stop.set()
'''
    rc, out, err = sigint_while_waiting(body, impl)
    assert "UNREACHABLE" not in out
    assert rc != 0 and "KeyboardInterrupt" in err, err


FORK_WHILE_BUSY = r'''
import warnings
warnings.simplefilter("ignore", DeprecationWarning)
ex = Pool(max_workers=2)
stop = threading.Event()

def hammer():
    while not stop.is_set():
        fs = [ex.submit(int, "1") for _ in range(50)]
        list(ex.map(abs, range(50), chunksize=3))
        for f in fs:
            f.result(timeout=30)
hs = [threading.Thread(target=hammer) for _ in range(2)]
for h in hs:
    h.start()
outcomes = []
for i in range(10):
    time.sleep(0.01)
    pid = os.fork()
    if pid == 0:
        code = 6
        try:
            code = 0 if ex.submit(int, "7").result(timeout=5) == 7 else 4
        except TimeoutError:
            code = 1                    # hung: the worst outcome
        except piston.PistonError:
            code = 0                    # a clear piston error is fine
        except BaseException:
            code = 5
        os._exit(code)
    deadline = time.monotonic() + 15
    while True:
        r, status = os.waitpid(pid, os.WNOHANG)
        if r:
            outcomes.append(os.waitstatus_to_exitcode(status))
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            outcomes.append("hung")
            break
        time.sleep(0.01)
stop.set()
for h in hs:
    h.join()
ex.shutdown()
print("OUTCOMES", outcomes, flush=True)
'''


def test_fork_while_queue_is_busy_piston(pistonmod, run_script):
    """piston-only: fork() while other threads hammer the pool's queue (its
    locks may be held at that instant); every child's submit still runs
    or fails clearly, never hangs."""
    p = run_script(FORK_WHILE_BUSY, "piston", timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "OUTCOMES [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]" in p.stdout, (
        p.stdout + p.stderr)
