"""Network suite: echo and HTTP servers on asyncio's loop, uvloop and
piston, each in its own process, driven by the same C load generator (or
wrk) from another, beside a minimal C epoll echo server.

Servers get one CPU and clients the other (when there are two); each case
starts one server per implementation, and the harness alternates
repetitions between them.  The servers use only public asyncio APIs, so
the suite measures whatever transports each loop has.  Set
PISTON_BENCH_NET=full for the whole matrix of sizes and connection counts.
"""
from __future__ import annotations

import contextlib
import importlib.util
import math
import os
from typing import Dict, List, Optional, Tuple

from . import _netprocs as procs
from ._harness import Row, median

HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None
LOOPS = ["asyncio"] + (["uvloop"] if HAVE_UVLOOP else []) + ["piston"]
C = "C server"
# The targets: every case against uvloop, and piston's 1 KiB
# Protocol echo against the C server.
PEER = "uvloop" if HAVE_UVLOOP else "asyncio"
TARGET_VS_PEER = 1.3 if HAVE_UVLOOP else None
TARGET_VS_C = 0.5

# A load generator busier than this (fraction of its CPU) may be the limit.
BUSY_CLIENT = 0.9

KiB, MiB = 1024, 1024 * 1024
STYLES = {"protocol": "Protocol", "buffered": "BufferedProtocol",
          "streams": "streams"}
FULL = os.environ.get("PISTON_BENCH_NET") == "full"

# What each case runs: (size, connections) pairs by mode.
_ALL = [(s, c) for s in (KiB, 64 * KiB, MiB) for c in (1, 10, 100)]
TCP_MATRIX = {
    "full": _ALL,
    "default": [(s, c) for s in (KiB, 64 * KiB, MiB) for c in (1, 10)]
    + [(KiB, 100)],
    "quick": [(KiB, 1), (KiB, 10), (64 * KiB, 10), (MiB, 1)],
    "quick-other": [(KiB, 10), (64 * KiB, 10)],
}
UNIX_MATRIX = {"full": TCP_MATRIX["default"],
               "default": [(KiB, 1), (KiB, 10), (64 * KiB, 10)],
               "quick": [(KiB, 10)]}
HTTP_CONNS = {"full": [1, 10, 100], "default": [10, 100], "quick": [10]}

# Medians of the C server in this run, by (unix, size, conns), so the
# BufferedProtocol and streams rows can say how far piston is from it.
_C_SEEN: Dict[Tuple[bool, int, int], float] = {}


def _mode(h) -> str:
    return "full" if FULL else ("quick" if h.quick else "default")


def _seconds(h) -> float:
    """How long each netload round runs."""
    env = os.environ.get("PISTON_BENCH_NET_SECONDS")
    return float(env) if env else (0.15 if h.quick else 0.3)


def _size(n: int) -> str:
    return f"{n // MiB} MiB" if n >= MiB else f"{n // KiB} KiB"


def _conns(n: int) -> str:
    return f"{n} conn" + ("s" if n > 1 else "")


def _median(samples: List[float]) -> Optional[float]:
    good = [v for v in samples if not math.isnan(v)]
    return median(good) if good else None


def _error_row(case: str, unit: str, why: str) -> Row:
    return Row("", f"{case}: not measured", unit, {}, note=why)


def _open(stack, kinds, style, unix, errors) -> Dict[str, procs.Server]:
    """A started server per kind; one that cannot start is left out and
    its error noted."""
    servers = {}
    for kind in kinds:
        try:
            servers[kind] = stack.enter_context(
                procs.Server(kind, style, unix, procs.cpus()["server"]))
        except (procs.BenchError, procs.Unavailable) as e:
            errors.setdefault(C if kind == "c" else kind, str(e))
    return servers


def _measured(res, names) -> Tuple[Dict[str, float], Dict]:
    """Medians over the repetitions that did not fail."""
    values, samples = {}, {}
    for name in names:
        got = res.samples.get(name, {}).get("value")
        if got is None:
            continue
        good = [v for v in got if not math.isnan(v)]
        if good:
            values[name] = median(good)
            samples[name] = good
    return values, samples


def _with_cpu(server, run):
    """run()'s result and the server CPU time it cost, in microseconds."""
    before = server.cpu_ns()
    result = run()
    after = server.cpu_ns()
    if before is None or after is None:
        return result, math.nan
    return result, (after - before) / 1e3


def _per(us: float, count: float) -> float:
    return us / count if count else math.nan


def _cpu_note(res, what: str) -> str:
    """Server CPU per message, for each implementation: a measure that
    other work on a shared machine disturbs less than the rate does."""
    if res is None:
        return ""
    parts = []
    for name, metrics in res.samples.items():
        us = _median(metrics.get("cpu_us", []))
        if us is not None:
            parts.append(f"{name} {us:.3g}")
    if not parts:
        return ""
    return f"server CPU us per {what}: " + ", ".join(parts)


def _notes(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def _errors_note(errors: Dict[str, str]) -> str:
    return "; ".join(f"{k} failed: {v}" for k, v in errors.items())


def _echo(h, style: str, unix: bool, with_c: bool,
          matrix: List[Tuple[int, int]]) -> List[Row]:
    """Ping-pong echo over each (size, conns) of ``matrix``, one server per
    implementation for the whole case."""
    where = "Unix" if unix else "TCP"
    base = h.where
    try:
        procs.build("netload")
    except procs.Unavailable as e:
        return [_error_row(f"{where} echo, {STYLES[style]}", "msg/s",
                           str(e))]
    errors: Dict[str, str] = {}
    rows = []
    kinds = (["c"] if with_c else []) + LOOPS
    names = {k: (C if k == "c" else k) for k in kinds}
    cpu = procs.cpus()["client"]
    seconds = _seconds(h)
    with contextlib.ExitStack() as stack:
        servers = _open(stack, kinds, style, unix, errors)
        pools = {names[k]: (lambda s=s: contextlib.nullcontext(s))
                 for k, s in servers.items()}
        for size, conns in matrix:
            h.where = f"{base} · {_size(size)} x {_conns(conns)}"
            failed: Dict[str, str] = {}

            def one_round(server, size=size, conns=conns, failed=failed):
                try:
                    if not server.alive():
                        server.restart()
                    r, us = _with_cpu(server, lambda: procs.netload(
                        server.address, conns, size, seconds, cpu))
                    return {"value": r["messages_per_s"],
                            "bytes": r["bytes_per_s"],
                            "client": r["client_cpu"],
                            "cpu_us": _per(us, r["messages"])}
                except (procs.BenchError, procs.Unavailable) as e:
                    failed.setdefault(names[server.kind], str(e))
                    return dict.fromkeys(("value", "bytes", "client",
                                          "cpu_us"), math.nan)

            res = h.compare(pools, one_round) if pools else None
            values, samples = (_measured(res, list(pools))
                               if res else ({}, {}))
            rows += _echo_rows(style, unix, size, conns, values, samples,
                               res, {**errors, **failed})
    h.where = base
    return rows


def _echo_rows(style, unix, size, conns, values, samples, res,
               errors) -> List[Row]:
    where = "Unix" if unix else "TCP"
    case = f"{where} echo, {STYLES[style]}, {_size(size)} x {_conns(conns)}"
    p, c = values.get("piston"), values.get(C)
    if c is not None:
        _C_SEEN[(unix, size, conns)] = c
    c_ref = c if c is not None else _C_SEEN.get((unix, size, conns))
    of_c = ""
    if p is not None and c_ref is not None:
        of_c = (f"piston {100 * p / c_ref:.0f}% of the C server"
                + ("" if c is not None else " (its Protocol row)"))
    bytes_note = busy = ""
    if p is not None and res is not None:
        mb = _median(res.samples["piston"]["bytes"]) / 1e6
        bytes_note = f"piston {mb:,.0f} MB/s echoed"
        # One client CPU drives every server: say when it, not the
        # server, may have set the pace.
        cpu = _median(res.samples["piston"]["client"])
        if cpu is not None and cpu > BUSY_CLIENT:
            busy = (f"the load generator was {cpu:.0%} busy with piston: "
                    "near its own limit")
    rows = [Row("", case, "msg/s", values, baseline=PEER,
                target=TARGET_VS_PEER, samples=samples,
                note=_notes(of_c, bytes_note, _cpu_note(res, "message"),
                            busy, _errors_note(errors)))]
    if style == "protocol" and not unix and size == KiB:
        both = {k: values[k] for k in (C, "piston") if k in values}
        rows.append(Row("", f"{case}: piston / C server", "msg/s", both,
                        baseline=C, target=TARGET_VS_C,
                        note="" if len(both) == 2 else
                        "not measured: " + (_errors_note(errors) or "?")))
    return rows


def tcp_protocol(h):
    return _echo(h, "protocol", False, True, TCP_MATRIX[_mode(h)])


def tcp_buffered(h):
    mode = _mode(h)
    return _echo(h, "buffered", False, False,
                 TCP_MATRIX["quick-other" if mode == "quick" else mode])


def tcp_streams(h):
    mode = _mode(h)
    return _echo(h, "streams", False, False,
                 TCP_MATRIX["quick-other" if mode == "quick" else mode])


def unix_echo(h):
    mode = _mode(h)
    rows = _echo(h, "protocol", True, True, UNIX_MATRIX[mode])
    if mode == "full":
        rows += _echo(h, "buffered", True, False, UNIX_MATRIX[mode])
        rows += _echo(h, "streams", True, False, UNIX_MATRIX[mode])
    return rows


def http(h):
    """HTTP/1.1 keep-alive GETs from wrk (one thread) to a Protocol-level
    server answering a fixed 13-byte body."""
    conns_list = HTTP_CONNS[_mode(h)]
    try:
        procs.wrk()
    except procs.Unavailable as e:
        return [_error_row(f"HTTP/1.1 keep-alive, wrk -c{n}", "req/s",
                           str(e)) for n in conns_list]
    errors: Dict[str, str] = {}
    rows = []
    base = h.where
    cpu = procs.cpus()["client"]
    with contextlib.ExitStack() as stack:
        servers = _open(stack, LOOPS, "http", False, errors)
        pools = {k: (lambda s=s: contextlib.nullcontext(s))
                 for k, s in servers.items()}
        for conns in conns_list:
            h.where = f"{base} · wrk -c{conns}"
            failed: Dict[str, str] = {}

            def one_round(server, conns=conns, failed=failed):
                try:
                    if not server.alive():
                        server.restart()
                    r, us = _with_cpu(server, lambda: procs.run_wrk(
                        server.address.port, conns, 1, cpu))
                    r["cpu_us"] = _per(us, r.pop("requests", 0))
                    return r
                except (procs.BenchError, procs.Unavailable) as e:
                    failed.setdefault(server.kind, str(e))
                    return dict.fromkeys(("value", "p50_ms", "p99_ms",
                                          "cpu_us"), math.nan)

            res = h.compare(pools, one_round) if pools else None
            values, samples = (_measured(res, list(pools))
                               if res else ({}, {}))
            lat = ""
            if "piston" in values:
                s = res.samples["piston"]
                if "p50_ms" in s and "p99_ms" in s:
                    lat = (f"piston latency p50 {_median(s['p50_ms']):.3g} ms"
                           f", p99 {_median(s['p99_ms']):.3g} ms")
            rows.append(Row("", f"HTTP/1.1 keep-alive, wrk -c{conns}",
                            "req/s", values, baseline=PEER,
                            target=TARGET_VS_PEER, samples=samples,
                            note=_notes(_cpu_note(res, "request"), lat,
                                        _errors_note({**errors,
                                                      **failed}))))
    h.where = base
    return rows


CASES = [
    ("TCP echo, asyncio.Protocol", tcp_protocol),
    ("TCP echo, asyncio.BufferedProtocol", tcp_buffered),
    ("TCP echo, streams", tcp_streams),
    ("Unix socket echo", unix_echo),
    ("HTTP/1.1 keep-alive (wrk)", http),
]

__all__ = ["CASES", "Row"]
