"""Whatever goes wrong with one connection stays with that connection."""

import logging

import pytest
from trio_websocket import CloseReason, ConnectionClosed

from bidwar.auction_service import AuctionServiceConfig, serve_connection


class FailingRequest:
    """A WebSocket upgrade whose accept() fails the way a vanished peer does."""

    def __init__(self, error: BaseException) -> None:
        self._error = error

    async def accept(self) -> None:
        raise self._error


@pytest.mark.parametrize(
    "error",
    [
        ConnectionClosed(CloseReason(1006, None)),  # reset during the upgrade
        OSError(107, "Transport endpoint is not connected"),
    ],
)
async def test_a_peer_that_vanishes_mid_handshake_is_only_logged(error, caplog):
    with caplog.at_level(logging.INFO, logger="bidwar.auction"):
        await serve_connection(FailingRequest(error), None, AuctionServiceConfig())  # type: ignore[arg-type]

    assert "dropped during its handshake" in caplog.text


async def test_a_bug_in_one_connection_is_logged_not_raised(caplog):
    await serve_connection(
        FailingRequest(RuntimeError("a bug")),
        None,
        AuctionServiceConfig(),  # type: ignore[arg-type]
    )

    assert [record.levelname for record in caplog.records] == ["ERROR"]
