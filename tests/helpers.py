"""Test helpers: an in-process server on loopback and a raw protocol client."""

import contextlib
import dataclasses
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from bidwar.auction_service import AuctionServiceConfig
from bidwar.server import RunningServer, ServerConfig, run_server
from bidwar.signaling import SignalingConfig

HOST_KEY = "test-host-key"


def server_config(data_dir: Path, **auction_options: Any) -> ServerConfig:
    return ServerConfig(
        data_dir=data_dir,
        host_key=HOST_KEY,
        auction=AuctionServiceConfig(port=0, **auction_options),
        signaling=SignalingConfig(port=0),
    )


@contextlib.asynccontextmanager
async def running_server(
    config: ServerConfig, server_ssl_context: ssl.SSLContext
) -> AsyncIterator[RunningServer]:
    """Run the whole server in this trio run, with the test CA's certificate."""
    config = dataclasses.replace(config, ssl_context=server_ssl_context)
    async with trio.open_nursery() as nursery:
        running = await nursery.start(run_server, config)
        yield running
        nursery.cancel_scope.cancel()


class RawClient:
    """Speaks the protocol frame by frame, for exact assertions."""

    def __init__(self, websocket: WebSocketConnection) -> None:
        self.websocket = websocket
        self.frames: list[dict[str, Any]] = []  # everything received, in order
        self._unclaimed: list[dict[str, Any]] = []  # not yet returned by a wait
        self._batched: list[dict[str, Any]] = []  # read, not yet received

    async def send(self, frame: dict[str, Any] | str) -> None:
        text = frame if isinstance(frame, str) else json.dumps(frame)
        await self.websocket.send_message(text)

    async def receive(self) -> dict[str, Any]:
        if not self._batched:
            # One message may carry several frames, one JSON object per line.
            message = await self.websocket.get_message()
            self._batched.extend(json.loads(line) for line in message.splitlines())
        frame = self._batched.pop(0)
        self.frames.append(frame)
        return frame

    async def receive_until(self, predicate: Any) -> dict[str, Any]:
        """Return the first unclaimed frame matching ``predicate``, reading on."""
        for index, frame in enumerate(self._unclaimed):
            if predicate(frame):
                return self._unclaimed.pop(index)
        while True:
            frame = await self.receive()
            if predicate(frame):
                return frame
            self._unclaimed.append(frame)

    async def reply_to(self, request_id: str) -> dict[str, Any]:
        return await self.receive_until(
            lambda f: (
                f.get("type") in ("accepted", "rejected") and f.get("id") == request_id
            )
        )

    async def request(
        self, kind: str, request_id: str, **fields: Any
    ) -> dict[str, Any]:
        await self.send({"type": kind, "id": request_id, **fields})
        return await self.reply_to(request_id)

    async def event(self, kind: str) -> dict[str, Any]:
        return await self.receive_until(lambda f: f.get("type") == kind)


@contextlib.asynccontextmanager
async def raw_client(
    port: int,
    client_ssl_context: ssl.SSLContext,
    name: str | None = None,
    **hello: Any,
) -> AsyncIterator[RawClient]:
    """Connect (and say hello as ``name`` unless it is None)."""
    url = f"wss://localhost:{port}/"
    async with open_websocket_url(url, ssl_context=client_ssl_context) as websocket:
        client = RawClient(websocket)
        if name is not None:
            reply = await client.request("hello", "hello", name=name, **hello)
            assert reply["type"] == "accepted", reply
            client.welcome = reply  # type: ignore[attr-defined]
        yield client


async def open_lot(
    host: RawClient,
    title: str = "Guitar",
    price: str = "100",
    seconds: int = 60,
    **extra: Any,
) -> dict[str, Any]:
    """Make ``host`` the host and open a lot; return the lot_opened event."""
    reply = await host.request("host_request", "h1", key=HOST_KEY)
    assert reply["type"] == "accepted", reply
    reply = await host.request(
        "open", "h2", title=title, starting_price=price, duration_s=seconds, **extra
    )
    assert reply["type"] == "accepted", reply
    return await host.event("lot_opened")
