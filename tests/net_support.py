"""Shared pieces of the network tests (test_net_*.py): the loop fixture
that runs each body on asyncio's loop and on piston's, a runner with a
time limit, and the import rule for third-party clients and servers."""
import asyncio
import importlib
import os

import pytest

import piston
from test_loop import kind  # noqa: F401 - fixture: "asyncio" or "piston"

# The longest any one network scenario may take before it is a failure.
T = 60

# CI installs the `test` extra and sets PISTON_REQUIRE=1: there a missing
# package is a failure, elsewhere a skip.
REQUIRED = os.environ.get("PISTON_REQUIRE") == "1"

# Subprocesses import the same piston as this process (a checkout's
# python/ or the installed package).
PYPATH = os.path.dirname(os.path.dirname(os.path.abspath(piston.__file__)))



def require(name):
    """Imports module `name`; skips the calling test module when it is
    missing, unless PISTON_REQUIRE=1 (then the ImportError fails)."""
    if REQUIRED:
        return importlib.import_module(name)
    return pytest.importorskip(
        name, reason=f"{name} not installed (pip install -e '.[test]'; "
        "PISTON_REQUIRE=1 makes this a failure)")


def new_loop(kind):
    return asyncio.new_event_loop() if kind == "asyncio" \
        else piston.new_event_loop()


def loop_factory_path(kind):
    """What `uvicorn --loop` takes to build this kind of loop."""
    return "asyncio" if kind == "asyncio" else "piston:new_event_loop"


@pytest.fixture
def loop(kind):
    """A fresh loop of the kind under test, closed at teardown.  Errors
    handed to its exception handler are recorded in `loop.errors`: the
    tests that expect none assert on it."""
    lp = new_loop(kind)
    lp.errors = []

    def handler(lp_, context):
        lp.errors.append(context)
        lp_.default_exception_handler(context)

    lp.set_exception_handler(handler)
    yield lp
    if not lp.is_closed():
        lp.run_until_complete(lp.shutdown_asyncgens())
        lp.run_until_complete(lp.shutdown_default_executor())
        lp.close()


def run(loop, coro, timeout=T):
    """Runs coro on loop; a hang past `timeout` seconds is a failure."""
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


def env_with_piston(**extra):
    """os.environ with this process's piston first on PYTHONPATH."""
    env = dict(os.environ)
    path = [PYPATH] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(path)
    env.update({k: str(v) for k, v in extra.items()})
    return env
