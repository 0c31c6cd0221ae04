"""Shared fixtures: a throwaway certificate authority for real TLS on loopback."""

import ssl

import pytest
import trustme
from trio.testing import MockClock


@pytest.fixture(scope="session")
def certificate_authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def server_ssl_context(certificate_authority: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate = certificate_authority.issue_cert("localhost", "127.0.0.1", "::1")
    certificate.configure_cert(context)
    return context


@pytest.fixture(scope="session")
def client_ssl_context(certificate_authority: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    certificate_authority.configure_trust(context)
    return context


@pytest.fixture
def net_clock() -> MockClock:
    """Virtual time for tests that also do real socket I/O.

    ``autojump_clock`` jumps the instant every task is blocked, and a task
    waiting on a loopback socket counts as blocked, so a connection timeout
    can fire before the peer's bytes arrive.  Jumping only after a short
    stretch of real idleness keeps the deadlines virtual (a 60-second lot
    takes no wall-clock minute) while letting real I/O finish first.
    """
    return MockClock(autojump_threshold=0.1)


@pytest.fixture(autouse=True)
def private_state_dir(tmp_path, monkeypatch):
    """Bidders started by a test keep their session tokens in its tmp_path."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
