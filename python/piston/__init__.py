"""piston: a runtime for Python concurrency written in C.

Drop-ins for what Python code already calls:

* :class:`piston.Future` -- a ``concurrent.futures.Future`` implemented in C,
  shared by all of piston's engines;
* :class:`piston.ThreadPoolExecutor` -- a ``concurrent.futures``
  ``ThreadPoolExecutor`` whose workers wait for work without the GIL;
* :class:`piston.ProcessPoolExecutor` -- a ``concurrent.futures``
  ``ProcessPoolExecutor`` over shared memory whose dead workers fail only
  their own task;
* :func:`piston.run`, :func:`piston.new_event_loop`, :class:`piston.Loop`
  -- an asyncio event loop written in C over epoll.

Errors: :class:`PistonError` is the base of everything piston raises;
:class:`BrokenThreadPool`, :class:`BrokenProcessPool`,
:class:`WorkerCrashedError` and :class:`TaskTimeoutError` also subclass the
standard library exceptions users already catch.
"""
import sys as _sys

if not _sys.platform.startswith("linux"):  # pragma: no cover
    raise ImportError("piston needs Linux (epoll, eventfd, memfd, pidfd, futex)")

try:
    from piston import _piston as _ext  # noqa: F401
except ImportError as _exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "piston's C extension piston._piston is not built or does not load "
        "(%s). Install piston with 'pip install .' from the source tree, or "
        "build it in place with 'python setup.py build_ext --inplace'." % _exc
    ) from _exc

from piston._piston import (  # noqa: E402
    BrokenPool,
    BrokenProcessPool,
    BrokenThreadPool,
    Future,
    Handle,
    PistonError,
    TaskTimeoutError,
    TimerHandle,
    WorkerCrashedError,
    kernel_features,
)

from piston._thread_pool import ThreadPoolExecutor  # noqa: E402
from piston._process_pool import ProcessPoolExecutor  # noqa: E402
from piston._loop import Loop, new_event_loop  # noqa: E402
from piston._policy import install, run  # noqa: E402

try:
    from piston._policy import EventLoopPolicy  # noqa: E402
except ImportError:  # pragma: no cover - Python without loop policies
    pass

__version__ = "0.1.0"

__all__ = [
    "BrokenPool",
    "BrokenProcessPool",
    "BrokenThreadPool",
    "EventLoopPolicy",
    "Future",
    "Handle",
    "Loop",
    "PistonError",
    "ProcessPoolExecutor",
    "TaskTimeoutError",
    "ThreadPoolExecutor",
    "TimerHandle",
    "WorkerCrashedError",
    "install",
    "kernel_features",
    "new_event_loop",
    "run",
    "__version__",
]
