"""The Python servers of the `net` suite, run as a script in their own
process: an echo server in one of three styles, or a small HTTP/1.1 server,
on asyncio's loop, uvloop or piston, using only public asyncio APIs.

    python _net_server.py LOOP STYLE (--tcp HOST:PORT | --unix PATH)

LOOP is asyncio, uvloop or piston; STYLE is protocol, buffered, streams or
http.  Once listening it prints "READY <port>" (0 for a Unix socket) on
stdout; it exits when its stdin reaches end of file (the benchmark closed
it, or died) or on SIGTERM.
"""
import argparse
import asyncio
import os
import sys
import threading

# The largest read asyncio's transports make; the buffered server offers a
# buffer this big so no loop is held back by a small one.
BUF_SIZE = 256 * 1024


class EchoProtocol(asyncio.Protocol):
    """data_received -> transport.write: the classic protocol echo."""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


class EchoBufferedProtocol(asyncio.BufferedProtocol):
    """The loop reads into our buffer; we write a view of what it read."""

    def connection_made(self, transport):
        self.transport = transport
        self.buf = memoryview(bytearray(BUF_SIZE))

    def get_buffer(self, sizehint):
        return self.buf

    def buffer_updated(self, nbytes):
        self.transport.write(self.buf[:nbytes])
        if self.transport.get_write_buffer_size():
            # The transport kept part of the view (a loop may queue it
            # without copying): the next read must not overwrite it.
            self.buf = memoryview(bytearray(BUF_SIZE))


async def echo_stream(reader, writer):
    """start_server's callback: read, write, drain until end of file."""
    try:
        while True:
            data = await reader.read(BUF_SIZE)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


RESPONSE = (b"HTTP/1.1 200 OK\r\n"
            b"Content-Type: text/plain\r\n"
            b"Content-Length: 13\r\n"
            b"\r\n"
            b"Hello, world!")
BAD_REQUEST = (b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
               b"Connection: close\r\n\r\n")


class HttpProtocol(asyncio.Protocol):
    """A small HTTP/1.1 server at the protocol level: parses the request
    line and headers of each (possibly pipelined) request and answers a
    fixed response, keeping the connection alive unless asked not to."""

    def connection_made(self, transport):
        self.transport = transport
        self.pending = b""

    def data_received(self, data):
        buf = self.pending + data if self.pending else data
        out = []
        start = 0
        keep = True
        while True:
            end = buf.find(b"\r\n\r\n", start)
            if end < 0:
                break
            keep = self.parse(buf[start:end])
            start = end + 4
            if keep is None:
                out.append(BAD_REQUEST)
                break
            out.append(RESPONSE)
            if not keep:
                break
        self.pending = buf[start:]
        if out:
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])
        if not keep:
            self.transport.close()

    @staticmethod
    def parse(head):
        """True to keep the connection, False to close it after the
        response, None for a malformed request.  Bodies are not
        supported: the benchmark sends GETs."""
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return None
        keep = parts[2] == b"HTTP/1.1"
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                return None
            name = name.strip().lower()
            if name == b"connection":
                value = value.strip().lower()
                keep = value != b"close" and (keep or value == b"keep-alive")
            elif name in (b"content-length", b"transfer-encoding"):
                if value.strip() not in (b"0", b""):
                    return None
        return keep


def new_loop(name):
    if name == "asyncio":
        return asyncio.new_event_loop()
    if name == "uvloop":
        import uvloop
        return uvloop.new_event_loop()
    if name == "piston":
        import piston
        return piston.new_event_loop()
    raise SystemExit(f"unknown loop {name!r}")


async def serve(style, tcp, unix):
    if style == "streams":
        if unix:
            return await asyncio.start_unix_server(echo_stream, unix)
        host, port = tcp.rsplit(":", 1)
        return await asyncio.start_server(echo_stream, host, int(port))
    factory = {"protocol": EchoProtocol, "buffered": EchoBufferedProtocol,
               "http": HttpProtocol}[style]
    loop = asyncio.get_running_loop()
    if unix:
        return await loop.create_unix_server(factory, unix)
    host, port = tcp.rsplit(":", 1)
    return await loop.create_server(factory, host, int(port))


def _exit_on_stdin_eof():
    # Blocked in read(2) without the GIL: costs the loop nothing.
    try:
        while os.read(0, 4096):
            pass
    finally:
        os._exit(0)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("loop", choices=["asyncio", "uvloop", "piston"])
    p.add_argument("style",
                   choices=["protocol", "buffered", "streams", "http"])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--tcp", metavar="HOST:PORT")
    where.add_argument("--unix", metavar="PATH")
    args = p.parse_args()

    loop = new_loop(args.loop)
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(serve(args.style, args.tcp, args.unix))
    port = 0 if args.unix else server.sockets[0].getsockname()[1]
    threading.Thread(target=_exit_on_stdin_eof, daemon=True).start()
    sys.stdout.write(f"READY {port}\n")
    sys.stdout.flush()
    loop.run_forever()


if __name__ == "__main__":
    main()
