"""Where the host's pictures come from: a test pattern, a camera, or a file.

Every source returns BGR ``numpy`` images of exactly the requested size, one
per ``read()``. ``read()`` may block (a camera waits for its next frame), so
callers run it in a worker thread unless ``blocking`` is False.
"""

import datetime
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np


class CameraError(Exception):
    """A source cannot be opened or read; the message is one line for users."""


class FrameSource(Protocol):
    size: tuple[int, int]
    blocking: bool

    def read(self) -> np.ndarray: ...

    def close(self) -> None: ...


def open_camera(spec: str, size: tuple[int, int], fps: int) -> FrameSource:
    """Open ``spec``: ``fake``, a device index such as ``0``, or a video file."""
    if spec == "fake":
        return FakeCamera(size)

    # OpenCV reports a missing device on stderr from several backends at
    # once; our CameraError says it in one line instead.
    with _quiet_opencv():
        if spec.isdigit():
            return DeviceCamera(int(spec), size, fps)
        return FileCamera(Path(spec), size)


def default_camera_spec() -> str:
    """``0`` when a video device exists, otherwise the test pattern."""
    return "0" if os.path.exists("/dev/video0") else "fake"


class FakeCamera:
    """A moving test pattern showing the wall-clock time and the frame number.

    Motion matters: a still picture compresses to almost nothing and would
    make encoder and network figures look better than a real camera's.
    """

    blocking = False

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = size
        self._frame_number = 0
        self._background = _gradient(size)

    def read(self) -> np.ndarray:
        width, height = self.size
        image = self._background.copy()
        self._frame_number += 1

        # A bar sweeping across and a box bouncing down keep every region busy.
        bar_x = (self._frame_number * 8) % width
        image[:, bar_x : bar_x + 16] = (255, 255, 255)
        box_y = (self._frame_number * 5) % max(1, height - 60)
        box_x = width // 2 - 40
        cv2.rectangle(image, (box_x, box_y), (box_x + 80, box_y + 60), (0, 0, 255), -1)

        now = datetime.datetime.now().strftime("%H:%M:%S.%f")[:-3]
        scale = max(0.4, width / 640)
        for line, text in enumerate((now, f"frame {self._frame_number}")):
            origin = (16, height - 16 - int(line * 36 * scale))
            cv2.putText(
                image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 5
            )
            cv2.putText(
                image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 2
            )
        return image

    def close(self) -> None:
        pass


class DeviceCamera:
    """An OpenCV capture device (``/dev/videoN`` on Linux)."""

    blocking = True

    def __init__(self, index: int, size: tuple[int, int], fps: int) -> None:
        self.size = size
        self._capture = cv2.VideoCapture(index)
        if not self._capture.isOpened():
            raise CameraError(f"no camera at index {index}")
        width, height = size
        self._capture.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        self._capture.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        self._capture.set(cv2.CAP_PROP_FPS, fps)
        ok, _ = self._capture.read()
        if not ok:
            self._capture.release()
            raise CameraError(f"camera {index} opened but gives no pictures")

    def read(self) -> np.ndarray:
        ok, image = self._capture.read()
        if not ok:
            raise CameraError("the camera stopped giving pictures")
        return _fit(image, self.size)

    def close(self) -> None:
        self._capture.release()


class FileCamera:
    """A video file played in a loop (at the host's frame rate, not the file's)."""

    blocking = True

    def __init__(self, path: Path, size: tuple[int, int]) -> None:
        self.size = size
        if not path.is_file():
            raise CameraError(f"no such video file: {path}")
        self._capture = cv2.VideoCapture(str(path))
        ok, _ = self._capture.read() if self._capture.isOpened() else (False, None)
        if not ok:
            self._capture.release()
            raise CameraError(f"cannot read video from {path}")
        self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)

    def read(self) -> np.ndarray:
        ok, image = self._capture.read()
        if not ok:
            # End of file: start again from the first frame.
            self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, image = self._capture.read()
            if not ok:
                raise CameraError("the video file can no longer be read")
        return _fit(image, self.size)

    def close(self) -> None:
        self._capture.release()


@contextmanager
def _quiet_opencv() -> Iterator[None]:
    previous = cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(previous)


def _fit(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if (image.shape[1], image.shape[0]) == size:
        return image
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _gradient(size: tuple[int, int]) -> np.ndarray:
    width, height = size
    x = np.linspace(0, 255, width, dtype=np.float32)
    y = np.linspace(0, 255, height, dtype=np.float32)
    image = np.empty((height, width, 3), np.uint8)
    image[..., 0] = x[np.newaxis, :]
    image[..., 1] = y[:, np.newaxis]
    image[..., 2] = 128
    return image
