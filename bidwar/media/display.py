"""An OpenCV window showing the frames a viewer receives."""

from __future__ import annotations

import os

import av
import cv2

WINDOW = "bidwar"
QUIT_KEYS = {ord("q"), 27}


def display_available() -> bool:
    """Whether a window can be opened (an X or Wayland display is set)."""
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


class Display:
    """Shows frames; must be used from one thread (HighGUI requires it)."""

    def __init__(self) -> None:
        cv2.namedWindow(WINDOW, cv2.WINDOW_AUTOSIZE)

    def show(self, frame: av.VideoFrame) -> bool:
        """Show ``frame``; False once the user pressed q/Esc or closed the window."""
        cv2.imshow(WINDOW, frame.to_ndarray(format="bgr24"))
        key = cv2.waitKey(1) & 0xFF
        if key in QUIT_KEYS:
            return False
        return cv2.getWindowProperty(WINDOW, cv2.WND_PROP_VISIBLE) >= 1

    def close(self) -> None:
        cv2.destroyWindow(WINDOW)
        cv2.waitKey(1)
