"""A name is one bidder's: look-alikes by case or width are refused."""

import pytest

from bidwar.protocol import name_key
from tests.helpers import raw_client, running_server, server_config


@pytest.mark.parametrize("other", ["ANN", "Ann", "ａｎｎ"])
def test_case_and_width_variants_share_a_key(other):
    assert name_key(other) == name_key("ann")


async def test_a_look_alike_of_a_connected_name_is_refused(
    tmp_path, server_ssl_context, client_ssl_context, net_clock
):
    async with running_server(server_config(tmp_path), server_ssl_context) as server:
        port = server.auction_port
        async with (
            raw_client(port, client_ssl_context, "ann"),
            raw_client(port, client_ssl_context) as impostor,
        ):
            reply = await impostor.request("hello", "h", name="ANN")
            assert reply["reason"] == "name_taken"

        # Once ann has left without bidding or chatting, the name is free.
        async with raw_client(port, client_ssl_context) as newcomer:
            reply = await newcomer.request("hello", "h", name="ANN")
            assert reply["type"] == "accepted"


async def test_a_look_alike_of_a_name_that_chatted_is_refused_after_a_restart(
    tmp_path, server_ssl_context, client_ssl_context, net_clock
):
    config = server_config(tmp_path)
    async with (
        running_server(config, server_ssl_context) as server,
        raw_client(server.auction_port, client_ssl_context, "ann") as ann,
    ):
        await ann.request("message", "m", text="hello")

    async with (
        running_server(config, server_ssl_context) as server,
        raw_client(server.auction_port, client_ssl_context) as impostor,
    ):
        reply = await impostor.request("hello", "h", name="Ann")
        assert reply["reason"] == "name_taken"
