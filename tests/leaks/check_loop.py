"""Refleak check of piston's event loop: each workload runs warm-up rounds,
then measured rounds on a fresh loop; after each round (garbage collected)
it records allocated blocks, RSS and open fds.  A metric leaks when it keeps
growing: the last third's median exceeds the first third's by more than its
threshold, and both the first-to-middle and middle-to-last rises are at
least half of it (a one-off step is not a leak).

  python tests/leaks/check_loop.py            every check, one process each
  python tests/leaks/check_loop.py --check X  one check in this process
"""
import argparse
import asyncio
import gc
import os
import socket
import statistics
import subprocess
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
try:
    import piston
except ImportError:     # a checkout: the package lives in python/
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)),
                                    "python"))
    import piston  # noqa: E402

THRESHOLDS = {"blocks": 200, "rss": 4 * 1024 * 1024, "fds": 2}
N = 2000


def _noop(*a):
    pass


def callbacks(loop):
    for i in range(N):
        loop.call_soon(_noop, i)
        loop.call_later(0.0001, _noop)
        loop.call_later(10, _noop).cancel()
        h = loop.call_soon(_noop)
        h.cancel()
    loop.call_soon_threadsafe(_noop)
    loop.run_until_complete(asyncio.sleep(0.002))


def tasks(loop):
    async def child(i):
        await asyncio.sleep(0)
        if i % 3 == 0:
            raise ValueError(i)
        return i

    async def main():
        ts = [loop.create_task(child(i), name=f"t{i}") for i in range(N // 4)]
        res = await asyncio.gather(*ts, return_exceptions=True)
        t = loop.create_task(asyncio.sleep(10))
        await asyncio.sleep(0)
        t.cancel()
        try:
            await t
        except asyncio.CancelledError:
            pass
        return res

    loop.run_until_complete(main())


def executor(loop):
    async def main():
        await asyncio.gather(*[loop.run_in_executor(None, abs, -i)
                               for i in range(200)])
        await asyncio.gather(*[asyncio.to_thread(_noop) for _ in range(50)])

    loop.run_until_complete(main())


def sockets(loop):
    async def main():
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        for _ in range(50):
            await loop.sock_sendall(a, b"x" * 1000)
            await loop.sock_recv(b, 1000)
        t = loop.create_task(loop.sock_recv(b, 10))
        await asyncio.sleep(0)
        t.cancel()
        try:
            await t
        except asyncio.CancelledError:
            pass
        a.close()
        b.close()

    loop.run_until_complete(main())


def streams(loop):
    """Connections through the C stream transport: a server, clients that
    echo, a reset, and a connection refused."""
    async def echo(reader, writer):
        while data := await reader.read(4096):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        for i in range(20):
            reader, writer = await asyncio.open_connection("127.0.0.1",
                                                           port)
            writer.write(b"x" * (100 + i))
            await writer.drain()
            await reader.readexactly(100 + i)
            if i % 5 == 0:
                writer.transport.abort()
            else:
                writer.close()
                await writer.wait_closed()
        server.close()
        await server.wait_closed()
        try:
            await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            pass

    loop.run_until_complete(main())


def loops(loop):
    for _ in range(20):
        lp = piston.new_event_loop()
        lp.call_soon(_noop)
        lp.call_later(10, _noop)
        lp.run_until_complete(asyncio.sleep(0))
        lp.close()


def exceptions(loop):
    loop.set_exception_handler(lambda lp, ctx: None)

    def boom():
        raise RuntimeError("x")

    for _ in range(200):
        loop.call_soon(boom)
    loop.run_until_complete(asyncio.sleep(0))
    loop.set_exception_handler(None)


CHECKS = {f.__name__: f for f in (callbacks, tasks, executor, sockets,
                                   streams, loops, exceptions)}


def measure():
    gc.collect()
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return {"blocks": sys.getallocatedblocks(), "rss": rss,
            "fds": len(os.listdir("/proc/self/fd"))}


def run_check(name, warmup=5, rounds=30):
    loop = piston.new_event_loop()
    series = {k: [] for k in THRESHOLDS}
    try:
        for i in range(warmup + rounds):
            CHECKS[name](loop)
            if i >= warmup:
                for k, v in measure().items():
                    series[k].append(v)
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
    third = rounds // 3
    leaks = []
    for k, vals in series.items():
        early = statistics.median(vals[:third])
        mid = statistics.median(vals[third:-third])
        late = statistics.median(vals[-third:])
        # Steady growth, not a one-off step (a cache or pool filling up):
        # both halves of the rise must be real.
        half = THRESHOLDS[k] / 2
        if late - early > THRESHOLDS[k] and mid - early > half \
                and late - mid > half:
            leaks.append(f"{k} {early} -> {mid} -> {late}")
    return leaks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check")
    args = ap.parse_args()
    if args.check:
        leaks = run_check(args.check)
        print(f"{args.check}: " + ("LEAK " + "; ".join(leaks) if leaks
                                   else "ok"))
        return 1 if leaks else 0
    status = 0
    for name in CHECKS:
        r = subprocess.run([sys.executable, __file__, "--check", name],
                           capture_output=True, text=True, timeout=600)
        print((r.stdout or r.stderr).strip().splitlines()[-1])
        status |= r.returncode
    return status


if __name__ == "__main__":
    sys.exit(main())
