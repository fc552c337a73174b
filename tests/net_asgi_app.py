"""The Starlette app that tests/test_net_uvicorn.py serves with uvicorn in
a subprocess: an echo with a checksum, a streamed random body, the name of
the loop serving it, and a websocket echo."""
import asyncio
import hashlib
import random

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, Response, \
    StreamingResponse
from starlette.routing import Route, WebSocketRoute


async def echo(request):
    body = await request.body()
    return Response(body, headers={
        "X-SHA256": hashlib.sha256(body).hexdigest()})


async def blob(request):
    seed, n = int(request.query_params["seed"]), \
        int(request.query_params["n"])
    data = random.Random(seed).randbytes(n)

    async def chunks():
        rng = random.Random(seed + 1)
        pos = 0
        while pos < n:
            step = rng.randint(1, 256 << 10)
            yield data[pos:pos + step]
            pos += step
    return StreamingResponse(chunks())


async def loop_type(request):
    cls = type(asyncio.get_running_loop())
    return PlainTextResponse(f"{cls.__module__}.{cls.__qualname__}")


async def ws_echo(websocket):
    await websocket.accept()
    while True:
        msg = await websocket.receive()
        if msg["type"] == "websocket.disconnect":
            return
        if msg.get("text") == "close-me":
            await websocket.close(code=4001, reason="asked to")
            return
        if msg.get("bytes") is not None:
            await websocket.send_bytes(msg["bytes"])
        else:
            await websocket.send_text(msg["text"])


app = Starlette(routes=[
    Route("/echo", echo, methods=["POST"]),
    Route("/blob", blob),
    Route("/loop", loop_type),
    WebSocketRoute("/ws", ws_echo),
])
