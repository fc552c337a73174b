"""Parity tests: piston.ThreadPoolExecutor behaves like concurrent.futures.ThreadPoolExecutor."""
import asyncio
import concurrent.futures as cf
import functools
import gc
import hashlib
import logging
import operator
import os
import random
import threading
import time
import traceback
import weakref
import zlib

import pytest

T = 30  # hang guard for waits that must succeed


def task_raiser(x):
    raise ValueError(f"bad {x}")


def add(a, b=0, *, c=0):
    return a + b + c


def thread_name(*_):
    return threading.current_thread().name


def submit_result(ex, fn, *args, **kwargs):
    """ex.submit(...).result(), accepting an error raised by either call."""
    return ex.submit(fn, *args, **kwargs).result(timeout=T)


# ------------------------------------------------------------ identity

def test_isinstance(executor_cls, make_pool):
    assert issubclass(executor_cls, cf.ThreadPoolExecutor)
    ex = make_pool(max_workers=2)
    assert isinstance(ex, cf.ThreadPoolExecutor)
    assert isinstance(ex, cf.Executor)
    f = ex.submit(int)
    assert isinstance(f, cf.Future)
    assert f.result(timeout=T) == 0


def test_piston_submit_returns_piston_future(pistonmod):
    """piston-only: the pool hands out the C future."""
    with pistonmod.ThreadPoolExecutor(2) as ex:
        f = ex.submit(int)
        assert type(f) is pistonmod.Future
        assert f.result(timeout=T) == 0


# ------------------------------------------------------------ submit

def test_submit_args_kwargs(make_pool):
    ex = make_pool(max_workers=2)
    assert ex.submit(add, 1).result(timeout=T) == 1
    assert ex.submit(add, 1, 2).result(timeout=T) == 3
    assert ex.submit(add, 1, 2, c=3).result(timeout=T) == 6
    assert ex.submit(add, a=1, b=2).result(timeout=T) == 3
    assert ex.submit(dict, fn=1, self=2).result(timeout=T) == {
        "fn": 1, "self": 2}


def test_submit_kinds_of_callables(make_pool):
    ex = make_pool(max_workers=2)

    class C:
        def m(self, x):
            return ("m", x)

        def __call__(self, x):
            return ("call", x)
    assert ex.submit(C().m, 1).result(timeout=T) == ("m", 1)
    assert ex.submit(C(), 2).result(timeout=T) == ("call", 2)
    assert ex.submit(functools.partial(add, 1), 2).result(timeout=T) == 3
    assert ex.submit(lambda: "lam").result(timeout=T) == "lam"
    assert ex.submit(len, "abc").result(timeout=T) == 3
    assert ex.submit(C).result(timeout=T).__class__ is C


def test_result_identity_preserved(make_pool):
    ex = make_pool(max_workers=2)
    obj = object()
    assert ex.submit(lambda: obj).result(timeout=T) is obj
    assert ex.submit(lambda: None).result(timeout=T) is None


def test_exception_with_traceback(make_pool):
    ex = make_pool(max_workers=2)
    f = ex.submit(task_raiser, 3)
    with pytest.raises(ValueError, match="bad 3") as ei:
        f.result(timeout=T)
    names = [fs.name for fs in traceback.extract_tb(ei.value.__traceback__)]
    assert "task_raiser" in names
    assert f.exception(timeout=T) is ei.value
    # The pool keeps working afterwards.
    assert ex.submit(add, 2, 2).result(timeout=T) == 4


@pytest.mark.parametrize("exc", [SystemExit(3), KeyboardInterrupt(),
                                 GeneratorExit()])
def test_base_exception_in_task_stored(make_pool, exc):
    ex = make_pool(max_workers=1)

    def boom():
        raise exc
    f = ex.submit(boom)
    assert f.exception(timeout=T) is exc
    assert ex.submit(add, 1, 1).result(timeout=T) == 2


def test_submit_non_callable_type_error(make_pool):
    ex = make_pool(max_workers=2)
    with pytest.raises(TypeError):
        ex.submit(1).result(timeout=T)
    with pytest.raises(TypeError):
        ex.submit(None).result(timeout=T)
    assert ex.submit(add, 1, 1).result(timeout=T) == 2


def test_submit_without_fn_type_error(make_pool):
    ex = make_pool(max_workers=1)
    with pytest.raises(TypeError):
        ex.submit()


def test_many_tasks_from_many_submitters(make_pool):
    ex = make_pool(max_workers=4)
    results = {}

    def submitter(k):
        fs = [ex.submit(operator.mul, k, i) for i in range(2000)]
        results[k] = [f.result(timeout=T) for f in fs]
    ts = [threading.Thread(target=submitter, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert results == {k: [k * i for i in range(2000)] for k in range(4)}


def test_nested_submit_from_task(make_pool):
    ex = make_pool(max_workers=2)

    def outer(x):
        return ex.submit(add, x, 1).result(timeout=T) * 10
    assert ex.submit(outer, 4).result(timeout=T) == 50


def test_task_arguments_released(make_pool):
    ex = make_pool(max_workers=2)

    class Obj:
        pass
    obj, res = Obj(), Obj()
    wobj, wres = weakref.ref(obj), weakref.ref(res)
    f = ex.submit(lambda o, r=res: r, obj)
    assert f.result(timeout=T) is res
    del obj, res, f
    deadline = time.monotonic() + T
    while (wobj() is not None or wres() is not None) \
            and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.01)
    assert wobj() is None, "task argument leaked"
    assert wres() is None, "task result leaked"


def test_done_callback_runs_once(make_pool):
    ex = make_pool(max_workers=2)
    counts = [0] * 500
    ev = threading.Event()
    lock = threading.Lock()
    remaining = [500]

    def cb(i):
        def f(_):
            with lock:
                counts[i] += 1
                remaining[0] -= 1
                if remaining[0] == 0:
                    ev.set()
        return f
    for i in range(500):
        ex.submit(add, i).add_done_callback(cb(i))
    assert ev.wait(T)
    assert counts == [1] * 500


def test_raising_callback_logged_pool_keeps_working(make_pool, caplog):
    ex = make_pool(max_workers=1)
    after = threading.Event()

    def bad(_):
        raise ZeroDivisionError("cb")
    with caplog.at_level(logging.DEBUG, logger="concurrent.futures"):
        f = ex.submit(add, 1, 1)
        f.add_done_callback(bad)
        f.add_done_callback(lambda _: after.set())
        assert f.result(timeout=T) == 2
        assert after.wait(T)
    recs = [r for r in caplog.records if r.name == "concurrent.futures"]
    assert len(recs) == 1
    assert recs[0].exc_info and recs[0].exc_info[0] is ZeroDivisionError
    assert ex.submit(add, 2, 3).result(timeout=T) == 5


# ----------------------------------------------------------------- map

def test_map_order(make_pool):
    ex = make_pool(max_workers=4)

    def slow_neg(x):
        time.sleep(random.random() / 500)
        return -x
    assert list(ex.map(slow_neg, range(200))) == [-x for x in range(200)]


def test_map_multiple_iterables(make_pool):
    ex = make_pool(max_workers=3)
    assert list(ex.map(add, [1, 2, 3], [10, 20, 30, 40])) == [11, 22, 33]
    assert list(ex.map(pow, range(5), range(5), [7] * 5)) == [
        pow(i, i, 7) for i in range(5)]


def test_map_generator_input(make_pool):
    ex = make_pool(max_workers=2)
    gen = (i * 2 for i in range(50))
    assert list(ex.map(str, gen)) == [str(i * 2) for i in range(50)]


@pytest.mark.parametrize("chunksize", [1, 7, 1000])
def test_map_chunksize(make_pool, chunksize):
    ex = make_pool(max_workers=2)
    n = 2503
    assert list(ex.map(operator.neg, range(n), chunksize=chunksize)) == [
        -i for i in range(n)]
    assert list(ex.map(add, range(10), range(10), chunksize=chunksize)) == [
        2 * i for i in range(10)]


@pytest.mark.parametrize("chunksize", [1, 7])
def test_map_empty(make_pool, chunksize):
    ex = make_pool(max_workers=2)
    assert list(ex.map(operator.neg, [], chunksize=chunksize)) == []
    assert list(ex.map(add, [], [1, 2])) == []


@pytest.mark.parametrize("chunksize", [1, 3, 1000])
def test_map_exception_midway(make_pool, chunksize):
    ex = make_pool(max_workers=2)

    def f(x):
        if x == 5:
            raise KeyError(x)
        return x
    got = []
    it = ex.map(f, range(10), chunksize=chunksize)
    with pytest.raises(KeyError) as ei:
        for v in it:
            got.append(v)
    assert got == [0, 1, 2, 3, 4]
    assert ei.value.args == (5,)


def test_map_exception_keeps_traceback(make_pool):
    ex = make_pool(max_workers=2)
    with pytest.raises(ValueError) as ei:
        list(ex.map(task_raiser, [1]))
    names = [fs.name for fs in traceback.extract_tb(ei.value.__traceback__)]
    assert "task_raiser" in names


def test_map_timeout(make_pool, make_event):
    ex = make_pool(max_workers=2)
    gate = make_event()
    it = ex.map(gate.wait, [T, T, T], timeout=0.1)
    with pytest.raises(TimeoutError):
        next(it)
    gate.set()


def test_map_timeout_enough_time(make_pool):
    ex = make_pool(max_workers=2)
    assert list(ex.map(add, range(20), timeout=T)) == list(range(20))


@pytest.mark.parametrize("how", ["close", "del"])
def test_map_early_close_does_not_hang(make_pool, make_event, how):
    ex = make_pool(max_workers=2)
    gate = make_event()
    ran = []

    def f(x):
        ran.append(x)
        if x:
            gate.wait(T)
        return x
    it = ex.map(f, range(100))
    assert next(it) == 0
    if how == "close":
        it.close()
    else:
        del it
        gc.collect()
    gate.set()
    ex.shutdown(wait=True)
    # Queued items behind the blocked ones were cancelled, not run.
    assert len(ran) < 100
    assert len(set(ran)) == len(ran)


def test_map_200k_items(make_pool):
    ex = make_pool(max_workers=2)
    n = 200_000
    out = list(ex.map(operator.neg, range(n)))
    assert len(out) == n
    assert out == [-i for i in range(n)]


def test_map_200k_items_chunked(make_pool):
    ex = make_pool(max_workers=2)
    n = 200_000
    assert sum(ex.map(operator.neg, range(n), chunksize=1000)) == -(
        n * (n - 1) // 2)


# ------------------------------------------------------------ shutdown

def test_shutdown_wait_true_runs_everything(make_pool):
    ex = make_pool(max_workers=2, thread_name_prefix="pn-sd-wait")
    done = []
    fs = [ex.submit(lambda i=i: (time.sleep(0.001), done.append(i)))
          for i in range(50)]
    ex.shutdown(wait=True)
    assert all(f.done() for f in fs)
    assert sorted(done) == list(range(50))
    assert not [t for t in threading.enumerate()
                if t.name.startswith("pn-sd-wait")]


def test_shutdown_wait_false_returns_and_work_finishes(make_pool,
                                                       make_event):
    ex = make_pool(max_workers=1)
    gate = make_event()
    f = ex.submit(gate.wait, T)
    g = ex.submit(add, 1, 2)
    ex.shutdown(wait=False)
    assert not f.done()
    gate.set()
    assert f.result(timeout=T) is True
    assert g.result(timeout=T) == 3


def test_shutdown_cancel_futures(make_pool, make_event):
    ex = make_pool(max_workers=1)
    gate = make_event()
    started = threading.Event()

    def blocker():
        started.set()
        return gate.wait(T)
    running = ex.submit(blocker)
    assert started.wait(T)
    queued = [ex.submit(add, i) for i in range(20)]
    ex.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in queued)
    assert all(f.done() for f in queued)
    for f in queued:
        with pytest.raises(cf.CancelledError):
            f.result(timeout=T)
    assert not running.cancelled()
    gate.set()
    assert running.result(timeout=T) is True
    ex.shutdown(wait=True)


def test_shutdown_twice_and_no_work(make_pool):
    ex = make_pool(max_workers=2)
    ex.shutdown()
    ex.shutdown()
    ex.shutdown(wait=False)


def test_submit_after_shutdown_runtime_error(make_pool):
    ex = make_pool(max_workers=2)
    ex.submit(add, 1).result(timeout=T)
    ex.shutdown(wait=False)
    with pytest.raises(RuntimeError):
        ex.submit(add, 1)
    with pytest.raises(RuntimeError):
        list(ex.map(add, [1]))


def test_context_manager(executor_cls):
    done = []
    with executor_cls(max_workers=2) as ex:
        assert isinstance(ex, executor_cls)
        fs = [ex.submit(lambda i=i: (time.sleep(0.002), done.append(i)))
              for i in range(20)]
    assert all(f.done() for f in fs)
    assert sorted(done) == list(range(20))
    with pytest.raises(RuntimeError):
        ex.submit(add, 1)


def test_context_manager_body_exception(executor_cls):
    with pytest.raises(KeyError):
        with executor_cls(max_workers=2) as ex:
            f = ex.submit(add, 1, 1)
            raise KeyError("body")
    assert f.result(timeout=T) == 2
    with pytest.raises(RuntimeError):
        ex.submit(add, 1)


def test_pool_garbage_collected_without_shutdown(executor_cls):
    before = threading.active_count()
    ex = executor_cls(max_workers=2, thread_name_prefix="pn-gc")
    fs = [ex.submit(add, i) for i in range(10)]
    assert [f.result(timeout=T) for f in fs] == list(range(10))
    del ex, fs
    deadline = time.monotonic() + T
    while time.monotonic() < deadline and [
            t for t in threading.enumerate() if t.name.startswith("pn-gc")]:
        gc.collect()
        time.sleep(0.02)
    assert not [t for t in threading.enumerate()
                if t.name.startswith("pn-gc")]
    assert threading.active_count() <= before


# -------------------------------------------------------- constructor

def _default_workers():
    cpus = getattr(os, "process_cpu_count", os.cpu_count)()
    return min(32, (cpus or 1) + 4)


def test_default_max_workers(make_pool):
    ex = make_pool()
    assert ex._max_workers == _default_workers()


def test_max_workers_none_is_default(make_pool):
    ex = make_pool(None)
    assert ex._max_workers == _default_workers()


@pytest.mark.parametrize("n", [0, -1, -100])
def test_max_workers_not_positive(executor_cls, n):
    with pytest.raises(ValueError):
        executor_cls(max_workers=n)


@pytest.mark.parametrize("n", ["4", [4], object()])
def test_max_workers_wrong_type(executor_cls, n):
    with pytest.raises(TypeError):
        executor_cls(max_workers=n)


def test_initializer_not_callable(executor_cls):
    with pytest.raises(TypeError):
        executor_cls(max_workers=1, initializer=5)


def test_positional_constructor_arguments(make_pool):
    seen = []
    ex = make_pool(1, "pn-positional", seen.append, ("arg",))
    assert ex.submit(thread_name).result(timeout=T).startswith(
        "pn-positional")
    assert seen == ["arg"]


def test_lazy_thread_start(make_pool):
    ex = make_pool(max_workers=4)
    assert len(ex._threads) == 0
    for i in range(10):
        assert ex.submit(add, i).result(timeout=T) == i
        time.sleep(0.05)  # let the worker go idle again (no timing assert)
    assert len(ex._threads) == 1


def test_threads_grow_to_max_workers_only(make_pool, make_event):
    ex = make_pool(max_workers=3)
    gate = make_event()
    fs = [ex.submit(gate.wait, T) for _ in range(10)]
    time.sleep(0.1)
    assert len(ex._threads) == 3
    gate.set()
    assert all(f.result(timeout=T) for f in fs)
    assert len(ex._threads) == 3


def test_thread_names_and_visibility(make_pool, make_event):
    ex = make_pool(max_workers=2, thread_name_prefix="pn-vis")
    gate = make_event()
    barrier = threading.Barrier(3, timeout=T)

    def task():
        me = threading.current_thread()
        barrier.wait()
        gate.wait(T)
        return me.name, me.ident, me in threading.enumerate(), \
            threading.get_ident()
    fs = [ex.submit(task) for _ in range(2)]
    barrier.wait()
    names = [t.name for t in threading.enumerate()
             if t.name.startswith("pn-vis")]
    assert len(names) == 2
    gate.set()
    res = [f.result(timeout=T) for f in fs]
    assert sorted(r[0] for r in res) == sorted(names)
    assert all(r[2] for r in res)
    assert all(r[1] == r[3] for r in res)
    assert len({r[1] for r in res}) == 2


def test_default_thread_name_prefix(make_pool):
    ex = make_pool(max_workers=1)
    name = ex.submit(thread_name).result(timeout=T)
    assert name.startswith("ThreadPoolExecutor-")


# --------------------------------------------------------- initializer

def test_initializer_once_per_thread(make_pool):
    calls = []
    lock = threading.Lock()

    def init(a, b):
        with lock:
            calls.append((threading.get_ident(), a, b))
    ex = make_pool(max_workers=2, initializer=init, initargs=(1, "x"))
    barrier = threading.Barrier(2, timeout=T)

    def task():
        barrier.wait()
        return threading.get_ident()
    idents = {f.result(timeout=T) for f in [ex.submit(task),
                                             ex.submit(task)]}
    for i in range(20):
        ex.submit(add, i).result(timeout=T)
    assert len(idents) == 2
    assert sorted(c[0] for c in calls) == sorted(idents)
    assert all(c[1:] == (1, "x") for c in calls)


def _submit_outcome(ex, fn, *args):
    try:
        return ex.submit(fn, *args).result(timeout=T)
    except BaseException as e:  # noqa: BLE001
        return e


def test_failing_initializer_breaks_pool(make_pool, caplog,
                                         broken_thread_pool_cls):
    def init():
        raise OSError("init failed")
    with caplog.at_level(logging.DEBUG, logger="concurrent.futures"):
        ex = make_pool(max_workers=1, initializer=init)
        first = ex.submit(add, 1)
        # Submits racing with the failure: each either raises at submit()
        # or hands out a future that fails with BrokenThreadPool.
        pending = []
        for i in range(5):
            try:
                pending.append(ex.submit(add, i))
            except cf.thread.BrokenThreadPool as e:
                assert isinstance(e, broken_thread_pool_cls)
        with pytest.raises(cf.thread.BrokenThreadPool) as ei:
            first.result(timeout=T)
        assert isinstance(ei.value, broken_thread_pool_cls)
        for f in pending:
            with pytest.raises(broken_thread_pool_cls):
                f.result(timeout=T)
        # Later submits fail too, at submit() or at result().
        for _ in range(3):
            assert isinstance(_submit_outcome(ex, add, 1),
                              broken_thread_pool_cls)
    recs = [r for r in caplog.records if r.name == "concurrent.futures"]
    assert recs, "initializer failure was not logged"
    assert any(r.exc_info and r.exc_info[0] is OSError for r in recs)
    ex.shutdown(wait=True)


# ------------------------------------------------------ cancellation races

def test_cancel_queued_while_workers_run(make_pool):
    for rnd in range(3):
        ex = make_pool(max_workers=2)
        n = 2000
        ran = [0] * n
        cb_calls = [0] * n
        lock = threading.Lock()

        def work(i):
            ran[i] += 1
            return i

        def cb(i):
            def f(_):
                with lock:
                    cb_calls[i] += 1
            return f
        fs = []
        for i in range(n):
            f = ex.submit(work, i)
            f.add_done_callback(cb(i))
            fs.append(f)
        cancelled = [False] * n

        def canceller(k):
            for i in range(k, n, 3):
                cancelled[i] = fs[i].cancel() or cancelled[i]
        ts = [threading.Thread(target=canceller, args=(k,))
              for k in range(3)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        done, not_done = cf.wait(fs, timeout=T)
        assert not not_done
        ex.shutdown(wait=True)
        for i, f in enumerate(fs):
            assert f.done()
            if cancelled[i]:
                assert f.cancelled() and ran[i] == 0, i
            else:
                assert not f.cancelled() and ran[i] == 1, i
                assert f.result() == i
        assert cb_calls == [1] * n


def test_cancel_from_many_threads_same_futures(make_pool, make_event):
    ex = make_pool(max_workers=1)
    gate = make_event()
    blocker = ex.submit(gate.wait, T)
    fs = [ex.submit(add, i) for i in range(300)]
    results = [[] for _ in range(4)]

    def canceller(k):
        results[k] = [f.cancel() for f in fs]
    ts = [threading.Thread(target=canceller, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    gate.set()
    assert blocker.result(timeout=T) is True
    assert all(all(r) for r in results)
    assert all(f.cancelled() for f in fs)
    # The pool is still usable after draining cancelled work.
    assert ex.submit(add, 7).result(timeout=T) == 7


# ------------------------------------------------------------- asyncio

def test_set_default_executor_and_to_thread(make_pool):
    ex = make_pool(max_workers=2, thread_name_prefix="pn-aio")

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ex)
        a = await loop.run_in_executor(None, thread_name)
        b = await asyncio.to_thread(thread_name)
        c = await asyncio.to_thread(add, 1, b=2, c=3)
        with pytest.raises(ValueError):
            await asyncio.to_thread(task_raiser, 1)
        return a, b, c
    a, b, c = asyncio.run(main())
    assert a.startswith("pn-aio") and b.startswith("pn-aio")
    assert c == 6
    # asyncio.run shuts the default executor down.
    with pytest.raises(RuntimeError):
        ex.submit(add, 1)


def test_run_in_executor(make_pool):
    ex = make_pool(max_workers=2)

    async def main():
        loop = asyncio.get_running_loop()
        r = await loop.run_in_executor(ex, add, 1, 2)
        with pytest.raises(ValueError) as ei:
            await loop.run_in_executor(ex, task_raiser, 2)
        names = [fs.name for fs in
                 traceback.extract_tb(ei.value.__traceback__)]
        assert "task_raiser" in names
        many = await asyncio.gather(
            *[loop.run_in_executor(ex, operator.neg, i) for i in range(1000)])
        return r, many
    r, many = asyncio.run(main())
    assert r == 3
    assert many == [-i for i in range(1000)]


def test_to_thread_many_concurrent(make_pool):
    ex = make_pool(max_workers=4)

    async def main():
        asyncio.get_running_loop().set_default_executor(ex)
        return await asyncio.gather(
            *[asyncio.to_thread(operator.neg, i) for i in range(2000)])
    assert asyncio.run(main()) == [-i for i in range(2000)]


def test_run_in_executor_cancel(make_pool, make_event):
    ex = make_pool(max_workers=1)
    gate = make_event()

    async def main():
        loop = asyncio.get_running_loop()
        blocker = loop.run_in_executor(ex, gate.wait, T)
        queued = loop.run_in_executor(ex, add, 1)
        queued.cancel()
        await asyncio.sleep(0.05)
        gate.set()
        assert await blocker is True
        return queued.cancelled()
    assert asyncio.run(main())


# -------------------------------------------------------- real workloads

def _buffers(n, size):
    rng = random.Random(1234)
    return [rng.randbytes(size) for _ in range(n)]


def test_sha256_over_mib_buffers(make_pool):
    ex = make_pool(max_workers=2)
    bufs = _buffers(16, 1 << 20)
    expect = [hashlib.sha256(b).hexdigest() for b in bufs]
    assert list(ex.map(lambda b: hashlib.sha256(b).hexdigest(), bufs)) == \
        expect
    fs = [ex.submit(lambda b: hashlib.sha256(b).digest(), b) for b in bufs]
    assert [f.result(timeout=T).hex() for f in fs] == expect


def test_zlib_compress_over_mib_buffers(make_pool):
    ex = make_pool(max_workers=2)
    rng = random.Random(99)
    words = [rng.choice([b"alpha", b"beta", b"gamma", b"delta"])
             for _ in range(200_000)]
    text = b" ".join(words)
    bufs = [text[i:i + (1 << 20)] for i in range(0, 4 << 20, 1 << 20)]
    bufs = [b for b in bufs if b]
    expect = [zlib.compress(b) for b in bufs]
    got = list(ex.map(zlib.compress, bufs))
    assert got == expect
    assert list(ex.map(zlib.decompress, got)) == bufs


def test_numpy_work(make_pool):
    np = pytest.importorskip("numpy")
    ex = make_pool(max_workers=2)
    rng = np.random.default_rng(5)
    mats = [rng.standard_normal((120, 120)) for _ in range(8)]
    expect = [m @ m.T for m in mats]
    got = list(ex.map(lambda m: m @ m.T, mats))
    for g, e in zip(got, expect):
        assert np.array_equal(g, e)


# --------------------------------- waiting on futures the workers complete

def _gated_pool(make_pool, make_event, n):
    """A pool of n workers and n gated tasks: task i returns i (or raises
    KeyError(i) when i == raise_at) once gates[i] is set."""
    ex = make_pool(max_workers=n)
    gates = [make_event() for _ in range(n)]
    return ex, gates


def test_cf_wait_on_pool_futures(make_pool, make_event):
    ex, gates = _gated_pool(make_pool, make_event, 3)

    def task(i):
        gates[i].wait(T)
        if i == 2:
            raise KeyError(i)
        return i
    fs = [ex.submit(task, i) for i in range(3)]
    threading.Timer(0.05, gates[1].set).start()
    done, not_done = cf.wait(fs, timeout=T, return_when=cf.FIRST_COMPLETED)
    assert done == {fs[1]} and not_done == {fs[0], fs[2]}
    threading.Timer(0.05, gates[2].set).start()
    done, not_done = cf.wait(fs, timeout=T, return_when=cf.FIRST_EXCEPTION)
    assert done == {fs[1], fs[2]} and not_done == {fs[0]}
    threading.Timer(0.05, gates[0].set).start()
    done, not_done = cf.wait(fs, timeout=T, return_when=cf.ALL_COMPLETED)
    assert done == set(fs) and not not_done


def test_as_completed_on_pool_futures(make_pool, make_event):
    ex, gates = _gated_pool(make_pool, make_event, 3)
    fs = [ex.submit(lambda i=i: gates[i].wait(T) and i) for i in range(3)]
    order = [2, 0, 1]
    gates[order[0]].set()
    got = []
    for f in cf.as_completed(fs, timeout=T):
        got.append(f.result())
        if len(got) < 3:
            gates[order[len(got)]].set()
    assert got == order


def test_wrap_future_on_pool_future(make_pool, make_event):
    ex = make_pool(max_workers=1)
    gate = make_event()

    async def main():
        f = ex.submit(lambda: gate.wait(T) and "v")
        asyncio.get_running_loop().call_later(0.05, gate.set)
        return await asyncio.wait_for(asyncio.wrap_future(f), T)
    assert asyncio.run(main()) == "v"


def test_pool_future_running_state(make_pool, make_event):
    ex = make_pool(max_workers=1)
    gate = make_event()
    started = threading.Event()
    f = ex.submit(lambda: (started.set(), gate.wait(T))[1])
    queued = ex.submit(add, 1)
    assert started.wait(T)
    assert f.running() and not f.done()
    assert "state=running" in repr(f)
    assert f.cancel() is False
    assert not queued.running() and not queued.done()
    assert "state=pending" in repr(queued)
    gate.set()
    assert f.result(timeout=T) is True
    assert queued.result(timeout=T) == 1
    assert not f.running()


# ---------------------------------------- re-entrancy from worker callbacks

def test_submit_from_done_callback(make_pool):
    ex = make_pool(max_workers=1)
    second = []
    got = threading.Event()

    def cb(fut):
        g = ex.submit(add, fut.result(), 1)
        second.append(g)
        g.add_done_callback(lambda _: got.set())
    f = ex.submit(add, 1)
    f.add_done_callback(cb)
    assert got.wait(T)
    assert second[0].result(timeout=T) == 2


def test_result_and_cancel_inside_worker_callback(make_pool, make_event):
    ex = make_pool(max_workers=1)
    gate = make_event()
    seen = []
    ev = threading.Event()
    f = ex.submit(gate.wait, T)
    other = ex.submit(add, 1)

    def cb(fut):
        seen.append(fut.result(timeout=0))
        seen.append(other.cancel())
        ev.set()
    f.add_done_callback(cb)
    gate.set()
    assert ev.wait(T)
    assert seen == [True, True]
    assert other.cancelled()
    assert ex.submit(add, 5).result(timeout=T) == 5


def test_shutdown_from_done_callback(make_pool):
    ex = make_pool(max_workers=2)
    ev = threading.Event()

    def cb(_):
        ex.shutdown(wait=False)
        ev.set()
    f = ex.submit(add, 1)
    f.add_done_callback(cb)
    assert ev.wait(T)
    with pytest.raises(RuntimeError):
        ex.submit(add, 1)
    ex.shutdown(wait=True)


# ----------------------------------------------------------- more map

def test_map_iterator_protocol(make_pool):
    ex = make_pool(max_workers=2)
    it = ex.map(operator.neg, [1, 2])
    assert iter(it) is it
    assert next(it) == -1 and next(it) == -2
    with pytest.raises(StopIteration):
        next(it)
    with pytest.raises(StopIteration):
        next(it)


def test_map_input_iterable_raises(make_pool):
    ex = make_pool(max_workers=2)

    def gen():
        yield 1
        yield 2
        raise KeyError("input")
    with pytest.raises(KeyError):
        list(ex.map(operator.neg, gen()))
    assert ex.submit(add, 1).result(timeout=T) == 1


def test_map_non_callable(make_pool):
    ex = make_pool(max_workers=2)
    with pytest.raises(TypeError):
        list(ex.map(1, [1, 2]))
    with pytest.raises(TypeError):
        list(ex.map(None, [1], chunksize=5))


def test_map_runs_all_even_if_shut_down_before_iterating(make_pool):
    ex = make_pool(max_workers=2)
    ran = []
    it = ex.map(lambda x: ran.append(x) or x * 3, range(500), chunksize=7)
    ex.shutdown(wait=True)
    assert sorted(ran) == list(range(500))
    assert list(it) == [x * 3 for x in range(500)]


def test_map_from_many_threads(make_pool):
    ex = make_pool(max_workers=4)
    out = {}

    def mapper(k):
        out[k] = list(ex.map(operator.mul, range(5000), [k] * 5000,
                             chunksize=1 + 50 * k))
    ts = [threading.Thread(target=mapper, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert out == {k: [i * k for i in range(5000)] for k in range(4)}


def test_map_mixed_with_submit(make_pool):
    ex = make_pool(max_workers=2)
    fs = [ex.submit(add, i) for i in range(100)]
    it = ex.map(operator.neg, range(100), chunksize=10)
    gs = [ex.submit(add, i, 1) for i in range(100)]
    assert list(it) == [-i for i in range(100)]
    assert [f.result(timeout=T) for f in fs] == list(range(100))
    assert [g.result(timeout=T) for g in gs] == list(range(1, 101))


# ------------------------------------------------- shutdown/submit races

def test_submit_racing_shutdown_loses_nothing(make_pool):
    for _ in range(5):
        ex = make_pool(max_workers=2)
        got = [[] for _ in range(3)]
        go = threading.Barrier(4, timeout=T)

        def submitter(k):
            go.wait()
            for i in range(2000):
                try:
                    got[k].append((i, ex.submit(operator.neg, i)))
                except RuntimeError:
                    return
        ts = [threading.Thread(target=submitter, args=(k,))
              for k in range(3)]
        for t in ts:
            t.start()
        go.wait()
        time.sleep(0.002)
        ex.shutdown(wait=True)
        for t in ts:
            t.join()
        # Every future handed out before shutdown ran to completion.
        for lst in got:
            for i, f in lst:
                assert f.done(), "accepted work not finished by shutdown"
                assert f.result(timeout=0) == -i


def test_many_pools_created_and_shut_down(executor_cls):
    before = threading.active_count()
    for i in range(40):
        with executor_cls(max_workers=2) as ex:
            assert ex.submit(add, i).result(timeout=T) == i
            list(ex.map(add, range(10)))
    assert threading.active_count() <= before


def test_initializer_raising_base_exception_breaks_pool(
        make_pool, broken_thread_pool_cls):
    def init():
        raise SystemExit("init exit")
    ex = make_pool(max_workers=1, initializer=init)
    out = _submit_outcome(ex, add, 1)
    assert isinstance(out, broken_thread_pool_cls), out


# --------------------------------------------------- worker thread nature

def test_worker_threads_are_real_non_daemon_threads(make_pool):
    ex = make_pool(max_workers=1)

    def info():
        me = threading.current_thread()
        return (isinstance(me, threading.Thread),
                isinstance(me, threading._DummyThread),
                me.daemon, me.is_alive(), me is not threading.main_thread())
    assert ex.submit(info).result(timeout=T) == (True, False, False, True,
                                                 True)


def test_thread_local_set_by_initializer_persists(make_pool):
    local = threading.local()

    def init(tag):
        local.tag = tag
        local.count = 0

    def task():
        local.count += 1
        return local.tag, local.count
    ex = make_pool(max_workers=1, initializer=init, initargs=("T",))
    res = [ex.submit(task).result(timeout=T) for _ in range(5)]
    assert res == [("T", i) for i in range(1, 6)]


def test_submit_does_not_copy_context_but_to_thread_does(make_pool):
    import contextvars
    var = contextvars.ContextVar("var", default="default")
    ex = make_pool(max_workers=1)
    var.set("submitter")
    assert ex.submit(var.get).result(timeout=T) == "default"

    async def main():
        asyncio.get_running_loop().set_default_executor(ex)
        var.set("coroutine")
        return await asyncio.to_thread(var.get)
    assert asyncio.run(main()) == "coroutine"


def test_piston_user_completes_pool_future_early(pistonmod, caplog):
    """piston-only: a user who completes a pool's future by hand does not
    break the pool (the stdlib's worker thread dies here)."""
    with pistonmod.ThreadPoolExecutor(max_workers=1) as ex:
        gate = threading.Event()
        try:
            f = ex.submit(gate.wait, T)
            f.set_result("mine")
        finally:
            gate.set()
        assert f.result(timeout=T) == "mine"
        for i in range(3):
            assert ex.submit(add, i).result(timeout=T) == i


# ---------------------------------------------- signals seen by task code

def test_task_runs_with_submitters_signal_mask(make_pool):
    # Threads inherit the creating thread's signal mask; code in a task
    # (and every process it starts) must not find signals blocked.
    import signal
    ex = make_pool(max_workers=1)
    mine = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    theirs = ex.submit(signal.pthread_sigmask, signal.SIG_BLOCK, []).result(
        timeout=T)
    assert theirs == mine


def test_subprocess_started_by_task_can_be_terminated(make_pool):
    import signal
    import subprocess
    import sys

    def task():
        p = subprocess.Popen([sys.executable, "-c",
                              "import time; time.sleep(60)"])
        try:
            p.terminate()
            try:
                return p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                return "ignored SIGTERM"
        finally:
            p.kill()
            p.wait()
    ex = make_pool(max_workers=1)
    assert ex.submit(task).result(timeout=T) == -signal.SIGTERM


# ------------------------------------------------------ subclassing, tools

def test_map_goes_through_overridden_submit(executor_cls):
    # Executor.map is defined in terms of self.submit: subclasses that wrap
    # submit (context propagation, metrics, limits) see every map item.
    seen = []

    class Wrapping(executor_cls):
        def submit(self, fn, /, *args, **kwargs):
            seen.append(args)
            return super().submit(fn, *args, **kwargs)
    with Wrapping(max_workers=2) as ex:
        assert list(ex.map(operator.neg, [1, 2, 3])) == [-1, -2, -3]
        assert ex.submit(add, 1, 2).result(timeout=T) == 3
    assert sorted(seen) == [(1,), (1, 2), (2,), (3,)]


def test_subclass_with_extra_init(executor_cls):
    class Named(executor_cls):
        def __init__(self, label, **kw):
            super().__init__(**kw)
            self.label = label
    with Named("x", max_workers=1, thread_name_prefix="pn-sub") as ex:
        assert ex.label == "x"
        assert ex.submit(thread_name).result(timeout=T).startswith("pn-sub")


@pytest.mark.parametrize("n", [10**6, 2**31 - 1, 2**40])
def test_huge_max_workers_accepted(make_pool, n):
    # Threads start lazily, so a huge cap costs nothing until used.
    ex = make_pool(max_workers=n)
    assert ex._max_workers == n
    assert ex.submit(add, 2).result(timeout=T) == 2
    assert len(ex._threads) == 1


def test_dropped_pool_still_runs_queued_work(executor_cls, make_event):
    gate = make_event()
    ex = executor_cls(max_workers=1)
    first = ex.submit(gate.wait, T)
    rest = [ex.submit(add, i) for i in range(20)]
    del ex
    gc.collect()
    gate.set()
    assert first.result(timeout=T) is True
    assert [f.result(timeout=T) for f in rest] == list(range(20))


@pytest.mark.parametrize("hook", ["settrace", "setprofile"])
def test_threading_trace_and_profile_hooks_reach_tasks(make_pool, hook):
    # coverage.py and profilers install themselves with threading.settrace
    # / setprofile; task code in workers started afterwards must be seen.
    seen = set()

    def tracer(frame, event, arg):
        seen.add(frame.f_code.co_name)
        return None

    def traced_task_body():
        return 7
    getattr(threading, hook)(tracer)
    try:
        ex = make_pool(max_workers=1)
        assert ex.submit(traced_task_body).result(timeout=T) == 7
    finally:
        getattr(threading, hook)(None)
    assert "traced_task_body" in seen


@pytest.mark.parametrize("chunksize", [1, 4, 10])
def test_map_exception_does_not_stop_other_items(make_pool, chunksize):
    # Every item is a task of its own: one raising does not keep the rest
    # of its chunk from running (unlike the stdlib process pool's chunks).
    calls = []

    def f(x):
        calls.append(x)
        if x == 2:
            raise KeyError(x)
        return x
    ex = make_pool(max_workers=1)
    it = ex.map(f, range(10), chunksize=chunksize)
    ex.shutdown(wait=True)
    assert sorted(calls) == list(range(10))
    got = []
    with pytest.raises(KeyError):
        for v in it:
            got.append(v)
    assert got == [0, 1]


def test_map_without_iterables(make_pool):
    ex = make_pool(max_workers=1)
    assert list(ex.map(abs)) == []


def test_map_items_and_results_released(make_pool):
    class Obj:
        pass
    ex = make_pool(max_workers=2)
    args = [Obj() for _ in range(50)]
    arg_refs = [weakref.ref(a) for a in args]
    it = ex.map(lambda a: (a, Obj()), args, chunksize=7)
    out = list(it)
    res_refs = [weakref.ref(r) for _, r in out]
    del args, out, it
    deadline = time.monotonic() + T
    while time.monotonic() < deadline and any(
            r() is not None for r in arg_refs + res_refs):
        gc.collect()
        time.sleep(0.01)
    assert all(r() is None for r in arg_refs), "map arguments leaked"
    assert all(r() is None for r in res_refs), "map results leaked"


class _Interrupt(Exception):
    pass


@pytest.mark.parametrize("what", ["result", "map", "wait"])
def test_signal_handler_exception_interrupts_pool_waits(make_pool,
                                                        make_event, what):
    import signal
    assert threading.current_thread() is threading.main_thread()
    ex = make_pool(max_workers=2)
    gate = make_event()
    armed, handled, disarmed = (threading.Event() for _ in range(3))

    def handler(signum, frame):
        if armed.is_set() and not disarmed.is_set():
            handled.set()
            raise _Interrupt()

    def helper():
        armed.wait(T)
        time.sleep(0.05)  # let the main thread enter the wait
        main = threading.main_thread().ident
        deadline = time.monotonic() + 10
        while not handled.is_set() and time.monotonic() < deadline:
            signal.pthread_kill(main, signal.SIGUSR1)
            handled.wait(0.05)
    old = signal.signal(signal.SIGUSR1, handler)
    t = threading.Thread(target=helper)
    try:
        t.start()
        with pytest.raises(_Interrupt):
            if what == "result":
                f = ex.submit(gate.wait, T)
                armed.set()
                f.result()
            elif what == "map":
                it = ex.map(gate.wait, [T] * 4, chunksize=2)
                armed.set()
                list(it)
            else:
                fs = [ex.submit(gate.wait, T) for _ in range(2)]
                armed.set()
                cf.wait(fs)
    finally:
        disarmed.set()
        handled.set()
        armed.set()
        t.join()
        signal.signal(signal.SIGUSR1, old)
    gate.set()
    assert ex.submit(add, 1).result(timeout=T) == 1


# ------------------------------------------------------------- stress mix

def test_one_at_a_time_round_trips(make_pool):
    ex = make_pool(max_workers=1)
    for i in range(5000):
        assert ex.submit(add, i, 1).result(timeout=T) == i + 1


def test_polling_with_tiny_timeouts_races_completion(make_pool):
    ex = make_pool(max_workers=2)
    for i in range(300):
        f = ex.submit(time.sleep, 0.0005 * (i % 3))
        deadline = time.monotonic() + T
        while True:
            try:
                assert f.result(timeout=0.0001) is None
                break
            except TimeoutError:
                assert time.monotonic() < deadline
        assert f.done() and not f.running()


def test_concurrent_mixed_operations(make_pool):
    ex = make_pool(max_workers=3)
    errors = []

    def client(seed):
        rng = random.Random(seed)
        try:
            for n in range(800):
                op = rng.randrange(5)
                if op == 0:
                    assert ex.submit(add, n, seed).result(timeout=T) == \
                        n + seed
                elif op == 1:
                    f = ex.submit(add, n)
                    if f.cancel():
                        assert f.cancelled()
                        with pytest.raises(cf.CancelledError):
                            f.result(timeout=T)
                    else:
                        assert f.result(timeout=T) == n
                elif op == 2:
                    k = rng.randrange(0, 30)
                    assert list(ex.map(operator.neg, range(k),
                                       chunksize=rng.choice([1, 3, 8]))) == \
                        [-i for i in range(k)]
                elif op == 3:
                    ev = threading.Event()
                    box = []
                    f = ex.submit(operator.mul, n, 2)
                    f.add_done_callback(lambda fut: (box.append(
                        fut.result()), ev.set()))
                    assert ev.wait(T) and box == [2 * n]
                else:
                    fs = [ex.submit(add, i) for i in range(5)]
                    done, not_done = cf.wait(
                        fs, timeout=T, return_when=rng.choice(
                            [cf.FIRST_COMPLETED, cf.ALL_COMPLETED]))
                    assert done and all(f.done() for f in done)
                    assert [f.result(timeout=T) for f in fs] == list(
                        range(5))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
    ts = [threading.Thread(target=client, args=(s,)) for s in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors
