"""pytest plugin that tests/run.sh loads (-p pn_ci_plugin) in every CI job.

It proves the suite tested what the job built: the header names the
piston._piston file in use, and the session fails if piston was imported
from outside the venv under test (for instance python/ in the source tree)
or, with PISTON_REQUIRE=1, never imported at all.
"""
import os
import sys


def _origin():
    mod = sys.modules.get("piston._piston")
    return getattr(mod, "__file__", None)


def pytest_report_header(config):
    try:
        import piston._piston as ext
    except Exception as exc:  # the suite itself will say more
        return f"piston: import failed: {exc!r}"
    return f"piston: {ext.__file__}"


def pytest_sessionfinish(session, exitstatus):
    prefix = os.environ.get("PISTON_CI_EXPECT_PREFIX")
    origin = _origin()
    problem = None
    if origin is None:
        if os.environ.get("PISTON_REQUIRE") == "1":
            problem = "piston._piston was never imported by the suite"
    elif prefix and not os.path.realpath(origin).startswith(
            os.path.realpath(prefix) + os.sep):
        problem = f"piston._piston came from {origin}, not from {prefix}"
    if problem:
        sys.stderr.write(f"\npn_ci_plugin: FAIL: {problem}\n")
        if session.exitstatus == 0:
            session.exitstatus = 1
