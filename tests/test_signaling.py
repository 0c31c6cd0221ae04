"""The signaling service over real TLS sockets on 127.0.0.1.

Every test waits for messages, never for time: ``fail_after`` only turns a
hang into a failure. "Nothing else changed" is checked by making the service
send a known next message and asserting it is the one that arrives.
"""

import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest
import trio
import trio_websocket

from bidwar.signaling import SignalingConfig, serve_signaling

HOST_KEY = "sesame"
SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
GUARD_S = 10


@dataclass
class Service:
    port: int
    client_ssl: ssl.SSLContext
    counts: list[int] = field(default_factory=list)

    @asynccontextmanager
    async def connect(self) -> AsyncIterator["Client"]:
        url = f"wss://127.0.0.1:{self.port}/"
        async with trio_websocket.open_websocket_url(
            url, ssl_context=self.client_ssl
        ) as websocket:
            yield Client(websocket)

    @asynccontextmanager
    async def publisher(self, room: str | None = None) -> AsyncIterator["Client"]:
        async with self.connect() as client:
            joined = await client.request(_join("publisher", room, host_key=HOST_KEY))
            assert joined["type"] == "joined", joined
            yield client

    @asynccontextmanager
    async def viewer(self, room: str | None = None) -> AsyncIterator["Client"]:
        async with self.connect() as client:
            joined = await client.request(_join("viewer", room))
            assert joined["type"] == "joined", joined
            client.id = joined["id"]
            yield client


@dataclass
class Client:
    websocket: trio_websocket.WebSocketConnection
    id: str = ""

    async def send(self, message: dict[str, Any]) -> None:
        await self.websocket.send_message(json.dumps(message))

    async def receive(self) -> dict[str, Any]:
        return json.loads(await self.websocket.get_message())

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        await self.send(message)
        return await self.receive()


def _join(role: str, room: str | None = None, **extra: Any) -> dict[str, Any]:
    message = {"type": "join", "role": role, **extra}
    if room is not None:
        message["room"] = room
    return message


@asynccontextmanager
async def running_service(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext, **options: Any
) -> AsyncIterator[Service]:
    config = SignalingConfig(port=0, **options)
    counts: list[int] = []
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            partial(
                serve_signaling,
                config,
                ssl_context=server_ssl,
                host_key=HOST_KEY,
                on_viewers_changed=counts.append,
            )
        )
        with trio.fail_after(GUARD_S):
            yield Service(port, client_ssl, counts)
        nursery.cancel_scope.cancel()


@pytest.fixture
async def service(
    server_ssl_context: ssl.SSLContext, client_ssl_context: ssl.SSLContext
) -> AsyncIterator[Service]:
    async with running_service(server_ssl_context, client_ssl_context) as running:
        yield running


async def _expect_error(client: Client, message: Any, code: str) -> dict[str, Any]:
    if isinstance(message, dict):
        await client.send(message)
    else:
        await client.websocket.send_message(message)
    reply = await client.receive()
    assert reply["type"] == "error", reply
    assert reply["code"] == code, reply
    assert reply["message"]
    return reply


# -- relaying -----------------------------------------------------------------


async def test_offer_goes_to_the_viewer_and_answer_back_to_the_publisher(
    service: Service,
) -> None:
    async with service.publisher() as host, service.viewer() as viewer:
        assert await host.receive() == {"type": "viewer_joined", "viewer": viewer.id}

        await host.send({"type": "offer", "viewer": viewer.id, "sdp": SDP})
        assert await viewer.receive() == {"type": "offer", "sdp": SDP}

        await viewer.send({"type": "answer", "sdp": SDP + "a=x\r\n"})
        answer = await host.receive()
        assert answer == {"type": "answer", "viewer": viewer.id, "sdp": SDP + "a=x\r\n"}


async def test_joined_reply_says_whether_the_host_is_there(service: Service) -> None:
    async with service.connect() as early:
        joined = await early.request(_join("viewer"))
        assert joined["host_present"] is False
        assert joined["room"] == "main"

        async with service.publisher(), service.connect() as late:
            joined = await late.request(_join("viewer"))
            assert joined["host_present"] is True


async def test_viewer_that_joined_before_the_host_is_offered_when_it_arrives(
    service: Service,
) -> None:
    async with (
        service.viewer() as first,
        service.viewer() as second,
        service.publisher() as host,
    ):
        assert await first.receive() == {"type": "host_joined"}
        assert await second.receive() == {"type": "host_joined"}
        announced = {(await host.receive())["viewer"] for _ in range(2)}
        assert announced == {first.id, second.id}

        await host.send({"type": "offer", "viewer": second.id, "sdp": SDP})
        assert await second.receive() == {"type": "offer", "sdp": SDP}


async def test_host_leaving_tells_viewers_who_wait_for_the_next_host(
    service: Service,
) -> None:
    async with service.viewer() as viewer:
        async with service.publisher() as host:
            assert await viewer.receive() == {"type": "host_joined"}
            await host.receive()
            await host.send({"type": "offer", "viewer": viewer.id, "sdp": SDP})
            await viewer.receive()
        assert await viewer.receive() == {"type": "host_left"}

        # The offer died with the host, so its answer is refused.
        await _expect_error(viewer, {"type": "answer", "sdp": SDP}, "no_offer")

        async with service.publisher() as next_host:
            assert await viewer.receive() == {"type": "host_joined"}
            assert await next_host.receive() == {
                "type": "viewer_joined",
                "viewer": viewer.id,
            }


async def test_viewer_leaving_is_reported_to_the_publisher(service: Service) -> None:
    async with service.publisher() as host:
        async with service.viewer() as viewer:
            await host.receive()
        assert await host.receive() == {"type": "viewer_left", "viewer": viewer.id}


async def test_rooms_are_separate(service: Service) -> None:
    async with (
        service.publisher("blue") as blue_host,
        service.viewer("red") as red_viewer,
        service.viewer("blue") as blue_viewer,
    ):
        # Only the blue viewer is announced to the blue host ...
        joined = await blue_host.receive()
        assert joined == {"type": "viewer_joined", "viewer": blue_viewer.id}

        # ... which cannot reach into the red room.
        offer = {"type": "offer", "viewer": red_viewer.id, "sdp": SDP}
        await _expect_error(blue_host, offer, "unknown_viewer")


# -- bad input ----------------------------------------------------------------


async def test_malformed_json_is_refused_and_the_connection_stays_usable(
    service: Service,
) -> None:
    async with service.connect() as client:
        await _expect_error(client, "{not json", "bad_json")
        await _expect_error(client, "[1, 2]", "bad_json")
        await _expect_error(client, b"\x00binary", "bad_json")
        await _expect_error(client, {"no": "type"}, "bad_message")

        joined = await client.request(_join("viewer"))
        assert joined["type"] == "joined"


async def test_oversized_message_closes_the_connection_with_1009(
    server_ssl_context: ssl.SSLContext, client_ssl_context: ssl.SSLContext
) -> None:
    async with (
        running_service(
            server_ssl_context, client_ssl_context, max_message_bytes=1024
        ) as service,
        service.viewer() as bystander,
        service.connect() as client,
    ):
        await client.send({"type": "join", "role": "viewer", "pad": "x" * 2000})
        with pytest.raises(trio_websocket.ConnectionClosed) as closed:
            await client.receive()
        assert closed.value.reason.code == 1009

        # The bystander is untouched: its next message is the one we cause.
        async with service.publisher():
            assert await bystander.receive() == {"type": "host_joined"}


async def test_oversized_sdp_is_refused_and_nothing_is_relayed(
    server_ssl_context: ssl.SSLContext, client_ssl_context: ssl.SSLContext
) -> None:
    async with (
        running_service(
            server_ssl_context, client_ssl_context, max_sdp_bytes=100
        ) as service,
        service.publisher() as host,
        service.viewer() as viewer,
    ):
        await host.receive()
        big = {"type": "offer", "viewer": viewer.id, "sdp": SDP + "a=" + "x" * 200}
        reply = await _expect_error(host, big, "sdp_too_large")
        assert reply["in_reply_to"] == "offer"

        await host.send({"type": "offer", "viewer": viewer.id, "sdp": SDP})
        assert await viewer.receive() == {"type": "offer", "sdp": SDP}


async def test_unknown_type_is_refused(service: Service) -> None:
    async with service.viewer() as viewer:
        reply = await _expect_error(viewer, {"type": "dance"}, "unknown_type")
        assert reply["in_reply_to"] == "dance"


async def test_second_publisher_is_refused_and_the_first_keeps_the_room(
    service: Service,
) -> None:
    async with service.publisher() as host, service.connect() as intruder:
        await _expect_error(
            intruder, _join("publisher", host_key=HOST_KEY), "publisher_exists"
        )

        async with service.viewer() as viewer:
            assert await host.receive() == {
                "type": "viewer_joined",
                "viewer": viewer.id,
            }


async def test_viewer_sending_publisher_messages_is_refused(service: Service) -> None:
    async with service.publisher() as host, service.viewer() as viewer:
        await host.receive()
        await _expect_error(
            viewer, {"type": "offer", "viewer": viewer.id, "sdp": SDP}, "not_publisher"
        )
        await _expect_error(host, {"type": "answer", "sdp": SDP}, "not_viewer")

        # The real offer still goes through.
        await host.send({"type": "offer", "viewer": viewer.id, "sdp": SDP})
        assert await viewer.receive() == {"type": "offer", "sdp": SDP}


async def test_wrong_host_key_is_refused_and_the_connection_may_retry(
    service: Service,
) -> None:
    async with service.viewer() as viewer, service.connect() as client:
        await _expect_error(
            client, _join("publisher", host_key="guess"), "bad_host_key"
        )
        await _expect_error(client, _join("publisher"), "bad_host_key")

        joined = await client.request(_join("publisher", host_key=HOST_KEY))
        assert joined["type"] == "joined"
        # The viewer hears of exactly one host: the one with the right key.
        assert await viewer.receive() == {"type": "host_joined"}


async def test_messages_out_of_turn_are_refused(service: Service) -> None:
    async with service.connect() as client:
        await _expect_error(client, {"type": "answer", "sdp": SDP}, "not_joined")
        await _expect_error(client, _join("emperor"), "bad_message")
        await _expect_error(client, _join("viewer", room="no spaces"), "bad_room")
        await client.request(_join("viewer"))
        await _expect_error(client, _join("viewer"), "already_joined")
        await _expect_error(client, {"type": "answer", "sdp": SDP}, "no_offer")
        await _expect_error(client, {"type": "answer", "sdp": "hello"}, "bad_message")


async def test_server_full_refuses_more_viewers(
    server_ssl_context: ssl.SSLContext, client_ssl_context: ssl.SSLContext
) -> None:
    async with running_service(
        server_ssl_context, client_ssl_context, max_viewers=1
    ) as service:
        async with service.viewer(), service.connect() as second:
            await _expect_error(second, _join("viewer"), "server_full")
        async with service.viewer():
            pass


# -- viewer count and shutdown ------------------------------------------------


async def test_viewer_count_callback_follows_joins_and_leaves(service: Service) -> None:
    async with service.publisher() as host:
        async with service.viewer() as first:
            await host.receive()
            async with service.viewer():
                await host.receive()
                assert service.counts == [1, 2]

            # The count changes in the same step that tells the publisher.
            assert (await host.receive())["type"] == "viewer_left"
            assert service.counts == [1, 2, 1]
        assert await host.receive() == {"type": "viewer_left", "viewer": first.id}
        assert service.counts == [1, 2, 1, 0]


async def test_cancelling_the_service_closes_every_connection_with_1001(
    server_ssl_context: ssl.SSLContext, client_ssl_context: ssl.SSLContext
) -> None:
    with trio.fail_after(GUARD_S):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(
                partial(
                    serve_signaling,
                    SignalingConfig(port=0),
                    ssl_context=server_ssl_context,
                    host_key=HOST_KEY,
                )
            )
            service = Service(port, client_ssl_context)
            async with service.publisher() as host, service.viewer() as viewer:
                await host.receive()
                nursery.cancel_scope.cancel()
                for client in (host, viewer):
                    with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                        await client.receive()
                    assert closed.value.reason.code == 1001
