"""What piston's loop adds under asyncio's network orchestration
(python/piston/_loop_net.py): the child watcher, fd ownership by
transports, Unix server clean-up.  Each body runs on asyncio's loop and on
piston's (the `loop` fixture of test_loop.py)."""
import asyncio
import logging
import os
import socket
import sys

import pytest

from test_loop import kind, loop  # noqa: F401 - fixtures

PY313 = sys.version_info >= (3, 13)


def run(loop, coro, timeout=30):
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


@pytest.fixture
def child_loop(loop):
    # asyncio's own loop needs a child watcher on 3.11 (the policy's), so
    # it has to be the thread's current loop; piston's needs neither.
    asyncio.set_event_loop(loop)
    yield loop
    asyncio.set_event_loop(None)


def test_subprocess_exit_codes(child_loop):
    async def main():
        codes = []
        for cmd in ("exit 0", "exit 7", "kill -9 $$"):
            proc = await asyncio.create_subprocess_shell(cmd)
            codes.append(await proc.wait())
        return codes

    assert run(child_loop, main()) == [0, 7, -9]


def test_subprocess_many_concurrent(child_loop):
    async def one(i):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", f"import sys; sys.exit({i % 5})",
            stdout=asyncio.subprocess.DEVNULL)
        return await proc.wait()

    async def main():
        return await asyncio.gather(*(one(i) for i in range(20)))

    assert run(child_loop, main(), 60) == [i % 5 for i in range(20)]


def test_subprocess_without_pidfd(kind, child_loop, monkeypatch):
    """Kernels before 5.3 have no pidfd_open: a thread blocked in waitpid
    reaps the child instead."""
    if kind == "asyncio":
        pytest.skip("piston's child watcher")

    def no_pidfd(pid, flags=0):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)

    async def main():
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "print('hi')",
            stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        return out, proc.returncode

    assert run(child_loop, main()) == (b"hi\n", 0)


def test_subprocess_reaped_behind_our_back(kind, child_loop, caplog):
    if kind == "asyncio" and sys.version_info < (3, 12):
        pytest.skip("3.11's default child watcher uses SIGCHLD")

    async def main():
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "pass")
        os.waitpid(proc.pid, 0)             # steal the exit status
        return await proc.wait()

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        assert run(child_loop, main()) == 255
    assert "will report returncode 255" in caplog.text


def test_subprocess_closed_loop_releases_pidfd(kind, child_loop):
    if kind == "asyncio":
        pytest.skip("piston's child watcher")
    before = len(os.listdir("/proc/self/fd"))

    async def start():
        return await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import time; time.sleep(30)")

    proc = run(child_loop, start())
    proc.kill()
    child_loop.close()
    os.waitpid(proc.pid, 0)
    assert len(os.listdir("/proc/self/fd")) <= before


def test_add_reader_on_transport_fd_refused(loop):
    async def main():
        srv = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        tr, _ = await loop.create_connection(asyncio.Protocol,
                                             "127.0.0.1", port)
        fd = tr.get_extra_info("socket").fileno()
        try:
            for method in (loop.add_reader, loop.add_writer):
                with pytest.raises(RuntimeError, match="is used by transport"):
                    method(fd, lambda: None)
            for method in (loop.remove_reader, loop.remove_writer):
                with pytest.raises(RuntimeError, match="is used by transport"):
                    method(fd)
        finally:
            tr.close()
            srv.close()
            await srv.wait_closed()
        # Once the transport is gone the fd is anyone's again.
        await asyncio.sleep(0)
        a, b = socket.socketpair()
        with a, b:
            loop.add_reader(a, lambda: None)
            assert loop.remove_reader(a)

    run(loop, main())


@pytest.mark.skipif(not PY313, reason="cleanup_socket is new in 3.13")
def test_unix_server_removes_its_path(loop, tmp_path):
    path = str(tmp_path / "s.sock")

    async def main():
        srv = await asyncio.start_unix_server(lambda r, w: None, path)
        assert os.path.exists(path)
        srv.close()
        await srv.wait_closed()
        gone = not os.path.exists(path)
        # A path replaced by someone else after bind stays.
        srv = await asyncio.start_unix_server(lambda r, w: None, path)
        os.unlink(path)
        open(path, "w").close()
        srv.close()
        await srv.wait_closed()
        return gone, os.path.exists(path)

    assert run(loop, main()) == (True, True)
