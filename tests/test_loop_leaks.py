"""The loop's refleak check (tests/leaks/check_loop.py), each workload in
its own process.  PISTON_LEAKS=0 skips it."""
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.skipif(os.environ.get("PISTON_LEAKS") == "0",
                    reason="PISTON_LEAKS=0")
@pytest.mark.skipif("asan" in os.environ.get("LD_PRELOAD", ""),
                    reason="slow and noisy under AddressSanitizer; the "
                           "plain builds run it")
def test_loop_does_not_leak():
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "leaks", "check_loop.py")],
        capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout + proc.stderr
