"""asyncio's Server object over the loop's transports, on asyncio's loop
and on piston's: wait_closed() waits for the connections (3.12+),
close_clients()/abort_clients() (3.13+), serve_forever() cancelled,
start_serving=False."""
import asyncio
import sys

import pytest

from net_support import kind, loop, run  # noqa: F401 - fixtures


class Peer(asyncio.Protocol):
    """Either end: remembers EOF and connection_lost."""

    def __init__(self):
        loop = asyncio.get_running_loop()
        self.eof = loop.create_future()
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport

    def eof_received(self):
        self.eof.set_result(None)

    def connection_lost(self, exc):
        if not self.eof.done():
            self.eof.set_result(None)
        self.lost.set_result(exc)


async def _server_with_clients(loop, n):
    accepted = []

    def factory():
        p = Peer()
        accepted.append(p)
        return p

    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    clients = [(await loop.create_connection(Peer, "127.0.0.1", port))[1]
               for _ in range(n)]
    while len(accepted) < n:
        await asyncio.sleep(0.001)
    return server, accepted, clients


@pytest.mark.skipif(sys.version_info < (3, 12),
                    reason="wait_closed() waits for connections from 3.12")
def test_wait_closed_waits_for_connections(loop):
    async def main():
        server, accepted, clients = await _server_with_clients(loop, 3)
        server.close()
        waiting = asyncio.ensure_future(server.wait_closed())
        for _ in range(5):
            await asyncio.sleep(0.01)
        assert not waiting.done()
        for i, p in enumerate(accepted):
            p.transport.close()
            await p.lost
            await asyncio.sleep(0.01)
            assert waiting.done() == (i == len(accepted) - 1)
        await waiting
        for c in clients:
            await c.eof
            c.transport.close()

    run(loop, main())
    assert not loop.errors


@pytest.mark.skipif(sys.version_info < (3, 13),
                    reason="Server.close_clients() is new in 3.13")
@pytest.mark.parametrize("how", ["close_clients", "abort_clients"])
def test_close_and_abort_clients(loop, how):
    async def main():
        server, accepted, clients = await _server_with_clients(loop, 5)
        server.close()
        getattr(server, how)()
        await asyncio.wait_for(server.wait_closed(), 10)
        for p in accepted:
            assert await p.lost is None
        for c in clients:
            await c.eof
            c.transport.close()
            exc = await c.lost
            assert exc is None or isinstance(exc, ConnectionError)

    run(loop, main())
    assert not loop.errors


def test_serve_forever_cancelled(loop):
    async def main():
        async def hang_up(reader, writer):
            writer.close()

        server = await asyncio.start_server(hang_up, "127.0.0.1", 0,
                                            start_serving=False)
        assert not server.is_serving()
        port = server.sockets[0].getsockname()[1]
        task = asyncio.ensure_future(server.serve_forever())
        await asyncio.sleep(0.01)
        assert server.is_serving()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not server.is_serving()
        await server.wait_closed()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)

    run(loop, main())
    assert not loop.errors
