"""Session tokens a bidder keeps between runs, so a name stays theirs.

A name that has bid or chatted can only be used again with its session
token.  The bidder saves the token the server gives it, per server URL and
name, in a small JSON file readable only by its owner, and offers it the next
time it starts.  A token the server no longer accepts is simply replaced.
"""

import json
import logging
import os
from pathlib import Path

log = logging.getLogger("bidwar.session_store")

FILE_NAME = "sessions.json"


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "bidwar"


class SessionStore:
    """Tokens by (server URL, name) in ``<state_dir>/sessions.json``.

    Failing to read or write the file is logged and otherwise ignored: the
    bidder still works, it just cannot come back under a used name.
    """

    def __init__(self, state_dir: Path) -> None:
        self._path = state_dir / FILE_NAME

    def load(self, url: str, name: str) -> str | None:
        return self._read().get(_key(url, name))

    def save(self, url: str, name: str, token: str | None) -> None:
        if token is None:
            return
        tokens = self._read()
        if tokens.get(_key(url, name)) == token:
            return
        tokens[_key(url, name)] = token
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(
                self._path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600
            )
            with os.fdopen(descriptor, "w") as file:
                json.dump(tokens, file, indent=1, sort_keys=True)
        except OSError as error:
            log.warning("cannot save the session token in %s: %s", self._path, error)

    def _read(self) -> dict[str, str]:
        try:
            data = json.loads(self._path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            log.warning("ignoring unreadable %s: %s", self._path, error)
            return {}
        return data if isinstance(data, dict) else {}


def _key(url: str, name: str) -> str:
    return f"{url} {name}"
