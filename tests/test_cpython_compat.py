"""Runs tests/cpython_compat (CPython's test_asyncio on piston's loop) as
part of the suite; fails on any failure not in expected_failures.txt.
PISTON_COMPAT=0 skips it (it takes about a minute)."""
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.skipif(os.environ.get("PISTON_COMPAT") == "0",
                    reason="PISTON_COMPAT=0")
@pytest.mark.skipif("asan" in os.environ.get("LD_PRELOAD", ""),
                    reason="slow and noisy under AddressSanitizer; the "
                           "plain builds run it")
def test_cpython_test_asyncio_on_piston():
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "cpython_compat", "run.py"),
         "--details", "--timeout", "600"],
        capture_output=True, text=True, timeout=3000)
    sys.stdout.write(proc.stdout)
    if proc.returncode == 2:
        pytest.skip("unshare --net unavailable: " + proc.stdout.strip())
    assert proc.returncode == 0, proc.stdout + proc.stderr
