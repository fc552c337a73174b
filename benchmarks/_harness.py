"""Shared benchmark machinery: timing, repetitions, ratios, progress, output."""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import math
import os
import platform
import statistics
import sys
import textwrap
import time
from typing import Any, Callable, Dict, Hashable, List, Optional

# Optional peers whose versions go into every report when installed.
PEERS = ("numpy", "uvloop", "loky", "pebble", "matplotlib")


def median(values: List[float]) -> float:
    return statistics.median(values)


def p99(values: List[float]) -> float:
    """The nearest-rank 99th percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


@dataclasses.dataclass
class Row:
    """One line of the report: one measure of each implementation.

    ``ratio`` is always oriented so that higher is better for piston:
    piston/baseline for rates, baseline/piston for times; a case may set it
    itself (scaling rows report piston's own 2-worker/1-worker ratio).
    """

    suite: str
    case: str
    unit: str
    values: Dict[str, float]
    higher_is_better: bool = True
    baseline: str = "stdlib"
    ratio: Optional[float] = None
    target: Optional[float] = None
    note: str = ""
    samples: Dict[str, List[float]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        mine, base = self.values.get("piston"), self.values.get(self.baseline)
        if self.ratio is None and mine and base:
            self.ratio = mine / base if self.higher_is_better else base / mine

    @property
    def met(self) -> Optional[bool]:
        if self.target is None or self.ratio is None:
            return None
        return self.ratio >= self.target

    def as_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["met"] = self.met
        return d


class Measured:
    """Per-repetition values of each key and metric; rows take medians."""

    def __init__(self, samples: Dict[Hashable, Dict[str, List[float]]]):
        self.samples = samples

    def median(self, key: Hashable, metric: str = "value") -> float:
        return median(self.samples[key][metric])

    def row(self, case: str, unit: str, metric: str = "value",
            columns: Optional[Dict[str, Hashable]] = None, **kw: Any) -> Row:
        """A Row of the median of ``metric``; ``columns`` maps a column
        (implementation) name to its key when keys are not plain names."""
        columns = columns or {str(k): k for k in self.samples}
        return Row("", case, unit,
                   {c: self.median(k, metric) for c, k in columns.items()},
                   samples={c: self.samples[k][metric]
                            for c, k in columns.items()}, **kw)


class Progress:
    """One status line on stderr, rewritten in place on a terminal."""

    def __init__(self, stream=sys.stderr) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.start = time.monotonic()
        self.last = ""

    def update(self, text: str, *, force: bool = False) -> None:
        line = f"[{time.monotonic() - self.start:6.1f}s] {text}"
        if self.tty:
            self.stream.write("\r\033[K" + line)
            self.stream.flush()
        elif force:
            # Not a terminal: one line per case, not per repetition.
            print(line, file=self.stream, flush=True)

    def clear(self) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()


class Harness:
    """Runs suites: scaled counts, warm-up, interleaved repetitions."""

    def __init__(self, quick: bool = False,
                 progress: Optional[Progress] = None) -> None:
        self.quick = quick
        self.reps = 3 if quick else 5
        self.warmup = 1
        self.progress = progress or Progress()
        self.where = ""

    def n(self, full: int) -> int:
        """A count for this run: ``full``, or a tenth of it with --quick."""
        return max(1, full // 10) if self.quick else full

    def compare(self, pools: Dict[Hashable, Callable[[], Any]],
                round_fn: Callable[[Any], Any]) -> "Measured":
        """Measure ``round_fn`` on each resource, ``reps`` times.

        ``pools`` maps a key (an implementation name, or a tuple) to a
        factory returning a context manager; every resource is opened fresh
        for this case and closed after it.  Each key first gets its warm-up
        rounds, then repetitions alternate between keys so that noise from
        a shared machine falls on all of them alike.  ``round_fn`` returns
        a number or a dict of named numbers (metrics).
        """
        raw: Dict[Hashable, Dict[str, List[float]]] = {k: {} for k in pools}
        with contextlib.ExitStack() as stack:
            opened = {k: stack.enter_context(f()) for k, f in pools.items()}
            for key, res in opened.items():
                for i in range(self.warmup):
                    self._say(f"{_name(key)} warm-up")
                    round_fn(res)
            for rep in range(self.reps):
                for key, res in opened.items():
                    self._say(f"{_name(key)} rep {rep + 1}/{self.reps}")
                    gc.collect()
                    out = round_fn(res)
                    if not isinstance(out, dict):
                        out = {"value": out}
                    for metric, v in out.items():
                        raw[key].setdefault(metric, []).append(float(v))
        return Measured(raw)

    def _say(self, what: str) -> None:
        self.progress.update(f"{self.where} · {what}")

    def run_suite(self, name: str, module) -> List[Row]:
        """Run every case of a suite module (its ``CASES`` list)."""
        rows: List[Row] = []
        cases = module.CASES
        for i, (label, fn) in enumerate(cases, 1):
            self.where = f"{name} [{i}/{len(cases)}] {label}"
            self.progress.update(self.where, force=True)
            for row in fn(self):
                row.suite = name
                rows.append(row)
        self.progress.clear()
        return rows


def _name(key: Hashable) -> str:
    if isinstance(key, tuple):
        return " ".join(str(k) for k in key)
    return str(key)


# --- machine and versions -------------------------------------------------

def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> Optional[str]:
    from importlib import metadata
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> Dict[str, Any]:
    """What a reader needs to judge the numbers: hardware and versions."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count()
    try:
        import piston
        piston_version = getattr(piston, "__version__", "?")
    except ImportError:
        piston_version = None
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} "
                  f"{platform.python_version()}",
        "piston": piston_version,
        "peers": {p: _version(p) for p in PEERS if _version(p)},
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def machine_line(info: Dict[str, Any]) -> str:
    peers = ", ".join(f"{k} {v}" for k, v in info["peers"].items()) or "none"
    return (f"{info['cpu']}, {info['usable_cores']}/{info['cores']} cores, "
            f"{info['kernel']}, {info['python']}, piston {info['piston']}; "
            f"peers: {peers}; load average {info['load_average'][0]}")


# --- output ----------------------------------------------------------------

RATIO_NOTE = ("ratio: higher is better for piston; piston/baseline for "
              "rates, baseline/piston for latencies, where the baseline is "
              "the stdlib unless the suite names a peer (uvloop for the "
              "loop and net suites); piston's own 2-worker/1-worker for "
              "scaling rows")


def fmt_value(v: Optional[float], unit: str) -> str:
    if v is None:
        return "-"
    if unit == "x":
        return f"{v:.2f}x"
    if unit.endswith("/s"):
        for div, suffix in ((1e6, "M"), (1e3, "k")):
            if v >= div:
                return f"{v / div:.3g}{suffix} {unit}"
        return f"{v:.3g} {unit}"
    return f"{v:.3g} {unit}" if v < 100 else f"{v:.0f} {unit}"


def _columns(rows: List[Row]) -> List[str]:
    """Implementation columns in order of first appearance, piston last."""
    names: List[str] = []
    for row in rows:
        names += [n for n in row.values if n not in names]
    return [n for n in names if n != "piston"] + (
        ["piston"] if "piston" in names else [])


def _cells(rows: List[Row], impls: List[str]) -> List[List[str]]:
    out = []
    for row in rows:
        status = {None: "", True: "met", False: "MISSED"}[row.met]
        out.append([row.suite, row.case]
                   + [fmt_value(row.values.get(n), row.unit) for n in impls]
                   + ["-" if row.ratio is None else f"{row.ratio:.2f}x",
                      "" if row.target is None else f">= {row.target:g}x",
                      status])
    return out


def _header(impls: List[str]) -> List[str]:
    return ["suite", "case"] + impls + ["ratio", "target", "status"]


def _notes(rows: List[Row], bullet: str) -> List[str]:
    """The rows' notes, one line each, for below a table."""
    lines = [f"{bullet}{r.suite}: {r.case}: {r.note}" for r in rows if r.note]
    return ["", "notes:"] + lines if lines else []


def table(rows: List[Row], info: Dict[str, Any]) -> str:
    """A plain-text table for a terminal."""
    impls = _columns(rows)
    cells = [_header(impls)] + _cells(rows, impls)
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in cells]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(
        [machine_line(info), ""] + lines + _notes(rows, "  ")
        + ["", RATIO_NOTE])


def markdown(rows: List[Row], info: Dict[str, Any]) -> str:
    """The table as README embeds it, with the machine below it."""
    impls = _columns(rows)
    head = _header(impls)
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join("---" if i < 2 else "---:"
                            for i in range(len(head))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in _cells(rows, impls)]
    return "\n".join(lines + _notes(rows, "- ")
                     + ["", RATIO_NOTE + ".",
                        f"Measured on: {machine_line(info)}."])


def as_json(rows: List[Row], info: Dict[str, Any], **extra: Any) -> str:
    return json.dumps({"machine": info, **extra,
                       "results": [r.as_dict() for r in rows]}, indent=2)


def plot(rows: List[Row], path: str, info: Dict[str, Any]) -> None:
    """A horizontal bar chart of the ratios, targets drawn as ticks."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.ratio is not None]
    labels = [f"{r.suite}: {r.case}" for r in rows]
    colors = ["tab:gray" if r.met is None else
              ("tab:green" if r.met else "tab:red") for r in rows]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.6))
    y = range(len(rows))
    ax.barh(y, [r.ratio for r in rows], color=colors)
    for i, r in enumerate(rows):
        ax.text(max(r.ratio, r.target or 0), i, f"  {r.ratio:.2f}x",
                va="center", fontsize=8)
        if r.target is not None:
            ax.plot([r.target] * 2, [i - 0.4, i + 0.4], color="black", lw=2)
    if rows and max(r.ratio for r in rows) > 8:
        ax.set_xscale("log")
    ax.axvline(1.0, color="black", lw=0.8, ls="--")
    ax.set_yticks(list(y))
    ax.set_yticklabels(labels)
    ax.invert_yaxis()
    ax.set_xlabel("ratio, higher is better for piston "
                  "(black tick: target; green met, red missed)")
    ax.set_title("\n".join(textwrap.wrap(machine_line(info), 120)),
                 fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
