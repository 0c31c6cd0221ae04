"""Restart recovery, resume after a dropped connection, idempotent retries."""

import dataclasses

import trio

from bidwar.auction_service import AuctionServiceConfig
from bidwar.client import BidderClient, ClientConfig
from tests.helpers import (
    HOST_KEY,
    open_lot,
    raw_client,
    running_server,
    server_config,
)


def host_opens_lot(host, seconds=60, **extra):
    return open_lot(host, "Vase", "10", seconds, **extra)


async def test_a_restart_rebuilds_the_lot_paused_with_its_time_left(
    tmp_path, server_ssl_context, client_ssl_context, net_clock
):
    config = server_config(tmp_path)
    async with running_server(config, server_ssl_context) as server:
        port = server.auction_port
        async with (
            raw_client(port, client_ssl_context, "host") as host,
            raw_client(port, client_ssl_context, "ann") as ann,
        ):
            await host_opens_lot(host, seconds=60)
            await trio.sleep(20)
            assert (await ann.request("bid", "a1", amount="15"))["type"] == "accepted"
            before = (await ann.request("status", "s1"))["result"]

    async with (
        running_server(config, server_ssl_context) as server,
        raw_client(server.auction_port, client_ssl_context, "bob") as bob,
    ):
        after = await bob.event("snapshot")

    lot = after["lot"]
    assert lot["state"] == "paused"
    assert (lot["price"], lot["leader"], lot["bid_count"]) == ("15.00", "ann", 1)
    assert lot["remaining_ms"] == 40_000
    assert after["host"] is None
    assert after["seq"] == before["seq"] + 2  # lot_paused and host_changed


async def test_a_recovered_lot_runs_again_when_the_host_resumes_it(
    tmp_path, server_ssl_context, client_ssl_context, net_clock
):
    config = server_config(tmp_path)
    async with (
        running_server(config, server_ssl_context) as server,
        raw_client(server.auction_port, client_ssl_context, "host") as host,
    ):
        await host_opens_lot(host, seconds=30)

    async with running_server(config, server_ssl_context) as server:
        port = server.auction_port
        async with (
            raw_client(port, client_ssl_context, "host") as host,
            raw_client(port, client_ssl_context, "ann") as ann,
        ):
            paused = await ann.request("bid", "a1", amount="10")
            assert paused["reason"] == "lot_paused"

            await host.request("host_request", "h3", key=HOST_KEY)
            assert (await host.request("resume", "h4"))["type"] == "accepted"
            assert (await ann.request("bid", "a2", amount="10"))["type"] == "accepted"
            closed = await ann.event("lot_closed")
            assert (closed["winner"], closed["price"]) == ("ann", "10.00")


async def test_a_resumed_session_receives_the_events_it_missed_in_order(
    tmp_path, server_ssl_context, client_ssl_context, net_clock
):
    async with running_server(server_config(tmp_path), server_ssl_context) as server:
        port = server.auction_port
        async with raw_client(port, client_ssl_context, "host") as host:
            await host_opens_lot(host)
            async with raw_client(port, client_ssl_context, "ann") as ann:
                session = ann.welcome["result"]["session"]
                snapshot = await ann.event("snapshot")
                last_seq = snapshot["seq"]

            for number in range(3):
                await host.request("message", f"m{number}", text=f"while away {number}")

            async with raw_client(
                port, client_ssl_context, "ann", session=session, last_seq=last_seq
            ) as ann:
                assert ann.welcome["result"]["resumed"] is True
                missed = [await ann.event("chat") for _ in range(3)]

    assert [m["text"] for m in missed] == [f"while away {n}" for n in range(3)]
    assert [m["seq"] for m in missed] == [last_seq + 1, last_seq + 2, last_seq + 3]
    assert not any(f["type"] == "snapshot" for f in ann.frames)


async def test_a_resume_from_too_long_ago_gets_a_snapshot(
    tmp_path, server_ssl_context, client_ssl_context, net_clock
):
    async with running_server(server_config(tmp_path), server_ssl_context) as server:
        port = server.auction_port
        async with raw_client(port, client_ssl_context, "ann") as ann:
            session = ann.welcome["result"]["session"]
        async with raw_client(
            port, client_ssl_context, "ann", session=session, last_seq=999
        ) as ann:
            snapshot = await ann.event("snapshot")
            assert snapshot["seq"] == 0


async def test_a_retried_bid_id_returns_the_first_outcome_and_bids_once(
    tmp_path, server_ssl_context, client_ssl_context, net_clock
):
    async with running_server(server_config(tmp_path), server_ssl_context) as server:
        port = server.auction_port
        async with (
            raw_client(port, client_ssl_context, "host") as host,
            raw_client(port, client_ssl_context, "ann") as ann,
        ):
            await host_opens_lot(host)
            first = await ann.request("bid", "same-id", amount="10")
            again = await ann.request("bid", "same-id", amount="10")
            status = (await ann.request("status", "s"))["result"]

    assert first == again
    assert status["lot"]["bid_count"] == 1


async def test_a_retried_bid_after_a_restart_is_answered_from_the_journal(
    tmp_path, server_ssl_context, client_ssl_context, net_clock
):
    config = server_config(tmp_path)
    async with running_server(config, server_ssl_context) as server:
        port = server.auction_port
        async with (
            raw_client(port, client_ssl_context, "host") as host,
            raw_client(port, client_ssl_context, "ann") as ann,
        ):
            await host_opens_lot(host)
            first = await ann.request("bid", "b-1", amount="10")
            session = ann.welcome["result"]["session"]

    async with (
        running_server(config, server_ssl_context) as server,
        raw_client(
            server.auction_port, client_ssl_context, "ann", session=session
        ) as ann,
    ):
        again = await ann.request("bid", "b-1", amount="10")
        status = (await ann.request("status", "s"))["result"]

    assert again == first
    assert status["lot"]["bid_count"] == 1


async def test_the_client_reconnects_through_a_restart_and_resends_its_request(
    tmp_path, server_ssl_context, client_ssl_context, net_clock
):
    config = server_config(tmp_path)
    seen: list[dict] = []
    async with running_server(config, server_ssl_context) as server:
        port = server.auction_port
        async with raw_client(port, client_ssl_context, "host") as host:
            await host_opens_lot(host)
    # The same port again, so the client finds the restarted server.
    config = dataclasses.replace(config, auction=AuctionServiceConfig(port=port))

    client = BidderClient(
        ClientConfig(
            url=f"wss://localhost:{port}/", name="ann", ssl_context=client_ssl_context
        ),
        on_frame=seen.append,
    )
    async with trio.open_nursery() as nursery:
        async with running_server(config, server_ssl_context):
            await nursery.start(client.run)
            first_session = client.session

        # The server is down: the request waits, and is sent on reconnect.
        request_done = trio.Event()
        replies: list[dict] = []

        async def bid() -> None:
            replies.append(await client.request("message", text="hello again"))
            request_done.set()

        nursery.start_soon(bid)
        async with running_server(config, server_ssl_context):
            await request_done.wait()
            await client.close()

    assert replies[0]["type"] == "accepted"
    assert client.session == first_session
    chats = [f for f in seen if f.get("type") == "chat"]
    assert [c["text"] for c in chats] == ["hello again"]


async def test_a_retried_message_after_a_restart_is_not_posted_twice(
    tmp_path, server_ssl_context, client_ssl_context, net_clock
):
    config = server_config(tmp_path)
    async with (
        running_server(config, server_ssl_context) as server,
        raw_client(server.auction_port, client_ssl_context, "ann") as ann,
    ):
        first = await ann.request("message", "m-1", text="only once")
        session = ann.welcome["result"]["session"]

    async with (
        running_server(config, server_ssl_context) as server,
        raw_client(
            server.auction_port, client_ssl_context, "ann", session=session
        ) as ann,
    ):
        again = await ann.request("message", "m-1", text="only once")
        status = (await ann.request("status", "s"))["result"]

    assert again == first
    assert [c["text"] for c in status["chat"]] == ["only once"]
