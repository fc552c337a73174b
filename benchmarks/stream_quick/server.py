"""Echo server for run.py: server.py asyncio|uvloop|piston PORT proto|bproto|streams."""
import asyncio, sys
kind, port, proto_kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
class Echo(asyncio.Protocol):
    def connection_made(self, t): self.t = t
    def data_received(self, d): self.t.write(d)
class BEcho(asyncio.BufferedProtocol):
    def connection_made(self, t):
        self.t = t; self.buf = bytearray(256*1024); self.mv = memoryview(self.buf)
    def get_buffer(self, n): return self.mv
    def buffer_updated(self, n): self.t.write(self.mv[:n])
async def handle(r, w):
    while True:
        d = await r.read(65536)
        if not d: break
        w.write(d)
async def main():
    loop = asyncio.get_running_loop()
    if proto_kind == 'streams':
        srv = await asyncio.start_server(handle, '127.0.0.1', port)
    else:
        srv = await loop.create_server(Echo if proto_kind == 'proto' else BEcho, '127.0.0.1', port)
    print("READY", flush=True)
    await asyncio.sleep(3600)
if kind == 'uvloop':
    import uvloop; uvloop.run(main())
elif kind == 'piston':
    import piston; piston.run(main())
else:
    asyncio.run(main())
