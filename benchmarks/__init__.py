"""piston's side-by-side benchmarks; SUITES maps a suite name to its module."""
import importlib
import importlib.util

# One line per suite: name -> (module in this package, what it compares).
# A suite module defines CASES, a list of (label, fn(harness) -> [Row]).
SUITES = {
    "thread": ("thread_pool", "piston.ThreadPoolExecutor vs "
               "concurrent.futures.ThreadPoolExecutor"),
    "proc": ("proc", "piston.ProcessPoolExecutor vs "
             "concurrent.futures.ProcessPoolExecutor, multiprocessing.Pool, "
             "loky, pebble"),
    "celery": ("celery_bench", "Celery's prefork pool vs "
               "piston.celery:TaskPool (needs redis-server and celery)"),
    "loop": ("loop", "piston's event loop vs asyncio's and uvloop"),
    "net": ("net", "echo and HTTP servers on piston vs asyncio's loop, "
            "uvloop and a C epoll server (a C load generator, wrk)"),
}


def available():
    """The suites whose module is present, in registry order."""
    return {name: desc for name, (mod, desc) in SUITES.items()
            if importlib.util.find_spec(f"{__name__}.{mod}") is not None}


def load(name):
    """Import a suite's module (ImportError if it or piston is missing)."""
    return importlib.import_module(f"{__name__}.{SUITES[name][0]}")
