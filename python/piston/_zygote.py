"""The process-wide zygote: one fresh interpreter, started on first need and
kept, that forks the fork server of each process pool made later.

A process with threads must not fork itself, and starting a fresh
interpreter for every pool costs tens of milliseconds.  The zygote pays
that once: each later pool sends it the pool's shared-memory fd and pipes
(SCM_RIGHTS over a Unix socket), which it hands to a spare fork server it
forked ahead of time, and gets back that server's pid.  Like the stdlib's
"forkserver" start method, the zygote's interpreter is prepared once
(sys.path, the main module) from the process that started it.

It exits when this process closes its socket: at interpreter exit, or when
this process dies.  A forked child of this process starts its own.
"""
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import traceback

_HEADER = struct.Struct("!I")


def _recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("the zygote's peer closed the socket")
        data += chunk
    return data


def recv_request(sock):
    """(config, fds), or None once the peer has gone."""
    try:
        return _recv_request(sock)
    except (EOFError, ConnectionError):
        return None


def _recv_request(sock):
    first, fds, _, _ = socket.recv_fds(sock, 65536, 3)
    if not first:
        for fd in fds:
            os.close(fd)
        return None
    while len(first) < _HEADER.size:
        first += _recv_exact(sock, _HEADER.size - len(first))
    (size,) = _HEADER.unpack_from(first)
    body = first[_HEADER.size:]
    if len(body) < size:
        body += _recv_exact(sock, size - len(body))
    return pickle.loads(body), fds


class ChildEvents:
    """For a helper process that forks children (the zygote, a fork
    server): Ctrl-C is left to the parent, and a child's exit (SIGCHLD)
    wakes wait() so it is reaped at once."""

    def __init__(self):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._w)
        signal.signal(signal.SIGCHLD, lambda *a: None)

    def wait(self, fds, timeout=None):
        """Those of `fds` that are readable; [] after a signal or timeout."""
        try:
            ready, _, _ = select.select(list(fds) + [self._r], [], [],
                                        timeout)
        except InterruptedError:
            return []
        if self._r in ready:
            ready.remove(self._r)
            try:
                os.read(self._r, 4096)
            except BlockingIOError:
                pass
        return ready

    @staticmethod
    def reaped():
        """Yields (pid, wait status) of each child that has exited."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            yield pid, status

    def close(self):
        """In a freshly forked child: these are the parent's."""
        signal.set_wakeup_fd(-1)
        os.close(self._r)
        os.close(self._w)


def send_request(sock, cfg, fds):
    body = pickle.dumps(cfg)
    msg = _HEADER.pack(len(body)) + body
    sent = socket.send_fds(sock, [msg], fds)
    if sent < len(msg):
        sock.sendall(msg[sent:])


def fork_connected(child):
    """Forks a child that talks to this process over a socketpair: the
    child runs child(its end), which must not return.  Returns (pid, this
    process's end)."""
    from piston import _fork_server
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    _fork_server.flush_std()
    try:
        pid = os.fork()
    except BaseException:
        mine.close()
        theirs.close()
        raise
    if pid == 0:
        mine.close()
        child(theirs)
    theirs.close()
    return pid, mine


def _fork_spare(events, *inherited):
    """Forks a fork server that waits for its pool: forked ahead, so a
    pool's request only hands it the pool's fds, with no fork (nor the
    child's first copy-on-write faults) in the way.  The spare forks its
    first worker ahead too (a standby, see _fork_server).  Returns (pid,
    socket); closing the socket lets an unused spare exit."""
    from piston import _fork_server

    def spare(theirs):
        for s in inherited:
            s.close()
        events.close()
        standby = _fork_server.fork_standby(None, theirs.close)
        req = recv_request(theirs)
        theirs.close()
        if req is None:
            if standby is not None:
                standby.close()
                os.waitpid(standby.pid, 0)
            os._exit(0)
        cfg, (fd, cmd_r, death_r) = req
        run_and_exit(_fork_server.serve, fd, cmd_r, death_r, cfg["init"],
                     cfg["max_tasks"], cfg["threshold"], cfg["budget"],
                     standby)

    return fork_connected(spare)


# How long a helper (the zygote, a fork server) waits after a request
# before it forks ahead (a spare server, a standby worker): a pool's
# start-up (its first worker, the first task) should not share the CPUs
# with that fork.
IDLE_FORK_DELAY = 0.05


def _serve(sock):
    """The zygote's loop: each request gets the spare fork server, forked
    ahead while idle (or now, if there is none); exited servers are
    reaped."""
    events = ChildEvents()
    spare = None
    while True:
        for _ in events.reaped():   # the fork servers that have exited
            pass
        ready = events.wait([sock], None if spare else IDLE_FORK_DELAY)
        if sock not in ready:
            if spare is None:
                spare = _fork_spare(events, sock)
            continue
        req = recv_request(sock)
        if req is None:
            if spare is not None:
                spare[1].close()
            return
        cfg, fds = req
        for attempt in (0, 1):
            pid, to_spare = spare or _fork_spare(events, sock)
            spare = None
            try:
                send_request(to_spare, cfg, fds)
            except OSError:
                if attempt:
                    raise
                continue            # the spare died: fork another
            finally:
                to_spare.close()
            break
        for f in fds:
            os.close(f)
        sock.sendall(_HEADER.pack(pid))


# True while a fresh interpreter re-imports the parent's main module: a
# pool made then is a script without an `if __name__ == "__main__":` guard.
importing_main = False


def preparation(name):
    """What a fresh interpreter needs to look like this process (sys.path,
    cwd, the main module), as the stdlib's spawn passes it."""
    import multiprocessing.spawn as _spawn
    prep = _spawn.get_preparation_data(name)
    prep.pop("authkey", None)       # not needed, and unpicklable
    return {"prep": prep, "bench": "piston.benchmarks" in sys.modules}


def prepare(cfg):
    """In a fresh interpreter: becomes like its parent (see preparation)."""
    global importing_main
    import multiprocessing.spawn as _spawn
    importing_main = True
    try:
        _spawn.prepare(cfg["prep"])
    except Exception:
        traceback.print_exc()
    finally:
        importing_main = False
    if cfg["bench"]:
        # `python -m piston bench` from a source checkout maps benchmarks/
        # to piston.benchmarks in the parent; tasks refer to it.
        from piston import _cli
        _cli._benchmarks()


def _entry():
    """Entry point of the zygote's interpreter (see _Zygote)."""
    cfg = pickle.load(sys.stdin.buffer)
    sys.stdin.close()
    prepare(cfg)
    run_and_exit(_serve, socket.socket(fileno=cfg["sock"]))


def run_and_exit(fn, *args):
    """Runs a helper process's main loop, then leaves at once: no
    interpreter shutdown, which would wait for any thread the re-imported
    main module started."""
    from piston import _fork_server
    code = 0
    try:
        fn(*args)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        _fork_server.flush_std()
        os._exit(code)


class _Zygote:
    """This process's handle on its zygote."""

    def __init__(self):
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        cfg = preparation("piston-zygote")
        cfg["sock"] = theirs.fileno()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c",
                 "from piston._zygote import _entry; _entry()"],
                stdin=subprocess.PIPE, pass_fds=(theirs.fileno(),))
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        self.sock = mine
        self.proc.stdin.write(pickle.dumps(cfg))
        self.proc.stdin.close()

    def fork_server(self, fds, cfg):
        """The pid of a fork server forked for a pool; `fds` are the pool's
        memfd and its command and death pipes' read ends (kept open here)."""
        send_request(self.sock, cfg, fds)
        (pid,) = _HEADER.unpack(_recv_exact(self.sock, _HEADER.size))
        return pid

    def close(self):
        self.sock.close()
        self.proc.wait()


_lock = threading.Lock()
_zygote = None


def fork_server(fds, cfg):
    """Forks a pool's fork server from the zygote (started on first use,
    restarted once if it has died).  Returns the server's pid."""
    global _zygote
    with _lock:
        for attempt in (0, 1):
            if _zygote is None:
                _zygote = _Zygote()
            try:
                return _zygote.fork_server(fds, cfg)
            except BaseException as exc:
                # Dead, or interrupted half way (Ctrl-C): its reply would
                # answer the next request.  Closing lets it exit.
                stale, _zygote = _zygote, None
                try:
                    stale.close()
                except OSError:
                    pass
                if attempt or not isinstance(exc, (OSError, EOFError)):
                    raise


def shutdown():
    """Lets the zygote exit (at interpreter exit, after the pools)."""
    global _zygote
    with _lock:
        z, _zygote = _zygote, None
    if z is not None:
        z.close()


def _forget_in_child():
    # The parent's zygote is not this process's: leave it alone.
    global _zygote, _lock
    _lock = threading.Lock()
    z, _zygote = _zygote, None
    if z is not None:
        z.sock.close()
        z.proc.returncode = 0    # not our child: never wait for it


os.register_at_fork(after_in_child=_forget_in_child)
