"""Runs the loop-agnostic parts of CPython's own test.test_asyncio with
piston's loop swapped in, one process per module, each inside a private
network namespace (unshare --net, only `lo` up: some upstream tests mock
sockets and could otherwise dial out).

    python tests/cpython_compat/run.py                 # all modules
    python tests/cpython_compat/run.py test_tasks      # some modules
    python tests/cpython_compat/run.py --baseline      # also on asyncio
    python tests/cpython_compat/run.py --timeout 600

Prints passed/failed/skipped per module.  Every test failing on piston must
be listed in expected_failures.txt with its reason; the run fails on any
failure not listed there (and reports listed ones that now pass).

How the loop is swapped in:
  * asyncio's default policy creates piston loops (asyncio.run,
    asyncio.Runner, IsolatedAsyncioTestCase, asyncio.new_event_loop);
  * in modules whose test classes pin a loop class (a selector or
    proactor loop, a child watcher), the loop-agnostic mixins are
    subclassed with their loop hook returning a piston loop, and only the
    classes listed in SELECTED run.
Tests built on test_utils.TestLoop (a virtual-time BaseEventLoop) keep
using it: they test asyncio's Tasks and Futures, which piston reuses.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

MODULES = [
    "test_tasks", "test_futures", "test_futures2", "test_locks",
    "test_queues", "test_taskgroups", "test_timeouts", "test_waitfor",
    "test_runners", "test_context", "test_pep492", "test_threads",
    "test_sock_lowlevel", "test_events", "test_streams", "test_server",
    "test_buffered_proto", "test_sendfile", "test_ssl", "test_sslproto",
    "test_subprocess",
]

# Modules whose concrete test classes pin a loop class (a selector or
# proactor loop, a child watcher): only the classes named here run, each
# either (class, hook, base) -- an upstream class subclassed with `hook`
# returning a piston loop, over `base` when the class is a mixin
# ("utils": test_utils.TestCase, "unittest": unittest.TestCase) -- or a
# plain class name that already gets its loop from asyncio's policy, which
# makes piston loops.  Where upstream's selector-loop class adds tests of
# its own to the mixin's, that class is the one subclassed.
SELECTED = {
    "test_events": [("EventLoopTestsMixin", "create_event_loop", "utils")],
    "test_sock_lowlevel": [("BaseSockTestsMixin", "create_event_loop",
                            "utils")],
    "test_server": [("SelectorStartServerTests", "new_loop", None),
                    "TestServer2", "UnixServerCleanupTests"],
    "test_buffered_proto": [("BufferedProtocolSelectorTests", "new_loop",
                             None)],
    "test_sendfile": [("EPollEventLoopTests", "create_event_loop", None)],
    "test_sslproto": [("SelectorStartTLSTests", "new_loop", None),
                      "SslProtoHandshakeTests"],
    "test_subprocess": [("SubprocessMixin", "setUp", "utils"),
                        "SubprocessTransportTests"],
}

RESULT_TAG = "COMPAT-RESULT "


# --- child: run one module --------------------------------------------------

def _child(module, loop_kind):
    import asyncio
    import unittest

    if loop_kind == "piston":
        import piston
        from asyncio import unix_events

        unix_events._UnixDefaultEventLoopPolicy._loop_factory = piston.Loop
        factory = piston.new_event_loop
    else:
        factory = asyncio.new_event_loop

    import importlib

    mod = importlib.import_module("test.test_asyncio." + module)
    loader = unittest.TestLoader()
    if module in SELECTED:
        suite = unittest.TestSuite()
        for entry in SELECTED[module]:
            cls = (_piston_subclass(mod, entry, factory)
                   if isinstance(entry, tuple) else getattr(mod, entry, None))
            if cls is not None:     # some classes exist on newer Pythons only
                suite.addTests(loader.loadTestsFromTestCase(cls))
        setup = getattr(mod, "setUpModule", None)
        teardown = getattr(mod, "tearDownModule", None)
    else:
        suite = loader.loadTestsFromModule(mod)
        setup = teardown = None

    class Result(unittest.TextTestResult):
        pass

    stream = open(os.devnull, "w")
    runner = unittest.TextTestRunner(stream=stream, verbosity=0,
                                     resultclass=Result)
    # The suite drops each test once run: take the ids first.
    ran = sorted(_short_id(t) for t in _iter_tests(suite) if t is not None)
    if setup is not None:
        setup()
    t0 = time.monotonic()
    try:
        result = runner.run(suite)
    finally:
        if teardown is not None:
            teardown()

    def ids(pairs):
        return sorted(_short_id(t) for t, _ in pairs)

    failed = ids(result.failures) + ids(result.errors) \
        + sorted(_short_id(t) for t in result.unexpectedSuccesses)
    details = {}
    for t, tb in result.failures + result.errors:
        details[_short_id(t)] = tb.strip().splitlines()[-1][:300]
    out = {
        "module": module,
        "loop": loop_kind,
        "run": result.testsRun,
        "failed": failed,
        "ran": ran,
        "skipped": len(result.skipped),
        "details": details,
        "seconds": round(time.monotonic() - t0, 1),
    }
    sys.stdout.flush()
    print(RESULT_TAG + json.dumps(out), flush=True)


def _piston_subclass(mod, entry, factory):
    """The test case class of a loop-agnostic mixin whose loop comes from
    `factory`: through the hook method the upstream concrete classes
    override (create_event_loop or new_loop), or for mixins that make
    their loop in setUp (test_subprocess), a setUp that does."""
    import unittest

    from test.test_asyncio import utils as test_utils

    name, hook, base = entry
    mixin = getattr(mod, name)
    if base is None:
        bases = (mixin,)
    else:
        bases = (mixin, test_utils.TestCase if base == "utils"
                 else unittest.TestCase)
    if hook == "setUp":
        def setUp(self):
            super(cls, self).setUp()
            self.loop = factory()
            self.set_event_loop(self.loop)
        attrs = {"setUp": setUp}
    else:
        attrs = {hook: lambda self: factory()}
    attrs["__module__"] = mod.__name__
    for word in ("Mixin", "Selector", "EPoll"):
        name = name.replace(word, "")
    cls = type("Piston" + name,
               bases, attrs)
    return cls


def _iter_tests(suite):
    import unittest

    for t in suite:
        if isinstance(t, unittest.TestSuite):
            yield from _iter_tests(t)
        else:
            yield t


def _short_id(test):
    # "test.test_asyncio.test_tasks.CTask_CFuture_Tests.test_foo" ->
    # "test_tasks.CTask_CFuture_Tests.test_foo"
    tid = test.id()
    prefix = "test.test_asyncio."
    return tid[len(prefix):] if tid.startswith(prefix) else tid


# --- parent: one process per module ------------------------------------------

def _netns_prefix():
    if shutil.which("unshare") is None:
        return None
    probe = subprocess.run(
        ["unshare", "--net", "sh", "-c", "ip link set lo up"],
        capture_output=True)
    if probe.returncode != 0:
        return None
    return ["unshare", "--net", "sh", "-c",
            'ip link set lo up && exec "$0" "$@"']


def _piston_path():
    """Where the children import piston from: wherever this interpreter
    finds it (an installed package), else the checkout's python/."""
    try:
        import piston
    except ImportError:
        return os.path.join(ROOT, "python")
    return os.path.dirname(os.path.dirname(os.path.abspath(piston.__file__)))


def _run_module(module, loop_kind, timeout, netns):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [_piston_path()]
        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    cmd = netns + [sys.executable, os.path.abspath(__file__), "--child",
                   module, "--loop", loop_kind]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"module": module, "loop": loop_kind, "run": 0,
                "failed": [f"{module} (timed out after {timeout}s)"],
                "skipped": 0, "details": {}, "seconds": timeout}
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    return {"module": module, "loop": loop_kind, "run": 0,
            "failed": [f"{module} (crashed, exit {proc.returncode}: "
                       + " | ".join(tail) + ")"],
            "skipped": 0, "details": {}, "seconds": 0}


def _load_expected(path):
    expected = {}
    if not os.path.exists(path):
        return expected
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            test_id, _, reason = line.partition(" ")
            expected[test_id] = reason.strip().lstrip("#").strip()
    return expected


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("modules", nargs="*", default=MODULES)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--loop", default="piston", help=argparse.SUPPRESS)
    ap.add_argument("--timeout", type=int, default=900,
                    help="seconds per module (default 900)")
    ap.add_argument("--baseline", action="store_true",
                    help="also run each module on asyncio's own loop")
    ap.add_argument("--expected", default=os.path.join(
        HERE, "expected_failures.txt"))
    ap.add_argument("--details", action="store_true",
                    help="print the last line of each failure")
    args = ap.parse_args()
    if args.child:
        _child(args.child, args.loop)
        return 0

    netns = _netns_prefix()
    if netns is None:
        print("cpython_compat: 'unshare --net' is not available (needs "
              "root or user namespaces); refusing to run upstream tests "
              "that may open real sockets")
        return 2
    expected = _load_expected(args.expected)
    print(f"cpython_compat: Python {sys.version.split()[0]}, "
          f"test.test_asyncio from {sys.prefix}")
    hdr = f"{'module':<20} {'passed':>6} {'failed':>6} {'skipped':>7}"
    if args.baseline:
        hdr += f"   {'asyncio p/f/s':>14}"
    print(hdr + "   seconds")
    unexpected, fixed = [], []
    totals = [0, 0, 0]
    for module in args.modules:
        r = _run_module(module, "piston", args.timeout, netns)
        nfail = len(r["failed"])
        passed = max(r["run"] - nfail - r["skipped"], 0)
        totals[0] += passed
        totals[1] += nfail
        totals[2] += r["skipped"]
        line = f"{module:<20} {passed:>6} {nfail:>6} {r['skipped']:>7}"
        if args.baseline:
            b = _run_module(module, "asyncio", args.timeout, netns)
            bf = len(b["failed"])
            bp = max(b["run"] - bf - b["skipped"], 0)
            cell = f"{bp}/{bf}/{b['skipped']}"
            line += f"   {cell:>14}"
        print(line + f"   {r['seconds']}", flush=True)
        for t in r["failed"]:
            if t not in expected:
                unexpected.append((t, r["details"].get(t, "")))
        for t in expected:
            if t in r.get("ran", ()) and t not in r["failed"]:
                fixed.append(t)
    print(f"{'total':<20} {totals[0]:>6} {totals[1]:>6} {totals[2]:>7}")
    if fixed:
        print(f"\n{len(fixed)} listed in {os.path.basename(args.expected)} "
              "now pass (remove them):")
        for t in fixed:
            print("   ", t)
    if unexpected:
        print(f"\n{len(unexpected)} failures not listed in "
              f"{os.path.basename(args.expected)}:")
        for t, d in unexpected:
            print("   ", t, ("-- " + d) if args.details and d else "")
        return 1
    print("\nno unexpected failures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
