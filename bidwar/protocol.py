"""The auction protocol's requests: parsing and validating client frames.

A frame is accepted only if it is a JSON object that matches one request
model exactly: no missing fields, no extra fields, no type coercion.  The
structure is checked by pydantic (strict models, a union keyed on ``type``);
the domain checks that carry their own rejection reason (names, chat text,
amounts) are done here afterwards so that a bidder is told *which* rule they
broke.  docs/protocol.md is the user-facing description of the same rules.
"""

import json
import unicodedata
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from bidwar import money

MAX_ID_CHARS = 64
MAX_NAME_CHARS = 32
MAX_KEY_CHARS = 256
MAX_TITLE_CHARS = 200
MAX_LOT_NUMBER = 10**9
MAX_DURATION_S = 86_400
MAX_EXTENSION_S = 3_600
DEFAULT_MAX_CHAT_CHARS = 500

RequestId = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)]
# Amounts and names carry no length bound here: their own checks (money's
# bounded pattern, check_name's length test first) refuse an overlong one
# cheaply and with the reason docs/protocol.md promises (``invalid_amount``,
# ``invalid_name``), where a bound here would say ``invalid_request``.
AmountText = str


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    id: RequestId


class Hello(_Request):
    type: Literal["hello"]
    name: str
    session: Annotated[str, Field(max_length=128)] | None = None
    last_seq: Annotated[int, Field(ge=0, le=2**62)] | None = None


class Bid(_Request):
    type: Literal["bid"]
    amount: AmountText
    lot: Annotated[int, Field(ge=1, le=MAX_LOT_NUMBER)] | None = None


class Message(_Request):
    type: Literal["message"]
    # The real limit is a server option; this bound only stops absurd input
    # before the character-level checks walk it.
    text: Annotated[str, Field(max_length=16 * 1024)]


class HostRequest(_Request):
    type: Literal["host_request"]
    key: Annotated[str, Field(max_length=MAX_KEY_CHARS)]


class HostRelease(_Request):
    type: Literal["host_release"]


class Status(_Request):
    type: Literal["status"]


class Open(_Request):
    type: Literal["open"]
    title: Annotated[str, Field(max_length=4 * MAX_TITLE_CHARS)]
    starting_price: AmountText
    duration_s: Annotated[int, Field(ge=1, le=MAX_DURATION_S)]
    increment: AmountText | None = None
    sudden_death: bool = False
    extension_s: Annotated[int, Field(ge=1, le=MAX_EXTENSION_S)] | None = None


class Close(_Request):
    type: Literal["close"]


class Pause(_Request):
    type: Literal["pause"]


class Resume(_Request):
    type: Literal["resume"]


class Increment(_Request):
    type: Literal["increment"]
    amount: AmountText


Request = Annotated[
    Hello
    | Bid
    | Message
    | HostRequest
    | HostRelease
    | Status
    | Open
    | Close
    | Pause
    | Resume
    | Increment,
    Field(discriminator="type"),
]

_REQUEST_ADAPTER: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(Request)

REQUEST_TYPES = frozenset(
    model.model_fields["type"].annotation.__args__[0]  # type: ignore[union-attr]
    for model in (
        Hello, Bid, Message, HostRequest, HostRelease, Status,
        Open, Close, Pause, Resume, Increment,
    )
)  # fmt: skip

HOST_REQUEST_TYPES = frozenset({"open", "close", "pause", "resume", "increment"})


class RequestError(Exception):
    """A client frame was refused; ``reason`` and ``message`` go in the reply."""

    def __init__(self, reason: str, message: str, request_id: str | None = None):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.request_id = request_id


def parse_request(frame: str | bytes) -> Any:
    """Return the validated request model for one text frame.

    Raises :class:`RequestError` (reason ``invalid_request``) for anything
    that is not exactly one known request; ``request_id`` is filled in when
    the frame had a readable id, so the rejection can name it.
    """
    if not isinstance(frame, str):
        raise RequestError("invalid_request", "frames must be text, not binary")

    data = _load_json_object(frame)
    request_id = _readable_id(data)
    kind = data.get("type")
    # A list or object is unhashable: test the type before the set lookup.
    if not isinstance(kind, str) or kind not in REQUEST_TYPES:
        raise RequestError(
            "invalid_request", f"unknown request type {_short(kind)}", request_id
        )

    try:
        return _REQUEST_ADAPTER.validate_python(data)
    except pydantic.ValidationError as error:
        raise RequestError("invalid_request", _describe(error), request_id) from None


def check_name(name: str) -> str:
    """Return ``name`` if it is an acceptable bidder name, else raise."""
    if not name or len(name) > MAX_NAME_CHARS:
        raise RequestError(
            "invalid_name", f"a name has 1 to {MAX_NAME_CHARS} characters"
        )
    if name != name.strip():
        raise RequestError("invalid_name", "a name may not start or end with a space")
    if _has_control(name):
        raise RequestError("invalid_name", "a name may not contain control characters")
    return name


def name_key(name: str) -> str:
    """The form under which two names count as the same bidder.

    Compatibility-normalised and case-folded, so that "ANN", "Ann" and "ａｎｎ"
    cannot pass for "ann".  Look-alikes from other scripts (a Cyrillic "а")
    are not caught: that needs a confusables table.
    """
    return unicodedata.normalize("NFKC", name).casefold()


def check_text(text: str, max_chars: int = DEFAULT_MAX_CHAT_CHARS) -> str:
    """Return chat ``text`` if it is acceptable, else raise ``invalid_text``."""
    if not text.strip():
        raise RequestError("invalid_text", "a message may not be empty")
    if len(text) > max_chars:
        raise RequestError(
            "invalid_text", f"a message has at most {max_chars} characters"
        )
    if _has_control(text):
        raise RequestError(
            "invalid_text", "a message may not contain control characters"
        )
    return text


def check_title(title: str) -> str:
    if not title.strip() or len(title) > MAX_TITLE_CHARS or _has_control(title):
        raise RequestError(
            "invalid_request",
            f"a lot title has 1 to {MAX_TITLE_CHARS} printable characters",
        )
    return title


def amount_cents(text: str) -> int:
    """Parse a wire amount, turning a bad one into an ``invalid_amount`` error."""
    try:
        return money.parse_amount(text)
    except money.AmountError as error:
        raise RequestError("invalid_amount", str(error)) from None


def accepted(request_id: str, result: dict[str, Any] | None = None) -> str:
    return encode({"type": "accepted", "id": request_id, "result": result or {}})


def rejected(request_id: str | None, reason: str, message: str) -> str:
    return encode(
        {"type": "rejected", "id": request_id, "reason": reason, "message": message}
    )


def encode(message: dict[str, Any]) -> str:
    """Serialise one outgoing frame (compact, and never NaN or Infinity)."""
    return json.dumps(message, separators=(",", ":"), allow_nan=False)


def _load_json_object(frame: str) -> dict[str, Any]:
    try:
        data = json.loads(frame, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        raise RequestError("invalid_request", "the frame is not valid JSON") from None
    if not isinstance(data, dict):
        raise RequestError("invalid_request", "a request must be a JSON object")
    return data


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed")


def _readable_id(data: dict[str, Any]) -> str | None:
    request_id = data.get("id")
    if isinstance(request_id, str) and 0 < len(request_id) <= MAX_ID_CHARS:
        return request_id
    return None


def _describe(error: pydantic.ValidationError) -> str:
    """One short sentence naming the first offending field."""
    first = error.errors(include_url=False)[0]
    # The union adds the request type as the first location element.
    field = ".".join(str(part) for part in first["loc"][1:]) or "request"
    if first["type"] == "extra_forbidden":
        return f"unexpected field {field!r}"
    if first["type"] == "missing":
        return f"missing field {field!r}"
    return f"field {field!r}: {first['msg'].lower()}"


# Control, format (bidi overrides), surrogate, private-use and unassigned
# characters, and the Unicode line and paragraph separators: none belongs in
# a name or a chat line, and the separators would break one line into two.
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def _has_control(text: str) -> bool:
    return any(unicodedata.category(char) in _UNPRINTABLE for char in text)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "…"
