"""Builds and runs the C tests of the loop's engine (tests/c/test_*.c),
each as its own process, under ASan/UBSan when gcc supports it."""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# test program -> the csrc/core sources it links.
LOOP_CORE_TESTS = {
    "test_timerheap": ["pn_timerheap"],
    "test_readyq": ["pn_readyq"],
    "test_wake": ["pn_wake", "pn_poll_epoll"],
    "test_poll": ["pn_poll_epoll", "pn_futex"],
}


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
@pytest.mark.parametrize("name", sorted(LOOP_CORE_TESTS))
def test_c(name, tmp_path):
    exe = tmp_path / name
    srcs = [os.path.join(ROOT, "csrc", "core", s + ".c")
            for s in LOOP_CORE_TESTS[name]]
    cmd = ["gcc", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-g",
           "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
           "-I", os.path.join(ROOT, "csrc"),
           os.path.join(ROOT, "tests", "c", name + ".c"), *srcs,
           "-o", str(exe), "-pthread"]
    subprocess.run(cmd, check=True)
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    proc = subprocess.run([str(exe)], capture_output=True, text=True,
                          timeout=60, env=env)
    sys.stdout.write(proc.stdout)
    assert proc.returncode == 0, proc.stderr
