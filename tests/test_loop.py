"""piston.Loop against asyncio's own loop: every test body runs on both."""
import asyncio
import contextvars
import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import weakref

import pytest

import piston
# kind: "asyncio" or "piston"; PYPATH: the directory subprocesses import
# this piston from.
from loop_fixtures import PYPATH, kind, loop_fixture  # noqa: F401

# A fresh loop of each kind with no exception handler set (some tests
# check asyncio's default).
loop = loop_fixture()


def run_script(code, timeout=30, env=None, **kw):
    env = dict(env or os.environ, PYTHONPATH=PYPATH)
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)],
                            env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


# Identity and entry points.

def test_is_abstract_event_loop():
    lp = piston.new_event_loop()
    try:
        assert isinstance(lp, asyncio.AbstractEventLoop)
        assert isinstance(lp, piston.Loop)
    finally:
        lp.close()


def test_entry_points():
    async def main():
        return type(asyncio.get_running_loop())

    assert piston.run(main()) is piston.Loop
    with asyncio.Runner(loop_factory=piston.new_event_loop) as r:
        assert r.run(main()) is piston.Loop
    if sys.version_info >= (3, 12):
        assert asyncio.run(main(), loop_factory=piston.new_event_loop) \
            is piston.Loop


def test_policy_and_install():
    old = asyncio.get_event_loop_policy()
    try:
        piston.install()
        lp = asyncio.new_event_loop()
        assert isinstance(lp, piston.Loop)
        lp.close()
        assert isinstance(asyncio.get_event_loop_policy(),
                          piston.EventLoopPolicy)
    finally:
        asyncio.set_event_loop_policy(old)


def test_run_debug_flag():
    async def main():
        return asyncio.get_running_loop().get_debug()

    assert piston.run(main(), debug=True) is True
    assert piston.run(main(), debug=False) is False


# Scheduling.

def test_call_soon_order_and_args(loop):
    out = []
    loop.call_soon(out.append, 1)
    loop.call_soon(lambda a, b: out.append(a + b), 2, 3)
    h = loop.call_soon(out.append, "x")
    h.cancel()
    assert h.cancelled()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == [1, 5]


def test_call_soon_context(loop):
    var = contextvars.ContextVar("var", default="default")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "in ctx")
    seen = []
    h = loop.call_soon(lambda: seen.append(var.get()), context=ctx)
    if hasattr(h, "get_context"):     # 3.12+ on asyncio
        assert h.get_context() is ctx
    loop.call_soon(lambda: seen.append(var.get()))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == ["in ctx", "default"]


def _context_of(h):
    """The handle's context (get_context() is 3.12+ on asyncio)."""
    return h.get_context() if hasattr(h, "get_context") else h._context


@pytest.mark.parametrize("schedule", ["call_soon", "call_later", "call_at"])
def test_callback_contexts_are_isolated(loop, schedule):
    """Each callback runs in the context current when it was scheduled,
    and what one callback sets is seen by no other."""
    var = contextvars.ContextVar("var", default="default")
    seen = []

    def sched(cb):
        if schedule == "call_soon":
            return loop.call_soon(cb)
        if schedule == "call_later":
            return loop.call_later(0, cb)
        return loop.call_at(loop.time(), cb)

    def setter(value):
        def cb():
            seen.append(var.get())
            var.set(value)
            seen.append(var.get())
        return cb

    handles = [sched(setter("a")), sched(setter("b"))]
    var.set("v1")
    handles.append(sched(setter("c")))
    handles.append(sched(lambda: seen.append(var.get())))
    var.set("v2")
    handles.append(sched(lambda: seen.append(var.get())))
    var.set("v3")
    loop.call_later(0.01, loop.stop)
    try:
        loop.run_forever()
    finally:
        var.set("default")
    assert seen == ["default", "a", "default", "b", "v1", "c", "v1", "v2"]
    # Each handle has a context of its own, holding what its callback set.
    ctxs = [_context_of(h) for h in handles]
    assert len({id(c) for c in ctxs}) == len(ctxs)
    assert [c[var] for c in ctxs[:3]] == ["a", "b", "c"]
    assert ctxs[3][var] == "v1" and ctxs[4][var] == "v2"


def test_callback_context_keeps_identity_of_values(loop):
    """Equal but distinct values set between two schedulings: each callback
    sees the very object current when it was scheduled."""
    var = contextvars.ContextVar("var")
    first, second = [1], [1]
    seen = []
    var.set(first)
    loop.call_soon(lambda: seen.append(var.get()))
    var.set(second)
    loop.call_soon(lambda: seen.append(var.get()))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen[0] is first and seen[1] is second


def test_handle_context_before_and_during_run(loop):
    """A context handed out before the callback runs is the one it runs
    in; get_context() from inside the callback is its running context."""
    var = contextvars.ContextVar("var", default="default")
    seen = []
    h1 = loop.call_soon(lambda: seen.append(var.get()))
    h2 = loop.call_soon(lambda: seen.append(var.get()))
    ctx1 = _context_of(h1)
    assert ctx1 is _context_of(h1)
    assert ctx1 is not _context_of(h2)
    ctx1.run(var.set, "changed before run")

    def inside():
        var.set("set inside")
        seen.append(_context_of(h3)[var])

    h3 = loop.call_soon(inside)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == ["changed before run", "default", "set inside"]
    assert var.get() == "default"


def test_reader_context_persists_across_runs(loop):
    """add_reader's handle keeps one context for all its runs (as
    asyncio)."""
    var = contextvars.ContextVar("var", default=0)
    r, w = socket.socketpair()
    seen = []

    def on_readable():
        r.recv(1)
        var.set(var.get() + 1)
        seen.append(var.get())
        if len(seen) == 2:
            loop.stop()
        else:
            w.send(b"x")

    try:
        loop.add_reader(r, on_readable)
        w.send(b"x")
        loop.run_forever()
        loop.remove_reader(r)
    finally:
        r.close()
        w.close()
    assert seen == [1, 2]
    assert var.get() == 0


def test_callback_args_inline_and_tuple(loop):
    out = []
    handles = [
        loop.call_soon(lambda *a: out.append(a)),
        loop.call_soon(lambda *a: out.append(a), "x"),
        loop.call_soon(lambda *a: out.append(a), "x", "y"),
        loop.call_soon(lambda *a: out.append(a), 1, 2, 3),
        loop.call_later(0, lambda *a: out.append(a), "t", "u"),
    ]
    assert [h._args for h in handles] == [(), ("x",), ("x", "y"),
                                          (1, 2, 3), ("t", "u")]
    assert all(h._args is h._args for h in handles)
    cancelled = loop.call_soon(out.append, "never")
    assert cancelled._args == ("never",)
    cancelled.cancel()
    assert cancelled._args is None
    loop.call_later(0.005, loop.stop)
    loop.run_forever()
    assert out == [(), ("x",), ("x", "y"), (1, 2, 3), ("t", "u")]
    # Args survive the run (as asyncio keeps them on the handle).
    assert handles[2]._args == ("x", "y")


def test_callback_cancelling_itself_keeps_its_args(loop):
    out = []
    holder = []

    def cb(a, b):
        holder[0].cancel()
        out.append((a, b))

    holder.append(loop.call_soon(cb, object(), "b"))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert len(out) == 1 and out[0][1] == "b"


def test_timer_handles_compare_with_args(loop):
    when = loop.time() + 100
    a = loop.call_at(when, print, 1, 2)
    b = loop.call_at(when, print, 1, 2)
    c = loop.call_at(when, print, 1, 3)
    try:
        assert a == b and a != c
        assert a <= b and not a < b
    finally:
        for h in (a, b, c):
            h.cancel()


def test_gc_while_running_keeps_queued_callbacks(loop):
    """A collection from a callback leaves alone what only the queues hold,
    cycles included."""
    ran = []

    class Cycle:
        def __init__(self):
            self.me = self

        def __call__(self):
            ran.append(self)

    def collect():
        gc.collect()
        gc.collect()

    loop.call_soon(collect)
    loop.call_soon(Cycle())
    loop.call_later(0.001, Cycle())
    loop.call_later(0.02, loop.stop)
    loop.run_forever()
    assert len(ran) == 2


def test_stopped_loop_queue_cycles_are_collected():
    """A loop dropped with callbacks queued that refer back to it is
    garbage (the queues are visited when not running)."""
    lp = piston.new_event_loop()
    lp.call_soon(lp.stop)
    lp.call_later(3600, lp.stop)
    ref = weakref.ref(lp)
    lp.close = lambda: None      # no close(): the queues stay
    with pytest.warns(ResourceWarning):
        del lp
        gc.collect()
    assert ref() is None


def test_call_soon_bad_callbacks(loop):
    async def coro():
        pass

    # asyncio checks only in debug mode; piston always does.
    loop.set_debug(True)
    with pytest.raises(TypeError, match="coroutines cannot be used"):
        loop.call_soon(coro)
    c = coro()
    with pytest.raises(TypeError):
        loop.call_soon(c)
    c.close()
    with pytest.raises(TypeError, match="a callable object was expected"):
        loop.call_soon(42)
    with pytest.raises(TypeError):
        loop.call_soon(print, bogus=1)


def test_timers_order_and_ties(loop):
    out = []
    now = loop.time()
    for i in range(5):
        loop.call_at(now + 0.02, out.append, i)
    loop.call_at(now + 0.01, out.append, "first")
    h = loop.call_later(0.015, out.append, "cancelled")
    assert isinstance(h, asyncio.TimerHandle) if isinstance(
        loop, asyncio.BaseEventLoop) else isinstance(h, piston.TimerHandle)
    assert h.when() == pytest.approx(now + 0.015, abs=0.005)
    h.cancel()
    loop.call_at(now + 0.03, loop.stop)
    loop.run_forever()
    if isinstance(loop, piston.Loop):
        # piston breaks deadline ties by scheduling order.
        assert out == ["first", 0, 1, 2, 3, 4]
    else:
        # asyncio's heapq does not promise any order among equal deadlines.
        assert out[0] == "first" and sorted(out[1:]) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("n, far", [(3000, 0), (3000, 1000), (100, 0)])
def test_many_due_timers_fire_in_order(loop, n, far):
    """Many timers due at once (piston sorts such a batch out of its heap):
    deadline order, ties in scheduling order, cancelled ones skipped, and
    timers not yet due stay queued."""
    fired = []
    base = loop.time() - 1
    handles = []
    for i in range(n):
        # Ten distinct deadlines, scheduled out of order: many ties.
        when = base + ((i * 7) % 10) * 1e-4
        handles.append(loop.call_at(when, fired.append, (when, i)))
    later = [loop.call_later(3600, fired.append, "never")
             for _ in range(far)]
    for h in handles[::50]:
        h.cancel()
    loop.call_soon(loop.stop)
    loop.run_forever()
    cancelled = set(range(0, n, 50))
    expected = sorted((w, i) for w, i in
                      ((base + ((i * 7) % 10) * 1e-4, i) for i in range(n))
                      if i not in cancelled)
    if isinstance(loop, piston.Loop):
        assert fired == expected
        assert loop.stats()["timers_scheduled"] == far
    else:
        # asyncio's heapq does not promise any order among equal deadlines.
        assert [w for w, _ in fired] == [w for w, _ in expected]
        assert sorted(fired) == expected
    assert all(not h.cancelled() for h in later)
    for h in later:
        h.cancel()


def test_timer_accuracy_submillisecond(loop):
    delays = []

    async def main():
        for _ in range(20):
            t0 = loop.time()
            await asyncio.sleep(0.0005)
            delays.append(loop.time() - t0)

    loop.run_until_complete(main())
    assert min(delays) >= 0.0005 - 1e-6


def test_time_is_monotonic(loop):
    a = time.monotonic()
    b = loop.time()
    c = time.monotonic()
    assert a <= b <= c


def test_call_later_none(loop):
    with pytest.raises(TypeError):
        loop.call_later(None, print)
    with pytest.raises(TypeError):
        loop.call_at(None, print)


def test_call_soon_threadsafe(loop):
    got = []

    def worker():
        time.sleep(0.05)
        loop.call_soon_threadsafe(got.append, threading.get_ident())
        loop.call_soon_threadsafe(loop.stop)

    t = threading.Thread(target=worker)
    t.start()
    loop.run_forever()
    t.join()
    assert got == [t.ident]


def test_many_threadsafe_calls(loop):
    n = 2000
    fut = loop.create_future()
    count = [0]

    def inc():
        count[0] += 1
        if count[0] == n:
            fut.set_result(None)

    def worker():
        for _ in range(n // 2):
            loop.call_soon_threadsafe(inc)

    ts = [threading.Thread(target=worker) for _ in range(2)]
    for t in ts:
        t.start()
    loop.run_until_complete(asyncio.wait_for(fut, 10))
    for t in ts:
        t.join()
    assert count[0] == n


def test_handle_repr(loop):
    def cb(x):
        pass

    h = loop.call_soon(cb, 1)
    # (3.13 shows the arguments only in debug mode.)
    assert repr(h).startswith("<Handle test_handle_repr.<locals>.cb(")
    h.cancel()
    assert "cancelled" in repr(h)
    th = loop.call_later(10, cb, 2)
    assert repr(th).startswith("<TimerHandle when=")
    th.cancel()


# Running, stopping, closing.

def test_run_until_complete_result_and_exception(loop):
    async def ok():
        await asyncio.sleep(0)
        return 42

    async def bad():
        raise ValueError("boom")

    assert loop.run_until_complete(ok()) == 42
    with pytest.raises(ValueError, match="boom"):
        loop.run_until_complete(bad())
    assert not loop.is_running()


def test_run_until_complete_stopped_early(loop):
    async def forever():
        loop.stop()
        await asyncio.sleep(10)

    with pytest.raises(RuntimeError,
                       match="Event loop stopped before Future completed"):
        loop.run_until_complete(forever())
    for t in asyncio.all_tasks(loop):
        t.cancel()
    loop.run_until_complete(asyncio.sleep(0))


def test_reentry_errors(loop):
    async def inner():
        with pytest.raises(RuntimeError, match="already running"):
            loop.run_until_complete(asyncio.sleep(0))
        other = piston.new_event_loop()
        try:
            with pytest.raises(RuntimeError,
                               match="another loop is running"):
                other.run_until_complete(asyncio.sleep(0))
        finally:
            other.close()
        with pytest.raises(RuntimeError, match="Cannot close a running"):
            loop.close()
        # Last: asyncio 3.13.0's run_forever marks the loop not running
        # after refusing to re-enter it.
        with pytest.raises(RuntimeError, match="already running"):
            loop.run_forever()

    loop.run_until_complete(inner())


def test_closed_loop_errors(loop):
    loop.close()
    assert loop.is_closed()
    loop.close()        # idempotent
    for call in (lambda: loop.call_soon(print),
                 lambda: loop.call_later(1, print),
                 lambda: loop.call_soon_threadsafe(print),
                 lambda: loop.run_forever(),
                 lambda: loop.create_task(asyncio.sleep(0))):
        with pytest.raises(RuntimeError, match="Event loop is closed"):
            call()
    coro = asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.run_until_complete(coro)
    coro.close()
    assert loop.remove_reader(0) is False


def test_debug_other_thread(loop):
    loop.set_debug(True)
    err = []

    async def main():
        def other():
            try:
                loop.call_soon(print)
            except RuntimeError as e:
                err.append(str(e))

        t = threading.Thread(target=other)
        t.start()
        t.join()

    loop.run_until_complete(main())
    assert err and "Non-thread-safe operation" in err[0]


def test_slow_callback_logged(loop, caplog):
    loop.set_debug(True)
    loop.slow_callback_duration = 0.01
    loop.call_soon(time.sleep, 0.03)
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.run_forever()
    assert any("took" in r.getMessage() and "sleep" in r.getMessage()
               for r in caplog.records)


# Exceptions in callbacks.

def test_exception_handler(loop):
    seen = []
    assert loop.get_exception_handler() is None
    loop.set_exception_handler(lambda lp, ctx: seen.append((lp, ctx)))
    with pytest.raises(TypeError):
        loop.set_exception_handler(42)

    def boom():
        raise ZeroDivisionError

    loop.call_soon(boom)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert len(seen) == 1
    lp, ctx = seen[0]
    assert lp is loop
    assert isinstance(ctx["exception"], ZeroDivisionError)
    assert ctx["message"].startswith("Exception in callback")
    assert "handle" in ctx


def test_default_exception_handler_logs(loop, caplog):
    def boom():
        raise ZeroDivisionError("zz")

    loop.call_soon(boom)
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.run_forever()
    assert any("Exception in callback" in r.getMessage()
               for r in caplog.records)


def test_keyboard_interrupt_in_callback_propagates(loop):
    def boom():
        raise KeyboardInterrupt

    out = []
    loop.call_soon(boom)
    loop.call_soon(out.append, 1)
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    # What was still queued runs on the next start.
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == [1]


def test_broken_exception_handler(loop, caplog):
    def handler(lp, ctx):
        raise RuntimeError("handler broke")

    loop.set_exception_handler(handler)
    loop.call_soon(lambda: 1 / 0)
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.run_forever()
    assert any("Unhandled error in exception handler" in r.getMessage()
               for r in caplog.records)


# Tasks and futures.

def test_create_task_name_context(loop):
    var = contextvars.ContextVar("v", default=0)
    ctx = contextvars.copy_context()
    ctx.run(var.set, 7)

    async def get():
        return var.get()

    async def main():
        t = loop.create_task(get(), name="the-task", context=ctx)
        assert t.get_name() == "the-task"
        assert asyncio.current_task() is not None
        return await t

    assert loop.run_until_complete(main()) == 7


def test_task_factory(loop):
    made = []

    def factory(lp, coro, **kw):
        t = asyncio.Task(coro, loop=lp, **kw)
        made.append(t)
        return t

    with pytest.raises(TypeError):
        loop.set_task_factory(1)
    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory
    t = loop.create_task(asyncio.sleep(0, 5), name="n")
    assert loop.run_until_complete(t) == 5
    assert made == [t] and t.get_name() == "n"


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks: 3.12+")
def test_eager_task_factory(loop):
    loop.set_task_factory(asyncio.eager_task_factory)
    started = []

    async def coro():
        started.append(1)
        return 3

    async def main():
        t = loop.create_task(coro())
        assert started == [1]      # ran synchronously
        return await t

    assert loop.run_until_complete(main()) == 3


def test_create_future(loop):
    f = loop.create_future()
    assert isinstance(f, asyncio.Future)
    assert f.get_loop() is loop
    loop.call_soon(f.set_result, 1)
    assert loop.run_until_complete(f) == 1


def test_gather_many_tasks(loop):
    async def one(i):
        await asyncio.sleep(0)
        return i

    async def main():
        return await asyncio.gather(*(one(i) for i in range(2000)))

    assert loop.run_until_complete(main()) == list(range(2000))


def test_timeouts_and_taskgroup(loop):
    async def main():
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await asyncio.sleep(10)
        async with asyncio.TaskGroup() as tg:
            a = tg.create_task(asyncio.sleep(0.01, "a"))
            b = tg.create_task(asyncio.sleep(0.005, "b"))
        return a.result() + b.result()

    assert loop.run_until_complete(main()) == "ab"


# Async generators and executors.

def test_shutdown_asyncgens(loop):
    closed = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            closed.append(True)

    async def main():
        g = agen()
        await g.__anext__()
        return g

    g = loop.run_until_complete(main())
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert closed == [True]
    del g


def test_run_in_executor_and_shutdown(loop):
    async def main():
        a = await loop.run_in_executor(None, sum, [1, 2, 3])
        b = await asyncio.to_thread(threading.get_ident)
        return a, b

    a, b = loop.run_until_complete(main())
    assert a == 6 and b != threading.get_ident()
    loop.run_until_complete(loop.shutdown_default_executor())
    with pytest.raises(RuntimeError, match="Executor shutdown"):
        loop.run_in_executor(None, print)


def test_set_default_executor(loop):
    import concurrent.futures as cf

    with pytest.raises(TypeError):
        loop.set_default_executor(object())
    ex = cf.ThreadPoolExecutor(1)
    loop.set_default_executor(ex)
    r = loop.run_until_complete(
        loop.run_in_executor(None, threading.current_thread))
    assert r.name.startswith("ThreadPoolExecutor")
    ex.shutdown()


# Name resolution.

def test_getaddrinfo_numeric_and_names(loop):
    for host, port in [("127.0.0.1", 80), ("::1", "443"), (None, 0),
                       ("localhost", 80)]:
        got = loop.run_until_complete(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        assert got == socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    got = loop.run_until_complete(
        loop.getnameinfo(("127.0.0.1", 80), socket.NI_NUMERICHOST))
    assert got == socket.getnameinfo(("127.0.0.1", 80),
                                     socket.NI_NUMERICHOST)


# File descriptors.

def test_add_reader_writer(loop):
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    got = []
    try:
        def on_read():
            got.append(a.recv(100))
            loop.remove_reader(a)
            loop.stop()

        loop.add_reader(a, on_read)
        loop.add_writer(b.fileno(), lambda: (b.send(b"hi"),
                                             loop.remove_writer(b)))
        loop.run_forever()
        assert got == [b"hi"]
        assert loop.remove_reader(a) is False
        assert loop.remove_writer(b) is False
    finally:
        a.close()
        b.close()


def test_add_reader_replaces(loop):
    a, b = socket.socketpair()
    try:
        calls = []
        loop.add_reader(a, calls.append, "old")
        loop.add_reader(a, lambda: (calls.append("new"), a.recv(10),
                                    loop.stop()))
        b.send(b"x")
        loop.run_forever()
        assert calls == ["new"]
        assert loop.remove_reader(a.fileno()) is True
    finally:
        a.close()
        b.close()


def test_add_reader_bad_fds(loop):
    with pytest.raises(ValueError):
        loop.add_reader(-1, print)
    with pytest.raises(ValueError):
        loop.add_reader(object(), print)
    with open(__file__, "rb") as f:
        with pytest.raises(OSError):
            loop.add_reader(f.fileno(), print)


def test_fd_closed_behind_back(loop):
    a, b = socket.socketpair()
    loop.add_reader(a.fileno(), print)
    fd = a.fileno()
    a.close()
    b.close()
    # Removing and re-adding on a reused fd number must not crash.
    loop.remove_reader(fd)
    c, d = socket.socketpair()
    try:
        loop.add_reader(c, lambda: (c.recv(1), loop.stop()))
        d.send(b"1")
        loop.run_forever()
        loop.remove_reader(c)
    finally:
        c.close()
        d.close()


# Low-level socket API.

def test_sock_api(loop):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    srv.setblocking(False)

    async def main():
        cli = socket.socket()
        cli.setblocking(False)
        await loop.sock_connect(cli, srv.getsockname())
        conn, _ = await loop.sock_accept(srv)
        big = b"x" * (4 * 1024 * 1024)
        send = loop.create_task(loop.sock_sendall(cli, big))
        got = bytearray()
        while len(got) < len(big):
            chunk = await loop.sock_recv(conn, 65536)
            got += chunk
        await send
        buf = bytearray(10)
        await loop.sock_sendall(conn, b"hello")
        n = await loop.sock_recv_into(cli, buf)
        conn.close()
        cli.close()
        return len(got), bytes(buf[:n])

    try:
        assert loop.run_until_complete(main()) == (4 * 1024 * 1024,
                                                   b"hello")
    finally:
        srv.close()


def test_sock_connect_refused(loop):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()

    async def main():
        cli = socket.socket()
        cli.setblocking(False)
        try:
            await loop.sock_connect(cli, ("127.0.0.1", port))
        finally:
            cli.close()

    with pytest.raises(ConnectionRefusedError):
        loop.run_until_complete(main())


def test_sock_udp(loop):
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    a.setblocking(False)
    b.setblocking(False)

    async def main():
        rx = loop.create_task(loop.sock_recvfrom(a, 100))
        await asyncio.sleep(0.01)
        await loop.sock_sendto(b, b"dgram", a.getsockname())
        data, addr = await rx
        buf = bytearray(100)
        await loop.sock_sendto(b, b"again", a.getsockname())
        n, _ = await loop.sock_recvfrom_into(a, buf)
        return data, bytes(buf[:n])

    try:
        assert loop.run_until_complete(main()) == (b"dgram", b"again")
    finally:
        a.close()
        b.close()


def test_sock_recv_cancel_unregisters(loop):
    a, b = socket.socketpair()
    a.setblocking(False)

    async def main():
        t = loop.create_task(loop.sock_recv(a, 10))
        await asyncio.sleep(0.01)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        # The fd is free again: a new reader can be added.
        b.send(b"z")
        return await loop.sock_recv(a, 10)

    try:
        assert loop.run_until_complete(main()) == b"z"
    finally:
        a.close()
        b.close()


def test_sock_sendfile(loop, tmp_path):
    path = tmp_path / "data"
    payload = os.urandom(300000)
    path.write_bytes(payload)
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)

    async def main():
        async def reader():
            got = bytearray()
            while len(got) < 1000:
                got += await loop.sock_recv(b, 65536)
            return bytes(got)

        r = loop.create_task(reader())
        with open(path, "rb") as f:
            sent = await loop.sock_sendfile(a, f, 100, 1000)
            assert f.tell() == 1100
        return sent, await r

    try:
        sent, got = loop.run_until_complete(main())
        assert sent == 1000 and got == payload[100:1100]
    finally:
        a.close()
        b.close()


# Signals.

def test_signal_handler(loop):
    got = []

    def on_usr1(x):
        got.append(x)
        loop.stop()

    loop.add_signal_handler(signal.SIGUSR1, on_usr1, "usr1")
    loop.call_later(0.01, os.kill, os.getpid(), signal.SIGUSR1)
    loop.run_forever()
    assert got == ["usr1"]
    assert loop.remove_signal_handler(signal.SIGUSR1) is True
    assert loop.remove_signal_handler(signal.SIGUSR1) is False
    with pytest.raises(TypeError):
        loop.add_signal_handler("x", print)
    with pytest.raises(ValueError):
        loop.add_signal_handler(10 ** 6, print)
    with pytest.raises(RuntimeError):
        loop.add_signal_handler(signal.SIGKILL, print)


def test_signal_handler_not_main_thread(loop):
    err = []

    def other():
        try:
            loop.add_signal_handler(signal.SIGUSR2, print)
        except RuntimeError as e:
            err.append(e)

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert err


CTRL_C_SCRIPT = """
import asyncio, os, signal, sys, time
import piston
kind = sys.argv[1]
factory = piston.new_event_loop if kind == "piston" else asyncio.new_event_loop
async def main():
    print("ready", flush=True)
    await asyncio.sleep(30)
try:
    with asyncio.Runner(loop_factory=factory) as r:
        r.run(main())
except KeyboardInterrupt:
    print("KeyboardInterrupt", flush=True)
    sys.exit(3)
"""

CTRL_C_BARE_SCRIPT = """
import asyncio, sys
import piston
kind = sys.argv[1]
loop = piston.new_event_loop() if kind == "piston" else asyncio.new_event_loop()
async def main():
    print("ready", flush=True)
    await asyncio.sleep(30)
try:
    loop.run_until_complete(main())
except KeyboardInterrupt:
    print("KeyboardInterrupt", flush=True)
    sys.exit(3)
"""


@pytest.mark.parametrize("script", [CTRL_C_SCRIPT, CTRL_C_BARE_SCRIPT],
                         ids=["runner", "bare"])
def test_ctrl_c(kind, script):
    env = dict(os.environ, PYTHONPATH=PYPATH)
    p = subprocess.Popen([sys.executable, "-c", script, kind], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip() == "ready"
    time.sleep(0.1)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=20)
    assert p.returncode == 3, err
    assert "KeyboardInterrupt" in out


def test_fork_child_refuses_parent_loop():
    code = """
    import asyncio, os, sys
    import piston
    loop = piston.new_event_loop()
    loop.run_until_complete(asyncio.sleep(0))
    pid = os.fork()
    if pid == 0:
        try:
            loop.run_until_complete(asyncio.sleep(0))
        except RuntimeError as e:
            ok = "fork" in str(e)
        else:
            ok = False
        # A fresh loop in the child works.
        new = piston.new_event_loop()
        ok = ok and new.run_until_complete(asyncio.sleep(0, 5)) == 5
        new.close()
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    print("child", os.waitstatus_to_exitcode(status))
    print("parent", loop.run_until_complete(asyncio.sleep(0, 9)))
    """
    p = run_script(code)
    out, err = p.communicate(timeout=30)
    assert "child 0" in out and "parent 9" in out, (out, err)


# Resources.

def test_unclosed_loop_warns():
    lp = piston.new_event_loop()
    with pytest.warns(ResourceWarning):
        del lp
        gc.collect()


def test_loop_is_collected():
    lp = piston.new_event_loop()
    lp.call_soon(print)
    lp.call_later(10, print)
    lp.close()
    ref = weakref.ref(lp)
    del lp
    gc.collect()
    assert ref() is None


def test_stats():
    lp = piston.new_event_loop()
    try:
        lp.run_until_complete(asyncio.sleep(0.01))
        s = lp.stats()
        assert s["iterations"] >= 2 and s["callbacks"] >= 2
        assert s["timers_fired"] >= 1
        assert s["time_polling"] > 0
        # Blocked time is polling; a callback sees the run so far counted.
        inside = []
        lp.call_soon(lambda: inside.append(lp.stats()["time_running"]))
        lp.run_until_complete(asyncio.sleep(0.05))
        s2 = lp.stats()
        assert s2["time_polling"] > s["time_polling"]
        assert s["time_running"] <= inside[0] <= s2["time_running"]
    finally:
        lp.close()


# piston.Futures delivered into the loop in batches.

def test_piston_pool_batched_completion(loop):
    pool = piston.ThreadPoolExecutor(2)

    def boom():
        raise KeyError("k")

    async def main():
        assert await loop.run_in_executor(pool, sum, [1, 2]) == 3
        with pytest.raises(KeyError):
            await loop.run_in_executor(pool, boom)
        res = await asyncio.gather(*[loop.run_in_executor(pool, abs, -i)
                                     for i in range(3000)])
        assert res == list(range(3000))
        # Cancelling the asyncio side cancels the pool's future if it has
        # not started.
        ev = threading.Event()
        blockers = [loop.run_in_executor(pool, ev.wait) for _ in range(2)]
        await asyncio.sleep(0.05)
        queued = loop.run_in_executor(pool, sum, [5])
        queued.cancel()
        ev.set()
        await asyncio.gather(*blockers)
        with pytest.raises(asyncio.CancelledError):
            await queued
        return await asyncio.to_thread(lambda: "to_thread")

    try:
        assert loop.run_until_complete(main()) == "to_thread"
    finally:
        pool.shutdown()
    if isinstance(loop, piston.Loop):
        s = loop.stats()
        assert s["completions"] >= 3002
        # Many completions share one wake-up.
        assert s["completion_batches"] < s["completions"]


def test_completion_after_close_is_dropped():
    lp = piston.new_event_loop()
    pool = piston.ThreadPoolExecutor(1)
    ev = threading.Event()
    fut = lp.run_in_executor(pool, ev.wait)
    lp.close()
    ev.set()
    pool.shutdown(wait=True)
    assert not fut.done()


def test_handle_cycles_are_collected(loop):
    class Obj:
        def cb(self):
            pass

    refs = []
    for make in (lambda o: loop.call_soon(o.cb),
                 lambda o: loop.call_later(0.001, o.cb),
                 lambda o: loop.call_later(10, o.cb)):
        o = Obj()
        o.h = make(o)
        refs.append(weakref.ref(o))
        del o
    loop.run_until_complete(asyncio.sleep(0.01))
    # The far timer is still scheduled: cancel it through its handle.
    refs[2]().h.cancel()
    gc.collect()
    assert [r() for r in refs] == [None, None, None]


def test_dropped_loop_with_pending_callbacks_is_collected():
    lp = piston.new_event_loop()
    for _ in range(10):
        lp.call_soon(print)
        lp.call_later(100, print)
    ref = weakref.ref(lp)
    with pytest.warns(ResourceWarning):
        del lp
        gc.collect()
    assert ref() is None


def test_executor_cancelled_error_becomes_asyncio_cancelled(loop):
    import concurrent.futures as cf

    def raises():
        raise cf.CancelledError()

    for pool in (None, piston.ThreadPoolExecutor(1)):
        with pytest.raises(asyncio.CancelledError):
            loop.run_until_complete(loop.run_in_executor(pool, raises))
        if pool is not None:
            pool.shutdown()


def test_cli_run(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent("""
        import asyncio, sys
        async def main():
            return type(asyncio.get_running_loop()).__name__
        print(asyncio.run(main()), sys.argv[1:])
    """))
    env = dict(os.environ, PYTHONPATH=PYPATH)
    out = subprocess.run([sys.executable, "-m", "piston", "run", str(script),
                          "a", "-b"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "Loop ['a', '-b']"


# Watchdog (piston only: no other loop has one).

WATCHDOG_SCRIPT = """
import asyncio, logging, time, sys
import piston
logging.basicConfig(level=logging.WARNING, stream=sys.stdout,
                    format="%(message)s")

def busy_python(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass

async def blocker():
    print("before", flush=True)
    busy_python(0.5)
    print("after", flush=True)
    time.sleep(0.3)         # blocking, but releases the GIL
    print("after sleep", flush=True)

async def main():
    await asyncio.create_task(blocker(), name="the-blocker")

piston.run(main(), watchdog=0.1)
"""


def test_watchdog_reports_while_blocked():
    p = run_script(WATCHDOG_SCRIPT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    lines = out.splitlines()
    first = next(i for i, l in enumerate(lines) if "piston watchdog" in l)
    # Reported while still blocked: before the callback printed "after".
    assert first < lines.index("after"), out
    report = "\n".join(lines[first:lines.index("after")])
    assert "busy_python" in report and "the-blocker" in report, out
    # The sleeping callback is the same one: reported once, not again.
    assert out.count("piston watchdog") == 1, out


def test_watchdog_api_and_env():
    lp = piston.new_event_loop()
    try:
        assert lp.get_watchdog() is None
        lp.set_watchdog(0.05)
        assert lp.get_watchdog() == 0.05
        lp.run_until_complete(asyncio.sleep(0.01))
        with pytest.raises(ValueError):
            lp.set_watchdog(-1)
        lp.set_watchdog(None)
        assert lp.get_watchdog() is None
        lp.set_watchdog(0.05)
    finally:
        lp.close()      # stops the thread
    assert not any(t.name == "piston-watchdog"
                   for t in threading.enumerate())
    p = run_script("""
        import asyncio, time, logging, sys
        import piston
        logging.basicConfig(stream=sys.stdout, format="%(message)s")
        async def main():
            time.sleep(0.3)
        asyncio.run(main(), loop_factory=piston.new_event_loop) \
            if sys.version_info >= (3, 12) else piston.run(main())
    """, env=dict(os.environ, PYTHONPATH=PYPATH, PISTON_WATCHDOG="0.05"))
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert "piston watchdog" in out, (out, err)


def test_debug_source_traceback(loop, caplog):
    loop.set_debug(True)

    def boom():
        raise ZeroDivisionError

    h = loop.call_soon(boom)        # the line reported
    line = sys._getframe().f_lineno - 1
    assert h._source_traceback[-1][:2] == (__file__, line)
    assert f"created at {__file__}:{line}" in repr(h)
    t = loop.call_later(10, print)
    assert t._source_traceback[-1][0] == __file__
    t.cancel()
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.run_forever()
    assert any("Object created at" in r.getMessage()
               for r in caplog.records)
