"""piston.ProcessPoolExecutor: the stdlib's ProcessPoolExecutor API on a C
pool that moves tasks through shared memory and heals itself.

The per-task path is C (csrc/ext/procpool.c): submit pickles and writes the
task into a worker's ring in a memfd; a C collector thread completes the
futures.  This module holds what is off that path: argument checks, the
handle on the fork server that starts workers (its loop and the workers'
bodies are in _fork_server.py), map()'s chunking and progress, shutdown.
"""
import concurrent.futures as _cf
import itertools
import os
import pickle
import select
import signal
import sys
import threading
import time
import traceback

from piston import _fork_server, _piston, _zygote
from piston._fork_server import cloud_dumps as _cloud_dumps

__all__ = ["ProcessPoolExecutor"]

# Buffers of at least this many bytes (numpy arrays, PickleBuffer) travel
# out of band through the shared arena instead of inside the pickle.
_OOB_THRESHOLD = 64 * 1024


class _RemoteTraceback(Exception):
    """The __cause__ of an exception re-raised from a worker: its text is
    the traceback as the worker saw it."""

    def __init__(self, tb):
        super().__init__(tb)
        self.tb = tb

    def __str__(self):
        return self.tb


def _rebuild_exc(obj):
    exc, tb = obj
    exc.__cause__ = _RemoteTraceback('\n"""\n%s"""' % tb)
    return exc


def _run_chunk(fn, chunk):
    return list(itertools.starmap(fn, chunk))


def _run_chunk1(fn, chunk):
    # One iterable: items travel bare, not as 1-tuples.
    return list(map(fn, chunk))


def _other_threads():
    """Kernel thread ids of this process other than the calling thread."""
    try:
        tids = set(map(int, os.listdir("/proc/self/task")))
    except OSError:  # pragma: no cover
        return set(range(threading.active_count() - 1))
    tids.discard(threading.get_native_id())
    return tids


def _threads_in_process():
    return len(_other_threads()) + 1


# Threads seen to outlast the grace below: not a pool's thread tearing
# down but one that stays (a BLAS pool), so later checks need not wait.
_lasting_threads = set()


def _single_threaded(grace=0.005):
    """True if this process has one thread (forking it is then safe).  A
    thread whose Python part has ended (stdlib pools join theirs at
    shutdown) can still be tearing down in the kernel for a fraction of a
    millisecond: when no other Python thread is left, such threads get
    `grace` seconds to go.  A thread still there after the grace is
    remembered as lasting: while one is around, the answer is False at
    once, with no wait."""
    others = _other_threads()
    _lasting_threads.intersection_update(others)    # the gone are forgotten
    if not others:
        return True
    if threading.active_count() != 1 or others & _lasting_threads:
        return False
    # Polled, not slept: a short sleep can take milliseconds on a busy
    # machine, longer than the thread takes to go.
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        others = _other_threads()
        if not others:
            return True
    _lasting_threads.update(others)
    return False


def _pickled_init(init):
    """(initializer, initargs) as they travel to a fresh interpreter's fork
    server.  cloudpickle, when installed, also carries closures and what
    the main module defines but a fresh interpreter cannot import (`-c`, a
    notebook).  Raises here, at the executor's construction, if it cannot
    be pickled."""
    if init is None:
        return None
    return ((_cloud_dumps or pickle.dumps)(init), ())


def _default_method():
    """A fork of a single-threaded parent is safe and fastest; with threads
    around, the fork server comes from the zygote (a fresh interpreter
    started once per process)."""
    return "fork" if _single_threaded() else "forkserver"


class _Server:
    """The parent's handle on its fork server: forked from this process
    ("fork"), from the process-wide zygote ("forkserver"), or started as a
    fresh interpreter of its own ("spawn")."""

    def __init__(self, fd, method, init, max_tasks, threshold, budget):
        cmd_r, self.cmd_w = os.pipe2(os.O_CLOEXEC)
        death_r, self.death_w = os.pipe2(os.O_CLOEXEC)
        self.proc = None
        self.pid = None
        self.pidfd = -1         # a server that is not our child
        if method is None:
            method = _default_method()
        self.method = method
        try:
            if method != "fork":
                init = _pickled_init(init)      # to a fresh interpreter
            if method == "forkserver":
                self.pid = _zygote.fork_server(
                    (fd, cmd_r, death_r),
                    {"init": init, "max_tasks": max_tasks,
                     "threshold": threshold, "budget": budget})
                try:
                    self.pidfd = os.pidfd_open(self.pid)
                except OSError:
                    pass    # gone already, or no pidfd (Linux < 5.3)
            elif method == "fork":
                _fork_server.flush_std()
                pid = os.fork()
                if pid == 0:
                    os.close(self.cmd_w)
                    os.close(self.death_w)
                    _zygote.run_and_exit(_fork_server.serve, fd, cmd_r,
                                         death_r, init, max_tasks, threshold,
                                         budget)
                self.pid = pid
            else:
                import subprocess
                cfg = _zygote.preparation("piston-server")
                cfg.update(fd=fd, cmd_r=cmd_r, death_r=death_r, init=init,
                           max_tasks=max_tasks, threshold=threshold,
                           budget=budget)
                blob = pickle.dumps(cfg)
                self.proc = subprocess.Popen(
                    [sys.executable, "-c",
                     "from piston._fork_server import server_entry; "
                     "server_entry()"],
                    stdin=subprocess.PIPE, pass_fds=(fd, cmd_r, death_r))
                self.pid = self.proc.pid
                self.proc.stdin.write(blob)
                self.proc.stdin.close()
        except BaseException:
            os.close(self.cmd_w)
            os.close(self.death_w)
            raise
        finally:
            os.close(cmd_r)
            os.close(death_r)

    def spawn(self, slot, gen):
        os.write(self.cmd_w, b"%d %d\n" % (slot, gen))

    def close(self):
        """After the collector finished: the server exits once idle."""
        if self.cmd_w >= 0:
            try:
                os.write(self.cmd_w, b"quit\n")
            except OSError:
                pass                # the server is gone already
            os.close(self.cmd_w)
            self.cmd_w = -1
        if self.proc is not None:
            self.proc.wait()
        elif self.pidfd >= 0:
            # The zygote reaps it; its pidfd turns readable when it exits.
            select.select([self.pidfd], [], [])
            os.close(self.pidfd)
            self.pidfd = -1
            self.pid = None
        elif self.pid is not None:
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
            self.pid = None
        if self.death_w >= 0:
            os.close(self.death_w)
            self.death_w = -1


class _DirectSpawner:
    """Forks a worker straight from this (single-threaded) process: the
    first worker of a forking pool, so the first result does not wait for
    the fork server to start and fork in turn.  The core reaps it."""

    __slots__ = ("core", "args")

    def __init__(self, core, init, max_tasks, threshold):
        self.core = core
        self.args = (init, max_tasks, threshold)

    def __call__(self, slot, gen):
        _fork_server.flush_std()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            _fork_server.worker_child(self.core.fd, slot, gen, *self.args,
                                      parent)
        self.core._adopt(slot, pid)


class _Spawner:
    """The core's callback to start a worker; holds no executor."""

    __slots__ = ("server",)

    def __init__(self, server):
        self.server = server

    def __call__(self, slot, gen):
        self.server.spawn(slot, gen)


# Live pools (core, server), closed at interpreter exit like the stdlib's.
_live = {}
_live_lock = threading.Lock()


def _close_pool(key, wait=True):
    with _live_lock:
        entry = _live.get(key)
    if entry is None:
        return
    core, server = entry
    core.shutdown(False)
    if not wait:
        return
    core.join()
    server.close()
    with _live_lock:
        _live.pop(key, None)


def _python_exit():
    for key in list(_live):
        try:
            _close_pool(key)
        except Exception:  # pragma: no cover
            traceback.print_exc()
    _zygote.shutdown()


threading._register_atexit(_python_exit)
os.register_at_fork(after_in_child=_live.clear)
os.register_at_fork(after_in_child=_lasting_threads.clear)


def _default_workers():
    cpu_count = getattr(os, "process_cpu_count", os.cpu_count)
    return cpu_count() or 1


class _Progress:
    def __init__(self, total):
        self.total = total
        self.n = 0
        self.lock = threading.Lock()
        self.bar = None
        try:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, unit="it")
        except Exception:
            self.last = 0.0

    def add(self, n):
        with self.lock:
            self.n += n
            if self.bar is not None:
                self.bar.update(n)
                return
            now = time.monotonic()
            if now - self.last >= 0.1 or self.n == self.total:
                self.last = now
                sys.stderr.write("\r%d/%s items" % (self.n, self.total
                                                     if self.total is not None
                                                     else "?"))
                sys.stderr.flush()

    def close(self):
        with self.lock:
            if self.bar is not None:
                self.bar.close()
            else:
                sys.stderr.write("\n")
                sys.stderr.flush()


class ProcessPoolExecutor(_cf.Executor):
    """A drop-in for concurrent.futures.ProcessPoolExecutor.

    Same constructor and semantics; tasks and results travel through shared
    memory, futures are piston.Futures, and a dying worker fails only the
    task it was running (WorkerCrashedError) while the pool replaces it.

    Extra keyword-only options:
      task_timeout   seconds a task may run (counted from the call, after
                     its arguments are unpickled) before its worker is
                     killed and replaced and the future fails with
                     TaskTimeoutError; per call: submit_with_timeout(timeout,
                     fn, ...).
      cancel_running if true, future.cancel() also works on a running task
                     (its worker is killed and replaced).  Futures then stay
                     PENDING until they finish (running() is False).
      arena_size     bytes of (sparse) shared memory for arguments
                     (default 4 GiB); a bigger task raises at submit.
      result_arena_size  the same per worker for results (default 1 GiB);
                     a bigger result fails its future with PistonError.
    mp_context: None forks the fork server (which forks the workers) from
    this process when it has a single thread, else as "forkserver"; "fork"
    always forks it from this process; "forkserver" forks it from a fresh
    interpreter started once per process and kept for later pools (as the
    stdlib's forkserver, prepared from this process when first used);
    "spawn" starts a fresh interpreter for this pool alone.
    """

    def __init__(self, max_workers=None, mp_context=None, initializer=None,
                 initargs=(), max_tasks_per_child=None, *, task_timeout=None,
                 cancel_running=False, arena_size=None,
                 result_arena_size=None):
        if _zygote.importing_main:
            raise RuntimeError(
                "a ProcessPoolExecutor was created while a new process "
                "imports the main module; guard the code that makes it "
                "with `if __name__ == '__main__':` (as the stdlib's spawn "
                "and forkserver start methods require)")
        if max_workers is None:
            max_workers = _default_workers()
        elif max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if max_tasks_per_child is not None:
            if not isinstance(max_tasks_per_child, int):
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
        if task_timeout is not None and not task_timeout > 0:
            raise ValueError("task_timeout must be > 0")
        if mp_context is None or isinstance(mp_context, str):
            method = mp_context
        else:
            method = mp_context.get_start_method()
        if method not in (None, "fork", "spawn", "forkserver"):
            raise ValueError("unknown start method %r" % (method,))
        self._max_workers = max_workers
        self._shutdown = False
        self._shutdown_lock = threading.Lock()
        init = (initializer, tuple(initargs)) if initializer else None
        core = _piston.ProcessPoolCore(
            max_workers, pickle.dumps, pickle.loads, _cloud_dumps,
            _rebuild_exc, None,
            arena_size=arena_size or (4 << 30),
            worker_arena_size=result_arena_size or (1 << 30),
            threshold=_OOB_THRESHOLD,
            max_tasks_per_child=max_tasks_per_child or 0,
            task_timeout=task_timeout or 0.0,
            cancel_running=bool(cancel_running))
        # One worker right away: the first submit finds it (nearly) up;
        # the rest start on demand, as the stdlib's do.  A process that
        # may fork (the fork server would be forked from it too) forks
        # that first worker itself, before the fork server: the first
        # result then waits for one fork, not two in a row.
        if method is None:
            method = _default_method()
        direct = (method == "fork" and _threads_in_process() == 1
                  and threading.current_thread() is threading.main_thread())
        if direct:
            core._set_spawner(_DirectSpawner(core, init,
                                             max_tasks_per_child,
                                             _OOB_THRESHOLD))
            core.start_workers(1)
        server = _Server(core.fd, method, init, max_tasks_per_child,
                         _OOB_THRESHOLD, max_workers - (1 if direct else 0))
        core._set_spawner(_Spawner(server))
        core.start(server.pid)
        if not direct:
            core.start_workers(1)
        self._core = core
        self._server = server
        self._key = id(core)
        with _live_lock:
            _live[self._key] = (core, server)
        self._submit = core.submit

    def submit(self, fn, /, *args, **kwargs):
        return self._submit(fn, args, kwargs, None)

    def submit_with_timeout(self, timeout, fn, /, *args, **kwargs):
        """submit() whose task fails with TaskTimeoutError (and whose
        worker is replaced) if it runs longer than `timeout` seconds."""
        if timeout is None:
            return self._submit(fn, args, kwargs, None)
        return self._submit(fn, args, kwargs, float(timeout))

    submit.__doc__ = _cf.Executor.submit.__doc__

    def map(self, fn, *iterables, timeout=None, chunksize=1, progress=False):
        """Like Executor.map.  chunksize=None picks a chunk size from the
        number of items (about 4 chunks per worker, at most 1024 items);
        progress=True draws a progress bar (tqdm if installed, else a line
        on stderr) counting items."""
        if chunksize is not None and chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        end = None if timeout is None else timeout + time.monotonic()
        single = len(iterables) == 1
        items = list(iterables[0]) if single else list(zip(*iterables))
        n = len(items)
        if chunksize is None:
            chunksize = max(1, min(1024, -(-n // (4 * self._max_workers))))
        bar = _Progress(n) if progress else None
        fs = []
        try:
            for i in range(0, n, chunksize):
                chunk = items[i:i + chunksize]
                if chunksize == 1:
                    f = (self.submit(fn, chunk[0]) if single
                         else self.submit(fn, *chunk[0]))
                else:
                    f = self.submit(_run_chunk1 if single else _run_chunk,
                                    fn, chunk)
                if bar is not None:
                    f.add_done_callback(
                        lambda f, k=len(chunk): bar.add(k))
                fs.append((f, chunksize != 1))
        except BaseException:
            for f, _ in fs:
                f.cancel()
            if bar is not None:
                bar.close()
            raise
        del items

        def results():
            try:
                fs.reverse()
                while fs:
                    f, chunked = fs.pop()
                    if end is None:
                        r = f.result()
                    else:
                        r = f.result(end - time.monotonic())
                    if chunked:
                        yield from r
                    else:
                        yield r
            finally:
                for f, _ in fs:
                    f.cancel()
                if bar is not None:
                    bar.close()

        return results()

    def shutdown(self, wait=True, *, cancel_futures=False):
        with self._shutdown_lock:
            self._shutdown = True
        self._core.shutdown(bool(cancel_futures))
        if wait:
            _close_pool(self._key)

    def _force(self, sig):
        with self._shutdown_lock:
            self._shutdown = True
        self._core.shutdown(True)
        self._core.kill_workers(sig)
        _close_pool(self._key)

    def terminate_workers(self):
        """Cancels pending tasks, sends SIGTERM to every worker (their
        running tasks fail with BrokenProcessPool) and shuts down."""
        self._force(signal.SIGTERM)

    def kill_workers(self):
        """As terminate_workers(), with SIGKILL."""
        self._force(signal.SIGKILL)

    def __del__(self):
        core = getattr(self, "_core", None)
        if core is not None:
            try:
                core.shutdown(False)
            except Exception:
                pass

    # Introspection for tests and tools.
    def _worker_pids(self):
        return self._core.worker_pids()

    def _stats(self):
        return self._core.stats()
