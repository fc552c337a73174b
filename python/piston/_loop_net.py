"""The network half of piston.Loop: servers, connections, TLS, datagrams,
pipes and subprocesses.

The orchestration above the transports (happy eyeballs in
create_connection, create_server and its Server object, start_tls and the
TLS protocol, sendfile's fallback, the subprocess protocol) is asyncio's
own: the same functions run on piston's loop, so they behave exactly as
they do on asyncio's.  What piston supplies is below them: the transports
(stream transports in C, see csrc/ext/stream.c), the fd registrations in
the C loop core, and a pidfd-based child watcher that needs no policy.
"""
import collections
import os
import selectors
import sys
import threading
import weakref
from asyncio import base_events, selector_events, unix_events
from asyncio.log import logger



def _borrow(cls, *names):
    """asyncio's implementation of these methods, to be bound to piston's
    loop.  None of them uses zero-argument super(), which would tie them to
    their class."""
    out = {}
    for name in names:
        func = cls.__dict__[name]
        if "__class__" in func.__code__.co_freevars:  # pragma: no cover
            raise TypeError(f"{cls.__name__}.{name} uses super()")
        out[name] = func
    return out


_SelectorKey = collections.namedtuple("_SelectorKey", "fileobj fd events data")


class _SelectorView:
    """What asyncio's Python transports read of `loop._selector` (their
    repr asks which events an fd is registered for), answered from the C
    loop's fd table."""

    __slots__ = ("_loop",)

    def __init__(self, loop):
        self._loop = weakref.proxy(loop)

    def get_key(self, fd):
        try:
            reader, writer = self._loop._pn_fd_handles(fd)
        except ReferenceError:
            raise KeyError(f"{fd!r} is not registered") from None
        events = ((selectors.EVENT_READ if reader is not None else 0)
                  | (selectors.EVENT_WRITE if writer is not None else 0))
        if not events:
            raise KeyError(f"{fd!r} is not registered")
        return _SelectorKey(fd, fd, events, (reader, writer))


class _ChildWatch:
    """Reaps one child and reports its exit code to the subprocess
    transport: through a pidfd registered with the loop where the kernel
    has pidfd_open (Linux 5.3+), else from a thread blocked in waitpid."""

    def __init__(self, loop, pid, transport):
        self._loop = loop
        self._pid = pid
        self._transport = transport
        self._pidfd = -1
        try:
            self._pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            thread = threading.Thread(target=self._wait_in_thread,
                                      name=f"piston-waitpid-{pid}",
                                      daemon=True)
            thread.start()
        else:
            loop._add_reader(self._pidfd, self._on_pidfd)

    def _reap(self, flags):
        try:
            pid, status = os.waitpid(self._pid, flags)
        except ChildProcessError:
            # Reaped by someone else (a SIGCHLD handler, os.wait()): the
            # exit status is gone; asyncio reports 255 and says so.
            logger.warning("Unknown child process pid %d, will report "
                           "returncode 255", self._pid)
            return 255
        if pid == 0:
            return None
        return os.waitstatus_to_exitcode(status)

    def _on_pidfd(self):
        code = self._reap(os.WNOHANG)
        if code is None:
            return
        self._loop._remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = -1
        self._transport._process_exited(code)

    def _wait_in_thread(self):
        code = self._reap(0)
        try:
            self._loop.call_soon_threadsafe(self._transport._process_exited,
                                            code)
        except RuntimeError:
            pass    # the loop was closed meanwhile

    def close(self):
        if self._pidfd >= 0:
            if not self._loop.is_closed():
                self._loop._remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1


class NetMixin:
    """Loop methods for transports; mixed into piston.Loop."""

    locals().update(_borrow(
        base_events.BaseEventLoop,
        "_connect_sock", "create_connection",
        "_create_connection_transport", "sendfile", "_sendfile_fallback",
        "start_tls", "create_datagram_endpoint", "_ensure_resolved",
        "_create_server_getaddrinfo", "create_server",
        "connect_accepted_socket", "connect_read_pipe", "connect_write_pipe",
        "_log_subprocess", "subprocess_shell", "subprocess_exec"))
    locals().update(_borrow(
        selector_events.BaseSelectorEventLoop,
        "_make_ssl_transport", "_make_datagram_transport",
        "_start_serving", "_accept_connection", "_accept_connection2",
        "_ensure_fd_no_transport", "_sendfile_native"))
    locals().update(_borrow(
        unix_events._UnixSelectorEventLoop,
        "_make_read_pipe_transport", "_make_write_pipe_transport",
        "create_unix_connection", "create_unix_server"))

    def _pn_init_net(self):
        # fd -> transport, as asyncio's selector loop keeps it: add_reader
        # and friends refuse an fd a transport owns.
        self._transports = weakref.WeakValueDictionary()
        self._selector = _SelectorView(self)
        self._child_watches = {}
        # Listening Unix sockets whose path close() removes (3.13's
        # cleanup_socket): socket -> inode of the path when it was bound.
        self._unix_server_sockets = {}

    def _make_socket_transport(self, sock, protocol, waiter=None, *,
                               extra=None, server=None):
        self._ensure_fd_no_transport(sock)
        return selector_events._SelectorSocketTransport(
            self, sock, protocol, waiter, extra, server)

    def _stop_serving(self, sock):
        """Stops accepting on a listening socket and closes it; a Unix
        socket's path is removed if it is still the one we bound."""
        inode = self._unix_server_sockets.pop(sock, None)
        path = sock.getsockname() if inode is not None else None
        self._remove_reader(sock.fileno())
        sock.close()
        if not path or not isinstance(path, str) or path.startswith("\0"):
            return
        try:
            if os.stat(path).st_ino == inode:
                os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as err:
            logger.error("Unable to clean up listening UNIX socket %r: %r",
                         path, err)

    # add_reader & co. on an fd that a transport owns would steal its
    # events; asyncio raises, so do we.

    def add_reader(self, fd, callback, *args):
        if self._transports:
            self._ensure_fd_no_transport(fd)
        self._add_reader(fd, callback, *args)

    def add_writer(self, fd, callback, *args):
        if self._transports:
            self._ensure_fd_no_transport(fd)
        self._add_writer(fd, callback, *args)

    def remove_reader(self, fd):
        if self._transports:
            self._ensure_fd_no_transport(fd)
        return self._remove_reader(fd)

    def remove_writer(self, fd):
        if self._transports:
            self._ensure_fd_no_transport(fd)
        return self._remove_writer(fd)

    async def _make_subprocess_transport(self, protocol, args, shell, stdin,
                                         stdout, stderr, bufsize,
                                         extra=None, **kwargs):
        waiter = self.create_future()
        transp = _SubprocessTransport(self, protocol, args, shell, stdin,
                                      stdout, stderr, bufsize,
                                      waiter=waiter, extra=extra, **kwargs)
        try:
            await waiter
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            transp.close()
            await transp._wait()
            raise
        return transp

    def _pn_close_net(self):
        # As asyncio's loop drops its selector: transports outliving the
        # loop then describe themselves as open rather than polling.
        self._selector = None
        for watch in list(self._child_watches.values()):
            watch.close()
        self._child_watches.clear()


class _SubprocessTransport(unix_events._UnixSubprocessTransport):
    """asyncio's subprocess transport, its child reaped by a _ChildWatch
    instead of the policy's child watcher."""

    def _start(self, args, shell, stdin, stdout, stderr, bufsize, **kwargs):
        super()._start(args, shell, stdin, stdout, stderr, bufsize,
                       **kwargs)
        loop = self._loop
        pid = self._proc.pid
        loop._child_watches[pid] = _ChildWatch(loop, pid, self)

    def _process_exited(self, returncode):
        watch = self._loop._child_watches.pop(self._proc.pid, None)
        if watch is not None:
            watch.close()
        super()._process_exited(returncode)
