"""The processes of the `net` suite: the C load generator and echo server
(compiled on first use into a cache directory), wrk (installed with apt-get
when missing and allowed), the Python servers, CPU pinning, and cleanup."""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Iterator, List, Optional

HERE = Path(__file__).resolve().parent
C_DIR = HERE / "c"
SERVER_SCRIPT = HERE / "_net_server.py"
CFLAGS = ["-O2", "-std=gnu11", "-Wall", "-Wextra"]
START_TIMEOUT_S = 30


class Unavailable(RuntimeError):
    """A tool the suite needs cannot be had here; the message says why."""


class BenchError(RuntimeError):
    """A server or client failed during a measurement."""


# --- CPU pinning ------------------------------------------------------------

def cpus() -> Dict[str, Optional[int]]:
    """One CPU for the servers and another for the load generators, when
    there are two and PISTON_BENCH_NET_PIN is not 0."""
    usable = sorted(os.sched_getaffinity(0))
    if len(usable) < 2 or os.environ.get("PISTON_BENCH_NET_PIN") == "0":
        return {"server": None, "client": None}
    return {"server": usable[-1], "client": usable[0]}


@contextlib.contextmanager
def pinned(cpu: Optional[int]) -> Iterator[None]:
    """Children started inside inherit this thread's affinity: pin it to
    ``cpu`` for as long as it takes to start them."""
    if cpu is None:
        yield
        return
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


# --- compiled helpers ---------------------------------------------------

def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    for d in (Path(base) / "piston" / "bench",
              Path(tempfile.gettempdir()) / f"piston-bench-{os.getuid()}"):
        try:
            d.mkdir(parents=True, exist_ok=True)
            if os.access(d, os.W_OK):
                return d
        except OSError:
            pass
    raise Unavailable("no writable cache directory for the C helpers")


def compiler() -> str:
    cc = os.environ.get("CC", "cc")
    path = shutil.which(cc.split()[0]) if cc else None
    if path is None:
        raise Unavailable(f"no C compiler ({cc!r} not found; install gcc "
                          "or set CC) to build the load generator")
    return cc


def build(name: str, extra_flags: List[str] = ()) -> str:
    """The path of benchmarks/c/NAME.c compiled with ``cc -O2``, built once
    per source and flags and kept in the cache directory."""
    src = C_DIR / f"{name}.c"
    if not src.is_file():
        raise Unavailable(f"{src} is missing from this installation")
    cc = compiler()
    flags = CFLAGS + list(extra_flags)
    key = hashlib.sha256(src.read_bytes() + repr((cc, flags)).encode())
    out = cache_dir() / f"{name}-{key.hexdigest()[:16]}"
    if out.exists():
        return str(out)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    r = subprocess.run(cc.split() + flags + ["-o", str(tmp), str(src)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise Unavailable(f"{cc} could not build {src.name}: "
                          + _tail(r.stderr or r.stdout, 400))
    os.replace(tmp, out)
    return str(out)


def _tail(text: str, n: int = 1500) -> str:
    text = text.strip()
    return text if len(text) <= n else "..." + text[-n:]


# --- wrk ----------------------------------------------------------------

_wrk: Dict[str, object] = {}


def wrk() -> str:
    """wrk's path.  When it is missing and we are root with apt-get (and
    PISTON_BENCH_NO_INSTALL is unset), install it, once per process."""
    if "path" not in _wrk:
        _wrk["path"] = shutil.which("wrk")
        _wrk["why"] = "wrk is not installed (apt-get install wrk)"
        if (_wrk["path"] is None and os.geteuid() == 0
                and shutil.which("apt-get")
                and os.environ.get("PISTON_BENCH_NO_INSTALL") != "1"):
            _wrk["path"], _wrk["why"] = _apt_install("wrk")
    if _wrk["path"] is None:
        raise Unavailable(str(_wrk["why"]))
    return str(_wrk["path"])


def _apt_install(pkg: str):
    print(f"piston: {pkg} is missing; installing it with apt-get",
          file=sys.stderr, flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log = []
    # A fresh container may have no package lists yet: refresh once.
    for argv in (["apt-get", "install", "-y", "-q", pkg],
                 ["apt-get", "update", "-q"],
                 ["apt-get", "install", "-y", "-q", pkg]):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, env=env,
                               stdin=subprocess.DEVNULL, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            log.append(f"$ {' '.join(argv)}\n{e}")
            break
        log.append(f"$ {' '.join(argv)}\n{r.stdout}{r.stderr}")
        if r.returncode == 0 and argv[1] == "install":
            break
    path = shutil.which(pkg)
    if path is not None:
        return path, None
    logfile = None
    with contextlib.suppress(Unavailable, OSError):
        logfile = cache_dir() / f"apt-{pkg}.log"
        logfile.write_text("\n".join(log))
    print(f"piston: apt-get could not install {pkg}"
          + (f" (log: {logfile})" if logfile else "") + ":\n"
          + _tail("\n".join(log), 800), file=sys.stderr, flush=True)
    return None, f"{pkg} is not installed and apt-get could not install it"


# --- servers ------------------------------------------------------------

@dataclasses.dataclass
class Address:
    """Where a server listens: a TCP port on 127.0.0.1 or a Unix path."""

    port: int = 0
    path: Optional[str] = None

    def netload_args(self) -> List[str]:
        if self.path is not None:
            return ["-u", self.path]
        return ["-t", f"127.0.0.1:{self.port}"]


def _pythonpath() -> str:
    """The child must import the same piston as this process."""
    import piston
    parts = [str(Path(piston.__file__).resolve().parents[1])]
    if os.environ.get("PYTHONPATH"):
        parts.append(os.environ["PYTHONPATH"])
    return os.pathsep.join(parts)


def _stop(proc: subprocess.Popen) -> None:
    """Ends a child and its process group: end of file on stdin first (the
    Python servers exit on it), then SIGTERM, then SIGKILL."""
    with contextlib.suppress(OSError):
        if proc.stdin:
            proc.stdin.close()
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(wait)
    # Whatever the child left in its group (nothing, normally).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        if proc.stdout:
            proc.stdout.close()


class Server:
    """One echo or HTTP server process.  ``kind`` is "c" for netecho, else
    a loop name for _net_server.py in ``style``; ``unix`` makes it listen
    on a Unix socket in a private temporary directory."""

    def __init__(self, kind: str, style: str, unix: bool,
                 cpu: Optional[int]) -> None:
        self.kind, self.style, self.unix, self.cpu = kind, style, unix, cpu
        self.proc: Optional[subprocess.Popen] = None
        self.dir = tempfile.mkdtemp(prefix=f"piston-net-{kind}-")
        self.log = os.path.join(self.dir, "stderr.log")
        self.address = Address()
        self.restarts = 0

    def __enter__(self) -> "Server":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def argv(self) -> List[str]:
        where = (["-u", self.address.path] if self.unix
                 else ["-t", "127.0.0.1:0"])
        if self.kind == "c":
            return [build("netecho")] + where
        where = ["--unix" if self.unix else "--tcp", where[1]]
        return [sys.executable, str(SERVER_SCRIPT), self.kind,
                self.style] + where

    def start(self) -> None:
        if self.unix:
            self.address.path = os.path.join(self.dir, "echo.sock")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.address.path)
        env = dict(os.environ, PYTHONPATH=_pythonpath())
        with open(self.log, "ab") as err, pinned(self.cpu):
            self.proc = subprocess.Popen(
                self.argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=err, env=env, start_new_session=True)
        line = self._ready_line()
        m = re.match(rb"READY (\d+)\s*$", line)
        if m is None:
            raise BenchError(f"{self} did not start: {self.stderr()}")
        self.address.port = int(m.group(1))

    def _ready_line(self) -> bytes:
        assert self.proc is not None and self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(START_TIMEOUT_S):
                return b""
        return self.proc.stdout.readline()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu_ns(self) -> Optional[int]:
        """CPU time the server has used so far, all its threads, in ns
        (None when /proc does not say)."""
        if self.proc is None:
            return None
        total = 0
        try:
            tasks = os.listdir(f"/proc/{self.proc.pid}/task")
            for tid in tasks:
                with open(f"/proc/{self.proc.pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return total

    def restart(self) -> None:
        """A server that died (a crash under test) gets a new process."""
        self.restarts += 1
        if self.proc is not None:
            _stop(self.proc)
        self.start()

    def stderr(self) -> str:
        try:
            with open(self.log, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError:
            text = ""
        code = self.proc.poll() if self.proc else None
        status = "" if code is None else f"exit status {code}; "
        return status + (_tail(text, 600) or "no output")

    def close(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __str__(self) -> str:
        return f"the {self.kind} {self.style} server"


# --- clients ------------------------------------------------------------

def netload(addr: Address, conns: int, size: int, seconds: float,
            cpu: Optional[int], verify: bool = False) -> Dict[str, float]:
    """One netload run: messages/s and bytes/s of ping-pong echo."""
    argv = [build("netload")] + addr.netload_args() + [
        "-c", str(conns), "-s", str(size), "-d", str(seconds)]
    if verify:
        argv.append("-V")
    out = _run(argv, cpu, timeout=seconds + 60)
    try:
        return json.loads(out)
    except ValueError:
        raise BenchError(f"netload printed {out[:200]!r}") from None


_WRK_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_WRK_TOTAL = re.compile(r"^\s*(\d+) requests in ", re.M)
_WRK_PCT = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)
_WRK_BAD = re.compile(r"^\s+Non-2xx or 3xx responses:\s+(\d+)", re.M)
_WRK_ERR = re.compile(r"^\s+Socket errors:.*$", re.M)


def run_wrk(port: int, conns: int, seconds: int,
            cpu: Optional[int]) -> Dict[str, float]:
    """One wrk run on one thread: requests/s and the median and p99
    latency in milliseconds."""
    argv = [wrk(), "-t1", f"-c{conns}", f"-d{seconds}s", "--latency",
            f"http://127.0.0.1:{port}/"]
    out = _run(argv, cpu, timeout=seconds + 60)
    m = _WRK_RPS.search(out)
    if m is None:
        raise BenchError("wrk printed no Requests/sec: " + _tail(out, 300))
    bad = _WRK_BAD.search(out)
    if bad is not None:
        raise BenchError(f"the server answered {bad.group(1)} requests "
                         "with an error status")
    err = _WRK_ERR.search(out)
    if err is not None:
        raise BenchError("wrk: " + err.group(0).strip())
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    res = {"value": float(m.group(1))}
    total = _WRK_TOTAL.search(out)
    if total is not None:
        res["requests"] = float(total.group(1))
    for pct, num, unit in _WRK_PCT.findall(out):
        res[f"p{pct}_ms"] = float(num) * scale[unit]
    return res


def _run(argv: List[str], cpu: Optional[int], timeout: float) -> str:
    """Runs a client to completion, in its own process group so Ctrl-C
    reaches only us; killed if we are interrupted or it hangs."""
    with pinned(cpu):
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{Path(argv[0]).name} did not finish within "
                         f"{timeout:.0f} s") from None
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    if proc.returncode != 0:
        raise BenchError(_tail(err or out, 400)
                         or f"{argv[0]} exited with {proc.returncode}")
    return out
