"""A process pool's fork server, and the bodies of the workers it forks.

The server is a copy of the pool's parent made when the pool started
(mp_context "fork"), a child of the zygote ("forkserver"), or a fresh
interpreter ("spawn").  It forks a worker per request from the pool, reaps
its workers and reports each exit (with its wait status) into the pool's
shared memory.

A server keeps one standby: a worker forked ahead of need, while the
server is idle, that waits on a socket for the slot it is to run in.  A
request then costs a message instead of a fork (and the child's first
copy-on-write faults).  It keeps one while the pool may still ask for a
worker: fewer running than the pool's size, or workers recycled after
max_tasks_per_child tasks.
"""
import os
import pickle
import signal
import sys
import time
import traceback

from piston import _piston, _zygote

try:  # lambdas and closures travel too when cloudpickle is installed
    import cloudpickle as _cloudpickle

    cloud_dumps = _cloudpickle.dumps
except ImportError:  # pragma: no cover - depends on the environment
    cloud_dumps = None


def format_exc(exc):
    return "".join(traceback.format_exception(type(exc), exc,
                                              exc.__traceback__))


def flush_std():
    for f in (sys.stdout, sys.stderr):
        try:
            if f is not None:
                f.flush()
        except Exception:
            pass


# ---------------------------------------------------------------- workers

def _worker(fd, slot, gen, init, max_tasks, threshold):
    """Body of a worker process."""
    if init is not None:
        initializer, initargs = init
        if isinstance(initializer, bytes):
            initializer, initargs = pickle.loads(initializer)
        try:
            initializer(*initargs)
        except BaseException as exc:
            _piston._procpool_report(fd, slot, os.getpid(), 0,
                                     format_exc(exc))
            return 1
    _piston._procpool_worker_main(fd, slot, gen, max_tasks or 0,
                                  pickle.dumps, pickle.loads, cloud_dumps,
                                  format_exc, threshold)
    return 0


def worker_child(fd, slot, gen, init, max_tasks, threshold, parent):
    """In a freshly forked worker: Ctrl-C is the parent's business, signal
    wake-ups are not ours, and the worker dies with `parent`.  Never
    returns."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        _piston._procpool_set_pdeathsig(signal.SIGKILL, parent)
        code = _worker(fd, slot, gen, init, max_tasks, threshold)
    except BaseException:
        traceback.print_exc()
    finally:
        flush_std()
        os._exit(code)


class Standby:
    """A worker forked ahead of need; assign() tells it its slot.

    `pool` is (fd, init, max_tasks, threshold) when the forking server
    knows its pool (the child inherits them), or None for a spare server's
    standby, forked before its pool exists: assign() then sends them, the
    fd by SCM_RIGHTS.  `in_child` closes what the child must not keep.
    An unassigned standby exits when close() closes its socket."""

    __slots__ = ("pid", "sock", "knows_pool")

    def __init__(self, pool, in_child):
        parent = os.getpid()

        def standby(theirs):
            in_child()
            _standby_child(theirs, pool, parent)

        self.pid, self.sock = _zygote.fork_connected(standby)
        self.knows_pool = pool is not None

    def assign(self, slot, gen, pool):
        """Sends the standby its slot; False if it is gone (then fork
        another).  The standby is a worker from here on."""
        cfg = {"slot": slot, "gen": gen}
        fds = []
        if not self.knows_pool:
            fd, init, max_tasks, threshold = pool
            cfg.update(init=init, max_tasks=max_tasks, threshold=threshold)
            fds = [fd]
        try:
            _zygote.send_request(self.sock, cfg, fds)
        except OSError:
            return False
        finally:
            self.close()
        return True

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def fork_standby(pool, in_child):
    """A Standby, or None if it cannot be forked now (out of processes or
    memory): it is only ahead of need, a request forks then."""
    try:
        return Standby(pool, in_child)
    except OSError:
        return None


def _standby_child(sock, pool, parent):
    """The standby's wait for its slot; then it is a worker.  Never
    returns."""
    req = None                      # None: closed unassigned
    code = 0
    try:
        _piston._procpool_set_pdeathsig(signal.SIGKILL, parent)
        req = _zygote.recv_request(sock)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        if req is None:
            flush_std()
            os._exit(code)
    sock.close()
    cfg, fds = req
    if pool is None:
        pool = (fds[0], cfg["init"], cfg["max_tasks"], cfg["threshold"])
    fd, init, max_tasks, threshold = pool
    worker_child(fd, cfg["slot"], cfg["gen"], init, max_tasks, threshold,
                 parent)


# ---------------------------------------------------------------- the server

def serve(fd, cmd_r, death_r, init, max_tasks, threshold, budget,
          standby=None):
    """The fork server's loop.  Each "slot gen" line on cmd_r starts a
    worker in that slot (the standby, else a fresh fork).  `budget` is how
    many workers the pool may ask for besides recycling (its size, less a
    worker it forked itself).  Exits, killing its workers, when the parent
    dies (death_r reads EOF); exits once its workers are gone after the
    parent closes cmd_r or says "quit"."""
    me = os.getpid()
    pool = (fd, init, max_tasks, threshold)
    events = _zygote.ChildEvents()
    children = {}                   # pid -> slot; None for the standby
    if standby is not None:
        children[standby.pid] = None
    closing = False
    buf = b""
    last_request = time.monotonic()

    def in_child():
        events.close()
        os.close(cmd_r)
        os.close(death_r)

    def start(slot, gen):
        nonlocal standby
        if standby is not None:
            ready, standby = standby, None
            if ready.assign(slot, gen, pool):
                return ready.pid
            # Gone: it stays in `children` (as None) until reaped.
        flush_std()
        pid = os.fork()
        if pid == 0:
            in_child()
            worker_child(fd, slot, gen, init, max_tasks, threshold, me)
        return pid

    while True:
        for pid, status in events.reaped() if children else ():
            slot = children.pop(pid, None)
            if slot is not None:
                _piston._procpool_report(fd, slot, pid, status)
            elif standby is not None and pid == standby.pid:
                standby.close()
                standby = None
        if closing and not children:
            return
        timeout = 1.0
        if (standby is None and not closing
                and (max_tasks or sum(s is not None
                                      for s in children.values()) < budget)):
            timeout = last_request + _zygote.IDLE_FORK_DELAY - time.monotonic()
            if timeout <= 0:
                standby = fork_standby(pool, in_child)
                if standby is None:
                    last_request = time.monotonic()     # try again later
                else:
                    children[standby.pid] = None
                continue
        ready = events.wait([death_r] + ([] if closing else [cmd_r]), timeout)
        if death_r in ready:
            # The parent is gone: nobody can use the results.
            for pid in list(children):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            return
        if cmd_r not in ready:
            continue
        data = os.read(cmd_r, 4096)
        if not data:
            closing = True
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line == b"quit":
                # Said outright: processes forked from the parent later (a
                # stdlib pool's workers) hold the pipe's write end too, so
                # its EOF may never come.
                closing = True
                continue
            slot, gen = map(int, line.split())
            pid = start(slot, gen)
            children[pid] = slot
            _piston._procpool_report(fd, slot, pid, -1)
            last_request = time.monotonic()
        if closing and standby is not None:
            standby.close()         # it exits; reaped like the others
            standby = None


def server_entry():
    """Entry point of a fresh interpreter's ("spawn") fork server."""
    cfg = pickle.load(sys.stdin.buffer)
    sys.stdin.close()
    _zygote.prepare(cfg)
    _zygote.run_and_exit(serve, cfg["fd"], cfg["cmd_r"], cfg["death_r"],
                         cfg["init"], cfg["max_tasks"], cfg["threshold"],
                         cfg["budget"])
