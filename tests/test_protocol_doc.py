"""docs/protocol.md names exactly what the code sends and accepts."""

import re
from pathlib import Path

from bidwar import core, protocol

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "protocol.md").read_text()


def section(title: str) -> str:
    start = DOC.index(f"## {title}")
    end = DOC.find("\n## ", start + 1)
    return DOC[start : end if end != -1 else None]


def first_column(text: str) -> set[str]:
    return set(re.findall(r"^\| `([a-z_]+)`", text, flags=re.MULTILINE))


def reasons_in_code() -> set[str]:
    found: set[str] = set()
    for path in (ROOT / "bidwar").glob("*.py"):
        source = path.read_text()
        found |= set(re.findall(r'_reject\(\s*"([a-z_]+)"', source))
        found |= set(re.findall(r'RequestError\(\s*"([a-z_]+)"', source))
        found |= set(re.findall(r'rejected\(\s*\w+,\s*"([a-z_]+)"', source))
    return found


def test_every_request_type_is_documented():
    documented = first_column(section("Requests"))
    documented |= {"pause", "resume"}  # documented together as `pause` / `resume`
    assert documented >= protocol.REQUEST_TYPES
    assert documented <= protocol.REQUEST_TYPES


def test_every_event_type_is_documented():
    assert first_column(section("Events")) == set(core.EVENT_TYPES)


def test_every_rejection_reason_is_documented():
    documented = first_column(section("Replies"))
    assert reasons_in_code() <= documented
    assert "rate_limited" in documented and "bid_too_low" in documented
