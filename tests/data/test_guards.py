"""The guards on a user's files (fewshot.data.guards), on real Omniglot drawings and CLINC150 sentences:
text encodings, zip limits checked before anything is inflated, and images decoded as they look."""

from __future__ import annotations

import codecs
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fewshot.data import guards
from fewshot.data.guards import check_zip, decode_image, open_zip, read_text
from fewshot.errors import FewShotError


@pytest.fixture(scope="module")
def drawing(data_root) -> Image.Image:
    """A real Omniglot drawing (105x105, dark strokes on white) as ``L``."""
    with zipfile.ZipFile(data_root / "omniglot" / "images_evaluation.zip") as zf:
        name = sorted(n for n in zf.namelist() if n.endswith(".png"))[0]
        return Image.open(io.BytesIO(zf.read(name))).convert("L")


# --- text -----------------------------------------------------------------------------------------------------------

SENTENCE = "réserve un vol pour Zürich, s'il te plaît\n"


@pytest.mark.parametrize("encoding,bom", [("utf-8", b""), ("utf-8", codecs.BOM_UTF8),
                                          ("utf-16-le", codecs.BOM_UTF16_LE), ("utf-16-be", codecs.BOM_UTF16_BE),
                                          ("utf-32-le", codecs.BOM_UTF32_LE)])
def test_text_in_unicode_encodings_with_their_mark(tmp_path, encoding, bom):
    path = tmp_path / "t.csv"
    path.write_bytes(bom + ("text,label\n" + SENTENCE).encode(encoding))
    assert read_text(path) == "text,label\n" + SENTENCE


def test_other_encodings_and_binary_are_refused_naming_the_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(("text,label\nok,a\n" + SENTENCE).encode("latin-1"))
    with pytest.raises(FewShotError, match=r"not UTF-8: line 3, column 2 has byte 0xE9"):
        read_text(path)
    path.write_bytes(("text,label\n" + SENTENCE).encode("utf-16-le"))  # no byte-order mark
    with pytest.raises(FewShotError, match=r"NUL bytes \(line 1\)"):
        read_text(path)
    with pytest.raises(FewShotError, match="cannot read"):
        read_text(tmp_path)


# --- zips -----------------------------------------------------------------------------------------------------------


def _zip(path: Path, members: dict[str, int | bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in members.items():
            if isinstance(content, bytes):
                zf.writestr(name, content)
            else:
                with zf.open(name, "w", force_zip64=True) as member:
                    for _ in range(content // (1 << 20)):
                        member.write(bytes(1 << 20))
    return path


def test_zip_limits_are_checked_before_inflating(tmp_path, monkeypatch):
    big = _zip(tmp_path / "big.zip", {"a.png": b"x", "b.png": 200 << 20})
    assert big.stat().st_size < 1 << 20  # 200 MiB of zeros inflated from a few hundred KB
    inflated = []
    monkeypatch.setattr(zipfile.ZipFile, "read", lambda *a, **k: inflated.append(a) or b"")
    with pytest.raises(FewShotError, match=r"'b.png' declares 200.0 MiB uncompressed, more than the 64.0 MiB"):
        open_zip(big)
    ratio = _zip(tmp_path / "ratio.zip", {"c.png": 20 << 20})
    with pytest.raises(FewShotError, match=r"'c.png' inflates [\d,]+-fold .*100-fold"):
        open_zip(ratio)
    many = _zip(tmp_path / "many.zip", {f"{i}.png": 2 << 20 for i in range(3)})
    with zipfile.ZipFile(many) as zf:
        with pytest.raises(FewShotError, match="more than 4.0 MiB uncompressed in all"):
            check_zip(zf, many, max_total=4 << 20, max_ratio=1e9)
        check_zip(zf, many, max_ratio=1e9)  # within the default limits
    assert not inflated


@pytest.mark.parametrize("name", ["../evil.png", "/etc/evil.png", "a/../../evil.png", "C:/evil.png", "..\\evil.png"])
def test_zip_member_paths_that_climb_out_are_refused(tmp_path, name):
    with pytest.raises(FewShotError, match="absolute path or '..'"):
        open_zip(_zip(tmp_path / "x.zip", {"ok/a.png": b"x", name: b"x"}))


def test_not_a_zip(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(FewShotError, match="not a valid zip file"):
        open_zip(tmp_path / "x.zip")


def test_the_real_omniglot_zips_pass(data_root):
    for name in ("images_background.zip", "images_evaluation.zip"):
        open_zip(data_root / "omniglot" / name).close()


# --- images ---------------------------------------------------------------------------------------------------------


def _l(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_strokes_only_in_the_alpha_channel_keep_their_strokes(drawing, tmp_path):
    ink = Image.eval(drawing, lambda v: 255 - v)
    for colour, background in (((0, 0, 0), 255), ((255, 255, 255), 0)):
        rgba = Image.new("RGBA", drawing.size, (*colour, 0))
        rgba.putalpha(ink)
        rgba.save(tmp_path / "a.png")
        got = _l(decode_image(tmp_path / "a.png", 1))
        want = _l(drawing) if background == 255 else 255 - _l(drawing)
        assert np.abs(got - want).max() <= 1
    la = Image.merge("LA", (Image.new("L", drawing.size, 0), ink))
    la.save(tmp_path / "la.png")
    assert np.abs(_l(decode_image(tmp_path / "la.png", 1)) - _l(drawing)).max() <= 1
    palette = drawing.convert("P")
    palette.info["transparency"] = int(np.asarray(palette)[0, 0])  # the background colour made transparent
    palette.save(tmp_path / "p.png", transparency=palette.info["transparency"])
    assert np.abs(_l(decode_image(tmp_path / "p.png", 1)) - _l(drawing)).max() <= 1


@pytest.mark.parametrize("orientation,stored", [(6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270),
                                                (3, Image.Transpose.ROTATE_180)])
def test_exif_orientation_is_applied(drawing, tmp_path, orientation, stored):
    exif = Image.Exif()
    exif[0x0112] = orientation
    drawing.transpose(stored).save(tmp_path / "e.png", exif=exif)
    assert np.array_equal(_l(decode_image(tmp_path / "e.png", 1)), _l(drawing))


def test_high_bit_depths_are_scaled_and_cmyk_converted(drawing, tmp_path):
    grey = drawing.resize((52, 52), Image.LANCZOS)  # grey anti-aliased edges
    Image.fromarray(np.asarray(grey, dtype=np.uint16) * 257).save(tmp_path / "g16.png")
    assert np.array_equal(_l(decode_image(tmp_path / "g16.png", 1)), _l(grey))
    Image.fromarray(np.asarray(grey, dtype=np.float32) / 255).save(tmp_path / "f.tiff")
    assert np.abs(_l(decode_image(tmp_path / "f.tiff", 1)) - _l(grey)).max() <= 1
    drawing.convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    assert np.abs(_l(decode_image(tmp_path / "c.jpg", 1)) - _l(drawing)).mean() < 8
    assert decode_image(tmp_path / "c.jpg", 3).mode == "RGB"


def test_flat_bomb_and_unreadable_images_are_named(tmp_path):
    Image.new("RGB", (1, 1), (9, 9, 9)).save(tmp_path / "dot.png")
    with pytest.raises(FewShotError, match=r"dot.png is a single flat colour \(every pixel is 9, 1x1\)"):
        decode_image(tmp_path / "dot.png", 1)
    with pytest.raises(FewShotError, match=r"every pixel is \(9, 9, 9\)"):
        decode_image(tmp_path / "dot.png", 3)
    Image.new("1", (13400, 13400), 1).save(tmp_path / "huge.png")
    with pytest.raises(FewShotError, match=r"huge.png is too large to decode safely"):
        decode_image(tmp_path / "huge.png", 1)
    Image.new("1", (10000, 9000), 1).save(tmp_path / "warned.png")  # 90 Mpx: Pillow would only warn
    with pytest.raises(FewShotError, match=r"above 89 megapixels"):
        decode_image(tmp_path / "warned.png", 1)
    (tmp_path / "x.png").write_text("<html>404</html>")
    with pytest.raises(FewShotError, match=r"x.png is not a readable image"):
        decode_image(tmp_path / "x.png", 1)
    with pytest.raises(FewShotError, match=r"gone.png does not exist"):
        decode_image(tmp_path / "gone.png", 1)
    assert guards.ZIP_MAX_RATIO == 100  # the limits the messages and the README state
