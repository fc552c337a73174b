"""piston.ProcessPoolExecutor against concurrent.futures.ProcessPoolExecutor:
one test body per behaviour, run on both."""
import asyncio
import concurrent.futures as cf
import os
import threading
import time

import pytest

from conftest import require_piston  # noqa: F401  (fixture helpers)


# ---- task functions (module level: they travel by reference) -------------

def square(x):
    return x * x


def add(a, b=0):
    return a + b


def raise_value_error(msg):
    raise ValueError(msg)


def sleep_and_return(t, v):
    time.sleep(t)
    return v


def get_pid(_=None):
    return os.getpid()


_INIT_VALUE = None


def set_init_value(v):
    global _INIT_VALUE
    _INIT_VALUE = v


def get_init_value():
    return _INIT_VALUE


def failing_initializer():
    raise RuntimeError("initializer says no")


def return_lock():
    return threading.Lock()


# ---- parametrization -------------------------------------------------------

@pytest.fixture(params=["stdlib", "piston"])
def pool_cls(request):
    if request.param == "piston":
        return require_piston().ProcessPoolExecutor
    return cf.ProcessPoolExecutor


@pytest.fixture
def make_pool(pool_cls):
    pools = []

    def make(*args, **kwargs):
        ex = pool_cls(*args, **kwargs)
        pools.append(ex)
        return ex

    yield make
    for ex in pools:
        ex.shutdown(wait=True, cancel_futures=True)


# ---- the shared bodies -----------------------------------------------------

def test_submit_result(make_pool):
    ex = make_pool(2)
    f = ex.submit(add, 1, b=2)
    assert isinstance(f, cf.Future)
    assert f.result(timeout=30) == 3
    assert f.done() and not f.cancelled() and f.exception() is None


def test_many_results(make_pool):
    ex = make_pool(2)
    fs = [ex.submit(square, i) for i in range(500)]
    assert [f.result(timeout=60) for f in fs] == [i * i for i in range(500)]


def test_exception_with_remote_traceback(make_pool):
    ex = make_pool(2)
    f = ex.submit(raise_value_error, "boom")
    with pytest.raises(ValueError, match="boom") as info:
        f.result(timeout=30)
    cause = info.value.__cause__
    assert cause is not None
    assert "Traceback" in str(cause) and "raise_value_error" in str(cause)
    assert isinstance(f.exception(), ValueError)


def test_map_in_order_with_chunks(make_pool):
    ex = make_pool(2)
    for chunksize in (1, 3, 50):
        got = list(ex.map(add, range(100), range(100), chunksize=chunksize))
        assert got == [2 * i for i in range(100)]


def test_map_timeout(make_pool):
    ex = make_pool(1)
    it = ex.map(sleep_and_return, [2.0], [1], timeout=0.2)
    with pytest.raises(cf.TimeoutError):
        list(it)


def test_map_exception_propagates(make_pool):
    ex = make_pool(2)
    it = ex.map(raise_value_error, ["x"])
    with pytest.raises(ValueError):
        list(it)


def test_submit_after_shutdown(make_pool):
    ex = make_pool(1)
    assert ex.submit(square, 2).result(timeout=30) == 4
    ex.shutdown()
    with pytest.raises(RuntimeError):
        ex.submit(square, 2)


def test_bad_max_workers(pool_cls):
    with pytest.raises(ValueError):
        pool_cls(0)
    with pytest.raises(ValueError):
        pool_cls(-1)


def test_context_manager_waits(pool_cls):
    with pool_cls(2) as ex:
        fs = [ex.submit(sleep_and_return, 0.05, i) for i in range(6)]
    assert all(f.done() for f in fs)
    assert [f.result() for f in fs] == list(range(6))


def test_initializer(make_pool):
    ex = make_pool(2, initializer=set_init_value, initargs=(42,))
    assert ex.submit(get_init_value).result(timeout=30) == 42


def test_failing_initializer_breaks_pool(make_pool):
    ex = make_pool(1, initializer=failing_initializer)
    with pytest.raises(cf.process.BrokenProcessPool):
        ex.submit(square, 1).result(timeout=30)
        # the stdlib may accept one submit before it notices
        ex.submit(square, 1).result(timeout=30)


def test_cancel_futures_on_shutdown(make_pool):
    ex = make_pool(1)
    first = ex.submit(sleep_and_return, 0.5, "first")
    rest = [ex.submit(square, i) for i in range(50)]
    time.sleep(0.2)
    ex.shutdown(wait=True, cancel_futures=True)
    assert first.result() == "first"
    assert any(f.cancelled() for f in rest)
    for f in rest:
        assert f.done()
        if not f.cancelled():
            assert f.result() is not None


def test_wait_and_as_completed(make_pool):
    ex = make_pool(2)
    fs = [ex.submit(sleep_and_return, 0.01 * (i % 3), i) for i in range(10)]
    done, not_done = cf.wait(fs, timeout=30)
    assert len(done) == 10 and not not_done
    assert sorted(f.result() for f in cf.as_completed(fs)) == list(range(10))
    slow = ex.submit(sleep_and_return, 1.0, "slow")
    fast = ex.submit(square, 3)
    done, _ = cf.wait([slow, fast], return_when=cf.FIRST_COMPLETED,
                      timeout=30)
    assert fast in done


def test_run_in_executor(make_pool):
    ex = make_pool(2)

    async def main():
        loop = asyncio.get_running_loop()
        return await asyncio.gather(
            *(loop.run_in_executor(ex, square, i) for i in range(20)))

    assert asyncio.run(main()) == [i * i for i in range(20)]


def test_unpicklable_argument_pool_stays_healthy(make_pool):
    ex = make_pool(1)
    lock = threading.Lock()
    try:
        f = ex.submit(square, lock)
    except (TypeError, AttributeError):
        pass                            # piston: raised at submit
    else:
        with pytest.raises((TypeError, AttributeError)):
            f.result(timeout=30)        # stdlib: on that future
    assert ex.submit(square, 3).result(timeout=30) == 9


def test_unpicklable_result_fails_only_that_future(make_pool):
    ex = make_pool(1)
    f = ex.submit(return_lock)
    with pytest.raises(Exception) as info:
        f.result(timeout=30)
    assert "pickle" in str(info.value).lower()
    assert ex.submit(square, 4).result(timeout=30) == 16


def test_workers_are_other_processes(make_pool):
    ex = make_pool(2)
    pids = {f.result(timeout=30)
            for f in [ex.submit(get_pid) for _ in range(20)]}
    assert os.getpid() not in pids
    assert 1 <= len(pids) <= 2


def test_shutdown_no_wait_then_results(make_pool):
    ex = make_pool(2)
    fs = [ex.submit(sleep_and_return, 0.05, i) for i in range(4)]
    ex.shutdown(wait=False)
    assert [f.result(timeout=30) for f in fs] == list(range(4))


# ---- waiting threads that collect results themselves -------------------
# (piston: a thread in result() polls for its own result and completes the
# futures it finds; these bodies hold on both pools.)

def test_one_at_a_time_round_trips(make_pool):
    ex = make_pool(2)
    for i in range(300):
        assert ex.submit(square, i).result(timeout=30) == i * i


def test_many_threads_waiting_at_once(make_pool):
    ex = make_pool(2)
    errors, done = [], []

    def client(k):
        try:
            for i in range(100):
                f = ex.submit(add, k, i)
                assert f.result(timeout=60) == k + i
                assert f.done() and f.exception() is None
            done.append(k)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == [] and sorted(done) == list(range(6))


def test_waiter_and_callbacks_each_see_the_result_once(make_pool):
    ex = make_pool(2)
    seen = []
    lock = threading.Lock()
    fs = []
    for i in range(50):
        f = ex.submit(square, i)
        if i % 2:
            f.add_done_callback(
                lambda f, i=i: (lock.acquire(), seen.append(i),
                                lock.release()))
        fs.append(f)
    assert [f.result(timeout=60) for f in fs] == [i * i for i in range(50)]
    deadline = time.monotonic() + 30
    while len(seen) < 25 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(seen) == list(range(1, 50, 2))


def test_result_timeout_while_waiting_then_result(make_pool):
    ex = make_pool(1)
    f = ex.submit(sleep_and_return, 0.5, "late")
    with pytest.raises(cf.TimeoutError):
        f.result(timeout=0.05)
    assert f.result(timeout=30) == "late"
    # Other work still flows after a waiter gave up.
    assert ex.submit(square, 7).result(timeout=30) == 49


def test_result_of_a_task_behind_a_slow_one(make_pool):
    ex = make_pool(1)
    slow = ex.submit(sleep_and_return, 0.3, "slow")
    quick = [ex.submit(square, i) for i in range(5)]
    assert [f.result(timeout=30) for f in quick] == [0, 1, 4, 9, 16]
    assert slow.result(timeout=30) == "slow"
