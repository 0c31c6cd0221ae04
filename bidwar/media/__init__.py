"""Live video for bidwar: capture, encode once, fan out over WebRTC, watch.

Modules, by concept:

- ``camera``: frame sources (moving test pattern, OpenCV device, looped file);
- ``stamp``: the capture-time barcode used to measure glass-to-glass latency;
- ``encoder``: the host's single H.264 encoder;
- ``broadcast``: hands each encoded packet to every viewer's bounded queue;
- ``bridge``: the only module that imports asyncio or aiortc; it runs aiortc
  inside trio-asyncio and offers trio-facing peer connections;
- ``signaling_client``: the host's and viewers' side of docs/signaling.md;
- ``publisher`` / ``watcher``: what ``python -m bidwar.host`` and
  ``python -m bidwar.viewer`` do, importable and testable;
- ``recorder``, ``viewer_stats``: the viewer's file output and figures.
"""
