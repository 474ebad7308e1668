"""The user's own inputs: CSV / TSV / JSONL text, image folders, zips, and what `fewshot classify` answers.

Real inputs: Omniglot characters (from the official evaluation zip) written out as a user's PNG / JPEG class folders,
CLINC150 sentences written into CSVs, the real Omniglot zips (and crafted copies of them). The models are the shipped
``zoo/`` checkpoints and a pretrained MiniLM recipe that needs no training.
"""

from __future__ import annotations

import codecs
import functools
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from bad_input_harness import Case, copy_run, judge, run_case
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
ZOO = REPO / "zoo"
MAML = str(ZOO / "omniglot_5w1s_maml.safetensors")
REPTILE = str(ZOO / "omniglot_5w1s_reptile.safetensors")
PROTONET = str(ZOO / "omniglot_5w1s_protonet.safetensors")
TEXT_MODEL = "clinc150_5w5s_features_minilm"
DATA = Path(os.environ.get("FEWSHOT_TEST_DATA") or os.environ.get("FEWSHOT_DATA") or REPO.parent / "shared" / "data")

CHARS = ("Kannada/character01", "Keble/character02", "Tibetan/character03", "ULOG/character04",
         "Atemayar_Qelisayer/character05")
INTENTS = ("book_flight", "weather", "transfer", "recipe")


# --- real inputs ----------------------------------------------------------------------------------------------------


@functools.cache
def _drawings(char: str) -> list[bytes]:
    """The 20 original 105x105 PNGs (dark strokes on white) of an Omniglot test character."""
    with zipfile.ZipFile(DATA / "omniglot" / "images_evaluation.zip") as zf:
        names = sorted(n for n in zf.namelist() if n.startswith(f"images_evaluation/{char}/") and n.endswith(".png"))
        return [zf.read(n) for n in names]


def _image(char: str, i: int) -> Image.Image:
    return Image.open(io.BytesIO(_drawings(char)[i])).convert("L")


def _class(char: str) -> str:
    return char.replace("/", "_")


def _omniglot_folder(folder: Path, chars=CHARS[:4], shots: int = 1, queries: int = 5,
                     save=None, save_query=None) -> tuple[Path, Path]:
    """``folder/support/<class>/`` (``shots`` drawings each) and ``folder/queries/<class>__<i>.png``; ``save(image,
    path_stem)`` writes a support image (default: the original PNG bytes)."""
    support, query_dir = folder / "support", folder / "queries"
    query_dir.mkdir(parents=True, exist_ok=True)
    for char in chars:
        (support / _class(char)).mkdir(parents=True, exist_ok=True)
        for i in range(shots):
            stem = support / _class(char) / f"{i:02d}"
            if save is None:
                stem.with_suffix(".png").write_bytes(_drawings(char)[i])
            else:
                save(_image(char, i), stem)
        for i in range(shots, shots + queries):
            stem = query_dir / f"{_class(char)}__{i}"
            if save_query is None:
                stem.with_suffix(".png").write_bytes(_drawings(char)[i])
            else:
                save_query(_image(char, i), stem)
    return support, query_dir


def _rows(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def _images_correct(n: int, at_least: float = 0.8):
    """All ``n`` query images answered, at least ``at_least`` of them with the class in their file name."""
    def check(folder, out):
        rows = _rows(out)
        assert len(rows) == n, rows
        right = sum(Path(r["query"]).name.split("__")[0] == r["label"] for r in rows)
        assert right >= at_least * n, (right, rows)

    return check


@functools.cache
def _clinc() -> dict[str, list[str]]:
    data = json.loads((DATA / "clinc150" / "data_full.json").read_text())
    out: dict[str, list[str]] = {}
    for text, label in data["test"]:
        out.setdefault(label, []).append(text)
    return out


def _support_rows(intents=INTENTS, shots: int = 5) -> list[list[str]]:
    """``shots`` sentences of each intent, none holding a comma or a quote (the line numbers below stay fixed)."""
    plain = {i: [t for t in _clinc()[i] if "," not in t and '"' not in t] for i in intents}
    return [[t, i] for i in intents for t in plain[i][:shots]]


def _queries(intents=INTENTS, n: int = 3) -> list[tuple[str, str]]:
    return [(t, i) for i in intents for t in _clinc()[i][10:10 + n]]


def _text_correct(expected: list[str], at_least: float = 0.75):
    def check(folder, out):
        rows = _rows(out)
        assert len(rows) == len(expected), rows
        right = sum(r["label"] == e for r, e in zip(rows, expected))
        assert right >= at_least * len(expected), (right, rows)

    return check


def _csv_text(rows, header=("text", "label"), delimiter=",") -> str:
    import csv

    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _classify_text(content, name: str = "mine.csv", queries=None, *extra: str):
    """Classify CLINC150 queries against a support file holding ``content`` (text, bytes, or a function of the
    folder returning either)."""
    queries = [q for q, _ in _queries()] if queries is None else queries

    def setup(folder, data):
        body = content(folder) if callable(content) else content
        path = folder / name
        path.write_bytes(body if isinstance(body, bytes) else body.encode())
        return ["classify", TEXT_MODEL, name, *queries, "--json", *extra]

    return setup


# --- CSV / TSV / JSONL ----------------------------------------------------------------------------------------------


def _unterminated(folder):
    lines = _csv_text(_support_rows()).splitlines()
    lines[8] = '"' + lines[8]  # one stray quote at the start of a text on line 9: the rest of the file is one field
    return "\n".join(lines) + "\n"


def _closed_later(folder):
    text = _csv_text(_support_rows())
    lines = text.splitlines()
    lines[3] = '"' + lines[3]  # opened on line 4 ...
    lines[9] = lines[9].replace(",", '",', 1)  # ... and closed on line 10: lines 5-9 vanish into one text
    return "\n".join(lines) + "\n"


def _duplicate_text_column(folder):
    rows = [[t, i, f"note {n}"] for n, (t, i) in enumerate(_support_rows())]
    return _csv_text(rows, header=("text", "label", "text"))


def _empty_label(folder):
    rows = _support_rows()
    rows[12][1] = ""
    return _csv_text(rows)


def _one_class(folder):
    return _csv_text(_support_rows(intents=("weather",)))


def _latin1(folder):
    rows = _support_rows() + [["réserver un vol pour Zürich", "book_flight"]]
    return _csv_text(rows).encode("latin-1")


def _utf16(folder):
    return codecs.BOM_UTF16_LE + _csv_text(_support_rows()).encode("utf-16-le")


def _binary(folder):
    return (ZOO / "omniglot_5w1s_protonet.safetensors").read_bytes()[:4096]


def _huge_field(folder):
    rows = _support_rows()
    rows[3][0] = "please " * 30000  # 210,000 characters
    return _csv_text(rows)


def _more_fields(folder):
    text = _csv_text(_support_rows())
    lines = text.splitlines()
    lines[6] = "hello, I need a flight to Paris,book_flight"  # an unquoted comma inside the text
    return "\n".join(lines) + "\n"


def _fewer_fields(folder):
    lines = _csv_text(_support_rows()).splitlines()
    lines[8] = lines[8].rsplit(",", 1)[0].replace(",", " ")  # the label is gone
    return "\n".join(lines) + "\n"


def _all_labels_empty(folder):
    return _csv_text([[t, ""] for t, _ in _support_rows()])


def _header_only(folder):
    return "text,label\n"


def _tsv(folder):
    return _csv_text(_support_rows(), delimiter="\t")


def _tabs_in_csv(folder):
    return _csv_text(_support_rows(), delimiter="\t")


def _jsonl(folder):
    return "".join(json.dumps({"text": t, "label": i}) + "\n" for t, i in _support_rows())


def _jsonl_broken(folder):
    lines = [json.dumps({"text": t, "label": i}) for t, i in _support_rows()]
    lines[2] = lines[2][:-1]  # a missing closing brace
    return "\n".join(lines) + "\n"


def _jsonl_too_deep(folder):
    lines = [json.dumps({"text": t, "label": i}) for t, i in _support_rows()]
    lines[1] = '{"text": ' + "[" * 100_000 + "]" * 100_000 + ', "label": 0}'  # valid JSON, past Python's recursion
    return "\n".join(lines) + "\n"


def _queries_csv(content: bytes | None):
    def setup(folder, data):
        (folder / "mine.csv").write_text(_csv_text(_support_rows()))
        if content is not None:
            (folder / "queries.csv").write_bytes(content)
        return ["classify", TEXT_MODEL, "mine.csv", "--queries-csv", "queries.csv", "--json"]

    return setup


EXPECTED = [i for _, i in _queries()] if (DATA / "clinc150").exists() else []

TEXT_CASES = [
    Case("csv: a quote left open swallows the rest", "csv", _classify_text(_unterminated),
         match=r"quote opened on line 9 is never closed"),
    Case("csv: a quote closed rows later", "csv", _classify_text(_closed_later),
         match=r"runs from line 4 to line 10 .*looks like a row"),
    Case("csv: the text column twice", "csv", _classify_text(_duplicate_text_column),
         match=r"columns 1 and 3 are both named 'text'"),
    Case("csv: an empty label", "csv", _classify_text(_empty_label), match=r"empty label 'label' \(line 14\)"),
    Case("csv: one class only", "csv", _classify_text(_one_class), match=r"1 class\(es\).*at least 2"),
    Case("csv: Latin-1", "csv", _classify_text(_latin1), match=r"not UTF-8: line 22, column 2 has byte 0xE9"),
    Case("csv: UTF-16 with BOM", "csv", _classify_text(_utf16), expect="ok", check=_text_correct(EXPECTED)),
    Case("csv: a binary file", "csv", _classify_text(_binary), match=r"NUL bytes .*not text"),
    Case("csv: a 210,000-character field", "csv", _classify_text(_huge_field),
         match=r"line 5 has a field longer than 131,072 characters"),
    Case("csv: a row with more fields", "csv", _classify_text(_more_fields),
         match=r"line 7 has 3 field\(s\) but the header has 2.*in quotes"),
    Case("csv: a row with fewer fields", "csv", _classify_text(_fewer_fields),
         match=r"line 9 has 1 field\(s\) but the header has 2"),
    Case("csv: the label column empty", "csv", _classify_text(_all_labels_empty),
         match=r"label column 'label' is empty in all 20 rows"),
    Case("csv: a header only", "csv", _classify_text(_header_only), match=r"header but no rows"),
    Case("csv: an upper-case .TSV", "csv", _classify_text(_tsv, "MINE.TSV"), expect="ok",
         check=_text_correct(EXPECTED)),
    Case("csv: tab-separated but named .csv", "csv", _classify_text(_tabs_in_csv),
         match=r"header is one column, 'text\\tlabel': is the file tab-separated\? name it \.tsv"),
    Case("jsonl: support", "csv", _classify_text(_jsonl, "mine.jsonl"), expect="ok", check=_text_correct(EXPECTED)),
    Case("jsonl: a broken line", "csv", _classify_text(_jsonl_broken, "mine.jsonl"), match=r"line 3 is not JSON"),
    Case("jsonl: a line nested too deeply", "csv", _classify_text(_jsonl_too_deep, "mine.jsonl"),
         match=r"line 2 is JSON nested too deeply"),
    Case("classify: an empty sentence query", "classify",
         _classify_text(lambda f: _csv_text(_support_rows()), queries=["book me a flight to Rome", " ", "rain?"]),
         match=r"query 2 of 3 is empty"),
    Case("queries-csv: missing", "classify", _queries_csv(None), match=r"queries.csv does not exist"),
    Case("queries-csv: Latin-1", "classify", _queries_csv("text\nm\xe9t\xe9o demain\n".encode("latin-1")),
         match=r"queries.csv is not UTF-8: line 2"),
    Case("classify: a support file that does not exist", "classify",
         lambda f, d: ["classify", TEXT_MODEL, "nowhere.csv", "hello"], match=r"nowhere.csv does not exist"),
]


# --- image folders --------------------------------------------------------------------------------------------------


def _classify_images(model: str, make, *queries: str, chars=CHARS[:4], shots: int = 1):
    """``make(folder)`` writes the class folders (default: the original PNGs); queries default to the query folder."""
    def setup(folder, data):
        support, query_dir = make(folder) if make else _omniglot_folder(folder, chars, shots)
        return ["classify", model, str(support.relative_to(folder)), *(queries or [str(query_dir.relative_to(folder))]),
                "--json"]

    return setup


def _alpha_strokes(folder):
    """RGBA drawings whose strokes exist only in the alpha channel (colour black everywhere), as vector tools export."""
    def save(image, stem):
        alpha = Image.eval(image, lambda v: 255 - v)  # opaque where the (dark) strokes are
        rgba = Image.new("RGBA", image.size, (0, 0, 0, 0))
        rgba.putalpha(alpha)
        rgba.save(stem.with_suffix(".png"))

    return _omniglot_folder(folder, save=save, save_query=save)


def _white_alpha_strokes(folder):
    """The same with white ink: composited onto white it would vanish."""
    def save(image, stem):
        rgba = Image.new("RGBA", image.size, (255, 255, 255, 0))
        rgba.putalpha(Image.eval(image, lambda v: 255 - v))
        rgba.save(stem.with_suffix(".png"))

    return _omniglot_folder(folder, save=save, save_query=save)


def _exif_rotated(folder):
    """Support photos stored sideways with EXIF orientation 6 (display rotated 90 degrees clockwise), as phones do."""
    def save(image, stem):
        exif = Image.Exif()
        exif[0x0112] = 6
        image.transpose(Image.Transpose.ROTATE_90).save(stem.with_suffix(".jpg"), quality=95, exif=exif)

    return _omniglot_folder(folder, save=save)


def _nested(folder):
    """One class keeps its drawings in sub-folders (scans/2024/...), another has one drawing there and one directly."""
    support, queries = _omniglot_folder(folder, shots=2, queries=5)
    first, second = sorted(support.iterdir())[:2]
    for png in sorted(first.glob("*.png")):
        (first / "scans" / "2024").mkdir(parents=True, exist_ok=True)
        png.rename(first / "scans" / "2024" / png.name)
    (second / "more").mkdir()
    sorted(second.glob("*.png"))[0].rename(second / "more" / "extra.png")
    return support, queries


def _blank(folder):
    support, queries = _omniglot_folder(folder)
    for png in support.rglob("*.png"):
        Image.new("L", (105, 105), 255).save(png)
    return support, queries


def _one_pixel_query(folder):
    support, queries = _omniglot_folder(folder)
    Image.new("RGB", (1, 1), (30, 30, 30)).save(folder / "dot.png")
    return support, queries


def _huge_png(folder):
    support, queries = _omniglot_folder(folder)
    Image.new("1", (13400, 13400), 1).save(folder / "scan.png")  # 179.6 megapixels; 27 KB on disk
    return support, queries


def _corrupt(folder):
    support, queries = _omniglot_folder(folder)
    png = sorted(support.rglob("*.png"))[2]
    png.write_bytes(png.read_bytes()[:60])  # cut inside the image data
    return support, queries


def _no_images(folder):
    support, queries = _omniglot_folder(folder)
    (support / "zzz_notes").mkdir()
    (support / "zzz_notes" / "readme.txt").write_text("drawings to come")
    return support, queries


def _single_class(folder):
    return _omniglot_folder(folder, chars=CHARS[:1])


def _split_folders(folder):
    support, queries = _omniglot_folder(folder)
    (folder / "mine").mkdir()
    support.rename(folder / "mine" / "test")
    return folder / "mine", queries


def _link_loops(folder):
    support, queries = _omniglot_folder(folder)
    first = sorted(support.iterdir())[0]
    (first / "again").symlink_to(first, target_is_directory=True)  # a loop
    (first / "up").symlink_to(support, target_is_directory=True)  # a link to the folder above (all classes)
    (queries / "loop").symlink_to(queries, target_is_directory=True)
    return support, queries


def _nested_queries(folder):
    support, queries = _omniglot_folder(folder)
    for png in sorted(queries.glob("*.png")):
        sub = queries / png.name.split("__")[0] / "batch1"
        sub.mkdir(parents=True, exist_ok=True)
        png.rename(sub / png.name)
    (queries / ".thumbnails").mkdir()
    (queries / ".thumbnails" / "x.png").write_bytes(b"not an image")  # hidden: skipped
    return support, queries


def _empty_query_folder(folder):
    support, _ = _omniglot_folder(folder, queries=0)
    (folder / "empty").mkdir()
    return support, folder / "empty"


def _other_files(folder):
    support, queries = _omniglot_folder(folder)
    for d in support.iterdir():
        (d / "photo.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
        (d / "notes.txt").write_text("drawn on paper")
        (d / "._00.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # hidden (macOS): skipped
    return support, queries


def _cmyk_and_16bit(folder):
    def cmyk_jpeg(image, stem):
        image.convert("CMYK").save(stem.with_suffix(".jpg"), quality=95)

    def grey16_png(image, stem):
        smooth = np.asarray(image.resize((52, 52), Image.LANCZOS), dtype=np.uint16) * 257  # grey edges
        Image.fromarray(smooth).save(stem.with_suffix(".png"))

    return _omniglot_folder(folder, save=cmyk_jpeg, save_query=grey16_png)


def _five(folder):
    return _omniglot_folder(folder, chars=CHARS)


def _answer(label: str, at_least: float = 0.5):
    def check(folder, out):
        rows = _rows(out)
        assert rows and all(r["label"] == label and r["probability"] >= at_least for r in rows), rows

    return check


def _each_own_class(n: int):
    def check(folder, out):
        rows = _rows(out)
        assert len(rows) == n and all(Path(r["query"]).name.split("__")[0] == r["label"] for r in rows), rows

    return check


IMAGE_CASES = [
    Case("images: strokes only in the alpha channel", "images", _classify_images(PROTONET, _alpha_strokes),
         expect="ok", check=_images_correct(20)),
    Case("images: white strokes only in the alpha channel", "images",
         _classify_images(PROTONET, _white_alpha_strokes), expect="ok", check=_images_correct(20)),
    Case("images: EXIF orientation", "images", _classify_images(PROTONET, _exif_rotated), expect="ok",
         check=_images_correct(20)),
    Case("images: drawings in sub-folders of a class folder", "images", _classify_images(PROTONET, _nested),
         expect="ok", check=_images_correct(20)),
    Case("images: all blank", "images", _classify_images(PROTONET, _blank), match=r"00.png is a single flat colour"),
    Case("images: a 1x1 query", "images", _classify_images(PROTONET, _one_pixel_query, "dot.png"),
         match=r"dot.png is a single flat colour"),
    Case("images: a 180-megapixel PNG", "images", _classify_images(PROTONET, _huge_png, "scan.png"),
         match=r"scan.png is too large to decode safely"),
    Case("images: a corrupt image", "images", _classify_images(PROTONET, _corrupt),
         match=r"00.png is not a readable image"),
    Case("images: a class folder without images", "images", _classify_images(PROTONET, _no_images),
         match=r"zzz_notes has no images"),
    Case("images: one class only", "images", _classify_images(PROTONET, _single_class),
         match=r"1 class folder\(s\)"),
    Case("images: split folders for class folders", "images", _classify_images(PROTONET, _split_folders),
         match=r"holds split folders \(test\), not class folders"),
    Case("images: link loops in the folders", "images", _classify_images(PROTONET, _link_loops), expect="ok",
         check=_images_correct(20), timeout=60),
    Case("images: queries in a folder of folders", "images", _classify_images(PROTONET, _nested_queries),
         expect="ok", check=_images_correct(20)),
    Case("images: an empty query folder", "images", _classify_images(PROTONET, _empty_query_folder),
         match=r"no (query )?images"),
    Case("images: a query that does not exist", "images", _classify_images(PROTONET, None, "nowhere.png"),
         match=r"query image nowhere.png does not exist"),
    Case("images: files of other types beside the drawings", "images", _classify_images(PROTONET, _other_files),
         expect="ok", check=_images_correct(20)),
    Case("images: CMYK JPEG support, 16-bit PNG queries", "images", _classify_images(PROTONET, _cmyk_and_16bit),
         expect="ok", check=_images_correct(20)),
    Case("maml: one query alone", "classify",
         _classify_images(MAML, _five, "queries/ULOG_character04__3.png"), expect="ok",
         check=_answer("ULOG_character04")),
    Case("maml: two queries", "classify",
         _classify_images(MAML, _five, "queries/ULOG_character04__3.png",
                          "queries/Atemayar_Qelisayer_character05__1.png"),
         expect="ok", check=_each_own_class(2)),
    Case("reptile: one query alone", "classify",
         _classify_images(REPTILE, _five, "queries/Keble_character02__3.png"), expect="ok",
         check=_answer("Keble_character02")),
]


# --- zips -----------------------------------------------------------------------------------------------------------

MiB = 1 << 20


@functools.cache
def _background_members() -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(DATA / "omniglot" / "images_background.zip") as zf:
        return [(info.filename, zf.read(info) if not info.is_dir() else b"") for info in zf.infolist()]


def _omniglot_root(folder: Path, replace: dict[str, tuple[str, int]] | None = None, extra=(),
                   background: bytes | None = None) -> Path:
    """A data root whose background zip is a copy of the real one with members swapped (name -> (new name, bytes of
    zeros)) or added; the evaluation zip is the real one (linked)."""
    root = folder / "data" / "omniglot"
    root.mkdir(parents=True)
    (root / "images_evaluation.zip").symlink_to(DATA / "omniglot" / "images_evaluation.zip")
    if background is not None:
        (root / "images_background.zip").write_bytes(background)
        return folder / "data"
    replace = replace or {}
    # the big members are streamed in (deflated zeros: a few hundred KB on disk)
    with zipfile.ZipFile(root / "images_background.zip", "w") as out:
        for name, content in _background_members():
            if name in replace:
                new_name, zeros = replace[name]
                info = zipfile.ZipInfo(new_name)
                info.compress_type = zipfile.ZIP_DEFLATED
                with out.open(info, "w", force_zip64=True) as member:
                    block = bytes(MiB)
                    for _ in range(zeros // MiB):
                        member.write(block)
                continue
            out.writestr(name, content)
        for name, content in extra:
            out.writestr(name, content)
    return folder / "data"


def _first_png() -> str:
    return next(n for n, _ in _background_members() if n.endswith(".png"))


def _eval_with(make):
    def setup(folder, data):
        root = make(folder)
        return ["eval", PROTONET, "--episodes", "2", "--json", "--data-root", str(root.relative_to(folder)),
                "train.threads=1"]

    return setup


def _episodes(n: int):
    def check(folder, out):
        result = json.loads(out.splitlines()[-1])
        assert result["episodes"] == n and result["accuracy"] > 0.7, result

    return check


ZIP_CASES = [
    Case("zip: a member of 200 MiB of zeros", "zip",
         _eval_with(lambda f: _omniglot_root(f, {_first_png(): (_first_png(), 200 * MiB)})),
         match=r"declares 200\.0 MiB uncompressed, more than the 64\.0 MiB allowed per member",
         env={"FEWSHOT_CACHE": "{case}/cache"}),
    Case("zip: a member inflating a thousandfold", "zip",
         _eval_with(lambda f: _omniglot_root(f, {_first_png(): (_first_png(), 20 * MiB)})),
         match=r"inflates [\d,]+-fold .* more than the 100-fold allowed", env={"FEWSHOT_CACHE": "{case}/cache"}),
    Case("zip: a member climbing out with ..", "zip",
         _eval_with(lambda f: _omniglot_root(f, extra=[("../evil.png", b"x")])), match=r"'\.\./evil\.png'",
         env={"FEWSHOT_CACHE": "{case}/cache"}),
    Case("zip: not a zip", "zip", _eval_with(lambda f: _omniglot_root(f, background=b"PK\x03\x04 truncated")),
         match=r"images_background.zip is not a valid zip file", env={"FEWSHOT_CACHE": "{case}/cache"}),
    Case("zip: the real Omniglot zips still load", "zip", _eval_with(lambda f: _omniglot_root(f)), expect="ok",
         check=_episodes(2), env={"FEWSHOT_CACHE": "{case}/cache"}, timeout=600),
]

CASES = TEXT_CASES + IMAGE_CASES + ZIP_CASES


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_case(case, tmp_path, data_root):
    judge(case, run_case(case, tmp_path / "case", data_root), tmp_path / "case")


# --- a user's answer does not depend on what else they asked (in-process: the same answers, not just the label) ----


@pytest.mark.parametrize("model", ["zoo maml", "zoo reptile", "tiny maml run"])
def test_each_answer_is_the_same_alone_and_among_others(model, tmp_path, data_root):
    from fewshot.classify import classify

    path = {"zoo maml": MAML, "zoo reptile": REPTILE}.get(model) or str(copy_run("maml", data_root, tmp_path / "r"))
    support, queries = _omniglot_folder(tmp_path / "f", chars=CHARS, queries=3)
    files = sorted(str(p) for p in queries.glob("*.png"))
    together = {p.query: p for p in classify(path, support, files)}
    for query in files[::4]:
        alone = classify(path, support, [query])[0]
        pair = classify(path, support, [query, files[0]])[0]
        for other in (together[query], pair):
            assert other.label == alone.label
            assert other.scores == pytest.approx(alone.scores, abs=1e-5)
