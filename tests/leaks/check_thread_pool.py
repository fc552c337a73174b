"""Refleak check of piston's thread pool and Future, run by tests/run.sh.

Each check is one workload (submit/result, map, early-closed map,
exceptions, cancel, callbacks, wait/as_completed, shutdown with
cancel_futures, pools created and shut down, pools dropped without shutdown,
initializers, asyncio bridges, bare futures).  It runs a few warm-up rounds,
then N measured rounds; after each round it records, with garbage collected:

  blocks   sys.getallocatedblocks()  (objects and other PyObject_Malloc memory)
  rss      resident set size from /proc/self/statm
  fds      open descriptors in /proc/self/fd
  threads  OS threads in /proc/self/task

A metric *keeps growing* when the median of the last third of the rounds
exceeds the median of the first third by more than its threshold, and both
halves of that rise are real (first third -> middle third -> last third):
a one-off step, such as a cache filling up, is not a leak; steady growth
round after round is.

The suite loop then runs the piston half of tests/test_thread_pool.py and
tests/test_future.py with pytest.main() again and again in one process and
applies the same rule with limits wide enough for pytest's own growth.

  python check_thread_pool.py                 every check, each in its own
                                              subprocess, then the suite loop
                                              (below); exit 1 on any leak
  python check_thread_pool.py --check map     one check in this process
  python check_thread_pool.py --impl stdlib   the same against the stdlib
  python check_thread_pool.py --no-suite      the checks only
  python check_thread_pool.py --self-test     proves the checker can fail:
        injects a leak of each kind (objects, RSS, fds, threads) into a
        stdlib workload and requires it to be reported, and requires the
        clean workload to pass.
"""
import argparse
import array
import asyncio
import concurrent.futures as cf
import gc
import json
import logging
import os
import statistics
import subprocess
import sys
import threading
import time

PAGE = os.sysconf("SC_PAGE_SIZE")

# Growth (last-third median minus first-third median, 8 rounds apart with
# the default 12 rounds) above which a metric counts as leaking.  Blocks: a
# clean stdlib run moves by 0-1 (asyncio's loop by ~20 before it levels
# off), so 60 catches a leak of 8 objects a round; every workload repeats
# its rarer operations (pool creation, map calls, wait timeouts) at least
# ten times a round, so one object leaked per operation is caught.
THRESHOLDS = {
    "blocks": 60,
    "rss": 6 * 1024 * 1024,
    "fds": 2,
    "threads": 3,
}


# --- the workloads ------------------------------------------------------------

def inc(x):
    return x + 1


def add(x, y):
    return x + y


def boom(x):
    raise ValueError(f"boom {x}")


def fail_on(bad):
    def fn(x):
        if x == bad:
            raise KeyError(x)
        return x
    return fn


class Workload:
    """One check: setup() once, round() repeatedly, teardown() at the end."""

    def __init__(self, impl):
        self.Executor = impl.ThreadPoolExecutor
        self.Future = impl.Future
        self.pool = None

    def setup(self):
        self.pool = self.Executor(max_workers=4)

    def teardown(self):
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None

    def round(self):
        raise NotImplementedError


class SubmitResult(Workload):
    def round(self):
        futs = [self.pool.submit(inc, i) for i in range(2000)]
        assert [f.result() for f in futs] == list(range(1, 2001))
        for i in range(200):
            assert self.pool.submit(add, i, y=1).result(timeout=30) == i + 1


class Map(Workload):
    def round(self):
        assert list(self.pool.map(inc, range(2000))) == list(range(1, 2001))
        assert sum(self.pool.map(inc, range(2000), chunksize=64)) == 2001000
        for _ in range(10):
            assert list(self.pool.map(add, range(50), range(50),
                                      timeout=30)) == list(range(0, 100, 2))
            assert list(self.pool.map(inc, range(50), chunksize=7)) == \
                list(range(1, 51))
            assert list(self.pool.map(inc, [])) == []


class MapEarlyClose(Workload):
    def round(self):
        for chunksize in (1, 16) * 5:
            it = self.pool.map(inc, range(400), chunksize=chunksize)
            assert next(it) == 1
            assert next(it) == 2
            it.close()
            it = self.pool.map(inc, range(400), chunksize=chunksize)
            next(it)
            del it
            for n, x in enumerate(self.pool.map(inc, range(400))):
                if n == 5:
                    break
            try:
                list(self.pool.map(fail_on(7), range(200),
                                   chunksize=chunksize))
            except KeyError:
                pass
            else:
                raise AssertionError("map did not raise")


class Exceptions(Workload):
    def round(self):
        futs = [self.pool.submit(boom, i) for i in range(600)]
        for i, f in enumerate(futs):
            exc = f.exception(timeout=30)
            assert isinstance(exc, ValueError)
            try:
                f.result()
            except ValueError as e:
                assert e.__traceback__ is not None
            else:
                raise AssertionError("no exception")


class Cancel(Workload):
    def setup(self):
        self.pool = self.Executor(max_workers=1)

    def round(self):
        gate = threading.Event()
        blocker = self.pool.submit(gate.wait, 30)
        futs = [self.pool.submit(inc, i) for i in range(500)]
        cancelled = [f.cancel() for f in futs]
        gate.set()
        assert blocker.result(timeout=30) is True
        for f, c in zip(futs, cancelled):
            if c:
                assert f.cancelled()
                try:
                    f.result(timeout=0)
                except cf.CancelledError:
                    pass
                else:
                    raise AssertionError("cancelled future had a result")
            else:
                f.result(timeout=30)


class Callbacks(Workload):
    def round(self):
        hits = []
        gate = threading.Event()
        blocker = self.pool.submit(gate.wait, 30)
        futs = [self.pool.submit(inc, i) for i in range(500)]
        for f in futs:
            f.add_done_callback(hits.append)
            f.add_done_callback(lambda f: 1 / 0)   # logged, not raised
        gate.set()
        blocker.result(timeout=30)
        for f in futs:
            f.result(timeout=30)
            f.add_done_callback(hits.append)       # runs at once
        deadline = time.monotonic() + 30
        while len(hits) < 1000 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert len(hits) == 1000, len(hits)


class WaitAsCompleted(Workload):
    def round(self):
        futs = [self.pool.submit(inc, i) for i in range(300)]
        done, not_done = cf.wait(futs)
        assert len(done) == 300 and not not_done
        futs = [self.pool.submit(inc, i) for i in range(300)]
        cf.wait(futs, return_when=cf.FIRST_COMPLETED, timeout=30)
        futs.append(self.pool.submit(boom, 0))
        cf.wait(futs, return_when=cf.FIRST_EXCEPTION, timeout=30)
        assert sum(f.result() for f in cf.as_completed(futs[:-1])) == 45150
        # Timeouts leave waiters behind unless they are removed.
        gate = threading.Event()
        stuck = self.pool.submit(gate.wait, 30)
        for _ in range(10):
            done, not_done = cf.wait([stuck], timeout=0.001)
            assert not done
            try:
                for _ in cf.as_completed([stuck], timeout=0.001):
                    pass
            except cf.TimeoutError:
                pass
            try:
                stuck.result(timeout=0.001)
            except cf.TimeoutError:
                pass
            try:
                stuck.exception(timeout=0)
            except cf.TimeoutError:
                pass
        gate.set()
        stuck.result(timeout=30)


class ShutdownCancelFutures(Workload):
    def setup(self):
        pass

    def round(self):
        for _ in range(10):
            pool = self.Executor(max_workers=2)
            gate = threading.Event()
            running = [pool.submit(gate.wait, 30) for _ in range(2)]
            pending = [pool.submit(inc, i) for i in range(100)]
            threading.Timer(0.002, gate.set).start()
            pool.shutdown(wait=True, cancel_futures=True)
            assert all(f.done() for f in running)
            assert all(f.done() for f in pending)
            try:
                pool.submit(inc, 1)
            except RuntimeError:
                pass
            else:
                raise AssertionError("submit after shutdown")


class PoolsRepeated(Workload):
    def setup(self):
        pass

    def round(self):
        for _ in range(20):
            with self.Executor(max_workers=4,
                               thread_name_prefix="leakcheck") as ex:
                futs = [ex.submit(inc, i) for i in range(50)]
            assert sum(f.result() for f in futs) == 1275


class PoolsDropped(Workload):
    """Pools dropped without shutdown: their threads must go away too."""

    def setup(self):
        pass

    def round(self):
        for _ in range(20):
            ex = self.Executor(max_workers=3)
            futs = [ex.submit(inc, i) for i in range(20)]
            assert sum(f.result(timeout=30) for f in futs) == 210
            del ex, futs
        gc.collect()


def _init(box, value):
    box.append(value)


def _bad_init():
    raise OSError("initializer failed")


class Initializers(Workload):
    def setup(self):
        pass

    def round(self):
        for _ in range(6):
            box = []
            with self.Executor(max_workers=2, initializer=_init,
                               initargs=(box, 1)) as ex:
                assert ex.submit(inc, 1).result(timeout=30) == 2
            with self.Executor(max_workers=2, initializer=_bad_init) as ex:
                f = ex.submit(inc, 1)
                try:
                    f.result(timeout=30)
                except cf.BrokenExecutor:
                    pass
                else:
                    raise AssertionError("broken pool gave a result")
                try:
                    ex.submit(inc, 1).result(timeout=30)
                except cf.BrokenExecutor:
                    pass


class AsyncioBridge(Workload):
    def setup(self):
        super().setup()
        self.loop = asyncio.new_event_loop()
        self.loop.set_default_executor(self.pool)

    def teardown(self):
        self.loop.run_until_complete(self.loop.shutdown_default_executor())
        self.loop.close()
        self.pool = None

    def round(self):
        async def main():
            loop = asyncio.get_running_loop()
            r = await asyncio.gather(*[loop.run_in_executor(self.pool, inc, i)
                                       for i in range(300)])
            assert sum(r) == 45150
            r = await asyncio.gather(*[asyncio.wrap_future(
                self.pool.submit(inc, i)) for i in range(300)])
            assert sum(r) == 45150
            r = await asyncio.gather(*[asyncio.to_thread(inc, i)
                                       for i in range(100)])
            assert sum(r) == 5050
            for i in range(10):
                try:
                    await loop.run_in_executor(self.pool, boom, i)
                except ValueError:
                    pass
        self.loop.run_until_complete(main())


class BareFutures(Workload):
    def setup(self):
        pass

    def round(self):
        hits = []
        for i in range(2000):
            f = self.Future()
            f.add_done_callback(hits.append)
            k = i % 4
            if k == 0:
                assert f.set_running_or_notify_cancel()
                f.set_result(i)
                assert f.result() == i
            elif k == 1:
                f.set_exception(KeyError(i))
                assert isinstance(f.exception(), KeyError)
            elif k == 2:
                assert f.cancel()
                assert not f.set_running_or_notify_cancel()
            else:
                try:
                    f.result(timeout=0)
                except cf.TimeoutError:
                    pass
                f.set_result(None)
                try:
                    f.set_result(1)          # completed twice
                except cf.InvalidStateError:
                    pass
        assert len(hits) == 2000


class BadInput(Workload):
    def round(self):
        for _ in range(100):
            for bad in (0, -1):
                try:
                    self.Executor(max_workers=bad)
                except ValueError:
                    pass
                else:
                    raise AssertionError("max_workers <= 0 accepted")
            try:
                f = self.pool.submit(None)
            except TypeError:
                pass
            else:
                try:
                    f.result(timeout=30)
                except TypeError:
                    pass
            f = self.pool.submit(inc, 1)
            try:
                f.result(timeout=-1)
            except (ValueError, cf.TimeoutError):
                pass
            f.result(timeout=30)
        dead = self.Executor(max_workers=1)
        dead.shutdown()
        for _ in range(100):
            try:
                dead.submit(inc, 1)
            except RuntimeError:
                pass
            else:
                raise AssertionError("submit after shutdown accepted")


CHECKS = {
    "submit_result": SubmitResult,
    "map": Map,
    "map_early_close": MapEarlyClose,
    "exceptions": Exceptions,
    "cancel": Cancel,
    "callbacks": Callbacks,
    "wait_as_completed": WaitAsCompleted,
    "shutdown_cancel_futures": ShutdownCancelFutures,
    "pools_repeated": PoolsRepeated,
    "pools_dropped": PoolsDropped,
    "initializers": Initializers,
    "asyncio_bridge": AsyncioBridge,
    "bare_futures": BareFutures,
    "bad_input": BadInput,
}


# --- deliberate leaks for --self-test ------------------------------------------

_LEAKED = []


def inject(kind):
    """Called once per round: leaks a little of one resource."""
    if kind == "objects":
        # 11 blocks a round (a list of 10 objects): near the threshold,
        # far under a real per-task leak.
        _LEAKED.append([object() for _ in range(10)])
    elif kind == "rss":
        _LEAKED.append(b"x" * (2 * 1024 * 1024))
    elif kind == "fds":
        _LEAKED.append(os.open(os.devnull, os.O_RDONLY))
    elif kind == "threads":
        ev = threading.Event()
        t = threading.Thread(target=ev.wait, daemon=True)
        t.start()
        _LEAKED.append(ev)
    elif kind != "none":
        raise ValueError(kind)


# --- measuring and judging --------------------------------------------------------

def _threads():
    return len(os.listdir("/proc/self/task"))


def settle(timeout=2.0):
    """Collects garbage and waits until the thread count stops moving (threads
    of dropped or shut-down pools may still be on their way out)."""
    deadline = time.monotonic() + timeout
    last, stable_since = _threads(), time.monotonic()
    while time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.005)
        now = _threads()
        if now != last:
            last, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since > 0.05:
            break
    gc.collect()
    gc.collect()


METRICS = ("blocks", "rss", "fds", "threads")


def measure(store, i):
    """Writes round i's numbers into preallocated arrays: keeping them must
    not allocate, or the record of the numbers would itself grow them."""
    blocks = sys.getallocatedblocks()
    # os.read, not open(): a text-mode open() grows the block count by one
    # per call for a while (seen on 3.11), which looks like a small leak.
    fd = os.open("/proc/self/statm", os.O_RDONLY)
    try:
        rss = int(os.read(fd, 256).split()[1]) * PAGE
    finally:
        os.close(fd)
    store["blocks"][i] = blocks
    store["rss"][i] = rss
    store["fds"][i] = len(os.listdir("/proc/self/fd"))
    store["threads"][i] = _threads()


def judge(series, thresholds):
    """Returns {metric: (early, mid, late, growth, leaking)}."""
    n = len(series["blocks"])
    k = max(1, n // 3)
    verdict = {}
    for metric, thr in thresholds.items():
        values = list(series[metric])
        early = statistics.median(values[:k])
        mid = statistics.median(values[k:n - k] or values[k:k + 1])
        late = statistics.median(values[-k:])
        growth = late - early
        leaking = (growth > thr and mid - early > thr / 4
                   and late - mid > thr / 4)
        verdict[metric] = (early, mid, late, growth, leaking)
    return verdict


def fmt(metric, v):
    if metric == "rss":
        return f"{v / 1048576:.1f}M"
    return f"{v:g}"


def run_check(name, impl, warmup, rounds, leak, thresholds, quiet=False):
    """Runs one check here; returns (leaking metrics, per-round numbers)."""
    # Callback errors are logged by design (the stdlib does it too); keep
    # the log quiet, the logging path still runs.
    logging.getLogger("concurrent.futures").disabled = True
    wl = CHECKS[name](impl)
    wl.setup()
    series = {m: array.array("q", [0] * rounds) for m in METRICS}
    t0 = time.monotonic()
    try:
        for i in range(warmup + rounds):
            wl.round()
            inject(leak)
            settle()
            if i >= warmup:
                measure(series, i - warmup)
    finally:
        wl.teardown()
    elapsed = time.monotonic() - t0
    verdict = judge(series, thresholds)
    leaking = [m for m, v in verdict.items() if v[4]]
    if not quiet:
        print(f"{name} [{impl.__name__}, leak={leak}] {warmup} warm-up + "
              f"{rounds} rounds in {elapsed:.1f}s")
        for m in thresholds:
            early, mid, late, growth, bad = verdict[m]
            row = " ".join(fmt(m, v) for v in series[m])
            print(f"  {m:7} {'KEEPS GROWING' if bad else 'ok':13} thirds "
                  f"{fmt(m, early)} -> {fmt(m, mid)} -> {fmt(m, late)} "
                  f"(growth {fmt(m, growth)}, limit {fmt(m, thresholds[m])})"
                  f"  rounds: {row}")
    return leaking, series


def _impl(name):
    if name == "stdlib":
        return cf
    import piston
    return piston


def _spawn(args, timeout):
    """Runs this script with args in a fresh interpreter; returns
    (exit code, output)."""
    cmd = [sys.executable, os.path.abspath(__file__)] + args
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = e.stdout or ""
        if isinstance(out, bytes):
            out = out.decode(errors="replace")
        return 124, out + f"\n(timed out after {timeout}s)\n"
    return p.returncode, p.stdout


def drive(checks, impl, warmup, rounds, timeout):
    """Every check in its own subprocess; returns the exit status."""
    results = {}
    for name in checks:
        rc, out = _spawn(["--check", name, "--impl", impl,
                          "--warmup", str(warmup), "--rounds", str(rounds)],
                         timeout)
        sys.stdout.write(out)
        status = {0: "ok", 1: "LEAK"}.get(rc, f"ERROR (exit {rc})")
        results[name] = status
        print(f"-> {name}: {status}\n", flush=True)
    bad = {n: s for n, s in results.items() if s != "ok"}
    print(f"leak checks [{impl}]: {len(results) - len(bad)} passed, "
          f"{len(bad)} failed" + (f": {bad}" if bad else ""))
    return 0 if not bad else 1


def self_test(warmup, rounds, timeout):
    """Proves the checker can fail: each injected leak must be reported by
    its metric, and the same workload without it must pass."""
    cases = [("none", None), ("objects", "blocks"), ("rss", "rss"),
             ("fds", "fds"), ("threads", "threads")]
    failures = []
    for leak, metric in cases:
        rc, out = _spawn(["--check", "submit_result", "--impl", "stdlib",
                          "--warmup", str(warmup), "--rounds", str(rounds),
                          "--inject", leak, "--json"], timeout)
        sys.stdout.write("".join(l + "\n" for l in out.splitlines()
                                 if not l.startswith("{")))
        try:
            found = json.loads(out.splitlines()[-1])["leaking"]
        except (IndexError, ValueError, KeyError):
            failures.append(f"{leak}: checker crashed (exit {rc})")
            continue
        if metric is None:
            ok = rc == 0 and not found
            want = "no leak"
        else:
            ok = rc == 1 and metric in found
            want = f"a leak in {metric}"
        print(f"-> self-test inject={leak}: expected {want}, reported "
              f"{found or 'none'}: {'ok' if ok else 'WRONG'}\n", flush=True)
        if not ok:
            failures.append(f"{leak}: expected {want}, got {found or 'none'}")
    print(f"leak checker self-test: {len(cases) - len(failures)} passed, "
          f"{len(failures)} failed")
    for f in failures:
        print(f"  {f}")
    return 0 if not failures else 1


# --- the suite's own thread-pool tests in a loop ---------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
SUITE_FILES = ["tests/test_thread_pool.py", "tests/test_future.py"]
# pytest keeps ~100-200 blocks and some RSS per session of these files by
# itself, so the limits here are wide: this loop catches leaks per task or
# per test (hundreds of tests, thousands of tasks a round); the workloads
# above catch the small ones.  --suite-baseline also runs the stdlib half
# and judges piston by its growth beyond the stdlib's (slow: the stdlib
# tests sleep a lot, ~30 s a round).
SUITE_THRESHOLDS = {
    "blocks": 2000,
    "rss": 16 * 1024 * 1024,
    "fds": 2,
    "threads": 3,
}


class _Outcomes:
    """pytest plugin: counts outcomes of one session."""

    def __init__(self):
        self.counts = {}

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or report.outcome != "passed":
            self.counts[report.outcome] = self.counts.get(report.outcome,
                                                         0) + 1


def suite_loop(impl, warmup, rounds, log_path):
    """Runs the stdlib- or piston-parametrized half of the thread-pool and
    Future tests `warmup + rounds` times in this process, measuring after
    each round; prints one JSON line with the series."""
    import pytest
    os.chdir(ROOT)
    select = "stdlib and not piston" if impl == "stdlib" else \
        "piston and not stdlib"
    args = SUITE_FILES + ["-q", "-p", "no:cacheprovider", "-k", select,
                          "--tb=short", "-o", "faulthandler_timeout=300"]
    series = {m: array.array("q", [0] * rounds) for m in METRICS}
    info = []
    saved = os.dup(1), os.dup(2)
    with open(log_path, "a") as log:
        for i in range(warmup + rounds):
            outcomes = _Outcomes()
            t0 = time.monotonic()
            # pytest's report goes to the log: only the numbers are shown.
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                rc = pytest.main(args, plugins=[outcomes])
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
            settle()
            if i >= warmup:
                measure(series, i - warmup)
            info.append((int(rc), round(time.monotonic() - t0, 1),
                         dict(outcomes.counts)))
    print(json.dumps({"impl": impl, "rounds": info,
                      "series": {m: list(v) for m, v in series.items()}}))
    return 0


def suite_check(warmup, rounds, timeout, log_dir, baseline=False):
    """The suite's thread-pool and Future tests (their piston half) in a
    loop in one process, which fails if it keeps growing; with `baseline`
    the stdlib half runs too and piston is judged by the growth beyond it."""
    runs = {}
    for impl in (("stdlib", "piston") if baseline else ("piston",)):
        log = os.path.join(log_dir, f"leaks-suite-{impl}.log")
        rc, out = _spawn(["--suite-loop", impl, "--warmup", str(warmup),
                          "--rounds", str(rounds), "--suite-log", log],
                         timeout)
        try:
            runs[impl] = json.loads(out.strip().splitlines()[-1])
        except (IndexError, ValueError):
            sys.stdout.write(out)
            print(f"-> suite_loop: ERROR: the {impl} loop crashed (exit {rc});"
                  f" pytest's output: {log}\n")
            return 1
        done = runs[impl]["rounds"]
        print(f"suite_loop [{impl}]: pytest {' '.join(SUITE_FILES)} -k "
              f"{impl}, {warmup} warm-up + {rounds} rounds in "
              f"{sum(r[1] for r in done):.0f}s; per round: "
              f"{done[-1][2]} (pytest output: {log})")
        codes = sorted({r[0] for r in done})
        if codes != [0]:
            # Failing tests are the pytest jobs' business; a loop that
            # could not run them measures nothing.
            print(f"  pytest exit codes {codes}: see {log}")
            if set(codes) - {0, 1}:
                print("-> suite_loop: ERROR\n")
                return 1
    pis = judge(runs["piston"]["series"], SUITE_THRESHOLDS)
    std = judge(runs["stdlib"]["series"], SUITE_THRESHOLDS) if baseline \
        else None
    leaking = []
    for m, thr in SUITE_THRESHOLDS.items():
        early, mid, late, growth, bad = pis[m]
        if baseline:
            extra = growth - max(std[m][3], 0)
            bad = extra > thr and early < mid < late
            base = f", stdlib {fmt(m, std[m][3])}, beyond it {fmt(m, extra)}"
        else:
            base = ""
        if bad:
            leaking.append(m)
        print(f"  {m:7} {'KEEPS GROWING' if bad else 'ok':13} thirds "
              f"{fmt(m, early)} -> {fmt(m, mid)} -> {fmt(m, late)} (growth "
              f"{fmt(m, growth)}{base}, limit {fmt(m, thr)})  rounds: "
              + " ".join(fmt(m, v) for v in runs["piston"]["series"][m]))
    print(f"-> suite_loop: {'LEAK' if leaking else 'ok'}\n", flush=True)
    return 1 if leaking else 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", choices=sorted(CHECKS),
                    help="run one check in this process")
    ap.add_argument("--impl", choices=["piston", "stdlib"], default="piston")
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--inject", default="none",
                    choices=["none", "objects", "rss", "fds", "threads"],
                    help="add a deliberate leak each round")
    ap.add_argument("--self-test", action="store_true")
    ap.add_argument("--json", action="store_true",
                    help="end with a JSON line of the verdict")
    ap.add_argument("--timeout", type=float, default=300,
                    help="seconds per subprocess")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--suite-loop", choices=["piston", "stdlib"],
                    help=argparse.SUPPRESS)
    ap.add_argument("--suite-log", default=os.devnull,
                    help=argparse.SUPPRESS)
    ap.add_argument("--no-suite", action="store_true",
                    help="skip the loop over the suite's own tests")
    ap.add_argument("--suite-baseline", action="store_true",
                    help="also loop the stdlib half of the suite (slow)")
    ap.add_argument("--log-dir", default=".",
                    help="where the suite loop's pytest output goes")
    args = ap.parse_args(argv)
    if args.rounds < 6:
        ap.error("--rounds must be at least 6 to compare thirds")
    if args.list:
        print("\n".join(CHECKS))
        return 0
    if args.self_test:
        return self_test(args.warmup, args.rounds, args.timeout)
    if args.suite_loop:
        return suite_loop(args.suite_loop, args.warmup, args.rounds,
                          args.suite_log)
    if args.check is None:
        rc = drive(list(CHECKS), args.impl, args.warmup, args.rounds,
                   args.timeout)
        if not args.no_suite and args.impl == "piston":
            print()
            rc |= suite_check(1, 6, args.timeout * 3, args.log_dir,
                              args.suite_baseline)
        return rc
    leaking, series = run_check(args.check, _impl(args.impl), args.warmup,
                                args.rounds, args.inject, THRESHOLDS)
    if leaking:
        print(f"{args.check}: keeps growing: {', '.join(leaking)}")
    if args.json:
        print(json.dumps({"check": args.check, "leaking": leaking,
                          "series": {m: list(v) for m, v in series.items()}}))
    sys.stdout.flush()
    return 1 if leaking else 0


if __name__ == "__main__":
    sys.exit(main())
