"""Thread-pool suite: piston.ThreadPoolExecutor beside the stdlib's, one run."""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import random
import time
import zlib

from piston import ThreadPoolExecutor as PISTON

from ._harness import Row, median, p99

STDLIB = concurrent.futures.ThreadPoolExecutor
if PISTON is STDLIB or not issubclass(PISTON, STDLIB):
    raise ImportError("piston.ThreadPoolExecutor must be piston's own "
                      "subclass of concurrent.futures.ThreadPoolExecutor")
IMPLS = {"stdlib": STDLIB, "piston": PISTON}


def _noop(x=None):
    return x


def _pools(**kwargs):
    """A fresh pool of each implementation, shut down (waiting) at exit."""
    return {name: (lambda cls=cls: cls(**kwargs)) for name, cls in IMPLS.items()}


def latency(h):
    """One task at a time: submit(f).result(), each call timed."""
    n = h.n(20_000)

    def one_round(pool):
        clock, submit, lat = time.perf_counter_ns, pool.submit, []
        for _ in range(n):
            t0 = clock()
            submit(_noop).result()
            lat.append(clock() - t0)
        return {"median": median(lat) / 1e3, "p99": p99(lat) / 1e3}

    res = h.compare(_pools(), one_round)
    return [res.row(f"submit(f).result() latency, {m}", "us", m,
                    higher_is_better=False, target=3)
            for m in ("median", "p99")]


def submit_many(h):
    """Submit n trivial tasks, then wait for each in order."""
    n = h.n(200_000)

    def one_round(pool):
        t0 = time.perf_counter()
        fs = [pool.submit(_noop) for _ in range(n)]
        for f in fs:
            f.result()
        return n / (time.perf_counter() - t0)

    res = h.compare(_pools(), one_round)
    return [res.row(f"{_k(n)} submit() then result()", "tasks/s", target=5)]


def map_many(h):
    """list(pool.map(f, range(n))) with the default chunksize."""
    n = h.n(200_000)

    def one_round(pool):
        t0 = time.perf_counter()
        out = list(pool.map(_noop, range(n)))
        rate = n / (time.perf_counter() - t0)
        if len(out) != n or out[-1] != n - 1:
            raise RuntimeError(f"map returned {len(out)} items, not {n}")
        return rate

    res = h.compare(_pools(), one_round)
    return [res.row(f"list(map(f, range({_k(n)})))", "items/s", target=10)]


@contextlib.contextmanager
def _loop_with(cls, default=False):
    """A stock asyncio loop (never piston's) and a fresh pool for it."""
    pool = cls()
    loop = asyncio.SelectorEventLoop()
    if default:
        loop.set_default_executor(pool)
    try:
        yield loop, pool
    finally:
        loop.close()
        pool.shutdown(wait=True)


def run_in_executor(h):
    """Sequential await loop.run_in_executor(pool, f) round trips."""
    n = h.n(10_000)

    async def trips(loop, pool):
        rie = loop.run_in_executor
        t0 = time.perf_counter()
        for _ in range(n):
            await rie(pool, _noop)
        return n / (time.perf_counter() - t0)

    def one_round(res):
        loop, pool = res
        return loop.run_until_complete(trips(loop, pool))

    res = h.compare({k: (lambda c=c: _loop_with(c)) for k, c in IMPLS.items()},
                    one_round)
    return [res.row("await run_in_executor(pool, f), asyncio loop",
                    "calls/s", target=1.5)]


def to_thread(h):
    """gather() of n asyncio.to_thread(f), the pool as default executor."""
    n = h.n(10_000)

    async def many():
        t0 = time.perf_counter()
        await asyncio.gather(*[asyncio.to_thread(_noop) for _ in range(n)])
        return n / (time.perf_counter() - t0)

    def one_round(res):
        return res[0].run_until_complete(many())

    res = h.compare({k: (lambda c=c: _loop_with(c, default=True))
                     for k, c in IMPLS.items()}, one_round)
    return [res.row(f"{_k(n)} concurrent to_thread(f), asyncio loop",
                    "calls/s", target=1.5)]


def _text(size):
    """Deterministic word salad: compresses about 2.7:1, like real text."""
    r = random.Random(2)
    words = [bytes(r.choices(b"etaoinshrdlucmfwypvbgkqjxz", k=r.randint(2, 9)))
             for _ in range(2000)]
    out = b" ".join(r.choices(words, k=size // 4))
    while len(out) < size:
        out += out
    return out[:size]


def _gil_free(h, label, work, size, tasks):
    """Throughput of GIL-releasing work on 1 and 2 workers of each pool."""
    pools = {(name, w): (lambda c=cls, w=w: c(max_workers=w))
             for name, cls in IMPLS.items() for w in (1, 2)}

    def one_round(pool):
        t0 = time.perf_counter()
        for f in [pool.submit(work) for _ in range(tasks)]:
            f.result()
        return tasks * size / (time.perf_counter() - t0) / 1e6

    res = h.compare(pools, one_round)
    rows = [res.row(f"{label}, {w} worker{'s' * (w > 1)}", "MB/s",
                    columns={name: (name, w) for name in IMPLS})
            for w in (1, 2)]
    scaling = {name: res.median((name, 2)) / res.median((name, 1))
               for name in IMPLS}
    rows.append(Row("", f"{label}, 2 workers / 1 worker", "x", scaling,
                    ratio=scaling["piston"], target=1.8,
                    note="ratio is piston's own 2-worker/1-worker scaling"))
    return rows


def sha256(h):
    """hashlib.sha256 over 4 MiB, which hashes without the GIL."""
    data = random.Random(1).randbytes(4 << 20)
    return _gil_free(h, "sha256 over 4 MiB", lambda: hashlib.sha256(data).digest(),
                     len(data), 64 if not h.quick else 8)


def compress(h):
    """zlib.compress over 1 MiB of text, which compresses without the GIL."""
    data = _text(1 << 20)
    return _gil_free(h, "zlib.compress over 1 MiB", lambda: zlib.compress(data),
                     len(data), 16 if not h.quick else 4)


def _k(n):
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


CASES = [
    ("submit(f).result() latency", latency),
    ("submit many, then result()", submit_many),
    ("map over many items", map_many),
    ("run_in_executor round trips", run_in_executor),
    ("concurrent asyncio.to_thread", to_thread),
    ("sha256 on 1 and 2 workers", sha256),
    ("zlib.compress on 1 and 2 workers", compress),
]
