"""Event-loop suite: piston's loop beside asyncio's and uvloop's, one run.

Each case builds a fresh loop of every kind, runs the same body on each,
and reports the median rate over interleaved repetitions.  The core cases
(call_soon, threadsafe calls, timers, task switching) compare with uvloop,
the best peer; the executor cases compare with asyncio's loop and its
default executor, as the issue sets their targets.
"""
from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import piston

from ._harness import Row

try:
    import uvloop
except ImportError:  # pragma: no cover - optional peer
    uvloop = None

FACTORIES = {"asyncio": asyncio.new_event_loop}
if uvloop is not None:
    FACTORIES["uvloop"] = uvloop.new_event_loop
FACTORIES["piston"] = piston.new_event_loop

# The best installed peer for the loop-core cases.
PEER = "uvloop" if uvloop is not None else "asyncio"


@contextlib.contextmanager
def _open(factory):
    loop = factory()
    try:
        yield loop
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


def _loops():
    return {k: (lambda f=f: _open(f)) for k, f in FACTORIES.items()}


def _k(n):
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def _countdown(loop, n):
    """A future and a callback that completes it on its n-th call."""
    done = loop.create_future()
    left = [n]

    def cb():
        left[0] -= 1
        if left[0] == 0:
            done.set_result(None)

    return done, cb


def _noop(*args):
    return None


def call_soon(h):
    """n call_soon(f) then running them: schedule + dispatch per call."""
    n = h.n(500_000)
    rows = []
    for label, args in (("call_soon(f)", ()), ("call_soon(f, a, b)", (1, 2))):
        def one_round(loop, args=args):
            cs = loop.call_soon
            t0 = time.perf_counter()
            for _ in range(n):
                cs(_noop, *args)
            cs(loop.stop)
            loop.run_forever()
            return n / (time.perf_counter() - t0)

        res = h.compare(_loops(), one_round)
        rows.append(res.row(f"{label} x {_k(n)}, scheduled and run",
                            "calls/s", baseline=PEER, target=1.5))
    return rows


def call_soon_threadsafe(h):
    """Another thread calls call_soon_threadsafe n times; the loop runs
    them as they come."""
    n = h.n(200_000)

    def one_round(loop):
        done, cb = _countdown(loop, n)
        def producer():
            cst = loop.call_soon_threadsafe
            for _ in range(n):
                cst(cb)

        t = threading.Thread(target=producer)
        t0 = time.perf_counter()
        t.start()
        loop.run_until_complete(done)
        rate = n / (time.perf_counter() - t0)
        t.join()
        return rate

    res = h.compare(_loops(), one_round)
    return [res.row(f"call_soon_threadsafe x {_k(n)} from a thread",
                    "calls/s", baseline=PEER, target=1.5)]


def timer_cancel(h):
    """call_later(10, f) then cancel(), n times (a timeout that does not
    fire: the common case), then one loop iteration."""
    n = h.n(300_000)

    def one_round(loop):
        cl = loop.call_later
        t0 = time.perf_counter()
        for _ in range(n):
            cl(10.0, _noop).cancel()
        loop.run_until_complete(asyncio.sleep(0))
        return n / (time.perf_counter() - t0)

    res = h.compare(_loops(), one_round)
    return [res.row(f"call_later + cancel x {_k(n)}", "timers/s",
                    baseline=PEER, target=3)]


def timers_firing(h):
    """n call_later with distinct delays, out of order, then all of them
    firing.  The delays are spread over SPREAD seconds and the loop runs
    once every deadline has passed: the rate counts scheduling and firing,
    not the wait.  The spread is that wide because uvloop keeps timers in
    milliseconds: over 1 ms, 100k deadlines were one or two for it, fired
    in insertion order with no ordering work at all."""
    n = h.n(100_000)
    spread = 0.1

    def one_round(loop):
        done, cb = _countdown(loop, n)
        cl = loop.call_later
        t0 = time.perf_counter()
        for i in range(n):
            # A fixed shuffle of n distinct delays.
            cl(((i * 7919) % n) * (spread / n), cb)
        scheduling = time.perf_counter() - t0
        # Untimed: every deadline passes (uvloop rounds to the next ms).
        time.sleep(spread + 0.002)
        t0 = time.perf_counter()
        loop.run_until_complete(done)
        return n / (scheduling + time.perf_counter() - t0)

    res = h.compare(_loops(), one_round)
    return [res.row(f"{_k(n)} timers firing", "timers/s", baseline=PEER,
                    target=3)]


def sleep0(h):
    """One task awaiting asyncio.sleep(0) n times: a task switch each."""
    n = h.n(200_000)

    async def body():
        s = asyncio.sleep
        t0 = time.perf_counter()
        for _ in range(n):
            await s(0)
        return n / (time.perf_counter() - t0)

    res = h.compare(_loops(), lambda loop: loop.run_until_complete(body()))
    return [res.row(f"await sleep(0) x {_k(n)}", "switches/s",
                    baseline=PEER, target=1.1)]


def tasks_gather(h):
    """n create_task of a trivial coroutine, then gather them all."""
    n = h.n(100_000)

    async def trivial():
        return None

    async def body():
        loop = asyncio.get_running_loop()
        ct = loop.create_task
        t0 = time.perf_counter()
        await asyncio.gather(*[ct(trivial()) for _ in range(n)])
        return n / (time.perf_counter() - t0)

    res = h.compare(_loops(), lambda loop: loop.run_until_complete(body()))
    return [res.row(f"{_k(n)} create_task + gather", "tasks/s",
                    baseline=PEER, target=1.1)]


def run_in_executor(h):
    """Sequential await loop.run_in_executor(None, f): each loop with its
    default executor (piston's: piston.ThreadPoolExecutor)."""
    n = h.n(10_000)

    async def body():
        rie = asyncio.get_running_loop().run_in_executor
        t0 = time.perf_counter()
        for _ in range(n):
            await rie(None, _noop)
        return n / (time.perf_counter() - t0)

    res = h.compare(_loops(), lambda loop: loop.run_until_complete(body()))
    return [res.row(f"await run_in_executor(None, f) x {_k(n)}", "calls/s",
                    baseline="asyncio", target=3)]


def to_thread(h):
    """gather() of n asyncio.to_thread(f) on each loop's default
    executor."""
    n = h.n(10_000)

    async def body():
        t0 = time.perf_counter()
        await asyncio.gather(*[asyncio.to_thread(_noop) for _ in range(n)])
        return n / (time.perf_counter() - t0)

    res = h.compare(_loops(), lambda loop: loop.run_until_complete(body()))
    return [res.row(f"{_k(n)} concurrent to_thread(f)", "calls/s",
                    baseline="asyncio", target=3)]


CASES = [
    ("call_soon", call_soon),
    ("call_soon_threadsafe", call_soon_threadsafe),
    ("timer schedule + cancel", timer_cancel),
    ("timers firing", timers_firing),
    ("sleep(0) switching", sleep0),
    ("create_task + gather", tasks_gather),
    ("run_in_executor round trips", run_in_executor),
    ("concurrent to_thread", to_thread),
]

__all__ = ["CASES", "Row"]
