"""piston.ThreadPoolExecutor: the stdlib's ThreadPoolExecutor API on C
workers that wait for work without the GIL."""
import itertools
import os
import threading
import weakref
from concurrent.futures import thread as _cf_thread

from piston import _piston

# Worker thread -> the core it runs, to close and join them at exit like the
# stdlib's own pool (threads are not daemons).
_worker_threads = weakref.WeakKeyDictionary()
_live_executors = weakref.WeakSet()


def _python_exit():
    _piston._thread_pool_interpreter_exit()
    items = list(_worker_threads.items())
    for _, core in items:
        core.close()
    for thread, _ in items:
        thread.join()


threading._register_atexit(_python_exit)


def _after_fork_in_child():
    # The parent's workers do not exist here.  Each core fails the work they
    # had queued or running now (it runs in the parent), so a child waiting
    # on such a future gets an error instead of a hang, and starts fresh
    # threads on its next submit.
    cores = {id(ex._core): ex._core for ex in list(_live_executors)}
    cores.update((id(c), c) for c in list(_worker_threads.values()))
    for core in cores.values():
        core.check_fork()
    for executor in list(_live_executors):
        executor._threads.clear()
    _worker_threads.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _default_max_workers():
    cpu_count = getattr(os, "process_cpu_count", os.cpu_count)
    return min(32, (cpu_count() or 1) + 4)


class ThreadPoolExecutor(_piston.ThreadPool, _cf_thread.ThreadPoolExecutor):
    """A drop-in for concurrent.futures.ThreadPoolExecutor.

    Same constructor, methods and semantics; workers are threads (visible
    in threading.enumerate(), named with thread_name_prefix) whose loop is
    C: they wait for work without the GIL and take it only to run the
    callable.  submit() returns a piston.Future.  map() sends chunksize
    items to a worker as one unit and creates no Future per item.
    """

    _counter = itertools.count().__next__

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # A subclass that overrides submit() expects map() to go through it,
        # as concurrent.futures.Executor.map does; the C map() does not.
        if "submit" in cls.__dict__ and "map" not in cls.__dict__:
            cls.map = _cf_thread.ThreadPoolExecutor.map

    def __init__(self, max_workers=None, thread_name_prefix="",
                 initializer=None, initargs=()):
        if max_workers is None:
            max_workers = _default_max_workers()
        if isinstance(max_workers, bool) or not isinstance(max_workers, int):
            raise TypeError("max_workers must be an int, not %s"
                            % type(max_workers).__name__)
        if max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if not isinstance(thread_name_prefix, str):
            raise TypeError("thread_name_prefix must be a str")
        self._max_workers = max_workers
        self._thread_name_prefix = (thread_name_prefix or
                                    "ThreadPoolExecutor-%d" % self._counter())
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._threads = set()
        # Serialises starting a worker with shutdown(), so shutdown(wait=True)
        # joins every thread that may still run accepted work.
        self._shutdown_lock = threading.Lock()
        self._configure(max_workers, initializer, self._initargs)
        _live_executors.add(self)

    def _start_worker(self):
        # Called by the C submit()/map() when the outstanding work exceeds
        # the workers and the cap allows one more.
        name = "%s_%d" % (self._thread_name_prefix, len(self._threads))
        core = self._core
        thread = threading.Thread(name=name, target=core.worker_main)
        with self._shutdown_lock:
            thread.start()
            self._threads.add(thread)
            _worker_threads[thread] = core

    def shutdown(self, wait=True, *, cancel_futures=False):
        """Refuse new work and free the workers once the queue is drained.

        cancel_futures=True cancels the work that has not started.  With
        wait=True, returns after every worker has exited.
        """
        with self._shutdown_lock:
            self._shutdown_core(cancel_futures)
        if wait:
            for thread in list(self._threads):
                if thread is not threading.current_thread():
                    thread.join()
