"""Subprocesses on asyncio's loop and on piston's, through
asyncio.create_subprocess_exec/shell: pipes on all three streams, 10 MiB
through communicate(), pass_fds, start_new_session, preexec_fn, signals
and exit codes, many children at once."""
import asyncio
import hashlib
import os
import random
import signal

import pytest

from net_support import kind, loop, run  # noqa: F401 - fixtures

PIPE = asyncio.subprocess.PIPE


def test_communicate_10mib(loop):
    data = random.Random(81).randbytes(10 << 20)

    async def main():
        proc = await asyncio.create_subprocess_exec(
            "cat", stdin=PIPE, stdout=PIPE, stderr=PIPE)
        out, err = await proc.communicate(data)
        assert hashlib.sha256(out).digest() == hashlib.sha256(data).digest()
        assert err == b""
        assert proc.returncode == 0

    run(loop, main())
    assert not loop.errors


def test_shell_three_pipes(loop):
    async def main():
        proc = await asyncio.create_subprocess_shell(
            "tr a-z A-Z; printf 'to stderr' >&2; exit 3",
            stdin=PIPE, stdout=PIPE, stderr=PIPE)
        out, err = await proc.communicate(b"hello pipes\n")
        assert (out, err, proc.returncode) == \
            (b"HELLO PIPES\n", b"to stderr", 3)

        # Line by line, stdin kept open between lines.
        proc = await asyncio.create_subprocess_exec(
            "cat", stdin=PIPE, stdout=PIPE)
        for i in range(200):
            line = b"%d %s\n" % (i, os.urandom(20).hex().encode())
            proc.stdin.write(line)
            await proc.stdin.drain()
            assert await proc.stdout.readline() == line
        proc.stdin.close()
        assert await proc.stdout.read() == b""
        assert await proc.wait() == 0

    run(loop, main())
    assert not loop.errors


def test_pass_fds(loop):
    # (dash's `>&N` takes one digit only: write through /proc instead.)
    async def write_to(fd, **kw):
        proc = await asyncio.create_subprocess_exec(
            "sh", "-c", f"echo through fd {fd} > /proc/self/fd/{fd}",
            stderr=PIPE, **kw)
        await proc.communicate()
        return proc.returncode

    async def main():
        r, w = os.pipe()
        try:
            assert await write_to(w, pass_fds=(w,)) == 0
            # Without pass_fds the child does not inherit it.
            assert await write_to(w) != 0
        finally:
            os.close(w)
        try:
            assert os.read(r, 100) == b"through fd %d\n" % w
            assert os.read(r, 100) == b""
        finally:
            os.close(r)

    run(loop, main())
    assert not loop.errors


def test_start_new_session_and_preexec_fn(loop):
    # The session id is field 6 of /proc/PID/stat; `$$` is the shell.
    script = 'echo $$ $(cut -d" " -f6 /proc/$$/stat) $(umask)'

    async def child(**kw):
        proc = await asyncio.create_subprocess_exec(
            "sh", "-c", script, stdout=PIPE, **kw)
        out, _ = await proc.communicate()
        assert proc.returncode == 0
        pid, sid, umask = out.split()
        return int(pid), int(sid), umask

    async def main():
        pid, sid, _ = await child(start_new_session=True)
        assert sid == pid
        pid, sid, _ = await child()
        assert sid == os.getsid(0) != pid
        _, _, umask = await child(preexec_fn=lambda: os.umask(0o027))
        assert umask == b"0027"

    run(loop, main())
    assert not loop.errors


def test_signals_and_exit_codes(loop):
    async def sleeper():
        # exec: the pid is sleep's own, not a shell's.
        return await asyncio.create_subprocess_exec("sleep", "60")

    async def main():
        p = await sleeper()
        p.terminate()
        assert await p.wait() == -signal.SIGTERM
        p = await sleeper()
        p.kill()
        assert await p.wait() == -signal.SIGKILL
        p = await sleeper()
        p.send_signal(signal.SIGUSR1)
        assert await p.wait() == -signal.SIGUSR1
        # A signal death from inside, and plain exit codes.
        p = await asyncio.create_subprocess_exec("sh", "-c", "kill -USR2 $$")
        assert await p.wait() == -signal.SIGUSR2
        for code in (0, 1, 7, 255):
            p = await asyncio.create_subprocess_shell(f"exit {code}")
            assert await p.wait() == code
            assert p.returncode == code
        with pytest.raises(FileNotFoundError):
            await asyncio.create_subprocess_exec("/nonexistent/program")

    run(loop, main())
    assert not loop.errors


def test_many_concurrent(loop):
    rng = random.Random(82)
    payloads = [rng.randbytes(rng.randint(0, 200000)) for _ in range(64)]

    async def one(data, i):
        if i % 2:
            proc = await asyncio.create_subprocess_exec(
                "cat", stdin=PIPE, stdout=PIPE)
        else:
            proc = await asyncio.create_subprocess_shell(
                "cat", stdin=PIPE, stdout=PIPE)
        out, _ = await proc.communicate(data)
        return out, proc.returncode

    async def main():
        results = await asyncio.gather(*(one(d, i)
                                         for i, d in enumerate(payloads)))
        assert [out for out, _ in results] == payloads
        assert [rc for _, rc in results] == [0] * len(payloads)

    run(loop, main())
    assert not loop.errors
