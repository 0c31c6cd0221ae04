"""bidwar.protocol on its own: what a frame must look like, and what it is told.

Pure and fast: no sockets, no trio.  The property tests feed arbitrary JSON
(and arbitrary text) to the parser and require that the only thing that can
come out of it, besides a request, is a :class:`RequestError`.
"""

import json
import math
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bidwar import money, protocol
from bidwar.protocol import (
    RequestError,
    amount_cents,
    check_name,
    check_text,
    parse_request,
)


def frame(**fields) -> str:
    return json.dumps(fields)


def refusal(text: str | bytes) -> RequestError:
    with pytest.raises(RequestError) as caught:
        parse_request(text)
    return caught.value


# ------------------------------------------------------- well-formed requests


@pytest.mark.parametrize(
    ("fields", "model"),
    [
        ({"type": "hello", "id": "1", "name": "ann"}, protocol.Hello),
        (
            {"type": "hello", "id": "1", "name": "ann", "session": "t", "last_seq": 0},
            protocol.Hello,
        ),
        ({"type": "bid", "id": "1", "amount": "12.50"}, protocol.Bid),
        ({"type": "bid", "id": "1", "amount": "12", "lot": 3}, protocol.Bid),
        ({"type": "message", "id": "1", "text": "hi"}, protocol.Message),
        ({"type": "host_request", "id": "1", "key": "k"}, protocol.HostRequest),
        ({"type": "host_release", "id": "1"}, protocol.HostRelease),
        ({"type": "status", "id": "1"}, protocol.Status),
        (
            {
                "type": "open",
                "id": "1",
                "title": "Lamp",
                "starting_price": "10",
                "duration_s": 60,
                "increment": "5",
                "sudden_death": True,
                "extension_s": 5,
            },
            protocol.Open,
        ),
        ({"type": "close", "id": "1"}, protocol.Close),
        ({"type": "pause", "id": "1"}, protocol.Pause),
        ({"type": "resume", "id": "1"}, protocol.Resume),
        ({"type": "increment", "id": "1", "amount": "2"}, protocol.Increment),
    ],
    ids=lambda value: value["type"] if isinstance(value, dict) else "",
)
def test_every_request_type_parses_to_its_model(fields, model):
    request = parse_request(json.dumps(fields))
    assert type(request) is model
    for name, value in fields.items():
        assert getattr(request, name) == value


def test_every_request_type_is_covered_above():
    assert {
        "hello", "bid", "message", "host_request", "host_release", "status",
        "open", "close", "pause", "resume", "increment",
    } == protocol.REQUEST_TYPES  # fmt: skip


def test_optional_fields_default_to_none_or_false():
    request = parse_request(
        frame(type="open", id="1", title="t", starting_price="1", duration_s=1)
    )
    assert (request.increment, request.extension_s, request.sudden_death) == (
        None,
        None,
        False,
    )


def test_field_order_does_not_matter():
    text = '{"amount": "5", "id": "z", "type": "bid"}'
    assert parse_request(text) == protocol.Bid(type="bid", id="z", amount="5")


# ------------------------------------------------------------ not a request


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        '{"type": "status", "id": "1"',
        "nope",
        '{"a": 1} {"b": 2}',
        "[" * 50_000,
    ],
    ids=["empty", "brace", "truncated", "word", "two-objects", "deep"],
)
def test_malformed_json_is_invalid_request_without_an_id(text):
    error = refusal(text)
    assert (error.reason, error.request_id) == ("invalid_request", None)
    assert error.message == "the frame is not valid JSON"


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_the_non_standard_json_constants_are_refused(literal):
    error = refusal(f'{{"type": "bid", "id": "1", "amount": {literal}}}')
    assert (error.reason, error.request_id) == ("invalid_request", None)


@pytest.mark.parametrize("text", ["[]", "[1, 2]", "12", "1.5", '"hi"', "null", "true"])
def test_json_that_is_not_an_object_is_invalid_request(text):
    error = refusal(text)
    assert (error.reason, error.request_id) == ("invalid_request", None)
    assert error.message == "a request must be a JSON object"


def test_a_binary_frame_is_invalid_request():
    error = refusal(b'{"type": "status", "id": "1"}')
    assert (error.reason, error.request_id) == ("invalid_request", None)
    assert "binary" in error.message


@pytest.mark.parametrize(
    "kind",
    ["teleport", "", "Status", " status", "accepted", None, 1, True, [], {}, ["bid"]],
    ids=repr,
)
def test_an_unknown_type_is_invalid_request_naming_the_id(kind):
    error = refusal(frame(type=kind, id="r7"))
    assert (error.reason, error.request_id) == ("invalid_request", "r7")
    assert error.message.startswith("unknown request type")


def test_a_missing_type_is_invalid_request():
    error = refusal(frame(id="r7"))
    assert (error.reason, error.request_id) == ("invalid_request", "r7")


def test_a_long_unknown_type_is_shortened_in_the_message():
    error = refusal(frame(type="x" * 10_000, id="1"))
    assert len(error.message) < 80


# --------------------------------------------------------------------- ids


@pytest.mark.parametrize("request_id", ["x", "x" * 64, "é", "1 2", "\u202e"])
def test_a_string_id_of_1_to_64_chars_is_accepted(request_id):
    assert parse_request(frame(type="status", id=request_id)).id == request_id


@pytest.mark.parametrize("request_id", ["", "x" * 65, 7, None, ["x"], {"x": 1}])
def test_an_unreadable_id_is_refused_and_not_echoed(request_id):
    error = refusal(frame(type="status", id=request_id))
    assert (error.reason, error.request_id) == ("invalid_request", None)


def test_a_missing_id_is_refused_and_not_echoed():
    error = refusal(frame(type="status"))
    assert (error.reason, error.request_id) == ("invalid_request", None)
    assert error.message == "missing field 'id'"


# --------------------------------------------------- missing / extra / types


@pytest.mark.parametrize(
    ("fields", "missing"),
    [
        ({"type": "hello"}, "name"),
        ({"type": "bid"}, "amount"),
        ({"type": "message"}, "text"),
        ({"type": "host_request"}, "key"),
        ({"type": "open", "starting_price": "1", "duration_s": 1}, "title"),
        ({"type": "open", "title": "t", "duration_s": 1}, "starting_price"),
        ({"type": "open", "title": "t", "starting_price": "1"}, "duration_s"),
        ({"type": "increment"}, "amount"),
    ],
)
def test_a_missing_field_is_named(fields, missing):
    error = refusal(json.dumps({"id": "q", **fields}))
    assert (error.reason, error.request_id) == ("invalid_request", "q")
    assert error.message == f"missing field {missing!r}"


@pytest.mark.parametrize("kind", sorted(protocol.REQUEST_TYPES - {"open"}))
def test_an_extra_field_is_named(kind):
    error = refusal(frame(type=kind, id="q", name="a", amount="1", text="t", key="k",
                          colour="red"))  # fmt: skip
    assert (error.reason, error.request_id) == ("invalid_request", "q")
    assert error.message.startswith("unexpected field")


def test_a_misspelt_optional_field_is_not_ignored():
    error = refusal(frame(type="bid", id="q", amount="1", lott=2))
    assert error.message == "unexpected field 'lott'"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("duration_s", "60"),
        ("duration_s", True),
        ("duration_s", 60.0),
        ("duration_s", 60.5),
        ("duration_s", None),
        ("sudden_death", 1),
        ("sudden_death", "true"),
        ("extension_s", False),
        ("title", 5),
        ("starting_price", 10),
        ("starting_price", 10.5),
        ("increment", ["5"]),
    ],
    ids=repr,
)
def test_no_type_coercion_in_open(field, value):
    fields = {"title": "t", "starting_price": "1", "duration_s": 60, field: value}
    error = refusal(frame(type="open", id="q", **fields))
    assert (error.reason, error.request_id) == ("invalid_request", "q")
    assert error.message.startswith(f"field {field!r}")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"type": "bid", "amount": 12}, "amount"),
        ({"type": "bid", "amount": "1", "lot": True}, "lot"),
        ({"type": "bid", "amount": "1", "lot": "3"}, "lot"),
        ({"type": "bid", "amount": "1", "lot": 0}, "lot"),
        ({"type": "bid", "amount": "1", "lot": 10**9 + 1}, "lot"),
        ({"type": "hello", "name": 5}, "name"),
        ({"type": "hello", "name": "a", "last_seq": -1}, "last_seq"),
        ({"type": "hello", "name": "a", "last_seq": "4"}, "last_seq"),
        ({"type": "hello", "name": "a", "session": 5}, "session"),
        ({"type": "message", "text": None}, "text"),
        ({"type": "host_request", "key": 123}, "key"),
    ],
    ids=repr,
)
def test_mistyped_or_out_of_range_fields_are_named(fields, field):
    error = refusal(json.dumps({"id": "q", **fields}))
    assert (error.reason, error.request_id) == ("invalid_request", "q")
    assert error.message.startswith(f"field {field!r}")


@pytest.mark.parametrize("duration_s", [0, -1, 86_401, 10**30])
def test_duration_outside_1_to_86400_is_refused(duration_s):
    fields = {"title": "t", "starting_price": "1", "duration_s": duration_s}
    assert refusal(frame(type="open", id="q", **fields)).reason == "invalid_request"


@pytest.mark.parametrize("duration_s", [1, 86_400])
def test_duration_at_the_bounds_is_accepted(duration_s):
    fields = {"title": "t", "starting_price": "1", "duration_s": duration_s}
    assert parse_request(frame(type="open", id="q", **fields)).duration_s == duration_s


def test_an_amount_is_only_checked_for_being_a_string_when_parsed():
    """The amount's grammar has its own reason, given by amount_cents."""
    request = parse_request(frame(type="bid", id="q", amount=str(10**40)))
    with pytest.raises(RequestError) as caught:
        amount_cents(request.amount)
    assert caught.value.reason == "invalid_amount"


def test_a_huge_integer_is_invalid_request_not_a_crash():
    text = '{"type": "hello", "id": "q", "name": "a", "last_seq": 1' + "0" * 5000 + "}"
    assert refusal(text).reason == "invalid_request"


def test_a_lone_surrogate_in_a_bounded_string_is_invalid_request():
    error = refusal('{"type": "message", "id": "q", "text": "a\\ud800"}')
    assert (error.reason, error.request_id) == ("invalid_request", "q")


def test_a_lone_surrogate_in_a_name_is_left_to_check_name():
    request = parse_request('{"type": "hello", "id": "q", "name": "a\\ud800"}')
    with pytest.raises(RequestError) as caught:
        check_name(request.name)
    assert caught.value.reason == "invalid_name"


# ------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "name",
    ["a", "x" * 32, "Ann Lee", "Zoë", "山田", "ann-2", "🎸 fan", "o'neil", "a.b_c"],
)
def test_acceptable_names(name):
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "x" * 33,
        "x" * 10_000,
        " ann",
        "ann ",
        " ",
        "\u00a0ann",
        "ann\u3000",
        "a\u0000b",
        "a\nb",
        "a\tb",
        "a\x7fb",
        "a\x85b",
        "\u202eevil",
        "a\u200bb",
        "a\u2066b",
        "a\ufeffb",
        "a\ud800b",
        "a\ue000b",
        "a\U000effffb",
    ],
    ids=repr,
)
def test_refused_names(name):
    with pytest.raises(RequestError) as caught:
        check_name(name)
    assert caught.value.reason == "invalid_name"
    assert caught.value.request_id is None


# -------------------------------------------------------------------- chat


@pytest.mark.parametrize("text", ["hi", "x" * 500, " leading and trailing ", "Zoë 🎸"])
def test_acceptable_chat(text):
    assert check_text(text) == text


@pytest.mark.parametrize(
    "text",
    ["", " ", "\u3000", "x" * 501, "a\u0000b", "a\nb", "a\rb", "\u202e", "a\x1b[2J"],
    ids=repr,
)
def test_refused_chat(text):
    with pytest.raises(RequestError) as caught:
        check_text(text)
    assert caught.value.reason == "invalid_text"


def test_the_chat_limit_is_the_server_option():
    assert check_text("x" * 20, max_chars=20)
    with pytest.raises(RequestError):
        check_text("x" * 21, max_chars=20)


# ----------------------------------------------------------------- amounts


@pytest.mark.parametrize(
    ("text", "cents"),
    [
        ("12", 1200),
        ("12.5", 1250),
        ("12.50", 1250),
        ("0.01", 1),
        ("0.1", 10),
        ("007", 700),
        ("1000000000", money.MAX_CENTS),
        ("1000000000.00", money.MAX_CENTS),
    ],
)
def test_amounts_in_the_grammar(text, cents):
    assert amount_cents(text) == cents


@pytest.mark.parametrize(
    "text",
    [
        "",
        "-5",
        "+5",
        "0",
        "0.0",
        "0.00",
        "1e309",
        "1e3",
        "1E3",
        "NaN",
        "nan",
        "Infinity",
        "inf",
        "12.345",
        "١٢",
        "１２",
        "１2",
        str(10**30),
        str(10**40),
        "9" * 10_000,
        "1000000000.01",
        " 12",
        "12 ",
        "12.",
        ".5",
        "1,5",
        "1_000",
        "0x10",
        "12.5\n",
    ],
    ids=repr,
)
def test_amounts_outside_the_grammar_are_invalid_amount(text):
    with pytest.raises(RequestError) as caught:
        amount_cents(text)
    assert caught.value.reason == "invalid_amount"
    assert len(caught.value.message) < 200


def test_an_invalid_amount_message_does_not_echo_a_huge_input():
    with pytest.raises(RequestError) as caught:
        amount_cents("x" * 10_000)
    assert len(caught.value.message) < 200


# ----------------------------------------------------------------- replies


def test_replies_have_exactly_the_documented_shape():
    assert json.loads(protocol.rejected("q", "bid_too_low", "bid at least 2")) == {
        "type": "rejected",
        "id": "q",
        "reason": "bid_too_low",
        "message": "bid at least 2",
    }
    assert json.loads(protocol.rejected(None, "invalid_request", "m"))["id"] is None
    assert json.loads(protocol.accepted("q")) == {
        "type": "accepted",
        "id": "q",
        "result": {},
    }


def test_encode_refuses_nan_rather_than_send_bad_json():
    with pytest.raises(ValueError):
        protocol.encode({"x": math.nan})


def test_a_rejection_echoing_a_lone_surrogate_id_is_still_valid_json():
    text = protocol.rejected("a\ud800", "invalid_request", "m")
    text.encode("utf-8")  # ASCII escapes, so no encoding error on the wire
    assert json.loads(text)["id"] == "a\ud800"


# -------------------------------------------------------------- properties

# Every character, lone surrogates included: JSON can carry them.
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | any_text
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4)
    ),
    max_leaves=8,
)
field_names = st.sampled_from(
    ["id", "type", "name", "session", "last_seq", "amount", "lot", "text", "key",
     "title", "starting_price", "duration_s", "increment", "sudden_death",
     "extension_s"]
) | any_text  # fmt: skip
request_like = st.builds(
    lambda kind, request_id, extra: {**extra, "type": kind, "id": request_id},
    st.sampled_from(sorted(protocol.REQUEST_TYPES)) | json_values,
    st.just("p") | json_values,
    st.dictionaries(field_names, json_values, max_size=5),
)


def parse_or_refuse(text: str | bytes) -> None:
    try:
        request = parse_request(text)
    except RequestError as error:
        assert error.reason == "invalid_request"
        assert isinstance(error.message, str) and error.message
        assert error.request_id is None or isinstance(error.request_id, str)
        json.loads(protocol.rejected(error.request_id, error.reason, error.message))
    else:
        assert request.type in protocol.REQUEST_TYPES


@settings(max_examples=300)
@given(json_values)
def test_any_json_value_parses_or_is_refused_with_request_error(value):
    parse_or_refuse(json.dumps(value))


@settings(max_examples=300)
@given(request_like)
def test_any_request_shaped_object_parses_or_is_refused_naming_its_id(value):
    try:
        parse_request(json.dumps(value))
    except RequestError as error:
        assert error.reason == "invalid_request"
        request_id = value["id"]
        readable = isinstance(request_id, str) and 1 <= len(request_id) <= 64
        assert error.request_id == (request_id if readable else None)


@settings(max_examples=300)
@given(st.text(max_size=200) | st.binary(max_size=200))
def test_any_frame_at_all_parses_or_is_refused(text):
    parse_or_refuse(text)


@given(any_text)
def test_check_name_accepts_exactly_the_documented_names(name):
    try:
        assert check_name(name) == name
    except RequestError as error:
        assert error.reason == "invalid_name"
    else:
        assert 1 <= len(name) <= 32
        assert name == name.strip()
        assert not any(unicodedata.category(ch).startswith("C") for ch in name)


@given(any_text)
def test_check_text_accepts_only_printable_nonblank_text(text):
    try:
        check_text(text)
    except RequestError as error:
        assert error.reason == "invalid_text"
    else:
        assert text.strip() and len(text) <= 500


@given(any_text)
def test_amount_cents_returns_cents_in_range_or_invalid_amount(text):
    try:
        cents = amount_cents(text)
    except RequestError as error:
        assert error.reason == "invalid_amount"
    else:
        assert 1 <= cents <= money.MAX_CENTS
        assert amount_cents(money.format_cents(cents)) == cents


@given(st.integers(min_value=1, max_value=money.MAX_CENTS))
def test_every_amount_the_server_writes_reads_back_the_same(cents):
    assert amount_cents(money.format_cents(cents)) == cents
