"""Builds the one extension module piston._piston from csrc/.

Build knobs (environment variables):
  PISTON_STRICT=1    -Werror on top of -Wall -Wextra (CI sets it).
  PISTON_SANITIZE=1  AddressSanitizer + UBSan build; run it with libasan
                     preloaded (see tests/run.sh).
  PISTON_DEBUG=1     -O0 -g3 and assertions on.
"""
import glob
import os
import sys

from setuptools import Extension, setup

if not sys.platform.startswith("linux"):
    raise SystemExit("piston needs Linux (epoll, eventfd, memfd, pidfd, futex)")

sources = sorted(glob.glob("csrc/core/*.c") + glob.glob("csrc/ext/*.c"))
cflags = ["-std=gnu11", "-Wall", "-Wextra", "-Wno-missing-field-initializers",
          "-Wno-cast-function-type", "-fno-strict-aliasing", "-pthread"]
ldflags = ["-pthread"]
macros = [("_GNU_SOURCE", "1")]

if os.environ.get("PISTON_STRICT") == "1":
    cflags.append("-Werror")
if os.environ.get("PISTON_DEBUG") == "1":
    cflags += ["-O0", "-g3", "-UNDEBUG"]
    macros.append(("PN_DEBUG", "1"))
else:
    cflags += ["-O2", "-g"]
if os.environ.get("PISTON_SANITIZE") == "1":
    san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
           "-fno-omit-frame-pointer"]
    cflags += san + ["-O1", "-g3", "-UNDEBUG"]
    ldflags += san
    macros.append(("PN_SANITIZE", "1"))

setup(
    ext_modules=[
        Extension(
            "piston._piston",
            sources=sources,
            include_dirs=["csrc"],
            define_macros=macros,
            extra_compile_args=cflags,
            extra_link_args=ldflags,
        )
    ],
)
