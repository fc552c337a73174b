"""Parity tests: piston.Future behaves exactly like concurrent.futures.Future."""
import asyncio
import concurrent.futures as cf
import gc
import logging
import re
import threading
import time
import traceback
import weakref

import pytest

T = 30  # hang guard for waits that must succeed


def complete_later(fn, *args, delay=0.05):
    """Calls fn(*args) from another thread after `delay`; returns the thread."""
    def run():
        time.sleep(delay)
        fn(*args)
    t = threading.Thread(target=run)
    t.start()
    return t


def raiser():
    raise ValueError("boom")


def raised_value_error():
    try:
        raiser()
    except ValueError as e:
        return e


# ---------------------------------------------------------------- basics

def test_isinstance_of_stdlib_future(future_cls):
    f = future_cls()
    assert isinstance(f, cf.Future)
    assert issubclass(future_cls, cf.Future)


def test_new_future_is_pending(future_cls):
    f = future_cls()
    assert not f.done()
    assert not f.running()
    assert not f.cancelled()


def test_set_result_then_result(future_cls):
    f = future_cls()
    value = object()
    f.set_result(value)
    assert f.done() and not f.running() and not f.cancelled()
    assert f.result() is value
    assert f.result(timeout=0) is value
    assert f.result(timeout=1) is value
    assert f.result(None) is value
    assert f.exception() is None
    assert f.exception(timeout=0) is None


@pytest.mark.parametrize("value", [None, 0, "", [], 42, "text"])
def test_result_falsy_and_plain_values(future_cls, value):
    f = future_cls()
    f.set_result(value)
    assert f.result() == value
    assert f.exception() is None


def test_set_exception_then_result_raises(future_cls):
    f = future_cls()
    exc = ValueError("bad")
    f.set_exception(exc)
    assert f.done() and not f.cancelled()
    assert f.exception() is exc
    assert f.exception(timeout=0) is exc
    with pytest.raises(ValueError) as ei:
        f.result()
    assert ei.value is exc
    with pytest.raises(ValueError):
        f.result(timeout=0)


def test_exception_keeps_original_traceback(future_cls):
    f = future_cls()
    f.set_exception(raised_value_error())
    with pytest.raises(ValueError) as ei:
        f.result()
    names = [fs.name for fs in traceback.extract_tb(ei.value.__traceback__)]
    assert "raiser" in names
    assert "raiser" in [fs.name for fs in
                        traceback.extract_tb(f.exception().__traceback__)]


def test_base_exception_subclass_is_stored(future_cls):
    f = future_cls()
    f.set_exception(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        f.result()
    assert isinstance(f.exception(), KeyboardInterrupt)


# ---------------------------------------------------------------- timeouts

@pytest.mark.parametrize("timeout", [0, 0.0, 0.05, -1, -0.5])
def test_result_timeout_on_pending(future_cls, timeout):
    f = future_cls()
    with pytest.raises(TimeoutError):
        f.result(timeout=timeout)
    with pytest.raises(cf.TimeoutError):
        f.exception(timeout=timeout)
    assert not f.done()


def test_result_timeout_positional(future_cls):
    f = future_cls()
    with pytest.raises(TimeoutError):
        f.result(0.01)
    with pytest.raises(TimeoutError):
        f.exception(0.01)


@pytest.mark.parametrize("timeout", ["1", [1], object()])
def test_result_wrong_type_timeout(future_cls, timeout):
    f = future_cls()
    with pytest.raises(TypeError):
        f.result(timeout=timeout)
    with pytest.raises(TypeError):
        f.exception(timeout=timeout)


def test_result_waits_for_late_completion_with_timeout(future_cls):
    f = future_cls()
    t = complete_later(f.set_result, 7)
    assert f.result(timeout=T) == 7
    t.join()


# ---------------------------------------------------------------- cancel

def test_cancel_pending(future_cls):
    f = future_cls()
    assert f.cancel() is True
    assert f.cancelled() and f.done() and not f.running()
    assert f.cancel() is True  # cancelling again still reports cancelled
    with pytest.raises(cf.CancelledError):
        f.result()
    with pytest.raises(cf.CancelledError):
        f.result(timeout=0)
    with pytest.raises(cf.CancelledError):
        f.exception()


def test_cancel_running_returns_false(future_cls):
    f = future_cls()
    assert f.set_running_or_notify_cancel() is True
    assert f.running() and not f.done()
    assert f.cancel() is False
    assert f.running() and not f.cancelled()
    f.set_result(1)
    assert f.result() == 1


@pytest.mark.parametrize("how", ["result", "exception"])
def test_cancel_finished_returns_false(future_cls, how):
    f = future_cls()
    if how == "result":
        f.set_result(1)
    else:
        f.set_exception(ValueError())
    assert f.cancel() is False
    assert not f.cancelled()
    assert f.done()


def test_cancel_wakes_waiter_with_cancelled_error(future_cls):
    f = future_cls()
    out = []

    def waiter():
        try:
            f.result(timeout=T)
        except BaseException as e:  # noqa: BLE001
            out.append(e)
    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.05)
    assert f.cancel()
    t.join(T)
    assert len(out) == 1 and isinstance(out[0], cf.CancelledError)


# ------------------------------------------------ set_running_or_notify_cancel

def test_set_running_on_pending(future_cls):
    f = future_cls()
    assert f.set_running_or_notify_cancel() is True
    assert f.running()
    assert not f.done()
    with pytest.raises(TimeoutError):
        f.result(timeout=0)


def test_set_running_on_cancelled(future_cls):
    f = future_cls()
    f.cancel()
    assert f.set_running_or_notify_cancel() is False
    assert f.cancelled() and f.done() and not f.running()
    assert "state=cancelled" in repr(f)
    with pytest.raises(cf.CancelledError):
        f.result()


def test_set_running_twice_raises(future_cls):
    f = future_cls()
    f.set_running_or_notify_cancel()
    with pytest.raises(RuntimeError):
        f.set_running_or_notify_cancel()
    assert f.running()


@pytest.mark.parametrize("how", ["result", "exception"])
def test_set_running_on_finished_raises(future_cls, how):
    f = future_cls()
    if how == "result":
        f.set_result(1)
    else:
        f.set_exception(ValueError())
    with pytest.raises(RuntimeError):
        f.set_running_or_notify_cancel()
    assert f.done()


# ------------------------------------------------------- completing twice

@pytest.mark.parametrize("first", ["result", "exception", "cancel"])
@pytest.mark.parametrize("second", ["result", "exception"])
def test_complete_twice_invalid_state(future_cls, first, second):
    f = future_cls()
    if first == "result":
        f.set_result("first")
    elif first == "exception":
        f.set_exception(KeyError("first"))
    else:
        f.cancel()
    with pytest.raises(cf.InvalidStateError):
        if second == "result":
            f.set_result("second")
        else:
            f.set_exception(ValueError("second"))
    # The first outcome is kept.
    if first == "result":
        assert f.result() == "first"
    elif first == "exception":
        assert isinstance(f.exception(), KeyError)
    else:
        assert f.cancelled()


def test_invalid_state_error_class(future_cls):
    f = future_cls()
    f.set_result(1)
    with pytest.raises(cf.InvalidStateError) as ei:
        f.set_result(2)
    assert isinstance(ei.value, cf.InvalidStateError)
    assert issubclass(cf.InvalidStateError, cf._base.Error)


def test_set_result_on_running_future(future_cls):
    f = future_cls()
    f.set_running_or_notify_cancel()
    f.set_result(5)
    assert f.done() and not f.running()
    assert f.result() == 5


def test_racing_set_result_exactly_one_wins(future_cls):
    for _ in range(50):
        f = future_cls()
        wins, losses = [], []
        barrier = threading.Barrier(8)

        def setter(i):
            barrier.wait()
            try:
                f.set_result(i)
                wins.append(i)
            except cf.InvalidStateError:
                losses.append(i)
        ts = [threading.Thread(target=setter, args=(i,)) for i in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert len(wins) == 1 and len(losses) == 7
        assert f.result() == wins[0]


def test_racing_cancel_and_set_running(future_cls):
    # Whatever the interleaving, cancel() and set_running_or_notify_cancel()
    # agree: exactly one of them "wins".
    for _ in range(300):
        f = future_cls()
        res = {}
        barrier = threading.Barrier(2)

        def canceller():
            barrier.wait()
            res["cancel"] = f.cancel()

        t = threading.Thread(target=canceller)
        t.start()
        barrier.wait()
        res["run"] = f.set_running_or_notify_cancel()
        t.join()
        assert res["cancel"] != res["run"], res
        assert f.cancelled() == res["cancel"]
        assert f.running() == res["run"]


# ------------------------------------------------------------ callbacks

def test_done_callback_before_completion(future_cls):
    f = future_cls()
    calls = []
    f.add_done_callback(calls.append)
    assert calls == []
    f.set_result(3)
    assert calls == [f]
    assert calls[0] is f


def test_done_callback_after_completion_runs_immediately(future_cls):
    f = future_cls()
    f.set_result(3)
    calls = []
    f.add_done_callback(lambda fut: calls.append(
        (fut, threading.get_ident())))
    assert calls == [(f, threading.get_ident())]


@pytest.mark.parametrize("how", ["result", "exception", "cancel"])
def test_done_callbacks_run_in_order_once(future_cls, how):
    f = future_cls()
    calls = []
    for i in range(10):
        f.add_done_callback(lambda fut, i=i: calls.append(i))
    if how == "result":
        f.set_result(1)
    elif how == "exception":
        f.set_exception(ValueError())
    else:
        f.cancel()
    assert calls == list(range(10))
    f.add_done_callback(lambda fut: calls.append("late"))
    assert calls == list(range(10)) + ["late"]
    f.cancel()  # no second round of callbacks
    assert calls == list(range(10)) + ["late"]


def test_done_callback_not_run_on_set_running(future_cls):
    f = future_cls()
    calls = []
    f.add_done_callback(calls.append)
    f.set_running_or_notify_cancel()
    assert calls == []
    f.set_result(None)
    assert calls == [f]


def test_done_callback_runs_in_completing_thread(future_cls):
    f = future_cls()
    idents = []
    f.add_done_callback(lambda fut: idents.append(threading.get_ident()))
    t = complete_later(f.set_result, 1, delay=0)
    t.join()
    assert idents == [t.ident]


def test_done_callback_sees_final_state(future_cls):
    f = future_cls()
    seen = []
    f.add_done_callback(lambda fut: seen.append((fut.done(), fut.result())))
    f.set_result("v")
    assert seen == [(True, "v")]


def _cf_records(caplog):
    return [r for r in caplog.records if r.name == "concurrent.futures"]


@pytest.mark.parametrize("when", ["before", "after"])
def test_raising_callback_is_logged_and_others_run(future_cls, caplog, when):
    f = future_cls()
    calls = []

    def bad(fut):
        calls.append("bad")
        raise ZeroDivisionError("in callback")

    if when == "after":
        f.set_result(1)
    with caplog.at_level(logging.DEBUG, logger="concurrent.futures"):
        f.add_done_callback(lambda fut: calls.append("first"))
        f.add_done_callback(bad)
        f.add_done_callback(lambda fut: calls.append("last"))
        if when == "before":
            f.set_result(1)  # must not raise
    assert calls == ["first", "bad", "last"]
    recs = _cf_records(caplog)
    assert len(recs) == 1, caplog.records
    rec = recs[0]
    assert rec.levelno >= logging.ERROR
    assert rec.exc_info and rec.exc_info[0] is ZeroDivisionError
    assert "callback" in rec.getMessage()
    assert f.result() == 1


def test_callback_reference_cycle_is_collected(future_cls):
    f = future_cls()
    f.add_done_callback(lambda fut, f=f: None)  # f -> callback -> f
    f.set_exception(raised_value_error())
    ref = weakref.ref(f)
    del f
    gc.collect()
    assert ref() is None


def test_pending_callback_cycle_is_collected(future_cls):
    f = future_cls()
    f.add_done_callback(lambda fut, f=f: None)
    ref = weakref.ref(f)
    del f
    gc.collect()
    assert ref() is None


# ------------------------------------------------------------------ repr

def test_repr_states(future_cls):
    pat = r"<{name} at 0x[0-9a-f]+ state={state}>"
    name = future_cls.__name__
    f = future_cls()
    assert re.fullmatch(pat.format(name=name, state="pending"), repr(f))
    assert hex(id(f)) in repr(f)
    f.set_running_or_notify_cancel()
    assert re.fullmatch(pat.format(name=name, state="running"), repr(f))
    f.set_result(3)
    assert re.fullmatch(
        pat.format(name=name, state="finished returned int"), repr(f))

    g = future_cls()
    g.set_exception(ValueError("x"))
    assert re.fullmatch(
        pat.format(name=name, state="finished raised ValueError"), repr(g))

    h = future_cls()
    h.cancel()
    assert re.fullmatch(pat.format(name=name, state="cancelled"), repr(h))


def test_repr_uses_subclass_name(future_cls):
    class MyFuture(future_cls):
        pass
    f = MyFuture()
    assert repr(f).startswith("<MyFuture at 0x")
    f.set_result([])
    assert repr(f).endswith("state=finished returned list>")


# --------------------------------------------- creation, subclass, weakref

def test_direct_creation_takes_no_arguments(future_cls):
    future_cls()
    with pytest.raises(TypeError):
        future_cls(1)


def test_subclass(future_cls):
    class Tagged(future_cls):
        def __init__(self, tag):
            super().__init__()
            self.tag = tag

        def set_result(self, result):
            super().set_result((self.tag, result))

    f = Tagged("t")
    assert isinstance(f, cf.Future) and isinstance(f, future_cls)
    assert f.tag == "t"
    f.set_result(1)
    assert f.result() == ("t", 1)
    r, = cf.wait([f], timeout=T).done
    assert r is f


def test_weakref(future_cls):
    f = future_cls()
    r = weakref.ref(f)
    assert r() is f
    called = []
    weakref.finalize(f, called.append, 1)
    del f
    gc.collect()
    assert r() is None
    assert called == [1]


def test_attributes_can_be_set(future_cls):
    f = future_cls()
    f.foo = 1
    assert f.foo == 1
    del f.foo
    assert not hasattr(f, "foo")


def test_class_getitem(future_cls):
    alias = future_cls[int]
    assert alias.__origin__ is future_cls


# ------------------------------------------------------- waiting threads

def test_cross_thread_completion_wakes_waiter(future_cls):
    f = future_cls()
    t = complete_later(f.set_result, "x", delay=0.1)
    assert f.result() == "x"
    t.join()


def test_cross_thread_exception_wakes_waiter(future_cls):
    f = future_cls()
    t = complete_later(lambda: f.set_exception(raised_value_error()))
    with pytest.raises(ValueError):
        f.result(timeout=T)
    assert f.exception(timeout=T) is not None
    t.join()


def test_many_waiters_on_one_future(future_cls):
    f = future_cls()
    n = 24
    out = [None] * n
    started = threading.Barrier(n + 1)

    def wait(i):
        started.wait()
        if i % 3 == 0:
            out[i] = f.result()
        elif i % 3 == 1:
            out[i] = f.result(timeout=T)
        else:
            out[i] = f.exception(timeout=T) or "no-exc"
    ts = [threading.Thread(target=wait, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    started.wait()
    time.sleep(0.05)
    f.set_result("v")
    for t in ts:
        t.join(T)
        assert not t.is_alive()
    assert out == ["v", "v", "no-exc"] * (n // 3)


def test_waiters_with_short_timeouts_time_out_others_keep_waiting(future_cls):
    f = future_cls()
    short, long_ = [], []

    def short_wait():
        try:
            f.result(timeout=0.02)
        except TimeoutError:
            short.append("timeout")

    def long_wait():
        long_.append(f.result(timeout=T))
    ts = [threading.Thread(target=short_wait) for _ in range(4)]
    ts += [threading.Thread(target=long_wait) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts[:4]:
        t.join(T)
    assert short == ["timeout"] * 4
    f.set_result(1)
    for t in ts[4:]:
        t.join(T)
    assert long_ == [1] * 4


# -------------------------------------------------------- cf.wait()

def make_mix(future_cls):
    done = future_cls()
    done.set_result("done")
    failed = future_cls()
    failed.set_exception(ValueError())
    cancelled = future_cls()
    cancelled.cancel()
    cancelled.set_running_or_notify_cancel()  # as an executor would
    pending = future_cls()
    return done, failed, cancelled, pending


def test_wait_empty(future_cls):
    done, not_done = cf.wait([])
    assert done == set() and not_done == set()


def test_wait_all_completed_from_other_threads(future_cls):
    fs = [future_cls() for _ in range(10)]
    ts = [complete_later(f.set_result, i, delay=0.01 * i)
          for i, f in enumerate(fs)]
    res = cf.wait(fs, timeout=T, return_when=cf.ALL_COMPLETED)
    assert res.done == set(fs) and res.not_done == set()
    assert sorted(f.result() for f in res.done) == list(range(10))
    for t in ts:
        t.join()


def test_wait_all_completed_default_no_timeout(future_cls):
    fs = [future_cls() for _ in range(3)]
    ts = [complete_later(f.set_result, 1) for f in fs]
    done, not_done = cf.wait(fs)
    assert done == set(fs) and not not_done
    for t in ts:
        t.join()


def test_wait_first_completed(future_cls):
    fs = [future_cls() for _ in range(4)]
    t = complete_later(fs[2].set_result, 2)
    done, not_done = cf.wait(fs, timeout=T, return_when=cf.FIRST_COMPLETED)
    assert done == {fs[2]}
    assert not_done == {fs[0], fs[1], fs[3]}
    t.join()


def test_wait_first_completed_already_done(future_cls):
    d, failed, cancelled, pending = make_mix(future_cls)
    done, not_done = cf.wait([d, failed, cancelled, pending],
                             return_when=cf.FIRST_COMPLETED)
    assert done == {d, failed, cancelled} and not_done == {pending}


def test_wait_first_exception(future_cls):
    fs = [future_cls() for _ in range(4)]
    fs[0].set_result(0)
    t = complete_later(fs[3].set_exception, KeyError())
    done, not_done = cf.wait(fs, timeout=T, return_when=cf.FIRST_EXCEPTION)
    assert done == {fs[0], fs[3]}
    assert not_done == {fs[1], fs[2]}
    t.join()


def test_wait_first_exception_already_failed(future_cls):
    d, failed, cancelled, pending = make_mix(future_cls)
    done, not_done = cf.wait([d, failed, cancelled, pending],
                             return_when=cf.FIRST_EXCEPTION)
    assert done == {d, failed, cancelled} and not_done == {pending}


def test_wait_first_exception_without_exception_waits_for_all(future_cls):
    fs = [future_cls() for _ in range(3)]
    ts = [complete_later(f.set_result, i, delay=0.02 * i)
          for i, f in enumerate(fs)]
    done, not_done = cf.wait(fs, timeout=T, return_when=cf.FIRST_EXCEPTION)
    assert done == set(fs) and not not_done
    for t in ts:
        t.join()


def test_wait_first_exception_cancel_does_not_stop_wait(future_cls):
    # A cancellation is not an exception: the wait goes on until one fails.
    fs = [future_cls() for _ in range(3)]

    def complete():
        fs[1].cancel()
        fs[1].set_running_or_notify_cancel()
        time.sleep(0.05)
        fs[2].set_exception(KeyError())
    t = complete_later(complete)
    done, not_done = cf.wait(fs, timeout=T, return_when=cf.FIRST_EXCEPTION)
    assert done == {fs[1], fs[2]} and not_done == {fs[0]}
    t.join()


@pytest.mark.parametrize("rw", [cf.ALL_COMPLETED, cf.FIRST_COMPLETED,
                                cf.FIRST_EXCEPTION])
def test_wait_timeout_on_pending(future_cls, rw):
    d, failed, cancelled, pending = make_mix(future_cls)
    other = future_cls()
    fs = [pending, other]
    done, not_done = cf.wait(fs, timeout=0.05, return_when=rw)
    assert done == set() and not_done == {pending, other}
    done, not_done = cf.wait(fs, timeout=0, return_when=rw)
    assert done == set() and not_done == {pending, other}


def test_wait_mix_all_completed_with_timeout(future_cls):
    d, failed, cancelled, pending = make_mix(future_cls)
    fs = [d, failed, cancelled, pending]
    done, not_done = cf.wait(fs, timeout=0.05)
    assert done == {d, failed, cancelled} and not_done == {pending}
    t = complete_later(pending.set_result, 9)
    done, not_done = cf.wait(fs, timeout=T)
    assert done == set(fs) and not not_done
    t.join()


def test_wait_duplicates(future_cls):
    f = future_cls()
    g = future_cls()
    t = complete_later(f.set_result, 1)
    done, not_done = cf.wait([f, f, g, g], return_when=cf.FIRST_COMPLETED,
                             timeout=T)
    assert done == {f} and not_done == {g}
    t.join()


def test_wait_mixed_with_stdlib_futures(future_cls):
    mine = future_cls()
    std = cf.Future()
    t = complete_later(mine.set_result, 1)
    done, not_done = cf.wait([mine, std], timeout=T,
                             return_when=cf.FIRST_COMPLETED)
    assert done == {mine} and not_done == {std}
    t.join()


def test_wait_many_threads_complete_many_futures(future_cls):
    fs = [future_cls() for _ in range(400)]

    def complete(part):
        for f in part:
            f.set_result(1)
    ts = [threading.Thread(target=complete, args=(fs[i::4],))
          for i in range(4)]
    for t in ts:
        t.start()
    done, not_done = cf.wait(fs, timeout=T)
    assert len(done) == 400 and not not_done
    for t in ts:
        t.join()


def test_future_usable_after_wait(future_cls):
    # wait() installs and removes waiters; the future must keep working.
    f = future_cls()
    for _ in range(3):
        cf.wait([f], timeout=0.01)
    t = complete_later(f.set_result, 1)
    assert f.result(timeout=T) == 1
    calls = []
    f.add_done_callback(calls.append)
    assert calls == [f]
    t.join()


# ------------------------------------------------------ as_completed()

def test_as_completed_order_follows_completion(future_cls):
    a, b, c = future_cls(), future_cls(), future_cls()
    order = [c, a, b]
    ack = threading.Semaphore(0)

    def completer():
        for i, f in enumerate(order):
            if i:
                ack.acquire()
            time.sleep(0.01)
            f.set_result(i)
    t = threading.Thread(target=completer)
    t.start()
    got = []
    for f in cf.as_completed([a, b, c], timeout=T):
        got.append(f)
        ack.release()
    t.join()
    assert got == order


def test_as_completed_finished_first(future_cls):
    d, failed, cancelled, pending = make_mix(future_cls)
    it = cf.as_completed([pending, d, failed, cancelled], timeout=T)
    first = {next(it), next(it), next(it)}
    assert first == {d, failed, cancelled}
    t = complete_later(pending.set_result, 1)
    assert next(it) is pending
    with pytest.raises(StopIteration):
        next(it)
    t.join()


def test_as_completed_timeout(future_cls):
    d = future_cls()
    d.set_result(1)
    p1, p2 = future_cls(), future_cls()
    got = []
    with pytest.raises(TimeoutError) as ei:
        for f in cf.as_completed([d, p1, p2], timeout=0.1):
            got.append(f)
    assert got == [d]
    assert isinstance(ei.value, cf.TimeoutError)
    assert "2 (of 3)" in str(ei.value)


def test_as_completed_timeout_zero_all_done(future_cls):
    fs = [future_cls() for _ in range(3)]
    for f in fs:
        f.set_result(0)
    assert set(cf.as_completed(fs, timeout=0)) == set(fs)


def test_as_completed_duplicates_yielded_once(future_cls):
    f, g = future_cls(), future_cls()
    f.set_result(1)
    t = complete_later(g.set_result, 2)
    got = list(cf.as_completed([f, f, g, g, f], timeout=T))
    assert sorted(map(id, got)) == sorted([id(f), id(g)])
    t.join()


def test_as_completed_many_cross_thread(future_cls):
    fs = [future_cls() for _ in range(200)]

    def complete():
        for i, f in enumerate(reversed(fs)):
            f.set_result(i)
    t = threading.Thread(target=complete)
    t.start()
    got = list(cf.as_completed(fs, timeout=T))
    t.join()
    assert set(got) == set(fs) and len(got) == 200


# ----------------------------------------------------------- asyncio

def test_wrap_future_result(future_cls):
    async def main():
        f = future_cls()
        t = complete_later(f.set_result, 41)
        r = await asyncio.wrap_future(f)
        t.join()
        return r + 1
    assert asyncio.run(main()) == 42


def test_wrap_future_already_done(future_cls):
    async def main():
        f = future_cls()
        f.set_result("early")
        return await asyncio.wrap_future(f)
    assert asyncio.run(main()) == "early"


def test_wrap_future_exception(future_cls):
    async def main():
        f = future_cls()
        t = complete_later(lambda: f.set_exception(raised_value_error()))
        try:
            with pytest.raises(ValueError) as ei:
                await asyncio.wrap_future(f)
        finally:
            t.join()
        names = [fs.name for fs in
                 traceback.extract_tb(ei.value.__traceback__)]
        assert "raiser" in names
    asyncio.run(main())


def test_wrap_future_cancel_propagates_to_concurrent(future_cls):
    async def main():
        f = future_cls()
        af = asyncio.wrap_future(f)
        af.cancel()
        for _ in range(5):
            await asyncio.sleep(0)
        return f
    f = asyncio.run(main())
    assert f.cancelled()


def test_wrap_future_concurrent_cancel_propagates(future_cls):
    async def main():
        f = future_cls()
        af = asyncio.wrap_future(f)
        t = complete_later(f.cancel)
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(af, T)
        t.join()
    asyncio.run(main())


def test_wrap_many_futures_gather(future_cls):
    async def main():
        fs = [future_cls() for _ in range(100)]

        def complete():
            for i, f in enumerate(fs):
                f.set_result(i)
        t = threading.Thread(target=complete)
        t.start()
        r = await asyncio.wait_for(
            asyncio.gather(*map(asyncio.wrap_future, fs)), T)
        t.join()
        return r
    assert asyncio.run(main()) == list(range(100))


class OneThreadPerCallExecutor(cf.Executor):
    """A minimal executor handing out `future_cls` futures, so that
    run_in_executor is exercised with the Future type under test."""

    def __init__(self, future_cls):
        self.future_cls = future_cls
        self.threads = []

    def submit(self, fn, /, *args, **kwargs):
        f = self.future_cls()

        def run():
            if not f.set_running_or_notify_cancel():
                return
            try:
                f.set_result(fn(*args, **kwargs))
            except BaseException as e:  # noqa: BLE001
                f.set_exception(e)
        t = threading.Thread(target=run)
        self.threads.append(t)
        t.start()
        return f

    def shutdown(self, wait=True, *, cancel_futures=False):
        for t in self.threads:
            t.join()


def test_run_in_executor_with_future_type(future_cls):
    ex = OneThreadPerCallExecutor(future_cls)

    async def main():
        loop = asyncio.get_running_loop()
        a = await loop.run_in_executor(ex, pow, 2, 10)
        with pytest.raises(ValueError):
            await loop.run_in_executor(ex, raiser)
        return a
    try:
        assert asyncio.run(main()) == 1024
    finally:
        ex.shutdown()


# ------------------------------------------------------------ Ctrl-C

def test_ctrl_c_while_waiting_on_result(impl, sigint_while_waiting):
    body = r'''
fut = Fut()
print("READY", flush=True)
fut.result()
print("UNREACHABLE", flush=True)
'''
    rc, out, err = sigint_while_waiting(body, impl)
    assert "UNREACHABLE" not in out
    assert rc != 0
    assert "KeyboardInterrupt" in err, err
    assert "Traceback" in err


def test_ctrl_c_while_waiting_in_cf_wait(impl, sigint_while_waiting):
    body = r'''
fut = Fut()
print("READY", flush=True)
cf.wait([fut])
print("UNREACHABLE", flush=True)
'''
    rc, out, err = sigint_while_waiting(body, impl)
    assert "UNREACHABLE" not in out
    assert rc != 0 and "KeyboardInterrupt" in err, err


# ------------------------------------------------- more edge behaviour

def test_private_state_names_track_transitions(future_cls):
    # wait()/as_completed() read f._state; the names must be the stdlib's.
    f = future_cls()
    assert f._state == cf._base.PENDING
    f.set_running_or_notify_cancel()
    assert f._state == cf._base.RUNNING
    f.set_result(1)
    assert f._state == cf._base.FINISHED
    g = future_cls()
    g.cancel()
    assert g._state == cf._base.CANCELLED
    g.set_running_or_notify_cancel()
    assert g._state == cf._base.CANCELLED_AND_NOTIFIED


def test_callback_added_from_callback_runs_immediately(future_cls):
    f = future_cls()
    calls = []

    def a(fut):
        calls.append("a-start")
        fut.add_done_callback(lambda _: calls.append("inner"))
        calls.append("a-end")
    f.add_done_callback(a)
    f.add_done_callback(lambda _: calls.append("b"))
    f.set_result(None)
    assert calls == ["a-start", "inner", "a-end", "b"]


def test_result_inside_own_callback(future_cls):
    f = future_cls()
    seen = []
    f.add_done_callback(lambda fut: seen.append(fut.result(timeout=0)))
    f.add_done_callback(lambda fut: seen.append(fut.exception()))
    f.set_result("r")
    assert seen == ["r", None]


def test_set_exception_non_exception_is_type_error(future_cls):
    # The stdlib stores it and fails at result(); an eager check is fine
    # too.  Either way the user gets a TypeError, never a crash.
    f = future_cls()
    with pytest.raises(TypeError):
        f.set_exception("not an exception")
        f.result(timeout=0)


def test_large_finite_timeout(future_cls):
    f = future_cls()
    t = complete_later(f.set_result, "big")
    assert f.result(timeout=1e9) == "big"
    assert f.exception(timeout=1e6) is None
    t.join()
    g = future_cls()
    t = complete_later(g.set_result, 1)
    done, _ = cf.wait([g], timeout=1e9)
    assert done == {g}
    t.join()


def _signal_main_thread_until(flag, signum, give_up=10.0):
    """From a helper thread: keeps signalling the main thread until `flag`
    is set (by the handler) or `give_up` seconds pass."""
    import signal
    main = threading.main_thread().ident
    deadline = time.monotonic() + give_up
    while not flag.is_set() and time.monotonic() < deadline:
        signal.pthread_kill(main, signum)
        flag.wait(0.05)


@pytest.mark.parametrize("timeout", [None, T])
def test_signal_handler_runs_during_wait(future_cls, timeout):
    # A Python signal handler must run while result() waits (the wait is
    # interruptible), and the wait then resumes and returns the result.
    import signal
    assert threading.current_thread() is threading.main_thread()
    f = future_cls()
    handled = threading.Event()
    ran_during_wait = []

    def handler(signum, frame):
        ran_during_wait.append(not f.done())
        handled.set()

    def helper():
        time.sleep(0.05)
        _signal_main_thread_until(handled, signal.SIGUSR1)
        f.set_result("after-signal")
    old = signal.signal(signal.SIGUSR1, handler)
    try:
        t = threading.Thread(target=helper)
        t.start()
        assert f.result(timeout=timeout) == "after-signal"
        t.join()
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert ran_during_wait and ran_during_wait[0] is True


class _Interrupt(Exception):
    pass


@pytest.mark.parametrize("method", ["result", "exception"])
@pytest.mark.parametrize("timeout", [None, T])
def test_signal_handler_exception_interrupts_wait(future_cls, method,
                                                  timeout):
    import signal
    f = future_cls()
    handled = threading.Event()
    armed = threading.Event()  # starts the helper and arms the handler
    disarmed = threading.Event()

    def handler(signum, frame):
        if armed.is_set() and not disarmed.is_set():
            handled.set()
            raise _Interrupt()

    def helper():
        armed.wait(T)
        time.sleep(0.05)  # let the main thread enter the wait
        _signal_main_thread_until(handled, signal.SIGUSR1)
    old = signal.signal(signal.SIGUSR1, handler)
    t = threading.Thread(target=helper)
    try:
        t.start()
        with pytest.raises(_Interrupt):
            armed.set()
            getattr(f, method)(timeout=timeout)
    finally:
        disarmed.set()
        handled.set()
        armed.set()
        t.join()
        signal.signal(signal.SIGUSR1, old)
    # The future is untouched and still usable.
    assert not f.done()
    f.set_result(3)
    assert f.result(timeout=0) == 3


@pytest.mark.parametrize("call", ["result()", "result(timeout=60)",
                                  "exception()"])
def test_ctrl_c_while_waiting_variants(impl, call, sigint_while_waiting):
    body = r'''
fut = Fut()
print("READY", flush=True)
fut.%s
print("UNREACHABLE", flush=True)
''' % call
    rc, out, err = sigint_while_waiting(body, impl)
    assert "UNREACHABLE" not in out
    assert rc != 0 and "KeyboardInterrupt" in err, err


def test_callbacks_added_concurrently_with_completion_run_once(future_cls):
    # However add_done_callback() interleaves with set_result(), every
    # callback runs exactly once.
    for _ in range(20):
        f = future_cls()
        counts = [0] * 2000
        go = threading.Barrier(5)

        def adder(k):
            go.wait()
            for i in range(k, 2000, 4):
                f.add_done_callback(
                    lambda _, i=i: counts.__setitem__(i, counts[i] + 1))
        ts = [threading.Thread(target=adder, args=(k,)) for k in range(4)]
        for t in ts:
            t.start()
        go.wait()
        f.set_result(None)
        for t in ts:
            t.join()
        assert counts == [1] * 2000


@pytest.mark.parametrize("how", ["result", "exception", "attribute"])
def test_self_reference_cycles_are_collected(future_cls, how):
    f = future_cls()
    if how == "result":
        f.set_result([f])
    elif how == "exception":
        e = ValueError()
        e.fut = f
        f.set_exception(e)
        del e
    else:
        f.me = f
    ref = weakref.ref(f)
    del f
    gc.collect()
    assert ref() is None
