"""TaskPool: a Celery worker pool (``-P custom`` with
CELERY_CUSTOM_WORKER_POOL=piston.celery:TaskPool) that runs tasks on
piston.ProcessPoolExecutor."""
import collections
import itertools
import logging
import os
import signal
import threading
import time

from billiard.einfo import ExceptionInfo
from billiard.exceptions import Terminated, WorkerLostError
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


# In a pool child: the pipe on which it tells the worker which job it starts.
_started_fd = -1


def _child_init(app, hostname, started_fd=-1):
    """Runs once in every pool child, before its first task."""
    global _started_fd
    _started_fd = started_fd
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


def _child_run(job, target, args, kwargs, soft_timeout):
    """A task's body in a pool child: Celery's tracer, under the soft time
    limit (SIGALRM raising SoftTimeLimitExceeded in the task, as prefork
    does).  The hard limit is piston's per-task timeout."""
    if _started_fd >= 0:
        # One write of < PIPE_BUF bytes: atomic among all children.
        os.write(_started_fd, b"%d %d\n" % (job, os.getpid()))
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


class _Job:
    """A task handed to the process pool, until Celery heard its end."""

    __slots__ = ("future", "accept", "pid", "accepted", "terminated",
                 "__weakref__")

    def __init__(self, accept):
        self.future = None
        self.accept = accept
        self.pid = None
        self.accepted = False
        self.terminated = None


class _Result:
    """What apply_async returns: Celery keeps a weak reference to it."""

    __slots__ = ("future", "pool", "job", "__weakref__")

    def __init__(self, future, pool, job):
        self.future = future
        self.pool = pool
        self.job = job

    def terminate(self, signum=None):
        """revoke(terminate=True): kill the child running the task, or
        cancel it if it has not started."""
        if self.job.pid is not None:
            self.pool.terminate_job(self.job.pid, signum)
        else:
            self.future.cancel()

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
        self._srfd = self._swfd = -1
        self._ids = itertools.count()
        self._jobs = {}              # job id -> _Job (event loop thread)
        self._stopping = False
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
            initializer=_child_init,
            initargs=self._initargs[:2] + (self._swfd,),
            max_tasks_per_child=self._max_tasks or None)

    def on_start(self):
        # Children report the job they start on this pipe, so Celery
        # accepts a request (acks it unless acks_late, shows it as active
        # with its pid) when it starts, as with prefork -- not when it is
        # queued, which would ack early and defeat the prefetch limit.
        self._srfd, self._swfd = os.pipe()
        os.set_blocking(self._srfd, False)
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
        if self._srfd >= 0:
            loop.add_reader(self._srfd, self._drain)

    def on_stop(self):
        # Warm shutdown: what the pool holds runs to the end (as prefork's
        # queue does) and Celery hears of every result.
        ex, self._executor = self._executor, None
        if ex is not None:
            ex.shutdown(wait=True, cancel_futures=False)
        self._drain()
        self._close_pipe()

    def on_terminate(self):
        # Cold shutdown: children are killed and Celery is told nothing,
        # so acks_late messages stay unacknowledged and are redelivered.
        self._stopping = True
        ex, self._executor = self._executor, None
        if ex is not None:
            ex.kill_workers()
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
            if self._srfd >= 0:
                try:
                    self._hub.remove_reader(self._srfd)
                except Exception:
                    pass
        for fd in (self._rfd, self._wfd, self._srfd, self._swfd):
            if fd >= 0:
                os.close(fd)
        self._rfd = self._wfd = self._srfd = self._swfd = -1
        self._hub = None

    def restart(self):
        """pool_restart: new children for new tasks; running tasks finish
        in the old pool."""
        old, self._executor = self._executor, self._new_executor()
        if old is not None:
            old.shutdown(wait=False)

    def terminate_job(self, pid, signal=None):
        """revoke(terminate=True): signal the child running a task; the
        task then ends as Terminated (Celery reports it revoked) and piston
        replaces the child."""
        for job in self._jobs.values():
            if job.pid == pid and pid is not None:
                job.terminated = signal or 15
                try:
                    os.kill(pid, job.terminated)
                except ProcessLookupError:
                    pass
                return
        logger.warning("piston.celery.TaskPool: no task runs in pid %r",
                       pid)

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
        job_id = next(self._ids)
        job = _Job(accept_callback)
        fut = ex.submit_with_timeout(hard, _child_run, job_id, target,
                                     args or (), kwargs or {}, soft)
        job.future = fut
        self._jobs[job_id] = job
        with self._lock:
            self._outstanding += 1
        if self._hub is None:
            # No event loop to hear the children: accept when queued.
            self._accept(job, None)
        fut.add_done_callback(
            lambda f: self._done(job_id, f, callback, timeout_callback,
                                 error_callback, hard))
        return _Result(fut, self, job)

    @staticmethod
    def _accept(job, pid):
        if not job.accepted:
            job.accepted = True
            job.pid = pid
            if job.accept is not None:
                try:
                    job.accept(pid, time.monotonic())
                except Exception:
                    logger.exception("piston.celery.TaskPool: accept "
                                     "callback failed")

    def _done(self, job_id, fut, callback, timeout_callback, error_callback,
              hard):
        # On piston's collector thread: decide, then hand over.
        if fut.cancelled():
            call = None
        else:
            exc = fut.exception()
            if exc is None:
                call = (callback, (fut.result(),))
            elif isinstance(exc, piston.TaskTimeoutError):
                call = (timeout_callback, (False, hard))
            elif isinstance(exc, piston.BrokenProcessPool):
                # WorkerCrashedError is a BrokenProcessPool.
                lost = WorkerLostError("Worker exited prematurely: %s"
                                       % (exc,))
                lost.__cause__ = exc
                call = (error_callback, lost)
            else:
                call = (error_callback, exc)
        with self._lock:
            self._outstanding -= 1
        if self._stopping:
            return
        item = (job_id, call)
        if self._wfd >= 0:
            self._ready.append(item)
            try:
                os.write(self._wfd, b"\0")
            except BlockingIOError:
                pass   # the pipe is full: a wake-up is already pending
            except OSError:
                self._finish(item)   # closed meanwhile: deliver here
        else:
            self._finish(item)

    def _finish(self, item):
        job_id, call = item
        job = self._jobs.pop(job_id, None)
        if job is None:
            return
        if call is None or call[0] is None:
            return
        fn, arg = call
        if fn is not None and isinstance(arg, BaseException):
            if job.terminated is not None and \
                    isinstance(arg, WorkerLostError):
                arg = Terminated(job.terminated)
            arg = (_einfo(arg),)
        # A task that ended before its start was heard of (it failed to
        # start, or the pipe was slow) is accepted first: Celery expects
        # every request to be accepted before it is done.
        self._accept(job, None)
        try:
            fn(*arg)
        except Exception:
            logger.exception("piston.celery.TaskPool: callback %r failed",
                             fn)

    def _drain(self):
        """In the worker's event loop: starts first (a child reports its
        start before it can finish), then completions."""
        if self._srfd >= 0:
            data = b""
            while True:
                try:
                    chunk = os.read(self._srfd, 65536)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
                if not chunk:
                    break
                data += chunk
            for line in data.splitlines():
                try:
                    job_id, pid = map(int, line.split())
                except ValueError:
                    continue
                job = self._jobs.get(job_id)
                if job is not None:
                    self._accept(job, pid)
        if self._rfd >= 0:
            try:
                while os.read(self._rfd, 4096):
                    pass
            except (BlockingIOError, OSError):
                pass
        while True:
            try:
                item = self._ready.popleft()
            except IndexError:
                return
            self._finish(item)

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

