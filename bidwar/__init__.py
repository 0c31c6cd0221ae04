"""bidwar: real-time live auctions with live video.

The package is split by concept: ``money`` and ``core`` are pure (no I/O);
``protocol`` turns wire frames into validated requests; the ``*_service``
modules and ``server`` do the networking with trio; ``media`` is the only
place that touches asyncio (aiortc, through trio-asyncio).
"""

__version__ = "0.1.0"
