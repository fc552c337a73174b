"""piston.celery: the same executor code on a Celery cluster.

* :class:`CeleryExecutor` -- a ``concurrent.futures.Executor`` whose
  ``submit``/``map`` run callables on Celery workers and return
  :class:`piston.Future` objects completed from the result backend.
* :func:`register` -- call on the Celery app that workers load (``-A``) to
  register the generic task ``piston.celery.run`` the executor sends.
* :class:`TaskPool` -- a Celery worker pool backed by
  :class:`piston.ProcessPoolExecutor` (``-P custom`` with
  ``CELERY_CUSTOM_WORKER_POOL=piston.celery:TaskPool``).

Trust model
-----------
Pickles are code: unpickling a message can run anything.  So every payload
is authenticated with HMAC-SHA256 under a key shared by submitters and
workers (``key=`` or the environment variable ``PISTON_CELERY_KEY``, at
least 16 bytes); ``CeleryExecutor`` refuses to start without one, and
workers verify with ``hmac.compare_digest`` *before* unpickling; a message
whose signature is missing or wrong is logged and its task fails with
:class:`PayloadRejected`, without being unpickled.

* Anyone holding the key can run arbitrary code on every worker that
  trusts it (and, by forging results, in every submitting process).  Treat
  it like an SSH private key; rotate it by restarting both sides.
* Anyone who can write to the broker but lacks the key cannot make a
  worker unpickle anything.  They can still drop, delay, reorder, duplicate
  or *replay* messages that were signed before (a signature binds the
  payload to its task id, not to a time), so a recorded task can be run
  again; they can also send ordinary (non-piston) Celery tasks, which is
  Celery's own risk and not covered here: keep ``accept_content`` free of
  ``pickle``.
* Anyone who can write to the result backend but lacks the key cannot
  make a submitter unpickle anything: results and remote exceptions are
  signed too, bound to their task id (a result cannot be moved to another
  task).  They can fail or withhold futures (forged Celery-level failures
  are rebuilt by Celery's rules, exception classes with JSON arguments
  only) and replay a task's own earlier result.  ``CeleryExecutor``
  refuses ``result_serializer='pickle'``, which would bypass this.
* Nothing is encrypted: anyone who can read the broker or backend sees the
  pickled arguments and results.  Use TLS and ACLs on Redis/RabbitMQ for
  confidentiality.

Delivery settings
-----------------
``piston.celery.run`` is ``acks_late`` (a message is acknowledged after the
task ran) and tracks ``STARTED``.  If a worker *child* dies mid-task, the
task fails with Celery's ``WorkerLostError`` (``register(app,
reject_on_worker_lost=True)`` requeues it instead).  If a whole worker dies,
its unacknowledged messages are redelivered by the broker: on Redis after
``broker_transport_options={"visibility_timeout": seconds}`` (Celery's
default is one hour; set it above your longest task, or it is run twice).
``CeleryExecutor(result_timeout=...)`` bounds how long a future may wait in
any case.
"""
try:
    import celery as _celery  # noqa: F401
except ImportError as _exc:
    raise ImportError(
        "piston.celery needs Celery: install the extra with "
        "`pip install 'piston[celery]'` (celery[redis]>=5.3)") from _exc

from piston.celery._signing import KEY_ENV, PayloadRejected  # noqa: E402
from piston.celery._task import TASK_NAME, register  # noqa: E402
from piston.celery._executor import (  # noqa: E402
    CeleryExecutor,
    RemoteTraceback,
)

__all__ = ["CeleryExecutor", "KEY_ENV", "PayloadRejected",
           "RemoteTraceback", "TASK_NAME", "TaskPool", "register"]


def __getattr__(name):
    # TaskPool imports piston.ProcessPoolExecutor and Celery's worker
    # machinery: load it only when asked (the worker's -P custom does).
    if name == "TaskPool":
        from piston.celery._pool import TaskPool
        return TaskPool
    raise AttributeError("module 'piston.celery' has no attribute %r"
                         % (name,))
