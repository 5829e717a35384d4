"""``otel_backpressure.testing``'s loopback server: it serves, and it stops."""

from __future__ import annotations

import socket

import httpx

from otel_backpressure._shared import Receive, Scope, Send
from otel_backpressure.testing import LoopbackServer


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    body = scope["path"].encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def test_loopback_server_serves_its_app_until_it_exits() -> None:
    with LoopbackServer(hello) as server:
        assert server.port > 0
        assert server.url == f"http://127.0.0.1:{server.port}"
        assert httpx.get(server.url + "/ping").text == "/ping"
        assert "running=True" in repr(server)
    assert "running=False" in repr(server)
    with socket.socket() as probe:  # nothing listens on its port any more
        assert probe.connect_ex(("127.0.0.1", server.port)) != 0
