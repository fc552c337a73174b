"""piston.Loop: the asyncio event loop over piston's C core.

The hot paths (call_soon, timers, fd interest, the epoll wait and running
callbacks) live in the C base class ``LoopCore``; this module holds the rarely
called parts: run_forever's set-up, close, exception handling, async
generators, executors, signals, name resolution and the low-level socket
API.  Behaviour follows asyncio's default loop; CPython's test_asyncio is the
reference (see tests/cpython_compat).
"""
import asyncio
import collections.abc
import concurrent.futures
import errno
import functools
import inspect
import ipaddress
import os
import signal
import socket
import sys
import threading
import traceback
import warnings
import weakref
from asyncio import coroutines, events, format_helpers, futures, tasks
from asyncio.log import logger

from piston import _piston
from piston._piston import Future as _PistonFuture
from piston._loop_net import NetMixin

try:
    import ssl
except ImportError:  # pragma: no cover
    ssl = None

__all__ = ["Loop", "new_event_loop"]

_PY312 = sys.version_info >= (3, 12)
_PY314 = sys.version_info >= (3, 14)


# 3.13 grew a keyword-only `debug` (show the source location only in debug
# mode); earlier versions always show it.
_FORMAT_TAKES_DEBUG = "debug" in inspect.signature(
    format_helpers._format_callback_source).parameters


def _format_callback(callback, args, debug=True):
    if _FORMAT_TAKES_DEBUG:
        return format_helpers._format_callback_source(callback, args,
                                                      debug=debug)
    return format_helpers._format_callback_source(callback, args)


def _handle_repr(handle):
    """asyncio's Handle repr: class, state, callback and where it was
    created."""
    info = [type(handle).__name__]
    if isinstance(handle, _piston.TimerHandle):
        info.append(f"when={handle._when}")
    if handle._cancelled:
        info.append("cancelled")
    if handle._callback is not None:
        loop = handle._loop
        debug = loop.get_debug() if loop is not None else False
        info.append(_format_callback(handle._callback, handle._args, debug))
    tb = handle._source_traceback
    if tb:
        frame = tb[-1]
        info.append(f"created at {frame[0]}:{frame[1]}")
    return "<{}>".format(" ".join(info))


_piston._set_handle_repr(_handle_repr)


def _extract_stack():
    """Debug mode: where call_soon/call_later/call_at was called (the C
    method has no frame, so the caller is this function's caller)."""
    return format_helpers.extract_stack(sys._getframe(1))


_piston._set_extract_stack(_extract_stack)


def _format_handle(handle):
    cb = handle._callback
    owner = getattr(cb, "__self__", None)
    if isinstance(owner, tasks.Task):
        return repr(owner)
    return str(handle)


def _sighandler_noop(signum, frame):
    """The Python-level handler of a signal the loop watches: the C handler
    has already written the number to the wake-up fd."""


def _default_executor():
    try:
        from piston import ThreadPoolExecutor
    except ImportError:
        ThreadPoolExecutor = concurrent.futures.ThreadPoolExecutor
    return ThreadPoolExecutor(thread_name_prefix="asyncio")


def _is_numeric_host(host):
    if host is None:
        return True
    if isinstance(host, bytes):
        try:
            host = host.decode("ascii")
        except UnicodeDecodeError:
            return False
    if not isinstance(host, str):
        return False
    try:
        ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    return True


def _is_numeric_port(port):
    if port is None or isinstance(port, int):
        return True
    if isinstance(port, (str, bytes)):
        return port.isdigit()
    return False


class Loop(NetMixin, _piston.LoopCore, asyncio.AbstractEventLoop):
    """An asyncio event loop written in C over epoll."""

    def __init__(self):
        self._pn_set_debug(coroutines._is_debug_mode())
        self._exception_handler = None
        self._default_executor = None
        self._executor_shutdown_called = False
        self._asyncgens = weakref.WeakSet()
        self._asyncgens_shutdown_called = False
        self._task_factory = None
        self._signal_handlers = {}
        self._ssock = self._csock = None
        self._coroutine_origin_tracking_enabled = False
        self._coroutine_origin_tracking_saved_depth = None
        self._current_handle = None
        self._watchdog = None
        self._pn_init_net()
        env = os.environ.get("PISTON_WATCHDOG")
        if env:
            try:
                threshold = float(env)
            except ValueError:
                threshold = 0
                warnings.warn(f"PISTON_WATCHDOG={env!r} is not a number of "
                              "seconds; watchdog off", RuntimeWarning)
            if threshold > 0:
                self.set_watchdog(threshold)

    def __repr__(self):
        return (f"<{type(self).__name__} running={self.is_running()} "
                f"closed={self.is_closed()} debug={self.get_debug()}>")

    def __del__(self, _warn=warnings.warn):
        if not self.is_closed():
            _warn(f"unclosed event loop {self!r}", ResourceWarning,
                  source=self)
            if not self.is_running():
                self.close()

    # Misuse checks (the messages are asyncio's).

    def _check_closed(self):
        if self.is_closed():
            raise RuntimeError("Event loop is closed")

    def _check_running(self):
        if self.is_running():
            raise RuntimeError("This event loop is already running")
        if events._get_running_loop() is not None:
            raise RuntimeError(
                "Cannot run the event loop while another loop is running")

    def _check_default_executor(self):
        if self._executor_shutdown_called:
            raise RuntimeError("Executor shutdown has been called")

    def _timer_handle_cancelled(self, handle):
        """Kept for code written against BaseEventLoop; piston removes a
        cancelled timer from its heap at once."""

    # Debug mode.

    def set_debug(self, enabled):
        self._pn_set_debug(enabled)
        if self.is_running():
            self.call_soon_threadsafe(self._set_coroutine_origin_tracking,
                                      enabled)

    def _set_coroutine_origin_tracking(self, enabled):
        if bool(enabled) == bool(self._coroutine_origin_tracking_enabled):
            return
        if enabled:
            self._coroutine_origin_tracking_saved_depth = (
                sys.get_coroutine_origin_tracking_depth())
            sys.set_coroutine_origin_tracking_depth(
                coroutines._DEBUG_STACK_DEPTH
                if hasattr(coroutines, "_DEBUG_STACK_DEPTH") else 10)
        else:
            sys.set_coroutine_origin_tracking_depth(
                self._coroutine_origin_tracking_saved_depth)
        self._coroutine_origin_tracking_enabled = enabled

    def _pn_slow_callback(self, handle, dt):
        logger.warning("Executing %s took %.3f seconds",
                       _format_handle(handle), dt)

    # Watchdog.

    def set_watchdog(self, threshold):
        """Report callbacks that block the loop: when one has run for
        `threshold` seconds, a C thread logs (on the 'asyncio' logger, at
        WARNING) the loop thread's Python stack and the task it belongs to,
        while the callback is still running.  None or 0 turns it off.
        A callback stuck in C code that holds the GIL is reported once it
        lets the GIL go."""
        if threshold is None or threshold == 0:
            self._pn_watchdog_stop()
            self._watchdog = None
            return
        self._pn_watchdog_start(float(threshold), _watchdog_report)
        self._watchdog = float(threshold)

    def get_watchdog(self):
        """The watchdog threshold in seconds, or None when off."""
        return self._watchdog

    # Running and stopping.

    def run_forever(self):
        """Run until stop() is called."""
        self._check_closed()
        self._check_running()
        self._set_coroutine_origin_tracking(self.get_debug())
        old_agen_hooks = sys.get_asyncgen_hooks()
        self._pn_enter()
        try:
            sys.set_asyncgen_hooks(firstiter=self._asyncgen_firstiter_hook,
                                   finalizer=self._asyncgen_finalizer_hook)
            events._set_running_loop(self)
            self._pn_run()
        finally:
            self._pn_leave()
            events._set_running_loop(None)
            self._set_coroutine_origin_tracking(False)
            sys.set_asyncgen_hooks(*old_agen_hooks)

    def run_until_complete(self, future):
        """Run until the future (or coroutine) is done; return its result
        or raise its exception."""
        self._check_closed()
        self._check_running()
        new_task = not futures.isfuture(future)
        future = tasks.ensure_future(future, loop=self)
        if new_task:
            # An exception raised by it is re-raised here: don't log it
            # as "never retrieved" too.
            future._log_destroy_pending = False
        future.add_done_callback(_stop_loop_of)
        try:
            self.run_forever()
        except BaseException:
            if new_task and future.done() and not future.cancelled():
                # Mark the exception retrieved; the caller sees the
                # KeyboardInterrupt or SystemExit instead.
                future.exception()
            raise
        finally:
            future.remove_done_callback(_stop_loop_of)
        if not future.done():
            raise RuntimeError("Event loop stopped before Future completed.")
        return future.result()

    def close(self):
        """Close the loop: drop pending callbacks, release the epoll and
        eventfd descriptors, shut the default executor down (no wait)."""
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        if self.get_debug():
            logger.debug("Close %r", self)
        for sig in list(self._signal_handlers):
            if sys.is_finalizing():
                break
            self.remove_signal_handler(sig)
        self._close_self_pipe()
        self._pn_close_net()
        self._pn_close()
        self._executor_shutdown_called = True
        executor = self._default_executor
        if executor is not None:
            self._default_executor = None
            executor.shutdown(wait=False)

    # Tasks and futures.

    def _pn_create_task(self, coro, *, name=None, context=None, **kwargs):
        """create_task's general path (the C method handles the common
        case: no task factory, no extra keywords, not in debug mode)."""
        self._check_closed()
        if self._task_factory is None:
            task = tasks.Task(coro, loop=self, name=name, context=context,
                              **kwargs)
            if task._source_traceback:
                del task._source_traceback[-1]
            return task
        if context is not None:
            kwargs["context"] = context
        if _PY314 and name is not None:
            kwargs["name"] = name
        task = self._task_factory(self, coro, **kwargs)
        if name is not None and not _PY314:
            task.set_name(name)
        return task

    def set_task_factory(self, factory):
        if factory is not None and not callable(factory):
            raise TypeError("task factory must be a callable or None")
        self._task_factory = factory

    def get_task_factory(self):
        return self._task_factory

    # Async generators.

    def _asyncgen_finalizer_hook(self, agen):
        self._asyncgens.discard(agen)
        if not self.is_closed():
            self.call_soon_threadsafe(self.create_task, agen.aclose())

    def _asyncgen_firstiter_hook(self, agen):
        if self._asyncgens_shutdown_called:
            warnings.warn(
                f"asynchronous generator {agen!r} was scheduled after "
                f"loop.shutdown_asyncgens() call",
                ResourceWarning, source=self)
        self._asyncgens.add(agen)

    async def shutdown_asyncgens(self):
        """Close every asynchronous generator still alive."""
        self._asyncgens_shutdown_called = True
        if not len(self._asyncgens):
            return
        agens = list(self._asyncgens)
        self._asyncgens.clear()
        results = await tasks.gather(*[ag.aclose() for ag in agens],
                                     return_exceptions=True)
        for result, agen in zip(results, agens):
            if isinstance(result, Exception):
                self.call_exception_handler({
                    "message": f"an error occurred during closing of "
                               f"asynchronous generator {agen!r}",
                    "exception": result,
                    "asyncgen": agen,
                })

    # Executors.

    def run_in_executor(self, executor, func, *args):
        self._check_closed()
        if self.get_debug() and (coroutines.iscoroutine(func)
                                 or coroutines.iscoroutinefunction(func)):
            raise TypeError("coroutines cannot be used with "
                            "run_in_executor()")
        if executor is None:
            executor = self._default_executor
            self._check_default_executor()
            if executor is None:
                executor = _default_executor()
                self._default_executor = executor
        cfut = executor.submit(func, *args)
        if isinstance(cfut, _PistonFuture):
            # Delivered in batches through the future's C hook.
            afut = self.create_future()
            try:
                self._pn_watch_future(cfut, afut)
            except ValueError:
                return futures.wrap_future(cfut, loop=self)
            afut.add_done_callback(functools.partial(_cancel_source, cfut))
            return afut
        return futures.wrap_future(cfut, loop=self)

    def set_default_executor(self, executor):
        if not isinstance(executor, concurrent.futures.ThreadPoolExecutor):
            raise TypeError("executor must be ThreadPoolExecutor instance")
        self._default_executor = executor

    async def shutdown_default_executor(self, timeout=None):
        """Wait (up to timeout seconds) for the default executor's
        threads."""
        self._executor_shutdown_called = True
        if self._default_executor is None:
            return
        future = self.create_future()
        thread = threading.Thread(target=self._do_shutdown, args=(future,))
        thread.start()
        try:
            async with asyncio.timeout(timeout):
                await future
        except TimeoutError:
            warnings.warn("The executor did not finishing joining its "
                          f"threads within {timeout} seconds.",
                          RuntimeWarning, stacklevel=2)
            self._default_executor.shutdown(wait=False)
        else:
            thread.join()

    def _do_shutdown(self, future):
        try:
            self._default_executor.shutdown(wait=True)
            if not self.is_closed():
                self.call_soon_threadsafe(_set_result_unless_cancelled,
                                          future, None)
        except Exception as ex:
            if not self.is_closed() and not future.cancelled():
                self.call_soon_threadsafe(future.set_exception, ex)

    # Exception handling.

    def get_exception_handler(self):
        return self._exception_handler

    def set_exception_handler(self, handler):
        if handler is not None and not callable(handler):
            raise TypeError(
                f"A callable object or None is expected, got {handler!r}")
        self._exception_handler = handler

    def default_exception_handler(self, context):
        """Log the context at ERROR level on the 'asyncio' logger, as
        asyncio's loop does."""
        message = context.get("message") or \
            "Unhandled exception in event loop"
        exception = context.get("exception")
        if exception is not None:
            exc_info = (type(exception), exception, exception.__traceback__)
        else:
            exc_info = False
        lines = [message]
        for key in sorted(context):
            if key in {"message", "exception"}:
                continue
            value = context[key]
            if key == "source_traceback":
                tb = "".join(traceback.format_list(value))
                value = "Object created at (most recent call last):\n"
                value += tb.rstrip()
            elif key == "handle_traceback":
                tb = "".join(traceback.format_list(value))
                value = "Handle created at (most recent call last):\n"
                value += tb.rstrip()
            else:
                value = repr(value)
            lines.append(f"{key}: {value}")
        logger.error("\n".join(lines), exc_info=exc_info)

    def call_exception_handler(self, context):
        """Hand context to the exception handler (or the default one);
        never raises except SystemExit and KeyboardInterrupt."""
        if self._exception_handler is None:
            try:
                self.default_exception_handler(context)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:
                logger.error("Exception in default exception handler",
                             exc_info=True)
            return
        try:
            ctx = None
            thing = context.get("task")
            if thing is None:
                thing = context.get("future")
            if thing is None:
                thing = context.get("handle")
            if thing is not None and hasattr(thing, "get_context"):
                ctx = thing.get_context()
            if ctx is not None and _PY312 and hasattr(ctx, "run"):
                ctx.run(self._exception_handler, self, context)
            else:
                self._exception_handler(self, context)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            try:
                self.default_exception_handler({
                    "message": "Unhandled error in exception handler",
                    "exception": exc,
                    "context": context,
                })
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:
                logger.error("Exception in default exception handler "
                             "while handling an unexpected error in "
                             "custom exception handler", exc_info=True)

    def _pn_callback_error(self, handle, exc):
        cb = _format_callback(handle._callback, handle._args)
        context = {
            "message": f"Exception in callback {cb}",
            "exception": exc,
            "handle": handle,
        }
        if handle._source_traceback:
            context["source_traceback"] = handle._source_traceback
        self.call_exception_handler(context)

    # Signals: signal.set_wakeup_fd writes the signal number to a socket
    # the loop reads, so a handler runs as a loop callback.

    def _make_self_pipe(self):
        if self._ssock is not None:
            return
        self._ssock, self._csock = socket.socketpair()
        self._ssock.setblocking(False)
        self._csock.setblocking(False)
        self.add_reader(self._ssock.fileno(), self._read_from_self)

    def _close_self_pipe(self):
        if self._ssock is None:
            return
        self.remove_reader(self._ssock.fileno())
        self._ssock.close()
        self._ssock = None
        self._csock.close()
        self._csock = None

    def _read_from_self(self):
        while True:
            try:
                data = self._ssock.recv(4096)
                if not data:
                    break
                for signum in data:
                    if signum:
                        self._handle_signal(signum)
            except InterruptedError:
                continue
            except BlockingIOError:
                break

    def _handle_signal(self, sig):
        handle = self._signal_handlers.get(sig)
        if handle is None:
            return
        if handle._cancelled:
            self.remove_signal_handler(sig)
        else:
            self._pn_push_ready(handle)

    def _check_signal(self, sig):
        if not isinstance(sig, int):
            raise TypeError(f"sig must be an int, not {sig!r}")
        if sig not in signal.valid_signals():
            raise ValueError(f"invalid signal number {sig}")

    def add_signal_handler(self, sig, callback, *args):
        """Run callback(*args) on the loop each time signal sig
        arrives."""
        if (coroutines.iscoroutine(callback)
                or coroutines.iscoroutinefunction(callback)):
            raise TypeError("coroutines cannot be used with "
                            "add_signal_handler()")
        self._check_signal(sig)
        self._check_closed()
        self._make_self_pipe()
        try:
            # Only the main thread may set it: ValueError otherwise.
            signal.set_wakeup_fd(self._csock.fileno())
        except (ValueError, OSError) as exc:
            raise RuntimeError(str(exc))
        handle = self._pn_new_handle(callback, *args)
        self._signal_handlers[sig] = handle
        try:
            signal.signal(sig, _sighandler_noop)
            signal.siginterrupt(sig, False)
        except OSError as exc:
            del self._signal_handlers[sig]
            if not self._signal_handlers:
                try:
                    signal.set_wakeup_fd(-1)
                except (ValueError, OSError) as nexc:
                    logger.info("set_wakeup_fd(-1) failed: %s", nexc)
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig:d} cannot be caught")
            raise

    def remove_signal_handler(self, sig):
        """Restore the default handling of sig; True if a handler was
        installed."""
        self._check_signal(sig)
        try:
            del self._signal_handlers[sig]
        except KeyError:
            return False
        if sig == signal.SIGINT:
            handler = signal.default_int_handler
        else:
            handler = signal.SIG_DFL
        try:
            signal.signal(sig, handler)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig:d} cannot be caught")
            raise
        if not self._signal_handlers:
            try:
                signal.set_wakeup_fd(-1)
            except (ValueError, OSError) as exc:
                logger.info("set_wakeup_fd(-1) failed: %s", exc)
        return True

    # Name resolution: numeric hosts are answered inline (no DNS, no
    # thread), everything else in the default executor.

    async def getaddrinfo(self, host, port, *, family=0, type=0, proto=0,
                          flags=0):
        if _is_numeric_host(host) and _is_numeric_port(port):
            return socket.getaddrinfo(host, port, family, type, proto, flags)
        return await self.run_in_executor(None, socket.getaddrinfo, host,
                                          port, family, type, proto, flags)

    async def getnameinfo(self, sockaddr, flags=0):
        return await self.run_in_executor(None, socket.getnameinfo,
                                          sockaddr, flags)

    # Low-level socket API: try the call at once, else wait for the fd.

    def _check_sock(self, sock):
        if ssl is not None and isinstance(sock, ssl.SSLSocket):
            raise TypeError("Socket cannot be of type SSLSocket")
        if self.get_debug() and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")

    def _wait_fd(self, sock, writer, attempt, fut):
        """Calls attempt() each time sock's fd is ready until it returns
        instead of raising BlockingIOError; its result completes fut."""
        fd = sock.fileno()
        add = self._add_writer if writer else self._add_reader
        remove = self.remove_writer if writer else self.remove_reader

        def on_ready():
            if fut.done():
                return
            try:
                result = attempt()
            except (BlockingIOError, InterruptedError):
                return
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                fut.set_exception(exc)
            else:
                fut.set_result(result)

        handle = add(fd, on_ready)

        def done(_fut):
            if not handle.cancelled():
                remove(fd)

        fut.add_done_callback(done)
        return fut

    async def _sock_op(self, sock, writer, attempt):
        self._check_sock(sock)
        try:
            return attempt()
        except (BlockingIOError, InterruptedError):
            pass
        fut = self.create_future()
        self._wait_fd(sock, writer, attempt, fut)
        return await fut

    async def sock_recv(self, sock, n):
        return await self._sock_op(sock, False, lambda: sock.recv(n))

    async def sock_recv_into(self, sock, buf):
        return await self._sock_op(sock, False, lambda: sock.recv_into(buf))

    async def sock_recvfrom(self, sock, bufsize):
        return await self._sock_op(sock, False,
                                   lambda: sock.recvfrom(bufsize))

    async def sock_recvfrom_into(self, sock, buf, nbytes=0):
        if not nbytes:
            nbytes = len(buf)
        return await self._sock_op(
            sock, False, lambda: sock.recvfrom_into(buf, nbytes))

    async def sock_sendto(self, sock, data, address):
        return await self._sock_op(sock, True,
                                   lambda: sock.sendto(data, address))

    async def sock_sendall(self, sock, data):
        self._check_sock(sock)
        try:
            n = sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        if n == len(data):
            return
        view = memoryview(data).cast("B")
        pos = [n]

        def attempt():
            while pos[0] < len(view):
                pos[0] += sock.send(view[pos[0]:])
            return None

        fut = self.create_future()
        self._wait_fd(sock, True, attempt, fut)
        return await fut

    async def sock_connect(self, sock, address):
        self._check_sock(sock)
        if sock.family == socket.AF_INET or (
                socket.has_ipv6 and sock.family == socket.AF_INET6):
            infos = await self.getaddrinfo(
                *address[:2], family=sock.family, type=sock.type,
                proto=sock.proto)
            if not infos:
                raise OSError("getaddrinfo() returned empty list")
            address = infos[0][4]
        try:
            sock.connect(address)
            return None
        except (BlockingIOError, InterruptedError):
            pass

        def attempt():
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err != 0:
                if err in (errno.EINPROGRESS, errno.EALREADY):
                    raise BlockingIOError(err, os.strerror(err))
                raise OSError(err, f"Connect call failed {address}")
            return None

        fut = self.create_future()
        self._wait_fd(sock, True, attempt, fut)
        return await fut

    async def sock_accept(self, sock):
        def attempt():
            conn, address = sock.accept()
            conn.setblocking(False)
            return conn, address

        return await self._sock_op(sock, False, attempt)

    async def sock_sendfile(self, sock, file, offset=0, count=None, *,
                            fallback=True):
        self._check_sock(sock)
        if "b" not in getattr(file, "mode", "b"):
            raise ValueError("file should be opened in binary mode")
        if not sock.type == socket.SOCK_STREAM:
            raise ValueError("only SOCK_STREAM type sockets are supported")
        if count is not None:
            if not isinstance(count, int):
                raise TypeError(
                    f"count must be a positive integer (got {count!r})")
            if count <= 0:
                raise ValueError(
                    f"count must be a positive integer (got {count!r})")
        if not isinstance(offset, int):
            raise TypeError(
                f"offset must be a non-negative integer (got {offset!r})")
        if offset < 0:
            raise ValueError(
                f"offset must be a non-negative integer (got {offset!r})")
        try:
            fileno = file.fileno()
            os.fstat(fileno)
        except (AttributeError, OSError, ValueError):
            fileno = None
        if fileno is not None and hasattr(os, "sendfile"):
            return await self._pn_sock_sendfile_native(sock, file, fileno,
                                                       offset, count)
        if not fallback:
            raise asyncio.SendfileNotAvailableError(
                "os.sendfile() is not available for this file")
        return await self._pn_sock_sendfile_fallback(sock, file, offset,
                                                         count)

    async def _pn_sock_sendfile_native(self, sock, file, fileno, offset,
                                       count):
        try:
            size = os.fstat(fileno).st_size
        except OSError:
            size = None
        end = offset + count if count is not None else size
        sent = [0]

        def attempt():
            while True:
                pos = offset + sent[0]
                want = (end - pos) if end is not None else 2 ** 30
                if want <= 0:
                    return sent[0]
                n = os.sendfile(sock.fileno(), fileno, pos,
                                min(want, 2 ** 30))
                if n == 0:
                    return sent[0]
                sent[0] += n

        try:
            return await self._sock_op(sock, True, attempt)
        finally:
            if sent[0] > 0 and hasattr(file, "seek"):
                file.seek(offset + sent[0])

    async def _pn_sock_sendfile_fallback(self, sock, file, offset, count):
        if offset:
            file.seek(offset)
        blocksize = min(count, 65536) if count else 65536
        total = 0
        try:
            while True:
                if count:
                    blocksize = min(count - total, blocksize)
                    if blocksize <= 0:
                        break
                data = await self.run_in_executor(None, file.read, blocksize)
                if not data:
                    break
                await self.sock_sendall(sock, data)
                total += len(data)
            return total
        finally:
            if total > 0 and hasattr(file, "seek"):
                file.seek(offset + total)


def _watchdog_report(loop, handle, elapsed):
    """Called by the watchdog thread (GIL held) while a callback blocks."""
    tid = loop._thread_id
    frame = sys._current_frames().get(tid) if tid is not None else None
    if frame is not None:
        stack = "".join(traceback.format_stack(frame)).rstrip()
    else:
        stack = "  (no Python frame: blocked in C code)"
    what = _format_handle(handle) if handle is not None else "a callback"
    logger.warning(
        "piston watchdog: the event loop has been blocked for %.3f s "
        "(threshold %.3f s) running %s\n"
        "Loop thread stack (most recent call last):\n%s",
        elapsed, loop._watchdog or 0.0, what, stack)


def _cancel_source(source, dest):
    if dest.cancelled():
        source.cancel()


def _stop_loop_of(fut):
    if not fut.cancelled():
        exc = fut.exception()
        if isinstance(exc, (SystemExit, KeyboardInterrupt)):
            # run_forever() is already unwinding with it.
            return
    futures._get_loop(fut).stop()


def _set_result_unless_cancelled(fut, result):
    if not fut.cancelled():
        fut.set_result(result)


def new_event_loop():
    """A new piston event loop."""
    return Loop()
