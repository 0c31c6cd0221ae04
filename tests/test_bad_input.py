"""Bad input over real TLS sockets: a clear refusal, and nothing else changes.

Every test runs the whole server in-process with a lot open, a host and a
bystander (``ann``) connected throughout.  A third client (``mallory``) sends
one kind of bad input.  Each test checks three things:

* mallory gets exactly the reply (or close code) docs/protocol.md promises;
* mallory's connection still works afterwards, unless closing it is the point;
* nobody else notices: ann saw no frame but presence counts, the auction's
  state (a status snapshot) is the same, and ann can still bid.

Invariant 7 of DESIGN.md: bad input from one client never harms another
client or the server.  No ERROR is logged for any of it.
"""

import contextlib
import dataclasses
import json
import logging
import ssl
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

from bidwar import money
from bidwar.ratelimit import Rate
from tests.helpers import HOST_KEY, RawClient, raw_client, running_server, server_config

# A lot long enough that no virtual-time jump in these tests ends it.
LOT_SECONDS = 3600
HELLO_TIMEOUT_S = 10.0
MAX_BAD_FRAMES = 20
MAX_MESSAGE_BYTES = 16 * 1024


@dataclasses.dataclass
class Scene:
    """A running server with an open lot, its host and a bystander."""

    port: int
    client_ssl_context: ssl.SSLContext
    host: RawClient
    ann: RawClient
    caplog: pytest.LogCaptureFixture
    _ids: Any = dataclasses.field(default_factory=lambda: iter(range(1, 10**6)))

    def next_id(self, prefix: str = "r") -> str:
        return f"{prefix}{next(self._ids)}"

    def connect(self, name: str | None = None, **hello: Any):
        return raw_client(self.port, self.client_ssl_context, name, **hello)

    async def checkpoint(self) -> "Checkpoint":
        """Ann's status: every frame sent to her before it has arrived."""
        reply = await self.ann.request("status", self.next_id("s"))
        assert reply["type"] == "accepted", reply
        return Checkpoint(reply["result"], len(self.ann.frames))

    async def assert_unharmed(
        self, before: "Checkpoint", bidders_change: int = 0
    ) -> None:
        """Ann saw nothing odd, the state is as it was, and ann can still bid."""
        after = await self.checkpoint()
        between = self.ann.frames[before.frames_seen : after.frames_seen - 1]
        assert [f for f in between if f.get("type") != "presence"] == []

        expected = dict(
            before.status, bidders=before.status["bidders"] + bidders_change
        )
        assert _stable(after.status) == _stable(expected)

        lot = after.status["lot"]
        amount = (
            lot["starting_price"]
            if lot["price"] is None
            else money.format_cents(
                money.parse_amount(lot["price"]) + money.parse_amount(lot["increment"])
            )
        )
        bid_id = self.next_id("ann-bid")
        reply = await self.ann.request("bid", bid_id, amount=amount)
        assert reply["type"] == "accepted", reply
        event = await self.ann.receive_until(
            lambda f: f.get("type") == "bid" and f.get("request_id") == bid_id
        )
        assert event["bidder"] == "ann"
        self.assert_no_errors_logged()

    def assert_no_errors_logged(self) -> None:
        errors = [r for r in self.caplog.records if r.levelno >= logging.ERROR]
        assert errors == [], [r.getMessage() for r in errors]


@dataclasses.dataclass
class Checkpoint:
    status: dict[str, Any]
    frames_seen: int


def _stable(status: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in status.items() if key != "server_time_ms"}


@contextlib.asynccontextmanager
async def open_scene(
    tmp_path, server_ssl_context, client_ssl_context, caplog, **auction_options
):
    caplog.set_level(logging.INFO)
    options = dict(
        # No keepalive pings: a ping that reaches a test client while it
        # closes makes trio-websocket raise LocalProtocolError in the client
        # (python-trio/trio-websocket#184), and the mock clock can jump to
        # one at any moment.
        ping_interval_s=LOT_SECONDS,
        hello_timeout_s=HELLO_TIMEOUT_S,
        max_bad_frames=MAX_BAD_FRAMES,
        max_message_bytes=MAX_MESSAGE_BYTES,
    )
    options.update(auction_options)
    async with running_server(
        server_config(tmp_path, **options), server_ssl_context
    ) as server:
        port = server.auction_port
        async with (
            raw_client(port, client_ssl_context, "host") as host,
            raw_client(port, client_ssl_context, "ann") as ann,
        ):
            claimed = await host.request("host_request", "h1", key=HOST_KEY)
            assert claimed["type"] == "accepted", claimed
            opened = await host.request(
                "open", "h2", title="Lamp", starting_price="10", duration_s=LOT_SECONDS
            )
            assert opened["type"] == "accepted", opened
            chat = await host.request("message", "h3", text="welcome")
            assert chat["type"] == "accepted", chat
            await ann.event("chat")
            yield Scene(port, client_ssl_context, host, ann, caplog)


@pytest.fixture
async def scene(tmp_path, server_ssl_context, client_ssl_context, caplog):
    """The usual scene.  Tests must also take ``net_clock``: pytest-trio only
    runs a test on a clock that the test itself asks for."""
    async with open_scene(
        tmp_path, server_ssl_context, client_ssl_context, caplog
    ) as opened:
        yield opened


# Limits so slow that no virtual-time jump while a burst is in flight (the
# mock clock may jump to a keepalive deadline, 20 s) refills a whole token.
SLOW = Rate(per_s=0.02, burst=5)


@pytest.fixture
async def rate_scene(tmp_path, server_ssl_context, client_ssl_context, caplog):
    async with open_scene(
        tmp_path,
        server_ssl_context,
        client_ssl_context,
        caplog,
        request_rate=Rate(per_s=0.02, burst=40),
        bid_rate=Rate(per_s=0.02, burst=20),
        chat_rate=SLOW,
    ) as opened:
        yield opened


def assert_rejected(reply: dict[str, Any], request_id: str | None, reason: str):
    assert reply["type"] == "rejected"
    assert reply["id"] == request_id
    assert reply["reason"] == reason
    assert isinstance(reply["message"], str) and reply["message"]
    assert set(reply) == {"type", "id", "reason", "message"}


async def assert_still_usable(client: RawClient, scene: Scene) -> None:
    reply = await client.request("status", scene.next_id("ok"))
    assert reply["type"] == "accepted", reply


async def wait_closed(client: RawClient) -> tuple[int, list[dict[str, Any]]]:
    """Read until the server closes; return the close code and the frames."""
    with trio.fail_after(30):
        try:
            while True:
                await client.receive()
        except ConnectionClosed as closed:
            return closed.reason.code, client.frames


# ------------------------------------------------------------ not a request


@pytest.mark.parametrize(
    "frame",
    [
        '{"type": "status", "id": "x"',
        "not json at all",
        "",
        '{"type": "status", "id": "x"} trailing',
        "[" * 100_00,
    ],
    ids=["truncated", "words", "empty", "trailing-garbage", "deeply-nested"],
)
async def test_malformed_json_is_invalid_request_without_id(net_clock, scene, frame):
    async with scene.connect("mallory") as mallory:
        before = await scene.checkpoint()
        await mallory.send(frame)
        assert_rejected(await mallory.reply_to(None), None, "invalid_request")
        await assert_still_usable(mallory, scene)
        await scene.assert_unharmed(before)


@pytest.mark.parametrize(
    "frame",
    ['[{"type": "status", "id": "x"}]', "42", '"status"', "null", "true"],
    ids=["array", "number", "string", "null", "bool"],
)
async def test_json_that_is_not_an_object_is_invalid_request(net_clock, scene, frame):
    async with scene.connect("mallory") as mallory:
        before = await scene.checkpoint()
        await mallory.send(frame)
        reply = await mallory.reply_to(None)
        assert_rejected(reply, None, "invalid_request")
        assert reply["message"] == "a request must be a JSON object"
        await assert_still_usable(mallory, scene)
        await scene.assert_unharmed(before)


async def test_binary_frame_is_invalid_request(net_clock, scene):
    async with scene.connect("mallory") as mallory:
        before = await scene.checkpoint()
        await mallory.websocket.send_message(b'{"type": "status", "id": "x"}')
        reply = await mallory.reply_to(None)
        assert_rejected(reply, None, "invalid_request")
        assert "binary" in reply["message"]
        await assert_still_usable(mallory, scene)
        await scene.assert_unharmed(before)


async def test_json_constants_nan_and_infinity_are_not_json(net_clock, scene):
    async with scene.connect("mallory") as mallory:
        before = await scene.checkpoint()
        for literal in ("NaN", "Infinity", "-Infinity"):
            await mallory.send(f'{{"type": "bid", "id": "n1", "amount": {literal}}}')
            assert_rejected(await mallory.reply_to(None), None, "invalid_request")
        await assert_still_usable(mallory, scene)
        await scene.assert_unharmed(before)


# ------------------------------------------------------ not a known request


@pytest.mark.parametrize(
    "kind",
    ["teleport", "", "HELLO", "accepted", None, 7, [], {}, ["bid"]],
    ids=repr,
)
async def test_unknown_type_is_invalid_request_with_the_id(net_clock, scene, kind):
    async with scene.connect("mallory") as mallory:
        before = await scene.checkpoint()
        reply = await mallory.request(kind, "u1")
        assert_rejected(reply, "u1", "invalid_request")
        assert "unknown request type" in reply["message"]
        await assert_still_usable(mallory, scene)
        await scene.assert_unharmed(before)


async def test_missing_type_is_invalid_request_with_the_id(net_clock, scene):
    async with scene.connect("mallory") as mallory:
        before = await scene.checkpoint()
        await mallory.send({"id": "u2", "amount": "11"})
        assert_rejected(await mallory.reply_to("u2"), "u2", "invalid_request")
        await scene.assert_unharmed(before)


@pytest.mark.parametrize(
    ("frame", "echoed"),
    [
        ({"type": "status"}, None),
        ({"type": "status", "id": ""}, None),
        ({"type": "status", "id": "x" * 65}, None),
        ({"type": "status", "id": 7}, None),
        ({"type": "status", "id": ["x"]}, None),
    ],
    ids=["missing", "empty", "too-long", "number", "list"],
)
async def test_unreadable_id_is_invalid_request_with_null_id(
    net_clock, scene, frame, echoed
):
    async with scene.connect("mallory") as mallory:
        before = await scene.checkpoint()
        await mallory.send(frame)
        assert_rejected(await mallory.reply_to(echoed), echoed, "invalid_request")
        await assert_still_usable(mallory, scene)
        await scene.assert_unharmed(before)


@pytest.mark.parametrize(
    ("kind", "fields", "missing"),
    [
        ("bid", {}, "amount"),
        ("message", {}, "text"),
        ("host_request", {}, "key"),
        ("open", {"title": "x", "starting_price": "1"}, "duration_s"),
        ("increment", {}, "amount"),
    ],
)
async def test_missing_field_is_invalid_request_naming_it(
    net_clock, scene, kind, fields, missing
):
    async with scene.connect("mallory") as mallory:
        before = await scene.checkpoint()
        reply = await mallory.request(kind, "m1", **fields)
        assert_rejected(reply, "m1", "invalid_request")
        assert reply["message"] == f"missing field {missing!r}"
        await assert_still_usable(mallory, scene)
        await scene.assert_unharmed(before)


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        ("status", {"verbose": True}),
        ("bid", {"amount": "11", "amonut": "12"}),
        ("message", {"text": "hi", "to": "ann"}),
    ],
)
async def test_extra_field_is_invalid_request_naming_it(net_clock, scene, kind, fields):
    async with scene.connect("mallory") as mallory:
        before = await scene.checkpoint()
        reply = await mallory.request(kind, "e1", **fields)
        assert_rejected(reply, "e1", "invalid_request")
        assert reply["message"].startswith("unexpected field")
        await assert_still_usable(mallory, scene)
        await scene.assert_unharmed(before)


async def test_extra_field_from_the_host_changes_nothing(net_clock, scene):
    """A typo in a host command must not silently open something else."""
    before = await scene.checkpoint()
    reply = await scene.host.request("increment", "t1", amount="5", amout="6")
    assert_rejected(reply, "t1", "invalid_request")
    await scene.assert_unharmed(before)


@pytest.mark.parametrize(
    ("kind", "fields", "field"),
    [
        (
            "open",
            {"title": "x", "starting_price": "1", "duration_s": "60"},
            "duration_s",
        ),
        (
            "open",
            {"title": "x", "starting_price": "1", "duration_s": True},
            "duration_s",
        ),
        (
            "open",
            {"title": "x", "starting_price": "1", "duration_s": 60.0},
            "duration_s",
        ),
        (
            "open",
            {"title": "x", "starting_price": "1", "duration_s": 60, "sudden_death": 1},
            "sudden_death",
        ),
        ("bid", {"amount": "11", "lot": True}, "lot"),
        ("bid", {"amount": "11", "lot": "1"}, "lot"),
        ("message", {"text": ["hi"]}, "text"),
        ("host_request", {"key": None}, "key"),
    ],
    ids=[
        "duration-string",
        "duration-true",
        "duration-float",
        "sudden-death-int",
        "lot-true",
        "lot-string",
        "text-list",
        "key-null",
    ],
)
async def test_wrong_field_type_is_invalid_request_naming_it(
    net_clock, scene, kind, fields, field
):
    """No coercion: "60" is not 60, and true is not 1."""
    before = await scene.checkpoint()
    # From the host, so that a coerced request would really have changed
    # something (a lot_open rejection would also leave the state alone, but
    # with another reason).
    reply = await scene.host.request(kind, "w1", **fields)
    assert_rejected(reply, "w1", "invalid_request")
    assert reply["message"].startswith(f"field {field!r}")
    await scene.assert_unharmed(before)


# ----------------------------------------------------------------- amounts


@pytest.mark.parametrize(
    "amount",
    [
        "-5",
        "0",
        "0.00",
        "1e309",
        "1e3",
        "NaN",
        "Infinity",
        "12.345",
        "١٢",
        "１２",
        str(10**30),
        "1000000000.01",
        " 12",
        "12 ",
        "12.",
        ".5",
        "+12",
        "1,5",
        "",
        "0x10",
    ],
)
async def test_bad_amount_is_invalid_amount(net_clock, scene, amount):
    async with scene.connect("mallory") as mallory:
        before = await scene.checkpoint()
        reply = await mallory.request("bid", "a1", amount=amount)
        assert_rejected(reply, "a1", "invalid_amount")
        await assert_still_usable(mallory, scene)
        await scene.assert_unharmed(before)


async def test_an_amount_too_long_to_be_an_amount_is_invalid_amount(net_clock, scene):
    """docs/protocol.md: amounts above 1000000000.00 are ``invalid_amount``."""
    async with scene.connect("mallory") as mallory:
        before = await scene.checkpoint()
        reply = await mallory.request("bid", "a1", amount=str(10**40))
        assert_rejected(reply, "a1", "invalid_amount")
        await scene.assert_unharmed(before)


@pytest.mark.parametrize("amount", [12, 12.5, 1e309, None, ["12"]], ids=repr)
async def test_amount_that_is_not_a_string_is_invalid_request(net_clock, scene, amount):
    async with scene.connect("mallory") as mallory:
        before = await scene.checkpoint()
        # json.dumps writes 1e309 (float inf) as the bare word Infinity, which
        # is not JSON; write the number as digits the way a client might.
        frame = json.dumps({"type": "bid", "id": "a2", "amount": amount})
        frame = frame.replace("Infinity", "1e309")
        await mallory.send(frame)
        reply = await mallory.reply_to("a2")
        assert_rejected(reply, "a2", "invalid_request")
        assert reply["message"].startswith("field 'amount'")
        await assert_still_usable(mallory, scene)
        await scene.assert_unharmed(before)


async def test_bad_amounts_in_host_commands_are_invalid_amount(net_clock, scene):
    before = await scene.checkpoint()
    reply = await scene.host.request("increment", "i1", amount="-1")
    assert_rejected(reply, "i1", "invalid_amount")
    await scene.assert_unharmed(before)


# ------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "name",
    [
        "",
        "x" * 33,
        " mallory",
        "mallory ",
        "\u3000mallory",
        "a\u0000b",
        "a\nb",
        "a\tb",
        "\u202eyrollam",
        "a\u200bb",
        "a\x7fb",
        "a\ud800b",
    ],
    ids=repr,
)
async def test_bad_name_is_invalid_name_and_the_connection_can_retry(
    net_clock, scene, name
):
    async with scene.connect() as mallory:
        before = await scene.checkpoint()
        reply = await mallory.request("hello", "n1", name=name)
        assert_rejected(reply, "n1", "invalid_name")

        # Nothing was joined: the same connection may say hello again.
        retry = await mallory.request("hello", "n2", name="mallory")
        assert retry["type"] == "accepted", retry
        await scene.assert_unharmed(before, bidders_change=1)


async def test_a_very_long_name_is_invalid_name(net_clock, scene):
    """docs/protocol.md: a name too long is ``invalid_name``, however long."""
    async with scene.connect() as mallory:
        before = await scene.checkpoint()
        reply = await mallory.request("hello", "n1", name="x" * 200)
        assert_rejected(reply, "n1", "invalid_name")
        await scene.assert_unharmed(before)


async def test_name_of_a_connected_bidder_is_name_taken(net_clock, scene):
    async with scene.connect() as mallory:
        before = await scene.checkpoint()
        reply = await mallory.request("hello", "n1", name="ann")
        assert_rejected(reply, "n1", "name_taken")
        await scene.assert_unharmed(before)


async def test_name_of_a_disconnected_bidder_who_bid_needs_the_session(
    net_clock, scene
):
    async with scene.connect("bob") as bob:
        token = bob.welcome["result"]["session"]
        reply = await bob.request("bid", "b1", amount="10")
        assert reply["type"] == "accepted", reply
    await scene.ann.event("bid")

    before = await scene.checkpoint()
    async with scene.connect() as mallory:
        reply = await mallory.request("hello", "n1", name="bob")
        assert_rejected(reply, "n1", "name_taken")
        await scene.assert_unharmed(before)

    async with scene.connect() as bob_again:
        reply = await bob_again.request("hello", "n2", name="bob", session=token)
        assert reply["type"] == "accepted", reply
        assert reply["result"]["resumed"] is True
        assert reply["result"]["name"] == "bob"


async def test_name_of_a_disconnected_bidder_who_only_watched_is_free(net_clock, scene):
    async with scene.connect("carol"):
        pass
    async with scene.connect() as newcomer:
        reply = await newcomer.request("hello", "n1", name="carol")
        assert reply["type"] == "accepted", reply
        assert reply["result"]["resumed"] is False


@pytest.mark.parametrize(
    "token",
    ["", "nope", "x" * 128, "ann-token"],
)
async def test_wrong_session_token_is_bad_session(net_clock, scene, token):
    if token == "ann-token":
        # A real token, but for another name.
        token = scene.ann.welcome["result"]["session"]
    async with scene.connect() as mallory:
        before = await scene.checkpoint()
        reply = await mallory.request("hello", "n1", name="mallory", session=token)
        assert_rejected(reply, "n1", "bad_session")
        await scene.assert_unharmed(before)


@pytest.mark.parametrize("token", ["é", "tökén-" + "x" * 20, "\u202e"])
async def test_a_non_ascii_session_token_is_bad_session(net_clock, scene, token):
    async with scene.connect() as mallory:
        before = await scene.checkpoint()
        reply = await mallory.request("hello", "n1", name="mallory", session=token)
        assert_rejected(reply, "n1", "bad_session")
        await scene.assert_unharmed(before)


async def test_someone_elses_token_does_not_take_over_their_connection(
    net_clock, scene
):
    bob_token = None
    async with scene.connect("bob") as bob:
        bob_token = bob.welcome["result"]["session"]
        async with scene.connect() as mallory:
            before = await scene.checkpoint()
            reply = await mallory.request("hello", "n1", name="ann", session=bob_token)
            assert_rejected(reply, "n1", "bad_session")
            await scene.assert_unharmed(before)
        await assert_still_usable(bob, scene)


# -------------------------------------------------------------------- chat


@pytest.mark.parametrize(
    "text",
    ["", "   ", "x" * 501, "a\u0000b", "a\nb", "a\rb", "\u202eevil", "a\x1b[2Jb"],
    ids=["empty", "blank", "501-chars", "nul", "newline", "cr", "bidi", "ansi"],
)
async def test_bad_chat_is_invalid_text(net_clock, scene, text):
    async with scene.connect("mallory") as mallory:
        before = await scene.checkpoint()
        reply = await mallory.request("message", "c1", text=text)
        assert_rejected(reply, "c1", "invalid_text")
        await assert_still_usable(mallory, scene)
        await scene.assert_unharmed(before)


async def test_chat_of_exactly_500_chars_is_accepted(net_clock, scene):
    async with scene.connect("mallory") as mallory:
        reply = await mallory.request("message", "c1", text="x" * 500)
        assert reply["type"] == "accepted", reply
        chat = await scene.ann.event("chat")
        assert (chat["author"], len(chat["text"])) == ("mallory", 500)


# ------------------------------------------------------------------ frames


async def test_frame_over_the_size_limit_closes_with_1009(net_clock, scene):
    async with scene.connect("mallory") as mallory:
        before = await scene.checkpoint()
        text = "x" * MAX_MESSAGE_BYTES
        await mallory.send({"type": "message", "id": "big", "text": text})
        code, frames = await wait_closed(mallory)
        assert code == 1009
        assert not [f for f in frames if f.get("id") == "big"]
    await scene.assert_unharmed(before, bidders_change=-1)


async def test_frame_just_under_the_size_limit_is_handled(net_clock, scene):
    async with scene.connect("mallory") as mallory:
        before = await scene.checkpoint()
        envelope = json.dumps({"type": "message", "id": "big", "text": ""})
        text = "x" * (MAX_MESSAGE_BYTES - len(envelope))
        await mallory.send({"type": "message", "id": "big", "text": text})
        assert_rejected(await mallory.reply_to("big"), "big", "invalid_text")
        await assert_still_usable(mallory, scene)
        await scene.assert_unharmed(before)


async def test_too_many_bad_frames_close_with_1008(net_clock, scene):
    async with scene.connect("mallory") as mallory:
        before = await scene.checkpoint()
        for index in range(MAX_BAD_FRAMES - 1):
            await mallory.send(f"junk {index}")
            assert_rejected(await mallory.reply_to(None), None, "invalid_request")
        await assert_still_usable(mallory, scene)

        await mallory.send("the last straw")
        code, frames = await wait_closed(mallory)
        assert code == 1008
        assert frames[-1] == {"type": "bye", "reason": "too many bad frames"}
    await scene.assert_unharmed(before, bidders_change=-1)


async def test_the_frame_that_crosses_the_bad_frame_limit_still_gets_its_reply(
    net_clock, scene
):
    async with scene.connect("mallory") as mallory:
        for index in range(MAX_BAD_FRAMES):
            await mallory.send(f"junk {index}")
        code, frames = await wait_closed(mallory)
        assert code == 1008
        rejections = [f for f in frames if f.get("type") == "rejected"]
        assert len(rejections) == MAX_BAD_FRAMES
        assert frames[-1]["type"] == "bye"


async def test_refusals_of_well_formed_requests_are_not_bad_frames(net_clock, scene):
    async with scene.connect("mallory") as mallory:
        before = await scene.checkpoint()
        for index in range(MAX_BAD_FRAMES + 5):
            reply = await mallory.request("bid", f"low{index}", amount="1")
            assert reply["reason"] == "bid_too_low"
            if index % 10 == 9:
                await trio.sleep(5)  # stay under the rate limit
        await assert_still_usable(mallory, scene)
        await scene.assert_unharmed(before)


# ------------------------------------------------------------ join and roles


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        ("status", {}),
        ("bid", {"amount": "11"}),
        ("message", {"text": "hi"}),
        ("host_request", {"key": HOST_KEY}),
        ("close", {}),
    ],
)
async def test_requests_before_hello_are_not_joined(net_clock, scene, kind, fields):
    async with scene.connect() as mallory:
        before = await scene.checkpoint()
        reply = await mallory.request(kind, "j1", **fields)
        assert_rejected(reply, "j1", "not_joined")
        hello = await mallory.request("hello", "j2", name="mallory")
        assert hello["type"] == "accepted", hello
        await scene.assert_unharmed(before, bidders_change=1)


@pytest.mark.parametrize("name", ["mallory", "someone-else", "ann"])
async def test_second_hello_is_already_joined(net_clock, scene, name):
    async with scene.connect("mallory") as mallory:
        before = await scene.checkpoint()
        reply = await mallory.request("hello", "j3", name=name)
        assert_rejected(reply, "j3", "already_joined")
        await assert_still_usable(mallory, scene)
        await scene.assert_unharmed(before)


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        ("open", {"title": "Mine", "starting_price": "1", "duration_s": 60}),
        ("close", {}),
        ("pause", {}),
        ("resume", {}),
        ("increment", {"amount": "50"}),
        ("host_release", {}),
    ],
)
async def test_host_commands_from_a_bidder_are_not_host(net_clock, scene, kind, fields):
    async with scene.connect("mallory") as mallory:
        before = await scene.checkpoint()
        reply = await mallory.request(kind, "x1", **fields)
        assert_rejected(reply, "x1", "not_host")
        await assert_still_usable(mallory, scene)
        await scene.assert_unharmed(before)


@pytest.mark.parametrize(
    "key", ["", "wrong", HOST_KEY + "x", HOST_KEY.upper(), "é" + HOST_KEY]
)
async def test_wrong_host_key_is_bad_host_key(net_clock, scene, key):
    # Release the host role first so that only the key can be the reason.
    released = await scene.host.request("host_release", "r1")
    assert released["type"] == "accepted", released
    await scene.ann.event("host_changed")

    async with scene.connect("mallory") as mallory:
        before = await scene.checkpoint()
        reply = await mallory.request("host_request", "k1", key=key)
        assert_rejected(reply, "k1", "bad_host_key")
        await scene.assert_unharmed(before)


async def test_second_host_is_host_taken(net_clock, scene):
    async with scene.connect("mallory") as mallory:
        before = await scene.checkpoint()
        reply = await mallory.request("host_request", "k2", key=HOST_KEY)
        assert_rejected(reply, "k2", "host_taken")
        await scene.assert_unharmed(before)
        closed = await scene.host.request("pause", "h9")
        assert closed["type"] == "accepted", closed


# ------------------------------------------------------------- rate limits
#
# These run with slow refill rates (rate_scene) so that the mock clock, which
# may jump while a burst is in flight, cannot refill a token mid-test.


async def test_chat_over_the_rate_limit_is_rate_limited_then_allowed_again(
    net_clock, rate_scene
):
    scene = rate_scene
    async with scene.connect("mallory") as mallory:
        for index in range(SLOW.burst):
            reply = await mallory.request("message", f"c{index}", text=f"hi {index}")
            assert reply["type"] == "accepted", reply
        for _ in range(SLOW.burst):
            await scene.ann.event("chat")

        before = await scene.checkpoint()
        reply = await mallory.request("message", "c5", text="one too many")
        assert_rejected(reply, "c5", "rate_limited")
        # Ann's allowance is her own: mallory does not use it up.
        await scene.assert_unharmed(before)

        await trio.sleep(1 / SLOW.per_s)
        reply = await mallory.request("message", "c6", text="patience")
        assert reply["type"] == "accepted", reply


async def test_a_rate_limited_id_is_not_remembered_as_answered(net_clock, rate_scene):
    scene = rate_scene
    async with scene.connect("mallory") as mallory:
        for index in range(SLOW.burst):
            await mallory.request("message", f"c{index}", text="hi")
        reply = await mallory.request("message", "again", text="later")
        assert_rejected(reply, "again", "rate_limited")

        await trio.sleep(1 / SLOW.per_s)
        retry = await mallory.request("message", "again", text="later")
        assert retry["type"] == "accepted", retry


async def test_requests_over_the_overall_rate_are_rate_limited(net_clock, rate_scene):
    scene = rate_scene
    async with scene.connect("mallory") as mallory:
        # The hello took one of the 40.
        for index in range(39):
            await mallory.send({"type": "status", "id": f"s{index}"})
        for index in range(39):
            assert (await mallory.reply_to(f"s{index}"))["type"] == "accepted"

        before = await scene.checkpoint()
        reply = await mallory.request("status", "s39")
        assert_rejected(reply, "s39", "rate_limited")
        await scene.assert_unharmed(before)

        await trio.sleep(60)
        assert (await mallory.request("status", "s40"))["type"] == "accepted"


async def test_bids_over_the_bid_rate_are_rate_limited(net_clock, rate_scene):
    scene = rate_scene
    async with scene.connect("mallory") as mallory:
        for index in range(20):
            await mallory.send({"type": "bid", "id": f"b{index}", "amount": "1"})
        for index in range(20):
            assert (await mallory.reply_to(f"b{index}"))["reason"] == "bid_too_low"

        before = await scene.checkpoint()
        reply = await mallory.request("bid", "b20", amount="10")
        assert_rejected(reply, "b20", "rate_limited")
        await scene.assert_unharmed(before)

        await trio.sleep(60)
        reply = await mallory.request("bid", "b21", amount="1")
        assert reply["reason"] == "bid_too_low"


async def test_the_default_limits_allow_a_burst_and_refuse_past_it(net_clock, scene):
    """With the default limits: 5 chat lines at once, the 6th is refused.

    One virtual-time jump during the burst could refill a token, so this
    only asserts that a burst of 12 is cut down, not exactly where.
    """
    async with scene.connect("mallory") as mallory:
        for index in range(12):
            await mallory.send({"type": "message", "id": f"c{index}", "text": "x"})
        replies = [await mallory.reply_to(f"c{index}") for index in range(12)]
        kinds = [reply.get("reason", reply["type"]) for reply in replies]
        assert kinds[:5] == ["accepted"] * 5
        assert "rate_limited" in kinds
        assert set(kinds) == {"accepted", "rate_limited"}


# --------------------------------------------------- not speaking the protocol


async def read_until_eof(stream: trio.abc.Stream) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        while await stream.receive_some(4096):
            pass


# How long trio-websocket waits for a handshake when not told otherwise.
LIBRARY_HANDSHAKE_TIMEOUT_S = 60


async def test_garbage_over_plain_tcp_on_the_tls_port_harms_nobody(net_clock, scene):
    before = await scene.checkpoint()
    async with await trio.open_tcp_stream("127.0.0.1", scene.port) as stream:
        await stream.send_all(b"GET / HTTP/1.1\r\n\r\n\x00\xff" + b"\x16" * 500)
        with trio.fail_after(LIBRARY_HANDSHAKE_TIMEOUT_S + 5):
            await read_until_eof(stream)
    await scene.assert_unharmed(before)


async def test_tls_then_garbage_instead_of_a_handshake_harms_nobody(net_clock, scene):
    before = await scene.checkpoint()
    stream = await trio.open_ssl_over_tcp_stream(
        "localhost", scene.port, ssl_context=scene.client_ssl_context
    )
    async with stream:
        await stream.send_all(b"\x00\x01 this is not HTTP\r\n\r\n")
        with trio.fail_after(LIBRARY_HANDSHAKE_TIMEOUT_S + 5):
            await read_until_eof(stream)
    await scene.assert_unharmed(before)


async def test_plain_websocket_client_on_the_tls_port_fails_and_harms_nobody(
    net_clock, scene
):
    before = await scene.checkpoint()
    with pytest.raises(HandshakeError):
        async with open_websocket_url(
            f"ws://localhost:{scene.port}/", connect_timeout=5
        ) as websocket:
            await websocket.get_message()
    await scene.assert_unharmed(before)


async def test_a_socket_that_never_completes_the_handshake_is_closed_promptly(
    net_clock, scene
):
    async with await trio.open_tcp_stream("127.0.0.1", scene.port) as stream:
        await stream.send_all(b"not TLS\r\n\r\n")
        opened_at = trio.current_time()
        with trio.move_on_after(LIBRARY_HANDSHAKE_TIMEOUT_S + 5):
            await read_until_eof(stream)
        # The service's handshake timeout (10 s by default), not the
        # library's 60 s.
        assert trio.current_time() - opened_at <= 10 + 1


async def test_a_client_that_never_says_hello_is_closed_after_the_timeout(
    net_clock, scene
):
    async with scene.connect() as mallory:
        before = await scene.checkpoint()
        connected_at = trio.current_time()
        code, frames = await wait_closed(mallory)
        waited = trio.current_time() - connected_at
        assert code == 1008
        assert frames == [{"type": "bye", "reason": "expected hello"}]
        assert HELLO_TIMEOUT_S - 0.5 <= waited <= HELLO_TIMEOUT_S + 1
    await scene.assert_unharmed(before)


async def test_a_client_that_sends_frames_but_never_joins_is_closed_in_time(
    net_clock, scene
):
    async with scene.connect() as mallory:
        connected_at = trio.current_time()
        with trio.move_on_after(HELLO_TIMEOUT_S * 4):
            with contextlib.suppress(ConnectionClosed):
                for index in range(10):
                    await trio.sleep(HELLO_TIMEOUT_S / 2)
                    reply = await mallory.request("status", f"s{index}")
                    assert reply["reason"] == "not_joined"
        closed = mallory.websocket.closed
        waited = trio.current_time() - connected_at
        assert closed is not None and closed.code == 1008, (closed, waited)
        assert waited <= HELLO_TIMEOUT_S + 1


# ------------------------------------------------------- lone surrogates


@pytest.mark.parametrize(
    ("frame", "echoed"),
    [
        ('{"type": "message", "id": "c1", "text": "\\udfff"}', "c1"),
        ('{"type": "bid", "id": "x\\ud800", "amount": "10"}', "x\ud800"),
    ],
    ids=["text", "id"],
)
async def test_a_lone_surrogate_is_not_text_and_is_invalid_request(
    net_clock, scene, frame, echoed
):
    """JSON lets "\\ud800" through; it is not Unicode text, so it is refused
    before it can reach an encoder or the journal."""
    async with scene.connect() as mallory:
        hello = await mallory.request("hello", "j", name="mallory")
        assert hello["type"] == "accepted", hello
        before = await scene.checkpoint()
        await mallory.send(frame)
        reply = await mallory.reply_to(echoed)
        assert_rejected(reply, echoed, "invalid_request")
        await assert_still_usable(mallory, scene)
        await scene.assert_unharmed(before)
