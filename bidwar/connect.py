"""Client connections to bidwar's services: TCP, TLS, then WebSocket.

The TLS handshake is done here, before trio-websocket sees the stream,
because trio-websocket reports a failed handshake (an untrusted certificate,
a plain-text server) only as a timeout many seconds later.  Doing it first
turns "connection timed out" into "certificate verify failed" at once.
"""

import contextlib
import ssl
import urllib.parse
from collections.abc import AsyncIterator

import trio
import trio_websocket


class ConnectError(Exception):
    """The service could not be reached; the message says why, for a person."""


async def open_stream(
    url: str, ssl_context: ssl.SSLContext | None, timeout_s: float
) -> trio.abc.Stream:
    """Open a TCP stream to ``url`` and, for ``wss://``, complete TLS on it."""
    parts = _split(url)
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    host = parts.hostname or ""
    where = f"{parts.scheme}://{parts.netloc}/"
    try:
        with trio.fail_after(timeout_s):
            if not secure:
                return await trio.open_tcp_stream(host, port)
            stream = await trio.open_ssl_over_tcp_stream(
                host, port, ssl_context=ssl_context or ssl.create_default_context()
            )
            await stream.do_handshake()
            return stream
    except trio.TooSlowError:
        raise ConnectError(f"cannot reach {where}: timed out") from None
    except trio.BrokenResourceError as error:
        cause = error.__cause__ or error
        raise ConnectError(f"TLS with {where} failed: {cause}") from None
    except OSError as error:
        raise ConnectError(f"cannot reach {where}: {error}") from None


@contextlib.asynccontextmanager
async def open_websocket(
    url: str,
    ssl_context: ssl.SSLContext | None,
    *,
    timeout_s: float = 10.0,
    max_message_bytes: int = 1024 * 1024,
    close_timeout_s: float = 1.0,
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """Connect to a ``ws://``/``wss://`` URL and yield the WebSocket.

    Raises :class:`ConnectError` if the service cannot be reached or its
    certificate is refused.  An exception raised in the block comes out as
    itself, not inside an exception group.  Leaving the block, even by
    cancellation, sends a close frame and waits at most ``close_timeout_s``.
    """
    parts = _split(url)
    stream = await open_stream(url, ssl_context, timeout_s)
    try:
        async with trio.open_nursery() as nursery:
            try:
                with trio.fail_after(timeout_s):
                    websocket = await trio_websocket.wrap_client_stream(
                        nursery,
                        stream,
                        parts.netloc,
                        parts.path or "/",
                        max_message_size=max_message_bytes,
                    )
            except (trio.TooSlowError, trio_websocket.HandshakeError) as error:
                await trio.aclose_forcefully(stream)
                reason = str(error) or type(error).__name__
                raise ConnectError(f"no WebSocket service at {url}: {reason}") from None

            try:
                yield websocket
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(close_timeout_s):
                    await websocket.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The nursery wraps whatever the block raised; callers want the error
        # itself (a ConnectionClosed, say) to decide whether to reconnect.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


def _split(url: str) -> urllib.parse.SplitResult:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ConnectError(f"bad URL {url!r}: expected wss://HOST:PORT/")
    return parts
