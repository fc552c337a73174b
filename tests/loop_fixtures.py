"""The `kind` and `loop` fixtures every loop and network test shares: each
test body runs once on asyncio's loop and once on piston's."""
import asyncio
import os

import pytest

import piston

# The longest any one loop or network scenario may take before it is a
# failure.
T = 60

# Subprocesses import the same piston as this process (a checkout's
# python/ or the installed package).
PYPATH = os.path.dirname(os.path.dirname(os.path.abspath(piston.__file__)))


@pytest.fixture(params=["asyncio", "piston"])
def kind(request):
    return request.param


def new_loop(kind):
    return asyncio.new_event_loop() if kind == "asyncio" \
        else piston.new_event_loop()


def close_loop(lp):
    if not lp.is_closed():
        lp.run_until_complete(lp.shutdown_asyncgens())
        lp.run_until_complete(lp.shutdown_default_executor())
        lp.close()


def loop_fixture(record_errors=False, log_errors=True):
    """Makes a `loop` fixture: a fresh loop of the kind under test, closed
    at teardown.  With record_errors, what reaches its exception handler
    is appended to `loop.errors` (the tests that expect none assert on it)
    and, with log_errors, also passed on to the default handler.  Without
    record_errors the loop keeps asyncio's default: no handler set."""

    @pytest.fixture
    def loop(kind):
        lp = new_loop(kind)
        if record_errors:
            lp.errors = []

            def handler(lp_, context):
                lp.errors.append(context)
                if log_errors:
                    lp_.default_exception_handler(context)

            lp.set_exception_handler(handler)
        yield lp
        close_loop(lp)

    return loop


def run(loop, coro, timeout=T):
    """Runs coro on loop; a hang past `timeout` seconds is a failure."""
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))
