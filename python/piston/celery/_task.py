"""The one generic Celery task, piston.celery.run, that workers execute for
CeleryExecutor: verify the signature, then unpickle and call."""
import logging
import pickle
import traceback

from piston.celery._signing import PayloadRejected, get_key, sign, verify

__all__ = ["TASK_NAME", "RemoteError", "register", "dumps"]

TASK_NAME = "piston.celery.run"
logger = logging.getLogger("piston.celery")

try:  # lambdas and closures travel too when cloudpickle is installed
    import cloudpickle as _cloudpickle

    def dumps(obj):
        try:
            return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError):
            return _cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
except ImportError:  # pragma: no cover - depends on the environment
    def dumps(obj):
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


class RemoteError(Exception):
    """Raised by piston.celery.run when the user's callable raised: its two
    string arguments are the signed, pickled (exception, traceback text),
    so Celery records FAILURE while CeleryExecutor rebuilds the original
    exception.  Never seen by users of CeleryExecutor."""


class _Unpicklable(Exception):
    """Stands in for a remote exception or result that could not be
    pickled; its message says what it was."""


def _dump_error(exc):
    tb = "".join(traceback.format_exception(type(exc), exc,
                                            exc.__traceback__))
    try:
        blob = dumps((exc, tb))
        pickle.loads(blob)   # an exception may pickle but not unpickle
        return blob
    except Exception as err:
        return dumps((_Unpicklable("%s: %s (and it could not be pickled: %r)"
                                   % (type(exc).__qualname__, exc, err)), tb))


def _run(self, data=None, signature=None):
    task_id = self.request.id
    key = self.piston_key or get_key(required=False)
    try:
        payload = verify(key, b"task", task_id, data, signature)
    except PayloadRejected as exc:
        logger.error("piston.celery: rejected task %s (delivered via %s): "
                     "%s", task_id, self.request.delivery_info, exc)
        raise
    fn, args, kwargs = pickle.loads(payload)
    del payload
    try:
        value = fn(*args, **kwargs)
    except Exception as exc:
        raise RemoteError(*sign(key, b"error", task_id,
                                _dump_error(exc))) from exc
    try:
        blob = dumps(value)
    except Exception as exc:
        err = TypeError("the result of %r could not be pickled: %r"
                        % (fn, exc))
        raise RemoteError(*sign(key, b"error", task_id,
                                _dump_error(err))) from exc
    data, signature = sign(key, b"result", task_id, blob)
    return {"piston": 1, "data": data, "sig": signature}


def register(app, *, key=None, reject_on_worker_lost=False):
    """Register piston.celery.run on a Celery ``app`` (idempotent) and
    return the task.  Call it in the module workers load with ``-A``.

    ``key`` (str/bytes) is the HMAC key; None reads PISTON_CELERY_KEY on
    each call, so a worker without a key rejects every message.
    ``reject_on_worker_lost``: when a worker child dies mid-task, True
    requeues the message (redelivery; a task that always kills its worker
    then loops), False (the default) fails the task with WorkerLostError.
    The task is acks_late (a message is acknowledged only after the task
    ran, so a worker that dies entirely gets its tasks redelivered after
    the broker's visibility timeout) and tracks STARTED (so futures turn
    running and shutdown(cancel_futures=True) knows what started).
    """
    if key is not None:
        key = get_key(key)
    if TASK_NAME in app._tasks:
        task = app._tasks[TASK_NAME]
        if key is not None:
            task.piston_key = key
        return task
    return app.task(_run, name=TASK_NAME, bind=True, shared=False,
                    acks_late=True, track_started=True,
                    reject_on_worker_lost=reject_on_worker_lost,
                    serializer="json", piston_key=key)
