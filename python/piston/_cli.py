"""The command line: ``python -m piston bench`` and ``python -m piston info``."""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path

# Optional packages worth knowing about, as (import name, what uses it).
OPTIONAL = (
    ("numpy", "process-pool array benchmarks"),
    ("uvloop", "loop benchmark peer"),
    ("loky", "process-pool benchmark peer"),
    ("pebble", "process-pool benchmark peer"),
    ("cloudpickle", "lambdas and closures in process pools"),
    ("matplotlib", "bench --plot"),
    ("celery", "piston.celery"),
)


def _benchmarks():
    """piston.benchmarks, installed or from a source checkout.

    An install maps the top-level ``benchmarks/`` directory to
    ``piston.benchmarks``; running from a checkout with ``PYTHONPATH=python``
    has no such mapping, so load the directory under that name.
    """
    try:
        return importlib.import_module("piston.benchmarks")
    except ModuleNotFoundError as e:
        if e.name != "piston.benchmarks":
            raise
    src = Path(__file__).resolve().parents[2] / "benchmarks"
    if not (src / "__init__.py").is_file():
        sys.exit("piston: piston.benchmarks is not installed and no source "
                 "checkout's benchmarks/ was found")
    spec = importlib.util.spec_from_file_location(
        "piston.benchmarks", src / "__init__.py",
        submodule_search_locations=[str(src)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m piston",
        description="piston: a runtime for Python concurrency written in C.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    b = sub.add_parser(
        "bench", help="side-by-side benchmarks against the stdlib and peers",
        description="Run benchmark suites side by side with the standard "
                    "library (and installed peers) and print ratios; "
                    "higher is better for piston.")
    b.add_argument("suites", nargs="*", metavar="SUITE",
                   help="suites to run (default: all available; see --list)")
    b.add_argument("--quick", action="store_true",
                   help="about a tenth of the work, for a quick look")
    out = b.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true",
                     help="print machine-readable results on stdout")
    out.add_argument("--markdown", action="store_true",
                     help="print the table as README embeds it")
    b.add_argument("--plot", metavar="FILE.png",
                   help="also draw the ratios as a bar chart (matplotlib)")
    b.add_argument("--list", action="store_true",
                   help="list the available suites and exit")
    i = sub.add_parser("info", help="version, platform, kernel features, "
                                    "optional packages")
    i.add_argument("--json", action="store_true", help="print JSON")
    # The `run` subcommand (a script on piston's loop) is added here by the
    # event-loop issue.
    p.bench_parser = b
    return p


def cmd_bench(args, parser) -> int:
    bench = _benchmarks()
    suites = bench.available()
    if args.list:
        for name, desc in suites.items():
            print(f"{name:10} {desc}")
        return 0
    unknown = [s for s in args.suites if s not in suites]
    if unknown:
        parser.bench_parser.error(f"unknown suite {', '.join(map(repr, unknown))}; "
                     f"available: {', '.join(suites)}")
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        print("piston: --plot needs matplotlib: pip install matplotlib "
              "(or pip install 'piston[bench]')", file=sys.stderr)
        return 1
    names = list(dict.fromkeys(args.suites)) or list(suites)
    from piston.benchmarks import _harness as h

    modules = {}
    for name in names:
        try:
            modules[name] = bench.load(name)
        except ImportError as e:
            print(f"piston: cannot load the {name!r} suite: {e}",
                  file=sys.stderr)
            return 1
    harness = h.Harness(quick=args.quick)
    info = h.machine_info()
    if info["load_average"][0] > 0.5:
        print(f"piston: load average {info['load_average'][0]} before the "
              "run: other work on this machine will make numbers noisy",
              file=sys.stderr)
    t0 = time.monotonic()
    rows = []
    try:
        for name in names:
            rows += harness.run_suite(name, modules[name])
    except KeyboardInterrupt:
        harness.progress.clear()
        print("piston: interrupted", file=sys.stderr)
        return 130
    elapsed = round(time.monotonic() - t0, 1)
    if args.json:
        print(h.as_json(rows, info, suites=names, quick=args.quick,
                        elapsed_s=elapsed))
    elif args.markdown:
        print(h.markdown(rows, info))
    else:
        print(h.table(rows, info))
    if args.plot:
        h.plot(rows, args.plot, info)
        print(f"piston: chart written to {args.plot}", file=sys.stderr)
    print(f"piston: {len(names)} suite(s) in {elapsed} s", file=sys.stderr)
    return 0


def _optional():
    from importlib import metadata
    found = {}
    for name, use in OPTIONAL:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = None
        found[name] = {"version": version, "used_for": use}
    return found


def cmd_info(args) -> int:
    import piston

    data = {
        "piston": piston.__version__,
        "python": f"{platform.python_implementation()} "
                  f"{platform.python_version()}",
        "executable": sys.executable,
        "platform": platform.platform(),
        "kernel_features": piston.kernel_features(),
        "optional": _optional(),
    }
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    for key in ("piston", "python", "executable", "platform"):
        print(f"{key + ':':18}{data[key]}")
    print("kernel features:")
    for feat, ok in data["kernel_features"].items():
        print(f"  {feat:16}{'yes' if ok else 'NO'}")
    print("optional packages:")
    for name, d in data["optional"].items():
        print(f"  {name:16}{d['version'] or 'not installed':16}"
              f"({d['used_for']})")
    return 0


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "bench":
        return cmd_bench(args, parser)
    if args.command == "info":
        return cmd_info(args)
    parser.print_help(sys.stderr)
    return 2
