"""The auction end to end: server and several bidders over real TLS sockets."""

import json

import trio
from trio_websocket import open_websocket_url

from tests.helpers import open_lot, raw_client, running_server, server_config


async def test_bidders_outbid_each_other_and_the_lot_sells_to_the_highest(
    tmp_path, server_ssl_context, client_ssl_context, net_clock
):
    async with running_server(server_config(tmp_path), server_ssl_context) as server:
        port = server.auction_port
        async with (
            raw_client(port, client_ssl_context, "host") as host,
            raw_client(port, client_ssl_context, "ann") as ann,
            raw_client(port, client_ssl_context, "bob") as bob,
        ):
            opened = await open_lot(host, seconds=30, increment="5")
            lot = opened["lot"]

            first = await ann.request("bid", "a1", amount="100", lot=lot)
            assert first["type"] == "accepted"
            assert first["result"]["amount"] == "100.00"

            too_low = await bob.request("bid", "b1", amount="104.99")
            assert too_low["reason"] == "bid_too_low"

            raise_ = await bob.request("bid", "b2", amount="105")
            assert raise_["type"] == "accepted"
            outbid = await ann.event("outbid")
            assert outbid == {
                "type": "outbid",
                "lot": lot,
                "amount": "105.00",
                "by": "bob",
            }

            closed = await ann.event("lot_closed")
            assert closed["outcome"] == "sold"
            assert (closed["winner"], closed["price"]) == ("bob", "105.00")


async def test_every_bidder_sees_the_same_events_in_sequence(
    tmp_path, server_ssl_context, client_ssl_context, net_clock
):
    async with running_server(server_config(tmp_path), server_ssl_context) as server:
        port = server.auction_port
        async with (
            raw_client(port, client_ssl_context, "host") as host,
            raw_client(port, client_ssl_context, "ann") as ann,
            raw_client(port, client_ssl_context, "bob") as bob,
        ):
            await open_lot(host, seconds=5)
            for index, (client, amount) in enumerate(
                [(ann, "100"), (bob, "101"), (ann, "102"), (bob, "103")]
            ):
                reply = await client.request("bid", f"x{index}", amount=amount)
                assert reply["type"] == "accepted", reply
            for client in (ann, bob, host):
                await client.event("lot_closed")

            sequences = [
                [
                    f["seq"]
                    for f in client.frames
                    if "seq" in f
                    and "type" in f
                    and f["type"] not in ("accepted", "rejected", "snapshot")
                ]
                for client in (ann, bob)
            ]
            assert sequences[0] == sequences[1]
            assert sequences[0] == list(range(sequences[0][0], sequences[0][-1] + 1))


async def test_a_bid_in_the_last_seconds_extends_the_lot(
    tmp_path, server_ssl_context, client_ssl_context, net_clock
):
    async with running_server(server_config(tmp_path), server_ssl_context) as server:
        port = server.auction_port
        async with (
            raw_client(port, client_ssl_context, "host") as host,
            raw_client(port, client_ssl_context, "ann") as ann,
        ):
            opened = await open_lot(host, seconds=20, extension_s=10)
            await trio.sleep(15)
            reply = await ann.request("bid", "a1", amount="100")
            assert reply["type"] == "accepted"
            extended = await ann.event("lot_extended")
            assert extended["ends_at_ms"] > opened["ends_at_ms"]

            closed = await ann.event("lot_closed")
            assert closed["winner"] == "ann"


async def test_a_joining_bidder_gets_a_snapshot_with_the_current_lot(
    tmp_path, server_ssl_context, client_ssl_context, net_clock
):
    async with running_server(server_config(tmp_path), server_ssl_context) as server:
        port = server.auction_port
        async with raw_client(port, client_ssl_context, "host") as host:
            await open_lot(host, title="Lamp", price="7.50")
            await host.request("message", "m1", text="welcome all")
            async with raw_client(port, client_ssl_context, "cat") as cat:
                snapshot = await cat.event("snapshot")
                assert snapshot["lot"]["title"] == "Lamp"
                assert snapshot["lot"]["starting_price"] == "7.50"
                assert snapshot["host"] == "host"
                assert [c["text"] for c in snapshot["chat"]] == ["welcome all"]
                assert snapshot["bidders"] == 2


async def test_bidders_are_told_how_many_are_watching_the_video(
    tmp_path, server_ssl_context, client_ssl_context, net_clock
):
    config = server_config(tmp_path)
    async with (
        running_server(config, server_ssl_context) as server,
        raw_client(server.auction_port, client_ssl_context, "ann") as ann,
    ):
        signaling = f"wss://localhost:{server.signaling_port}/"
        async with open_websocket_url(
            signaling, ssl_context=client_ssl_context
        ) as viewer:
            await viewer.send_message(json.dumps({"type": "join", "role": "viewer"}))
            assert json.loads(await viewer.get_message())["type"] == "joined"

            presence = await ann.receive_until(
                lambda f: f.get("type") == "presence" and f["viewers"] == 1
            )
            assert presence["bidders"] == 1

        await ann.receive_until(
            lambda f: f.get("type") == "presence" and f["viewers"] == 0
        )
