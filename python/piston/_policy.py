"""piston's entry points into asyncio: run(), install(), EventLoopPolicy."""
import asyncio
import asyncio.events as _events
import warnings

from piston._loop import Loop, new_event_loop

__all__ = ["run", "install", "new_event_loop", "Loop"]


def run(main, *, debug=None, watchdog=None):
    """Run coroutine main on a new piston loop and return its result, like
    asyncio.run (same Ctrl-C handling, async generator and default executor
    shutdown).  watchdog=SECONDS logs any callback blocking the loop longer
    than that, with the loop thread's stack, while it blocks (see
    Loop.set_watchdog; the PISTON_WATCHDOG environment variable does the
    same for every loop)."""
    def factory():
        loop = new_event_loop()
        if watchdog:
            loop.set_watchdog(watchdog)
        return loop

    with asyncio.Runner(debug=debug, loop_factory=factory) as runner:
        return runner.run(main)


# The policy system is deprecated in Python 3.14 and goes away later: keep a
# shim built on the non-deprecated private base where it exists, so that
# using piston emits no DeprecationWarning of its own.
_PolicyBase = (getattr(_events, "_BaseDefaultEventLoopPolicy", None)
               or getattr(_events, "BaseDefaultEventLoopPolicy", None))

if _PolicyBase is not None:
    class EventLoopPolicy(_PolicyBase):
        """An asyncio event loop policy whose loops are piston loops
        (compatibility shim; prefer piston.run or loop_factory=)."""

        _loop_factory = Loop

        def __repr__(self):
            return f"<{type(self).__name__}>"

    def install():
        """Make asyncio create piston loops (sets the event loop
        policy)."""
        with warnings.catch_warnings():
            # 3.14 deprecates the policy API; this shim is piston's
            # compatibility path, not the user's call.
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_event_loop_policy(EventLoopPolicy())

    __all__.append("EventLoopPolicy")
else:  # pragma: no cover - a Python without loop policies
    def install():
        raise RuntimeError(
            "this Python has no event loop policies; use "
            "piston.run(main()) or asyncio.run(main(), "
            "loop_factory=piston.new_event_loop)")
