"""TaskPool: a Celery worker pool (``-P custom`` with
CELERY_CUSTOM_WORKER_POOL=piston.celery:TaskPool) that runs tasks on
piston.ProcessPoolExecutor."""
import collections
import logging
import os
import signal
import threading
import time

from billiard.einfo import ExceptionInfo
from billiard.exceptions import WorkerLostError
from celery import signals
from celery._state import _set_task_join_will_block, set_default_app
from celery.app import trace
from celery.concurrency.base import BasePool
from celery.exceptions import SoftTimeLimitExceeded

import piston

__all__ = ["TaskPool"]

logger = logging.getLogger("piston.celery")

# Signals the worker's main process handles (warm/cold shutdown, restart,
# ...) that a child must not inherit: it takes the defaults, and ignores
# SIGINT so that Ctrl-C on the terminal is the main process's business.
_CHILD_DEFAULT = ("SIGTERM", "SIGHUP", "SIGTTIN", "SIGTTOU", "SIGUSR1",
                  "SIGQUIT")


def _child_init(app, hostname):
    """Runs once in every pool child, before its first task."""
    for name in _CHILD_DEFAULT:
        signum = getattr(signal, name, None)
        if signum is not None:
            signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _set_task_join_will_block(True)
    # Children are forked from the worker, so the app, its tasks and its
    # logging are already here; make this process use them like a prefork
    # child does (current app, fresh tracers, fresh worker state).
    app.set_current()
    set_default_app(app)
    app.finalize()
    trace.setup_worker_optimizations(app, hostname)
    for name, task in app.tasks.items():
        task.__trace__ = trace.build_tracer(name, task, app.loader,
                                            hostname, app=app)
    from celery.worker import state as worker_state
    worker_state.reset_state()
    signals.worker_process_init.send(sender=hostname)


def _on_soft_limit(signum, frame):
    raise SoftTimeLimitExceeded()


def _child_run(target, args, kwargs, soft_timeout):
    """A task's body in a pool child: Celery's tracer, under the soft time
    limit (SIGALRM raising SoftTimeLimitExceeded in the task, as prefork
    does).  The hard limit is piston's per-task timeout."""
    if soft_timeout:
        old = signal.signal(signal.SIGALRM, _on_soft_limit)
        signal.setitimer(signal.ITIMER_REAL, soft_timeout)
    try:
        return target(*args, **kwargs)
    finally:
        if soft_timeout:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)


def _einfo(exc):
    """An ExceptionInfo (what Celery's error callbacks take) for exc."""
    try:
        raise exc
    except BaseException:
        return ExceptionInfo()


class _Result:
    """What apply_async returns: Celery keeps a weak reference to it."""

    __slots__ = ("future", "__weakref__")

    def __init__(self, future):
        self.future = future

    def get(self, timeout=None):
        return self.future.result(timeout)

    def wait(self, timeout=None):
        try:
            self.future.exception(timeout)
        except Exception:
            pass

    def ready(self):
        return self.future.done()


class TaskPool(BasePool):
    """Celery's pool interface on piston.ProcessPoolExecutor.

    * ``--concurrency`` is the number of worker processes; children are
      forked from the worker (like prefork's default) and set up as prefork
      children are (app, tracers, ``worker_process_init``).
    * ``--max-tasks-per-child`` recycles children.
    * Hard time limits are piston's per-task timeout: the child is killed
      and replaced and the task fails with ``TimeLimitExceeded``; soft
      limits raise ``SoftTimeLimitExceeded`` inside the task (SIGALRM).
    * A child that dies mid-task fails only that task, with Celery's
      ``WorkerLostError`` semantics (``reject_on_worker_lost`` requeues);
      piston starts a replacement.
    * Task results are handed back to Celery in the worker's event loop
      thread (through a pipe the hub watches), as prefork does.

    Not supported: ``pool_grow``/``pool_shrink`` (autoscale) and
    ``revoke(terminate=True)`` of a running task (it is logged and the task
    runs to completion); ``pool_restart`` replaces the process pool.
    """

    uses_semaphore = False
    body_can_be_buffer = False      # bodies are pickled to the children
    task_join_will_block = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._executor = None
        self._hub = None
        self._rfd = self._wfd = -1
        self._ready = collections.deque()
        self._lock = threading.Lock()
        self._outstanding = 0
        self._soft = self.options.get("soft_timeout")
        self._hard = self.options.get("timeout")
        self._max_tasks = self.options.get("maxtasksperchild")
        initargs = self.options.get("initargs") or ()
        self._initargs = tuple(initargs)

    # ---------------------------------------------------------- life cycle
    def _new_executor(self):
        if not self._initargs:
            raise ValueError("piston.celery.TaskPool needs initargs=(app, "
                             "hostname), as the Celery worker passes")
        return piston.ProcessPoolExecutor(
            max_workers=self.limit, mp_context="fork",
            initializer=_child_init, initargs=self._initargs,
            max_tasks_per_child=self._max_tasks or None)

    def on_start(self):
        self._executor = self._new_executor()

    def did_start_ok(self):
        return self._executor is not None

    def register_with_event_loop(self, loop):
        # Completions arrive on piston's collector thread; Celery's
        # callbacks (ack, result store, events) belong to the worker's
        # event loop thread, so they are queued and a pipe wakes the hub.
        self._rfd, self._wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._hub = loop
        loop.add_reader(self._rfd, self._drain)

    def on_stop(self):
        ex, self._executor = self._executor, None
        if ex is not None:
            ex.shutdown(wait=True, cancel_futures=True)
        self._drain()
        self._close_pipe()

    def on_terminate(self):
        ex, self._executor = self._executor, None
        if ex is not None:
            ex.kill_workers()
        self._drain()
        self._close_pipe()

    def on_close(self):
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    def _close_pipe(self):
        if self._hub is not None and self._rfd >= 0:
            try:
                self._hub.remove_reader(self._rfd)
            except Exception:
                pass
        for fd in (self._rfd, self._wfd):
            if fd >= 0:
                os.close(fd)
        self._rfd = self._wfd = -1
        self._hub = None

    def restart(self):
        """pool_restart: new children for new tasks; running tasks finish
        in the old pool."""
        old, self._executor = self._executor, self._new_executor()
        if old is not None:
            old.shutdown(wait=False)

    def terminate_job(self, pid, signal=None):
        logger.warning("piston.celery.TaskPool cannot terminate a running "
                       "task (pid %r); it runs to completion", pid)

    def grow(self, n=1):
        raise NotImplementedError("piston.celery.TaskPool does not "
                                  "autoscale")

    shrink = grow

    # ---------------------------------------------------------- tasks
    def on_apply(self, target, args=None, kwargs=None, callback=None,
                 accept_callback=None, timeout_callback=None,
                 error_callback=None, soft_timeout=None, timeout=None,
                 **_):
        ex = self._executor
        if ex is None:
            raise RuntimeError("piston.celery.TaskPool is not running")
        soft = soft_timeout or self._soft or None
        hard = timeout or self._hard or None
        fut = ex.submit_with_timeout(hard, _child_run, target, args or (),
                                     kwargs or {}, soft)
        with self._lock:
            self._outstanding += 1
        # Celery's request is accepted when piston has the task: the child
        # that will run it is not known yet (so the pid is None).
        if accept_callback is not None:
            accept_callback(None, time.monotonic())
        fut.add_done_callback(
            lambda f: self._done(f, callback, timeout_callback,
                                 error_callback, hard))
        return _Result(fut)

    def _done(self, fut, callback, timeout_callback, error_callback, hard):
        # On piston's collector thread: decide, then hand over.
        if fut.cancelled():
            call = None
        else:
            exc = fut.exception()
            if exc is None:
                call = (callback, (fut.result(),))
            elif isinstance(exc, piston.TaskTimeoutError):
                call = (timeout_callback, (False, hard))
            elif isinstance(exc, piston.WorkerCrashedError) or \
                    isinstance(exc, piston.BrokenProcessPool):
                lost = WorkerLostError("Worker exited prematurely: %s"
                                       % (exc,))
                lost.__cause__ = exc
                call = (error_callback, (_einfo(lost),))
            else:
                call = (error_callback, (_einfo(exc),))
        with self._lock:
            self._outstanding -= 1
        if call is None or call[0] is None:
            return
        if self._wfd >= 0:
            self._ready.append(call)
            try:
                os.write(self._wfd, b"\0")
            except BlockingIOError:
                pass   # the pipe is full: a wake-up is already pending
            except OSError:
                self._run(call)   # closed meanwhile: deliver here
        else:
            self._run(call)

    def _drain(self):
        if self._rfd >= 0:
            try:
                while os.read(self._rfd, 4096):
                    pass
            except (BlockingIOError, OSError):
                pass
        while True:
            try:
                call = self._ready.popleft()
            except IndexError:
                return
            self._run(call)

    @staticmethod
    def _run(call):
        fn, args = call
        try:
            fn(*args)
        except Exception:
            logger.exception("piston.celery.TaskPool: callback %r failed",
                             fn)

    # ---------------------------------------------------------- inspect
    def _get_info(self):
        info = super()._get_info()
        ex = self._executor
        info.update({
            "max-concurrency": self.limit,
            "processes": list(ex._worker_pids()) if ex is not None else [],
            "max-tasks-per-child": self._max_tasks or "N/A",
            "put-guarded-by-semaphore": False,
            "timeouts": (self._soft or 0, self._hard or 0),
            "outstanding": self._outstanding,
        })
        return info

    @property
    def num_processes(self):
        return self.limit

