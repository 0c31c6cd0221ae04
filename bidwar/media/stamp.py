"""Capture-time stamps drawn into the picture, read back after decoding.

The host writes the wall-clock capture time (milliseconds) into the top-left
corner of every frame as a grid of black and white cells; a viewer on the
same clock reads it back and subtracts, which gives glass-to-glass latency
through encoding, the network, the jitter buffer and decoding.

Why pixels rather than RTP timestamps or header extensions: the pixels are
the one thing that surely goes end to end unchanged in meaning, through any
codec, and a recording keeps them.

The grid is 12 x 4 cells of ``CELL`` pixels: 40 bits of the time (milliseconds
modulo 2**40, about 35 years, so the reader can restore the full value from
its own clock) and an 8-bit CRC. Cells are aligned to the codec's 8-pixel
blocks and use full black and white, so lossy coding only softens their
edges; the reader samples each cell's centre and thresholds at mid-grey. A
damaged stamp fails the CRC and is reported as unreadable, never as a wrong
time.
"""

import numpy as np

CELL = 8
COLUMNS = 12
ROWS = 4
TIME_BITS = 40
CRC_BITS = 8
WIDTH = CELL * COLUMNS
HEIGHT = CELL * ROWS
TIME_MODULUS = 1 << TIME_BITS

_CRC_POLYNOMIAL = 0x07


def stamp(image: np.ndarray, time_ms: int) -> None:
    """Draw ``time_ms`` into the top-left corner of a BGR or grey ``image``."""
    bits = _bits(time_ms % TIME_MODULUS)
    for index, bit in enumerate(bits):
        row, column = divmod(index, COLUMNS)
        y, x = row * CELL, column * CELL
        image[y : y + CELL, x : x + CELL] = 255 if bit else 0


def read_stamp(luma: np.ndarray, now_ms: int) -> int | None:
    """Return the time stamped in ``luma`` (a 2-D brightness array), or None.

    ``now_ms`` is the reader's clock; it restores the bits above 2**40 and
    must be within about 17 years of the stamp.
    """
    if luma.shape[0] < HEIGHT or luma.shape[1] < WIDTH:
        return None

    # Sample the centre of every cell, away from edges softened by coding.
    centre = slice(CELL // 4, CELL - CELL // 4)
    cells = luma[:HEIGHT, :WIDTH].reshape(ROWS, CELL, COLUMNS, CELL)
    means = cells[:, centre, :, centre].mean(axis=(1, 3))
    bits = (means.reshape(-1) > 127).astype(int).tolist()

    value = _value(bits)
    if value is None:
        return None
    return now_ms - ((now_ms - value) % TIME_MODULUS)


def _bits(value: int) -> list[int]:
    payload = value.to_bytes(TIME_BITS // 8, "big")
    word = (value << CRC_BITS) | _crc8(payload)
    total = TIME_BITS + CRC_BITS
    return [(word >> (total - 1 - i)) & 1 for i in range(total)]


def _value(bits: list[int]) -> int | None:
    word = 0
    for bit in bits:
        word = (word << 1) | bit
    value, check = word >> CRC_BITS, word & ((1 << CRC_BITS) - 1)
    if _crc8(value.to_bytes(TIME_BITS // 8, "big")) != check:
        return None
    return value


def _crc8(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ _CRC_POLYNOMIAL) if crc & 0x80 else crc << 1
            crc &= 0xFF
    return crc
