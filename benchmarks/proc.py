"""Process-pool suite: piston.ProcessPoolExecutor beside
concurrent.futures.ProcessPoolExecutor, multiprocessing.Pool, loky and
pebble (the last two when installed), in one run."""
from __future__ import annotations

import concurrent.futures
import contextlib
import gc
import json
import multiprocessing
import os
import random
import subprocess
import sys
import time

from piston import ProcessPoolExecutor as PISTON

from ._harness import Row, median, p99

WORKERS = 2


def _noop(x=None):
    return x


def _asum(a):
    return float(a.sum())


def _cpu(n):
    """Pure-Python work that holds the GIL all along."""
    s = 0
    for i in range(n):
        s += i * i % 7
    return s


# ---- one interface over five pools -------------------------------------------

class _Executor:
    """An Executor-like pool (stdlib, piston, loky): used as is."""

    def __init__(self, ex, auto_chunks=False):
        self.ex = ex
        self.auto_chunks = auto_chunks

    def submit(self, fn, *args):
        return self.ex.submit(fn, *args)

    def map(self, fn, items, chunksize):
        if self.auto_chunks:
            return list(self.ex.map(fn, items, chunksize=None))
        return list(self.ex.map(fn, items, chunksize=chunksize))

    def close(self):
        self.ex.shutdown(wait=True)


class _MpPool:
    def __init__(self, workers):
        self.pool = multiprocessing.get_context("fork").Pool(workers)

    def submit(self, fn, *args):
        r = self.pool.apply_async(fn, args)
        r.result = r.get
        return r

    def map(self, fn, items, chunksize):
        return self.pool.map(fn, items)     # its own automatic chunksize

    def close(self):
        self.pool.close()
        self.pool.join()


class _Pebble:
    def __init__(self, workers):
        import pebble
        self.pool = pebble.ProcessPool(max_workers=workers)

    def submit(self, fn, *args):
        return self.pool.schedule(fn, args=args)

    def map(self, fn, items, chunksize):
        return list(self.pool.map(fn, items, chunksize=chunksize).result())

    def close(self):
        self.pool.close()
        self.pool.join()


def _impls(workers=WORKERS):
    fork = multiprocessing.get_context("fork")
    impls = {
        # The stdlib's fastest start method (its default before 3.14).
        "stdlib": lambda: _Executor(concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=fork)),
        "piston": lambda: _Executor(PISTON(workers), auto_chunks=True),
        "mp.Pool": lambda: _MpPool(workers),
    }
    try:
        import cloudpickle
        import loky
        # loky's workers start fresh and may not import this module (a
        # source checkout maps it under piston.benchmarks): send by value.
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
        impls["loky"] = lambda: _Executor(loky.ProcessPoolExecutor(workers))
    except ImportError:
        pass
    try:
        import pebble  # noqa: F401
        impls["pebble"] = lambda: _Pebble(workers)
    except ImportError:
        pass
    return impls


@contextlib.contextmanager
def _opened(factory):
    pool = factory()
    try:
        pool.submit(_noop).result()         # workers up before timing
        yield pool
    finally:
        pool.close()


def _pools(workers=WORKERS, only=None):
    return {name: (lambda f=f: _opened(f))
            for name, f in _impls(workers).items()
            if only is None or name in only}


def _best_peer(values):
    peers = {k: v for k, v in values.items()
             if k not in ("piston", "stdlib", "memcpy")}
    return max(peers, key=peers.get) if peers else "stdlib"


def _k(n):
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


# ---- cases ------------------------------------------------------------------------

def latency(h):
    """One trivial task at a time: submit(f).result(), each timed."""
    n = h.n(3000)

    def one_round(pool):
        clock, lat = time.perf_counter_ns, []
        for _ in range(n):
            t0 = clock()
            pool.submit(_noop).result()
            lat.append(clock() - t0)
        return {"median": median(lat) / 1e3, "p99": p99(lat) / 1e3}

    res = h.compare(_pools(), one_round)
    return [res.row(f"submit(f).result() latency, {m}", "us", m,
                    higher_is_better=False, target=10)
            for m in ("median", "p99")]


def submit_many(h):
    """n trivial tasks through submit(), then every result."""
    n = h.n(100_000)

    def one_round(pool):
        t0 = time.perf_counter()
        fs = [pool.submit(_noop, i) for i in range(n)]
        for f in fs:
            f.result()
        return n / (time.perf_counter() - t0)

    res = h.compare(_pools(), one_round)
    row = res.row(f"{_k(n)} submit() then result()", "tasks/s", target=10)
    peer = _best_peer(row.values)
    vs_peer = Row("", f"{_k(n)} submit(), vs best peer ({peer})", "tasks/s",
                  row.values, baseline=peer, target=3,
                  note="ratio against the fastest of mp.Pool/loky/pebble")
    return [row, vs_peer]


def map_auto(h):
    """map over n items with automatic chunking (piston: chunksize=None;
    mp.Pool: its own; others: n / (4 * workers), what they would need)."""
    n = h.n(200_000)
    chunk = max(1, n // (4 * WORKERS))

    def one_round(pool):
        t0 = time.perf_counter()
        out = pool.map(_noop, range(n), chunk)
        rate = n / (time.perf_counter() - t0)
        if len(out) != n or out[-1] != n - 1:
            raise RuntimeError("map returned the wrong items")
        return rate

    res = h.compare(_pools(), one_round)
    row = res.row(f"map over {_k(n)} items, auto chunks", "items/s")
    peer = _best_peer(row.values)
    return [Row("", row.case + f" (vs {peer})", "items/s", row.values,
                baseline=peer, target=1, samples=row.samples)]


def arrays(h):
    """A numpy array argument whose sum comes back: GB/s of argument."""
    try:
        import numpy as np
    except ImportError:
        return []
    rows = []
    for mib in (1, 16, 128):
        a = np.ones((mib << 20) // 8)
        reps = max(2, h.n(min(64, 512 // mib)))

        def one_round(pool, a=a, reps=reps):
            t0 = time.perf_counter()
            for _ in range(reps):
                if pool.submit(_asum, a).result() != a.size:
                    raise RuntimeError("wrong sum")
            return reps * a.nbytes / (time.perf_counter() - t0) / 1e9

        res = h.compare(_pools(), one_round)
        row = res.row(f"numpy {mib} MiB argument, sum returned", "GB/s",
                      target=5)
        # In-process memcpy of the same array, measured now.
        b = np.empty_like(a)
        np.copyto(b, a)
        t0 = time.perf_counter()
        for _ in range(reps):
            np.copyto(b, a)
        memcpy = reps * a.nbytes / (time.perf_counter() - t0) / 1e9
        row.values["memcpy"] = memcpy
        row.note = (f"piston moves the argument at "
                    f"{row.values['piston'] / memcpy:.0%} of in-process "
                    f"memcpy ({memcpy:.1f} GB/s)")
        rows.append(row)
    return rows


def cpu_scaling(h):
    """Pure-Python CPU work on 1 and 2 workers."""
    tasks, size = h.n(40), 300_000
    pools = {}
    for w in (1, 2):
        for name, f in _impls(w).items():
            if name in ("stdlib", "piston"):
                pools[(name, w)] = lambda f=f: _opened(f)

    def one_round(pool):
        t0 = time.perf_counter()
        for f in [pool.submit(_cpu, size) for _ in range(tasks)]:
            f.result()
        return tasks / (time.perf_counter() - t0)

    res = h.compare(pools, one_round)
    rows = [res.row(f"pure-Python CPU tasks, {w} worker{'s' * (w > 1)}",
                    "tasks/s", columns={n: (n, w) for n in ("stdlib",
                                                           "piston")})
            for w in (1, 2)]
    scaling = {n: res.median((n, 2)) / res.median((n, 1))
               for n in ("stdlib", "piston")}
    rows.append(Row("", "pure-Python CPU, 2 workers / 1 worker", "x",
                    scaling, ratio=scaling["piston"], target=1.9,
                    note="ratio is piston's own 2-worker/1-worker scaling"))
    return rows


def _startup_samples(reps):
    """{maker: [ms, ...]}: pool creation to the first result (then shut
    down, not timed), for piston and each of the stdlib's start methods."""
    makers = {
        "piston": lambda: PISTON(WORKERS),
        "piston(fork)": lambda: PISTON(WORKERS, mp_context="fork"),
    }
    for method in ("fork", "forkserver", "spawn"):
        ctx = multiprocessing.get_context(method)
        makers[f"stdlib({method})"] = (
            lambda ctx=ctx: concurrent.futures.ProcessPoolExecutor(
                WORKERS, mp_context=ctx))
    samples = {k: [] for k in makers}
    order = list(makers)
    shuffle = random.Random(4).shuffle      # the same orders every run
    for rep in range(reps):
        # What ran just before a sample (a 100 ms spawn, or the same fork
        # path warm from a moment ago) moves it by a millisecond or two:
        # each rep takes the makers in a new order.
        shuffle(order)
        for name in order:
            gc.collect()
            t0 = time.perf_counter()
            ex = makers[name]()
            ex.submit(os.getpid).result()   # importable by any start method
            samples[name].append((time.perf_counter() - t0) * 1e3)
            ex.shutdown(wait=True)
    return samples


def _startup_main():
    """In the fresh interpreter startup() starts: samples as JSON.  Given
    "threaded", a second thread runs all along, as in a program with
    threads: piston's pools then take the zygote path (the stdlib's fork
    still forks, with a DeprecationWarning on 3.12+, not shown)."""
    if sys.argv[2:] == ["threaded"]:
        import threading
        import warnings
        warnings.simplefilter("ignore", DeprecationWarning)
        threading.Thread(target=threading.Event().wait, daemon=True).start()
    json.dump(_startup_samples(int(sys.argv[1])), sys.stdout)


def _rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20


def startup(h):
    """Pool start-up to the first result, measured three times.  In a
    fresh interpreter, without and with a second thread: what a program
    starting a pool pays.  In this process, after the other cases: every
    fork-based start forks the parent (the stdlib's fork forks each worker
    from it, piston its first worker and its fork server), and by now the
    parent is large, so the forks dominate."""
    reps = 5 if h.quick else 10

    def fresh(*how):
        out = subprocess.run(
            [sys.executable, "-c",
             "from piston import _cli; _cli._benchmarks(); "
             "from piston.benchmarks.proc import _startup_main; "
             "_startup_main()", str(reps), *how],
            check=True, stdout=subprocess.PIPE, text=True).stdout
        return json.loads(out)

    h._say("start-up in a fresh interpreter")
    alone = fresh()
    h._say("start-up in a fresh interpreter with a second thread")
    threaded = fresh("threaded")
    here_rss = _rss_mib()
    h._say(f"start-up in this process ({here_rss} MiB)")
    here = _startup_samples(reps)
    rows = []
    for where, samples, target in (
            ("a fresh interpreter", alone, 1),
            ("a fresh interpreter with a second thread", threaded, 1),
            (f"this {here_rss} MiB process", here, None)):
        values = {k: median(v) for k, v in samples.items()}
        fastest = min((k for k in values if k.startswith("stdlib")),
                      key=values.get)
        rows.append(Row(
            "", f"start-up to first result, in {where} (vs {fastest})", "ms",
            values, higher_is_better=False, baseline=fastest, target=target,
            samples=samples))
    rows[0].note = (
        "a single-threaded process: piston forks its first worker, then its "
        "fork server; each rep takes the makers in a new order")
    rows[1].note = (
        "piston's fork server comes from its zygote (an interpreter started "
        "by the first such pool and kept; that start is one of the samples), "
        "with the first worker forked ahead; piston(fork) forks its fork "
        "server from the process all the same")
    rows[2].note = (
        "informational: in a process this large each fork costs milliseconds "
        "and both the stdlib's fork and piston's fork path fork it twice "
        "before the first result")
    return rows


CASES = [
    ("submit(f).result() latency", latency),
    ("100k submits", submit_many),
    ("map with automatic chunks", map_auto),
    ("numpy array arguments", arrays),
    ("pure-Python CPU on 1 and 2 workers", cpu_scaling),
    ("start-up to first result", startup),
]
