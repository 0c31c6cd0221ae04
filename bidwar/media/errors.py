"""Unwrapping trio's exception groups at our public edges.

trio wraps anything that escapes a nursery in an exception group, and the
host and viewer nest several (the trio-asyncio loop, signaling, sessions).
Callers of ``Publisher.run`` / ``Watcher.run`` should be able to write
``except SignalingError``, so when exactly one error escapes we raise it bare.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def single_errors() -> Iterator[None]:
    """Re-raise a group holding exactly one exception as that exception."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        if len(leaves) != 1:
            raise
        raise leaves[0] from None


def _leaves(error: BaseException) -> Iterator[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    else:
        yield error
