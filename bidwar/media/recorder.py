"""Writes the frames a viewer receives to a playable video file (via av)."""

from __future__ import annotations

import fractions
from pathlib import Path

import av

# Millisecond timestamps keep the recording's timing true to arrival even when
# frames were late or dropped (a variable frame rate, which MP4 allows).
TIME_BASE = fractions.Fraction(1, 1000)


class Recorder:
    """Encodes frames into ``path`` (H.264 in the container the name implies).

    Blocking: call ``write`` and ``close`` from a worker thread, one at a time.
    """

    def __init__(self, path: Path) -> None:
        self._container = av.open(str(path), mode="w")
        self._stream: av.VideoStream | None = None
        self._last_pts = -1
        self.frames = 0

    def write(self, frame: av.VideoFrame, at_ms: int) -> None:
        """Add ``frame``, received ``at_ms`` milliseconds after recording began."""
        if self._stream is None:
            self._stream = self._open_stream(frame.width, frame.height)
        if (frame.width, frame.height) != (self._stream.width, self._stream.height):
            frame = frame.reformat(width=self._stream.width, height=self._stream.height)

        out = frame.reformat(format="yuv420p")
        out.pts = max(at_ms, self._last_pts + 1)
        out.time_base = TIME_BASE
        self._last_pts = out.pts
        self._container.mux(self._stream.encode(out))
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and finish the file; safe to call twice."""
        if self._container is None:
            return
        if self._stream is not None:
            self._container.mux(self._stream.encode(None))
        self._container.close()
        self._container = None

    def _open_stream(self, width: int, height: int) -> av.VideoStream:
        stream = self._container.add_stream("libx264", rate=30)
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        stream.time_base = TIME_BASE
        stream.codec_context.time_base = TIME_BASE
        stream.options = {"preset": "veryfast"}
        return stream
