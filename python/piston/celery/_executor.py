"""CeleryExecutor: a concurrent.futures.Executor whose tasks run on a
Celery cluster, completed by one collector thread for all pending futures."""
import concurrent.futures as _cf
import itertools
import logging
import pickle
import threading
import time
import uuid

import piston
from piston.celery._signing import PayloadRejected, get_key, sign, verify
from piston.celery._task import TASK_NAME, RemoteError, dumps, register

__all__ = ["CeleryExecutor", "RemoteTraceback"]

logger = logging.getLogger("piston.celery")

_READY = frozenset(("SUCCESS", "FAILURE", "REVOKED"))


class RemoteTraceback(Exception):
    """The ``__cause__`` of an exception re-raised from a Celery worker:
    its text is the traceback as the worker saw it."""

    def __init__(self, tb):
        super().__init__(tb)
        self.tb = tb

    def __str__(self):
        return self.tb


def _run_chunk(fn, chunk):
    return [fn(*args) for args in chunk]


class _Collector(threading.Thread):
    """Completes every pending future of one executor.

    With a Redis result backend it pattern-subscribes, once, to the result
    keys of this executor's task ids (they all share a random prefix) and
    so needs no per-task subscription; every ``sweep`` seconds, and after
    any reconnection, it also reads the pending keys with MGET so that a
    result published while it was disconnected is not missed.  Any other
    key-value backend is polled with MGET, other backends task by task.
    """

    def __init__(self, executor, backend, prefix, poll_interval):
        super().__init__(name="piston-celery-collector", daemon=True)
        self.backend = backend
        self.prefix = prefix
        self.poll_interval = poll_interval
        self.lock = threading.Lock()
        self.pending = {}          # task id -> [future, deadline or None]
        self.started = set()       # ids whose STARTED state was seen
        self.revoke = []           # ids to revoke (cancelled futures)
        self.control = executor._app.control
        self.stopping = False
        self.wake = threading.Event()
        self.ready = threading.Event()
        self.error = None
        self.idle = threading.Condition(self.lock)
        self.redis = getattr(backend, "client", None) is not None and \
            hasattr(backend, "result_consumer")
        self.kv = hasattr(backend, "get_key_for_task") and \
            hasattr(backend, "mget")

    # ---- called from other threads
    def add(self, task_id, fut, deadline):
        with self.lock:
            self.pending[task_id] = [fut, deadline]

    def discard(self, task_id):
        with self.lock:
            self.pending.pop(task_id, None)
            self.idle.notify_all()

    def cancelled(self, task_id):
        with self.lock:
            if task_id in self.pending:
                self.pending.pop(task_id, None)
                self.revoke.append(task_id)
                self.idle.notify_all()
        self.wake.set()

    def wait_idle(self):
        with self.lock:
            while self.pending and self.is_alive():
                self.idle.wait(1.0)

    def stop(self):
        self.stopping = True
        self.wake.set()

    # ---- the thread
    def run(self):
        try:
            if self.redis:
                self._run_redis()
            else:
                self.ready.set()
                self._run_poll()
        except BaseException as exc:  # pragma: no cover - defensive
            logger.exception("piston.celery collector died")
            self.error = exc
            self.ready.set()
            self._fail_all(exc)
        finally:
            self._flush_revokes()

    def _run_poll(self):
        interval = self.poll_interval
        while True:
            with self.lock:
                if self.stopping and not self.pending:
                    return
            got = self._sweep()
            self._expire()
            self._flush_revokes()
            # Adaptive: fast while results arrive, backing off to 0.2 s.
            interval = (self.poll_interval if got
                        else min(0.2, interval * 1.5))
            self.wake.wait(interval)
            self.wake.clear()

    def _run_redis(self):
        pattern = self._key(self.prefix) + b"*"
        backoff = 0.1
        last_sweep = 0.0
        while True:
            pubsub = None
            try:
                pubsub = self.backend.client.pubsub()
                pubsub.psubscribe(pattern)
                # Wait for the confirmation: only then is no result missed.
                end = time.monotonic() + 10
                while True:
                    m = pubsub.get_message(timeout=1.0)
                    if m and m["type"] == "psubscribe":
                        break
                    if time.monotonic() > end:
                        raise TimeoutError("no PSUBSCRIBE confirmation")
                self.ready.set()
                backoff = 0.1
                self._sweep()          # anything finished while away
                last_sweep = time.monotonic()
                while True:
                    with self.lock:
                        if self.stopping and not self.pending:
                            return
                    m = pubsub.get_message(timeout=0.25)
                    while m is not None:
                        if m["type"] == "pmessage":
                            self._on_raw(self._task_id(m["channel"]),
                                         m["data"])
                        m = pubsub.get_message(timeout=0)
                    now = time.monotonic()
                    if now - last_sweep >= 2.0:
                        self._sweep()
                        last_sweep = now
                    self._expire()
                    self._flush_revokes()
            except Exception as exc:
                if self.stopping and not self.pending:
                    return
                logger.warning("piston.celery collector: result backend "
                               "error (%r); reconnecting in %.1fs",
                               exc, backoff)
                time.sleep(backoff)
                backoff = min(5.0, backoff * 2)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:
                        pass

    def _key(self, task_id):
        key = self.backend.get_key_for_task(task_id)
        return key if isinstance(key, bytes) else key.encode()

    def _task_id(self, channel):
        if isinstance(channel, bytes):
            channel = channel.decode()
        prefix = self._key("x")[:-1].decode()
        return channel[len(prefix):]

    def _sweep(self):
        """Read the state of every pending task; True if any finished."""
        with self.lock:
            ids = list(self.pending)
        got = False
        for i in range(0, len(ids), 1000):
            batch = ids[i:i + 1000]
            if self.kv:
                values = self.backend.mget([self._key(t) for t in batch])
                for task_id, raw in zip(batch, values):
                    if raw is not None:
                        got |= self._on_raw(task_id, raw)
            else:
                for task_id in batch:
                    meta = self.backend.get_task_meta(task_id, cache=False)
                    got |= self._on_meta(task_id, meta)
        return got

    def _on_raw(self, task_id, raw):
        try:
            meta = self.backend.decode(raw)
        except Exception as exc:
            logger.error("piston.celery: undecodable result for %s: %r",
                         task_id, exc)
            return self._finish(task_id, exc=PayloadRejected(
                "result of task %s could not be decoded: %r"
                % (task_id, exc)))
        return self._on_meta(task_id, meta)

    def _on_meta(self, task_id, meta):
        status = meta.get("status") if isinstance(meta, dict) else None
        if status == "STARTED":
            with self.lock:
                entry = self.pending.get(task_id)
                if entry is None or task_id in self.started:
                    return False
                self.started.add(task_id)
            try:
                if not entry[0].set_running_or_notify_cancel():
                    self.cancelled(task_id)
            except RuntimeError:
                pass   # cancelled (and notified) meanwhile
            return False
        if status not in _READY:
            return False
        key = self.key
        result = meta.get("result")
        try:
            if status == "SUCCESS":
                if not (isinstance(result, dict) and result.get("piston")):
                    raise PayloadRejected(
                        "task %s returned %r, not a piston.celery result "
                        "(is another task registered under the name %r?)"
                        % (task_id, type(result).__name__, TASK_NAME))
                blob = verify(key, b"result", task_id, result.get("data"),
                              result.get("sig"))
                return self._finish(task_id, value=pickle.loads(blob))
            if status == "REVOKED":
                return self._finish(task_id, exc=_cf.CancelledError(
                    "Celery task %s was revoked" % task_id))
            return self._finish(task_id, exc=self._failure(task_id, meta))
        except Exception as exc:
            return self._finish(task_id, exc=exc)

    def _failure(self, task_id, meta):
        result = meta.get("result")
        if isinstance(result, RemoteError):
            args = result.args
        elif (isinstance(result, dict)
              and result.get("exc_type") == RemoteError.__qualname__
              and result.get("exc_module") == RemoteError.__module__):
            args = result.get("exc_message") or ()
        else:
            args = None
        if args is not None:
            if not (isinstance(args, (list, tuple)) and len(args) == 2):
                raise PayloadRejected("malformed error of task %s" % task_id)
            blob = verify(self.key, b"error", task_id, args[0], args[1])
            exc, tb = pickle.loads(blob)
            exc.__cause__ = RemoteTraceback('\n"""\n%s"""' % tb)
            return exc
        # Celery's own failures: WorkerLostError, TimeLimitExceeded,
        # PayloadRejected from a worker, ...  Rebuilt by Celery's rules
        # (only exception classes, JSON arguments: nothing is unpickled).
        if isinstance(result, BaseException):
            exc = result
        else:
            exc = self.backend.exception_to_python(result)
        tb = meta.get("traceback")
        if tb and isinstance(exc, BaseException):
            exc.__cause__ = RemoteTraceback('\n"""\n%s"""' % tb)
        return exc

    def _finish(self, task_id, value=None, exc=None):
        with self.lock:
            entry = self.pending.pop(task_id, None)
            self.started.discard(task_id)
            self.idle.notify_all()
        if entry is None:
            return False
        fut = entry[0]
        try:
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(value)
        except _cf.InvalidStateError:
            pass   # cancelled meanwhile
        return True

    def _expire(self):
        now = time.monotonic()
        with self.lock:
            late = [t for t, (f, d) in self.pending.items()
                    if d is not None and d <= now]
        for task_id in late:
            with self.lock:
                self.revoke.append(task_id)
            self._finish(task_id, exc=piston.TaskTimeoutError(
                "Celery task %s gave no result within result_timeout; "
                "revoked (a worker may still run it)" % task_id))

    def _flush_revokes(self):
        with self.lock:
            ids, self.revoke = self.revoke, []
        if ids:
            try:
                self.control.revoke(ids)
            except Exception as exc:
                logger.warning("piston.celery: could not revoke %d tasks: "
                               "%r", len(ids), exc)

    def _fail_all(self, exc):
        with self.lock:
            ids = list(self.pending)
        for task_id in ids:
            self._finish(task_id, exc=piston.PistonError(
                "piston.celery collector failed: %r" % (exc,)))


def _on_done(fut, task_id, collector):
    if fut.cancelled():
        # Like an executor's worker would: wait()/as_completed() count a
        # future as done once it is CANCELLED_AND_NOTIFIED.
        try:
            fut.set_running_or_notify_cancel()
        except RuntimeError:
            pass
        collector.cancelled(task_id)


class CeleryExecutor(_cf.Executor):
    """A concurrent.futures.Executor that runs callables on a Celery cluster.

    ``submit(fn, *args, **kwargs)`` pickles ``(fn, args, kwargs)``, signs it
    with the HMAC key and sends one message for the generic task
    ``piston.celery.run`` (workers must call :func:`piston.celery.register`
    on their app).  It returns a :class:`piston.Future` that one collector
    thread completes from the result backend.

    Arguments:
      app            the Celery app (broker and result backend configured;
                     its result_serializer must not be pickle).
      queue          the queue to send to (default: Celery's routing).
      key            the HMAC key (str/bytes, >= 16 bytes); default: the
                     environment variable PISTON_CELERY_KEY.  Without a key
                     the executor refuses to start.
      time_limit, soft_time_limit
                     Celery's per-task limits, sent with every task.
      result_timeout seconds after which a future still without a result
                     fails with piston.TaskTimeoutError and its task is
                     revoked (default None: rely on redelivery).
      poll_interval  the fastest polling period for non-Redis backends.
      chunksize      map()'s default chunk size (None: automatic).
    """

    def __init__(self, app, queue=None, *, key=None, time_limit=None,
                 soft_time_limit=None, result_timeout=None,
                 poll_interval=0.01, chunksize=None):
        self._key = get_key(key)
        if app.conf.result_serializer == "pickle":
            raise ValueError(
                "CeleryExecutor refuses result_serializer='pickle': anyone "
                "able to write the result backend could then run code in "
                "this process. Use 'json' (the default).")
        if result_timeout is not None and not result_timeout > 0:
            raise ValueError("result_timeout must be > 0")
        self._app = app
        self._queue = queue
        self._limits = {}
        if time_limit is not None:
            self._limits["time_limit"] = time_limit
        if soft_time_limit is not None:
            self._limits["soft_time_limit"] = soft_time_limit
        self._result_timeout = result_timeout
        self._chunksize = chunksize
        register(app)
        self._prefix = "piston-%s-" % uuid.uuid4().hex
        self._ids = itertools.count()
        self._shutdown = False
        self._lock = threading.Lock()
        backend = app.backend
        if type(backend).__name__ == "DisabledBackend":
            raise ValueError("CeleryExecutor needs a result backend "
                             "(app.conf.result_backend)")
        self._collector = _Collector(self, backend, self._prefix,
                                     poll_interval)
        self._collector.key = self._key
        self._collector.start()
        if not self._collector.ready.wait(30):
            self._collector.stop()
            raise TimeoutError("piston.celery: the result backend did not "
                               "answer within 30 s")
        if self._collector.error is not None:
            raise piston.PistonError("piston.celery collector failed") \
                from self._collector.error

    def submit(self, fn, /, *args, **kwargs):
        if not callable(fn):
            raise TypeError("%r is not callable" % (fn,))
        task_id = self._prefix + str(next(self._ids))
        # Pickle at the call site, so an unpicklable argument raises here.
        data, sig = sign(self._key, b"task", task_id, dumps((fn, args,
                                                             kwargs)))
        fut = piston.Future()
        deadline = (None if self._result_timeout is None
                    else time.monotonic() + self._result_timeout)
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after "
                                   "shutdown")
            if not self._collector.is_alive():
                raise piston.PistonError("piston.celery collector is not "
                                         "running")
            self._collector.add(task_id, fut, deadline)
        try:
            self._send(task_id, data, sig)
        except BaseException:
            self._collector.discard(task_id)
            raise
        fut.add_done_callback(
            lambda f, t=task_id, c=self._collector: _on_done(f, t, c))
        return fut

    submit.__doc__ = _cf.Executor.submit.__doc__

    def _send(self, task_id, data, sig):
        app = self._app
        args = (data, sig)
        # Sent like app.send_task() does, minus its per-task subscription
        # of Celery's own result consumer: the collector already listens.
        options = app.amqp.router.route(
            {"queue": self._queue} if self._queue else {}, TASK_NAME,
            args, {})
        message = app.amqp.create_task_message(
            task_id, TASK_NAME, args, {},
            reply_to=app.thread_oid,
            create_sent_event=app.conf.task_send_sent_event,
            **self._limits)
        with app.producer_or_acquire() as producer:
            app.amqp.send_task_message(producer, TASK_NAME, message,
                                       serializer="json", **options)

    def map(self, fn, *iterables, timeout=None, chunksize=None):
        """Like Executor.map; items travel ``chunksize`` per Celery task
        (None: the constructor's chunksize, else automatic: about 64 tasks,
        at most 1000 items each)."""
        if chunksize is None:
            chunksize = self._chunksize
        if chunksize is not None and chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        end = None if timeout is None else timeout + time.monotonic()
        items = list(zip(*iterables))
        if chunksize is None:
            chunksize = max(1, min(1000, -(-len(items) // 64)))
        fs = []
        try:
            for i in range(0, len(items), chunksize):
                fs.append(self.submit(_run_chunk, fn,
                                      items[i:i + chunksize]))
        except BaseException:
            for f in fs:
                f.cancel()
            raise
        del items

        def results():
            try:
                fs.reverse()
                while fs:
                    f = fs.pop()
                    if end is None:
                        yield from f.result()
                    else:
                        yield from f.result(end - time.monotonic())
            finally:
                for f in fs:
                    f.cancel()

        return results()

    def shutdown(self, wait=True, *, cancel_futures=False):
        """No new tasks; ``cancel_futures`` cancels the futures whose task
        has not started and revokes those tasks (a task already taken by
        a worker at that moment may still run; its result is dropped).
        ``wait`` waits for every other future."""
        with self._lock:
            self._shutdown = True
        c = self._collector
        if cancel_futures:
            with c.lock:
                futs = [e[0] for e in c.pending.values()]
            for f in futs:
                f.cancel()   # running ones refuse; callbacks revoke
            c.wake.set()
        if wait:
            c.wait_idle()
        c.stop()
        if wait:
            c.join()
