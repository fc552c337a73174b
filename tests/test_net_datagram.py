"""Datagram endpoints on asyncio's loop and on piston's: echo of random
datagrams over UDP on 127.0.0.1 and ::1 and over a Unix datagram socket,
and errors delivered to error_received (ICMP port unreachable on a
connected UDP socket, a datagram too large to send)."""
import asyncio
import errno
import random
import socket

import pytest

from net_support import HAS_IPV6, kind, loop, run  # noqa: F401

# Datagrams in flight at once, and their largest size: together small
# enough for the receive buffers (default rmem), so loopback drops none.
WINDOW = 8
SIZES = [1, 2, 512, 8192]


class EchoDatagram(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)


class Receiver(asyncio.DatagramProtocol):
    def __init__(self):
        self.queue = asyncio.Queue()
        self.errors = asyncio.Queue()
        self.lost = asyncio.get_running_loop().create_future()

    def datagram_received(self, data, addr):
        self.queue.put_nowait(data)

    def error_received(self, exc):
        self.errors.put_nowait(exc)

    def connection_lost(self, exc):
        self.lost.set_result(exc)


async def _echo_round_trips(transport, rx, rng, count, window, sizes):
    sent, got = [], []
    for start in range(0, count, window):
        # (No empty datagrams: before 3.13 asyncio's sendto() drops them.)
        batch = [rng.randbytes(rng.choice(sizes))
                 for _ in range(min(window, count - start))]
        for d in batch:
            transport.sendto(d)
        sent += batch
        for _ in batch:
            got.append(await rx.queue.get())
    return sent, got


@pytest.mark.parametrize("family", ["ipv4", "ipv6", "unix"])
def test_echo(loop, family, tmp_path):
    if family == "ipv6" and not HAS_IPV6:
        pytest.skip("no IPv6 loopback")
    rng = random.Random(61)

    async def main():
        if family == "unix":
            server_addr = str(tmp_path / "server.sock")
            kw = dict(family=socket.AF_UNIX)
            srv, _ = await loop.create_datagram_endpoint(
                EchoDatagram, local_addr=server_addr, **kw)
            # An unbound Unix datagram socket has no address to reply to.
            kw["local_addr"] = str(tmp_path / "client.sock")
            big = 16000
        else:
            host = "127.0.0.1" if family == "ipv4" else "::1"
            srv, _ = await loop.create_datagram_endpoint(
                EchoDatagram, local_addr=(host, 0))
            server_addr = srv.get_extra_info("sockname")[:2]
            kw = {}
            big = 60000
        tr, rx = await loop.create_datagram_endpoint(
            Receiver, remote_addr=server_addr, **kw)
        peer = tr.get_extra_info("peername")
        assert (peer if family == "unix" else peer[:2]) == server_addr
        sent, got = await _echo_round_trips(tr, rx, rng, 600, WINDOW, SIZES)
        assert got == sent
        # Near the largest datagram, one at a time.
        sent, got = await _echo_round_trips(tr, rx, rng, 20, 1, [big])
        assert got == sent
        assert rx.errors.empty()
        tr.close()
        assert await rx.lost is None
        srv.close()

    run(loop, main(), timeout=30)
    assert not loop.errors


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_port_unreachable(loop, family):
    """A connected UDP socket to a closed port: the ICMP port-unreachable
    reply comes back as error_received(ConnectionRefusedError), and the
    endpoint stays usable."""
    if family == "ipv6" and not HAS_IPV6:
        pytest.skip("no IPv6 loopback")
    af, host = (socket.AF_INET, "127.0.0.1") if family == "ipv4" \
        else (socket.AF_INET6, "::1")
    with socket.socket(af, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        port = s.getsockname()[1]

    async def main():
        tr, rx = await loop.create_datagram_endpoint(
            Receiver, remote_addr=(host, port))
        # Each send may provoke an ICMP reply; one is enough.
        for _ in range(100):
            tr.sendto(b"anyone there?")
            try:
                exc = await asyncio.wait_for(rx.errors.get(), 0.1)
                break
            except asyncio.TimeoutError:
                continue
        else:
            pytest.fail("error_received was never called")
        assert isinstance(exc, ConnectionRefusedError)
        assert not tr.is_closing()
        tr.close()
        assert await rx.lost is None

    run(loop, main())
    assert not loop.errors


def test_datagram_too_large(loop):
    async def main():
        srv, _ = await loop.create_datagram_endpoint(
            EchoDatagram, local_addr=("127.0.0.1", 0))
        tr, rx = await loop.create_datagram_endpoint(
            Receiver, remote_addr=srv.get_extra_info("sockname"))
        tr.sendto(b"x" * 70000)
        exc = await rx.errors.get()
        assert isinstance(exc, OSError) and exc.errno == errno.EMSGSIZE
        # Still usable afterwards.
        tr.sendto(b"small")
        assert await rx.queue.get() == b"small"
        tr.close()
        srv.close()
        await rx.lost

    run(loop, main())
    assert not loop.errors
