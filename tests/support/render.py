"""Headless Chromium for the report's rendering test: take a screenshot, read its pixels.

Debian's `chromium` package (installed by `make test` when run as root). A test that needs it
and does not find it skips with the reason, except under CI=true, where that is a failure: CI
must prove the rendering. PNG is read with zlib from the standard library.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from debian_tools import need

TIMEOUT = 90.0  # a cold start on a loaded 2-core machine


def require_chromium() -> str:
    """The chromium binary; without it, skip (fail under CI=true) saying how to get it."""
    return need("chromium", "chromium")


def screenshot(page: Path, png: Path, width: int, height: int, trim: bool = False) -> None:
    """Render the HTML file `page` in a `width` x `height` window and save it as `png`.

    With `trim`, the window is then made just tall enough for the content (a second render), so
    the picture ends with the page.
    """
    binary = require_chromium()
    _shoot(binary, page, png, width, height)
    if trim:
        image = read_png(png)
        background = image.pixel(2, image.height - 2)
        bottom = next(
            (
                y
                for y in range(image.height - 1, -1, -1)
                if any(image.pixel(x, y) != background for x in range(0, image.width, 4))
            ),
            image.height - 1,
        )
        _shoot(binary, page, png, width, min(height, bottom + 21))


def _shoot(binary: str, page: Path, png: Path, width: int, height: int) -> None:
    png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="tailmail-chromium-") as profile:
        result = subprocess.run(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--force-device-scale-factor=1",
                f"--user-data-dir={profile}",
                f"--screenshot={png}",
                f"--window-size={width},{height}",
                page.absolute().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            env={**os.environ, "HOME": profile},
        )
    if result.returncode != 0 or not png.exists():
        raise AssertionError(
            f"chromium failed with {result.returncode}, no {png}:\n{result.stderr[-3000:]}"
        )


@dataclass(frozen=True)
class Image:
    width: int
    height: int
    channels: int  # 3 (RGB) or 4 (RGBA)
    rows: list[bytes]  # unfiltered, `width * channels` bytes each

    def pixel(self, x: int, y: int) -> tuple[int, int, int]:
        i = x * self.channels
        r, g, b = self.rows[y][i : i + 3]
        return r, g, b


def read_png(path: Path) -> Image:
    """Decode an 8-bit RGB or RGBA, non-interlaced PNG (what Chromium writes)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    pos, idat = 8, []
    width = height = channels = 0
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height = int.from_bytes(body[0:4], "big"), int.from_bytes(body[4:8], "big")
            depth, colour, interlace = body[8], body[9], body[12]
            assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    raw = zlib.decompress(b"".join(idat))
    stride = width * channels
    rows: list[bytes] = []
    previous = bytes(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        _unfilter(kind, line, previous, channels)
        previous = bytes(line)
        rows.append(previous)
    return Image(width, height, channels, rows)


def _unfilter(kind: int, line: bytearray, up: bytes, bpp: int) -> None:
    if kind == 0:
        return
    if kind == 2:
        line[:] = bytes((a + b) & 0xFF for a, b in zip(line, up, strict=True))
        return
    for i in range(len(line)):
        left = line[i - bpp] if i >= bpp else 0
        if kind == 1:
            line[i] = (line[i] + left) & 0xFF
        elif kind == 3:
            line[i] = (line[i] + ((left + up[i]) >> 1)) & 0xFF
        elif kind == 4:
            corner = up[i - bpp] if i >= bpp else 0
            p = left + up[i] - corner
            pa, pb, pc = abs(p - left), abs(p - up[i]), abs(p - corner)
            predictor = left if pa <= pb and pa <= pc else up[i] if pb <= pc else corner
            line[i] = (line[i] + predictor) & 0xFF
        else:
            raise AssertionError(f"unknown PNG filter {kind}")
