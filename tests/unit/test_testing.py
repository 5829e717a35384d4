"""``otel_backpressure.testing``'s loopback server: it serves, and it stops; and what the
module says when the SDK or uvicorn is not installed."""

from __future__ import annotations

import importlib
import socket
import sys

import httpx
import pytest

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


# A ``None`` entry in sys.modules makes ``import name`` raise ModuleNotFoundError,
# as when the package is not installed.


def test_without_the_sdk_importing_the_module_names_the_otlp_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delitem(sys.modules, "otel_backpressure.testing")
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.metrics", None)
    with pytest.raises(ModuleNotFoundError) as raised:
        importlib.import_module("otel_backpressure.testing")
    assert str(raised.value) == (
        "otel_backpressure.testing needs the OpenTelemetry SDK: install "
        "opentelemetry-instrumentation-backpressure[otlp]"
    )
    assert raised.value.name == "opentelemetry.sdk.metrics"


def test_without_uvicorn_a_loopback_server_names_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    with pytest.raises(ModuleNotFoundError) as raised:
        LoopbackServer(hello)
    assert str(raised.value) == (
        "LoopbackServer needs uvicorn: install uvicorn, or "
        "opentelemetry-instrumentation-backpressure[demo]"
    )
    assert raised.value.name == "uvicorn"
