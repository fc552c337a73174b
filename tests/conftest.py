"""Shared fixtures: stdlib/piston parametrization, pool cleanup, thread-leak and hang guards."""
import concurrent.futures
import faulthandler
import os
import subprocess
import sys
import threading
import time

import pytest

# How long a single test may run before the whole run is aborted with every
# thread's traceback dumped: a hang must fail loudly, never stall CI.
HANG_GUARD_S = float(os.environ.get("PISTON_TEST_HANG_GUARD", "120"))
# How long leftover worker threads get to exit after a test.
THREAD_EXIT_S = 15

# piston is imported once here.  A missing build is skipped only when the
# environment does not demand piston (CI sets PISTON_REQUIRE=1); any other
# import failure is never skipped.
try:
    import piston
    PISTON_IMPORT_ERROR = None
except Exception as exc:  # noqa: BLE001 - recorded and re-raised per test
    piston = None
    PISTON_IMPORT_ERROR = exc

PISTON_REQUIRED = os.environ.get("PISTON_REQUIRE") == "1"


def require_piston():
    """Returns the piston module, or skips/fails the test if it is absent."""
    if piston is not None:
        return piston
    exc = PISTON_IMPORT_ERROR
    if isinstance(exc, ImportError) and not PISTON_REQUIRED:
        pytest.skip(f"piston not importable: {exc!r}")
    pytest.fail(f"import piston failed: {exc!r}"
                + (" (PISTON_REQUIRE=1)" if PISTON_REQUIRED else ""),
                pytrace=False)


def piston_pythonpath():
    """The directory piston was imported from, for subprocess PYTHONPATH."""
    mod = require_piston()
    return os.path.dirname(os.path.dirname(os.path.abspath(mod.__file__)))


IMPLS = ["stdlib", "piston"]


@pytest.fixture(params=IMPLS)
def impl(request):
    """The implementation name under test; skips piston when unavailable."""
    if request.param == "piston":
        require_piston()
    return request.param


@pytest.fixture
def executor_cls(impl):
    """concurrent.futures.ThreadPoolExecutor or piston.ThreadPoolExecutor."""
    if impl == "piston":
        return piston.ThreadPoolExecutor
    return concurrent.futures.ThreadPoolExecutor


@pytest.fixture
def future_cls(impl):
    """concurrent.futures.Future or piston.Future."""
    if impl == "piston":
        return piston.Future
    return concurrent.futures.Future


@pytest.fixture
def broken_thread_pool_cls(impl):
    """The BrokenThreadPool the implementation raises."""
    if impl == "piston":
        return piston.BrokenThreadPool
    return concurrent.futures.thread.BrokenThreadPool


@pytest.fixture
def pistonmod():
    """The piston module, for piston-only tests."""
    return require_piston()


class _Cleanup:
    """Pools and events a test created; released at teardown."""

    def __init__(self):
        self.pools = []
        self.events = []

    def release(self):
        # Open every gate first so blocked tasks can finish, then shut the
        # pools down: queued work is cancelled, running work drains.
        for ev in self.events:
            ev.set()
        for ex in self.pools:
            ex.shutdown(wait=False, cancel_futures=True)
        for ex in self.pools:
            ex.shutdown(wait=True)
        self.pools.clear()
        self.events.clear()


@pytest.fixture
def _cleanup():
    c = _Cleanup()
    yield c
    c.release()


@pytest.fixture
def make_pool(executor_cls, _cleanup):
    """make_pool(**kw) -> executor_cls(**kw), shut down after the test."""
    def make(*args, **kwargs):
        ex = executor_cls(*args, **kwargs)
        _cleanup.pools.append(ex)
        return ex
    return make


@pytest.fixture
def make_event(_cleanup):
    """make_event() -> threading.Event that is set at teardown (a gate that
    tasks block on; teardown always opens it so no worker stays stuck)."""
    def make():
        ev = threading.Event()
        _cleanup.events.append(ev)
        return ev
    return make


# Where the hang guard writes: the terminal's stderr, not the file pytest
# captures fd 2 into (the guard exits the process at once, so a captured
# dump would never be shown).
_HANG_DUMP_FILE = None


def pytest_configure(config):
    global _HANG_DUMP_FILE
    capman = config.pluginmanager.getplugin("capturemanager")
    try:
        fd = capman._global_capturing.err.targetfd_save  # pytest internals
    except AttributeError:
        fd = None
    if fd is None:
        _HANG_DUMP_FILE = sys.__stderr__
    else:
        _HANG_DUMP_FILE = os.fdopen(os.dup(fd), "w", closefd=True)


def pytest_unconfigure(config):
    global _HANG_DUMP_FILE
    faulthandler.cancel_dump_traceback_later()
    if _HANG_DUMP_FILE not in (None, sys.__stderr__):
        _HANG_DUMP_FILE.close()
    _HANG_DUMP_FILE = None


def _alive_extra(baseline):
    return [t for t in threading.enumerate()
            if t not in baseline and t.is_alive()]


@pytest.fixture(autouse=True)
def _no_thread_leak():
    """Fails the test if it leaves threads behind (after a grace period),
    and aborts the whole run with tracebacks if the test hangs."""
    faulthandler.dump_traceback_later(HANG_GUARD_S, exit=True,
                                      file=_HANG_DUMP_FILE or sys.__stderr__)
    baseline = set(threading.enumerate())
    base_count = threading.active_count()
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
    deadline = time.monotonic() + THREAD_EXIT_S
    extra = _alive_extra(baseline)
    while (extra or threading.active_count() > base_count) \
            and time.monotonic() < deadline:
        import gc
        gc.collect()
        time.sleep(0.02)
        extra = _alive_extra(baseline)
    assert not extra, f"threads leaked by the test: {extra!r}"
    assert threading.active_count() <= base_count, (
        f"threading.active_count() {threading.active_count()} "
        f"> baseline {base_count}: {threading.enumerate()!r}")


# Preamble every subprocess script starts with: picks the implementation
# named in argv[1] (Pool, Fut) and makes SIGINT raise KeyboardInterrupt even
# when the test runner was started with SIGINT ignored (background CI jobs).
SCRIPT_PREAMBLE = r'''
import concurrent.futures as cf, os, signal, sys, threading, time
signal.signal(signal.SIGINT, signal.default_int_handler)
IMPL = sys.argv[1]
if IMPL == "piston":
    import piston
    Pool, Fut = piston.ThreadPoolExecutor, piston.Future
else:
    Pool, Fut = cf.ThreadPoolExecutor, cf.Future
'''


def _script_env(impl):
    env = dict(os.environ)
    if impl == "piston":
        path = piston_pythonpath()
        old = env.get("PYTHONPATH")
        env["PYTHONPATH"] = path + (os.pathsep + old if old else "")
    env.setdefault("PYTHONFAULTHANDLER", "1")
    return env


def _argv(body, impl, args):
    return [sys.executable, "-c", SCRIPT_PREAMBLE + body, impl,
            *map(str, args)]


def _run_script(body, impl, *args, timeout=60):
    """Runs SCRIPT_PREAMBLE + body as `python -c` with argv[1] = impl and
    piston on PYTHONPATH; returns the CompletedProcess (text).  A hang past
    `timeout` seconds fails the test."""
    try:
        return subprocess.run(_argv(body, impl, args), env=_script_env(impl),
                              stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"subprocess hung for {timeout}s\nstdout:\n{exc.stdout}"
                    f"\nstderr:\n{exc.stderr}", pytrace=False)


def _sigint_while_waiting(body, impl, ready_timeout=60, exit_timeout=5):
    """Runs SCRIPT_PREAMBLE + body, which prints READY and then blocks in a
    wait nobody ends; sends SIGINT ~0.5 s after READY and returns (rc,
    stdout, stderr).  The child must exit within `exit_timeout` seconds of
    the signal."""
    import selectors
    import signal
    proc = subprocess.Popen(_argv(body, impl, ()), env=_script_env(impl),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + ready_timeout
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    pytest.fail("child never printed READY", pytrace=False)
                line = proc.stdout.readline()
                if not line:
                    out, err = proc.communicate(timeout=10)
                    pytest.fail(f"child exited before READY: "
                                f"rc={proc.returncode}\n{out}\n{err}",
                                pytrace=False)
                if "READY" in line:
                    break
        time.sleep(0.5)
        assert proc.poll() is None, "child stopped waiting on its own"
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=exit_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"child ignored SIGINT for {exit_timeout}s while "
                        f"waiting\nstderr:\n{err}", pytrace=False)
        return proc.returncode, out, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.fixture
def run_script():
    """run_script(body, impl, *args, timeout=60) -> CompletedProcess; the
    body runs after SCRIPT_PREAMBLE, which defines Pool and Fut for impl."""
    return _run_script


@pytest.fixture
def sigint_while_waiting():
    """sigint_while_waiting(body, impl) -> (rc, stdout, stderr): Ctrl-C
    sent to a child blocked in a wait after it printed READY."""
    return _sigint_while_waiting
