"""Guards for reading the files a user hands over: text encodings, zip archives and images.

Each guard turns what would be a traceback, a blow-up of memory or a silently garbled result into one
:class:`~fewshot.errors.FewShotError` naming the file (and the line or member) and what to do.

* **Text** (:func:`read_text`): UTF-8, UTF-8 with a byte-order mark, UTF-16 / UTF-32 with a byte-order mark.
  Anything else (Latin-1, Windows-1252, UTF-16 without a BOM, binary files) is refused naming the first line that is
  not UTF-8, rather than guessed: a wrong guess garbles every text it touches without a word.
* **Zips** (:func:`check_zip`): every member's declared size and compression ratio are checked against the limits
  below *before* any byte is inflated (``zipfile`` never inflates past a member's declared size, so the declared sizes
  are what reading can cost). Members with absolute paths or ``..`` are refused.
* **Images** (:func:`decode_image`): Pillow's decompression-bomb limit becomes a clear error (its warning too, from
  ``Image.MAX_IMAGE_PIXELS`` = 89 Mpx up); EXIF orientation is applied; transparency is composited onto a background
  opposite to the strokes (an image drawn only in its alpha channel keeps its strokes); 16-bit, 32-bit and float
  greyscale are scaled, not clipped; CMYK and other modes go through RGB.
"""

from __future__ import annotations

import codecs
import os
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from fewshot.errors import FewShotError

MiB = 1 << 20
MAX_TEXT_BYTES = 256 * MiB
"""Largest text file read (a support set or a list of queries is a few kilobytes to a few megabytes)."""
ZIP_MAX_MEMBER_BYTES = 64 * MiB
"""Largest declared uncompressed size of one zip member (an Omniglot PNG is about 1 KB)."""
ZIP_MAX_TOTAL_BYTES = 2048 * MiB
"""Largest declared uncompressed size of all the members of one zip together."""
ZIP_MAX_RATIO = 100
"""Largest compression ratio (uncompressed / compressed) of a member over :data:`ZIP_RATIO_FROM_BYTES`; images are
stored already compressed (ratio about 1), while a zip bomb's members inflate a thousandfold."""
ZIP_RATIO_FROM_BYTES = 1 * MiB
"""Members smaller than this may have any ratio (a small blank image compresses well and costs nothing)."""

_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def _mb(n: float) -> str:
    return f"{n / MiB:,.1f} MiB"


# --- text -----------------------------------------------------------------------------------------------------------


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """The text of ``path``: UTF-8 (with or without a BOM) or UTF-16 / UTF-32 with a BOM; else a clear error."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_TEXT_BYTES:
            raise FewShotError(f"{what} {path} is {_mb(size)}, more than the {_mb(MAX_TEXT_BYTES)} read; split it")
        raw = path.read_bytes()
    except FewShotError:
        raise
    except OSError as exc:
        raise FewShotError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    for bom, encoding in _BOMS:
        if raw.startswith(bom):
            try:
                return raw.decode(encoding)
            except UnicodeDecodeError as exc:
                raise FewShotError(f"{what} {path} starts with a {encoding.upper()} byte-order mark but is not valid "
                                   f"{encoding.upper()} (byte {exc.start}): save it again as UTF-8") from exc
    if b"\x00" in raw:
        line = raw.count(b"\n", 0, raw.index(b"\x00")) + 1
        raise FewShotError(f"{what} {path} holds NUL bytes (line {line}): it is a binary file, or UTF-16 without a "
                           "byte-order mark, not text; save it as UTF-8")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise FewShotError(f"{what} {path} is not UTF-8: line {line}, column {column} has byte "
                           f"0x{raw[exc.start]:02X} (Latin-1 or Windows-1252?); save it as UTF-8 (or UTF-16 with a "
                           "byte-order mark)") from exc


# --- zips -----------------------------------------------------------------------------------------------------------


def open_zip(path: str | os.PathLike) -> zipfile.ZipFile:
    """``path`` opened as a zip whose members passed :func:`check_zip`; a clear error if it is not a zip."""
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise FewShotError(f"{path} is not a valid zip file: {exc}") from exc
    try:
        check_zip(zf, path)
    except BaseException:
        zf.close()
        raise
    return zf


def check_zip(zf: zipfile.ZipFile, path: str | os.PathLike, max_member: int = ZIP_MAX_MEMBER_BYTES,
              max_total: int = ZIP_MAX_TOTAL_BYTES, max_ratio: float = ZIP_MAX_RATIO) -> None:
    """Refuse a zip whose members' declared sizes or compression ratios exceed the limits, or whose member paths are
    absolute or climb out with ``..`` (nothing is inflated to find out)."""
    total = 0
    for info in zf.infolist():
        name = info.filename
        posix = PurePosixPath(name.replace("\\", "/"))
        if posix.is_absolute() or ".." in posix.parts or (len(name) > 1 and name[1] == ":"):
            raise FewShotError(f"{path}: member {name!r} has an absolute path or '..'; refusing the zip")
        if info.is_dir():
            continue
        if info.file_size > max_member:
            raise FewShotError(f"{path}: member {name!r} declares {_mb(info.file_size)} uncompressed, more than the "
                               f"{_mb(max_member)} allowed per member (a zip bomb?); refusing the zip before reading "
                               "it")
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > ZIP_RATIO_FROM_BYTES and ratio > max_ratio:
            raise FewShotError(f"{path}: member {name!r} inflates {ratio:,.0f}-fold ({_mb(info.compress_size)} -> "
                               f"{_mb(info.file_size)}), more than the {max_ratio:g}-fold allowed (a zip bomb?); "
                               "refusing the zip before reading it")
        total += info.file_size
        if total > max_total:
            raise FewShotError(f"{path}: its members declare more than {_mb(max_total)} uncompressed in all; refusing "
                               "the zip before reading it")


# --- images ---------------------------------------------------------------------------------------------------------


def _flatten_transparency(image: Image.Image) -> Image.Image:
    """An RGB image with any transparency composited onto white, or onto black when the visible pixels are light
    (the background opposite to the strokes, so strokes drawn only in the alpha channel survive)."""
    rgba = image.convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.float64) / 255
    rgb = np.asarray(rgba.convert("RGB"), dtype=np.float64)
    if alpha.min() >= 1.0:
        return rgba.convert("RGB")
    weight = alpha.sum()
    luminance = rgb @ np.array([0.299, 0.587, 0.114])
    ink = float((luminance * alpha).sum() / weight) if weight > 0 else 0.0
    background = 255.0 if ink < 128 else 0.0
    out = rgb * alpha[..., None] + background * (1 - alpha[..., None])
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "RGB")


def _scaled_to_8_bits(image: Image.Image) -> Image.Image:
    """16-bit / 32-bit integer or float greyscale as 8-bit ``L``, scaled (Pillow's own conversion clips at 255)."""
    values = np.asarray(image)
    if image.mode == "F":
        values = values.astype(np.float64)
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
        top = float(values.max()) if values.size else 0.0
        values = values * 255 if top <= 1.0 else values
    else:
        values = values.astype(np.float64)
        top = float(values.max()) if values.size else 0.0
        if top > 255:
            values = values / (257 if top <= 65535 else top / 255)
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")


def decode_image(path: str | os.PathLike, channels: int, opener: Callable[[], Any] | None = None) -> Image.Image:
    """Decode the image at ``path`` as ``L`` (``channels=1``) or ``RGB`` (``channels=3``): EXIF orientation applied,
    transparency composited, high bit depths scaled. A clear error for an unreadable file, a decompression bomb, or an
    image that is one flat colour (nothing in it to classify)."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(opener() if opener else path) as image:
                image.load()
                image = ImageOps.exif_transpose(image) or image
                if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
                    image = _scaled_to_8_bits(image)
                elif image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
                    image = _flatten_transparency(image)
                elif image.mode not in ("1", "L", "RGB"):
                    image = image.convert("RGB")
                converted = image.convert("L" if channels == 1 else "RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise FewShotError(f"{path} is too large to decode safely ({exc}); images above "
                           f"{Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels are refused, resize it") from exc
    except MemoryError as exc:
        raise FewShotError(f"{path} is too large to decode in memory; resize it") from exc
    except FileNotFoundError as exc:
        raise FewShotError(f"{path} does not exist (a broken link?)") from exc
    except Exception as exc:  # Pillow raises many kinds (OSError, SyntaxError, struct.error, ...) on a corrupt file
        raise FewShotError(f"{path} is not a readable image ({type(exc).__name__}: {exc})") from exc
    low, high = _extrema(converted)
    if low == high:
        shown = low[0] if len(low) == 1 else tuple(low)
        raise FewShotError(f"{path} is a single flat colour (every pixel is {shown}, {image.width}x{image.height}): "
                           "there is nothing in it to classify; remove it or export it again")
    return converted


def _extrema(image: Image.Image) -> tuple[list[int], list[int]]:
    bands = image.getextrema()
    if image.mode == "L":
        bands = (bands,)
    return [b[0] for b in bands], [b[1] for b in bands]
