"""Helpers shared by the stream transport tests: the asyncio/piston loop
fixture, recording (and echoing) Protocols and a BufferedProtocol,
connected pairs."""
import asyncio
import os
import socket

from loop_fixtures import kind, loop_fixture, run  # noqa: F401
from net_support import HAS_IPV6, reset  # noqa: F401

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
CERT = os.path.join(DATA, "stream_tls_cert.pem")
KEY = os.path.join(DATA, "stream_tls_key.pem")


# kind, run: the asyncio/piston parameter and the runner; the loop
# records what reaches its exception handler in `loop.errors` and does not
# log it.
loop = loop_fixture(record_errors=True, log_errors=False)


class Rec(asyncio.Protocol):
    """Records what the transport calls; connection_lost more than once
    fails (set_result on a done future)."""

    eof_result = None

    def __init__(self, loop):
        self.loop = loop
        self.transport = None
        self.data = bytearray()
        self.events = []
        self.made = loop.create_future()
        self.lost = loop.create_future()
        self.eof = loop.create_future()
        self._want = None

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")
        self.made.set_result(transport)

    def data_received(self, data):
        assert type(data) is bytes
        self.data += data
        if not self.events or self.events[-1] != "data":
            self.events.append("data")
        self._check()

    def eof_received(self):
        self.events.append("eof")
        self.eof.set_result(None)
        return self.eof_result

    def connection_lost(self, exc):
        self.events.append("lost")
        self.lost.set_result(exc)
        if self._want is not None and not self._want[1].done():
            self._want[1].set_result(None)

    def pause_writing(self):
        self.events.append("pause")

    def resume_writing(self):
        self.events.append("resume")

    def _check(self):
        if self._want is not None and len(self.data) >= self._want[0] \
                and not self._want[1].done():
            self._want[1].set_result(None)

    async def wait_bytes(self, n):
        self._want = (n, self.loop.create_future())
        self._check()
        if self.lost.done() and not self._want[1].done():
            self._want[1].set_result(None)
        await self._want[1]
        return bytes(self.data)


class EchoRec(Rec):
    """A Rec that also writes back everything it receives."""

    def data_received(self, data):
        super().data_received(data)
        self.transport.write(data)


class Buffered(asyncio.BufferedProtocol):
    def __init__(self, loop, size=4096):
        self.loop = loop
        self.buf = bytearray(size)
        self.data = bytearray()
        self.sizehints = []
        self.lost = loop.create_future()
        self.waiter = None
        self.need = 0

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        self.sizehints.append(sizehint)
        return self.buf

    def buffer_updated(self, nbytes):
        self.data += self.buf[:nbytes]
        if self.waiter and len(self.data) >= self.need \
                and not self.waiter.done():
            self.waiter.set_result(None)

    def eof_received(self):
        return None

    def connection_lost(self, exc):
        self.lost.set_result(exc)

    async def wait_bytes(self, n):
        self.need = n
        self.waiter = self.loop.create_future()
        if len(self.data) >= n:
            return bytes(self.data)
        await self.waiter
        return bytes(self.data)


async def tcp_pair(loop, server_proto=None, client_proto=None,
                   host="127.0.0.1", **kw):
    sp = server_proto or Rec(loop)
    srv = await loop.create_server(lambda: sp, host, 0, **kw.get("skw", {}))
    port = srv.sockets[0].getsockname()[1]
    cp = client_proto or Rec(loop)
    await loop.create_connection(lambda: cp, host, port,
                                 **kw.get("ckw", {}))
    if isinstance(sp, Rec):
        await sp.made
    else:
        while not hasattr(sp, "transport"):
            await asyncio.sleep(0.001)
    return srv, sp, cp


async def raw_peer(loop, sp):
    """A server whose one connection gets protocol `sp` (a Rec), and the
    plain blocking socket on the other end."""
    srv = await loop.create_server(lambda: sp, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    raw = socket.create_connection(("127.0.0.1", port))
    await sp.made
    return srv, raw


async def shutdown(srv, *protos):
    for p in protos:
        if p.transport is not None:
            p.transport.close()
    for p in protos:
        await p.lost
    srv.close()
    await srv.wait_closed()
