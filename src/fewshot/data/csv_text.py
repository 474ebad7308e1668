"""A user's own labelled text as a class data set: a CSV / TSV file with a header, or JSON Lines.

The CSV has a header; one column holds the text and one the label (names configurable; matched after trimming
spaces). ``.tsv`` files are tab-separated. A ``.jsonl`` file holds one JSON object per line with the same two keys.
``path`` may contain ``{split}`` (``mydata_{split}.csv``) so that train / val / test come from different files;
without it every split reads the same file (fine for a quick look, not for honest evaluation).

The file is read whole and checked, so that no class is lost or scrambled without a word: encodings other than UTF-8
(with or without BOM) and UTF-16 / UTF-32 with a BOM are refused naming the line
(:func:`fewshot.data.guards.read_text`); so are a quote left open (it would swallow the rows after it), a row with
more or fewer fields than the header, a text or label column named twice, a text without a label, a label column
empty throughout, a field over the CSV module's size limit, and fewer than two classes. Rows whose text is empty are
skipped.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

from fewshot.data.guards import read_text
from fewshot.data.text import TextClassDataset
from fewshot.errors import FewShotError
from fewshot.io import JSONReadError, parse_json

SUFFIXES = (".csv", ".tsv", ".jsonl")
"""The text files this module reads (anything else is read as CSV)."""


@dataclass
class Row:
    line: int
    """Line of the file where the row starts (1-based; the header is line 1 of a CSV)."""
    last: int
    """Line where it ends (a quoted field may span lines)."""
    fields: list[str]


def default_delimiter(path: str | os.PathLike) -> str:
    return "\t" if Path(path).suffix.lower() == ".tsv" else ","


def _describe(delimiter: str) -> str:
    return {"\t": "tab", ",": "comma", ";": "semicolon"}.get(delimiter, repr(delimiter))


def read_csv(
    path: str | os.PathLike, delimiter: str | None = None, what: str = "CSV file"
) -> tuple[list[str], list[Row]]:
    """The header (names trimmed) and the rows of a CSV / TSV file, each row with the lines it spans.

    Clear errors for an undecodable file, a quote left open, a field over the size limit, an empty file, and a row
    with more or fewer fields than the header (extra empty fields at the end of a row are allowed).
    """
    path = Path(path)
    if not path.is_file():
        raise FewShotError(f"{what} {path} does not exist" if not path.exists() else f"{what} {path} is not a file")
    delimiter = delimiter or default_delimiter(path)
    if len(delimiter) != 1:
        raise FewShotError(f"the delimiter must be one character, got {delimiter!r}")
    text = read_text(path, what)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows: list[Row] = []
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            message = str(exc)
            if "field larger than field limit" in message:
                raise FewShotError(f"{path}: the row starting at line {start} has a field longer than "
                                   f"{csv.field_size_limit():,} characters (a quote left open that swallows the rest "
                                   "of the file? else shorten the text)") from exc
            if "unexpected end of data" in message:
                raise FewShotError(f"{path}: the quote opened on line {start} is never closed, so it would swallow "
                                   f"lines {start}-{reader.line_num}; close it, or double a quote inside a quoted text "
                                   '("")') from exc
            where = f"line {start}" if reader.line_num == start else f"the row starting at line {start}"
            raise FewShotError(f"{path}: {where} is not valid CSV (line {reader.line_num}: {message}): a quote left "
                               "open? quote texts holding the delimiter or quotes, doubling the quotes inside them "
                               '("a ""quoted"" word, here")') from exc
        if fields:  # a blank line
            rows.append(Row(start, reader.line_num, fields))
    if not rows:
        raise FewShotError(f"{path} is empty: expected a header row naming the columns")
    header = [h.strip() for h in rows[0].fields]
    if len(header) == 1:
        for other in ("\t", ",", ";"):
            if other != delimiter and other in header[0]:
                raise FewShotError(f"{path}: the header is one column, {header[0]!r}: is the file "
                                   f"{_describe(other)}-separated? "
                                   + {"\t": "name it .tsv", ",": "name it .csv"}.get(other, "save it comma-separated"))
    body = rows[1:]
    for row in body:
        extra = row.fields[len(header):]
        if len(row.fields) < len(header) or any(f.strip() for f in extra):
            hint = (f": a text holding a {_describe(delimiter)} must be in quotes"
                    if len(row.fields) > len(header) else "")
            raise FewShotError(f"{path}: line {row.line} has {len(row.fields)} field(s) but the header has "
                               f"{len(header)} ({', '.join(repr(h) for h in header)}){hint}")
        del row.fields[len(header):]
    return header, body


def find_column(path: Path, header: list[str], column: str, role: str, hint: str = "") -> int:
    """The index of the one column of ``header`` named ``column`` (the file's ``role`` column); a clear error when
    there is none (``hint``: how to name another) or more than one."""
    wanted = column.strip()
    where = [i for i, h in enumerate(header) if h == wanted]
    if not where:
        raise FewShotError(f"{path} has no {role} column {column!r}; its columns are "
                           f"{', '.join(repr(h) for h in header)}{hint}")
    if len(where) > 1:
        raise FewShotError(f"{path}: columns {' and '.join(str(i + 1) for i in where)} are both named {wanted!r}; "
                           f"rename one so that the {role} column is clear")
    return where[0]


def _check_swallowed(path: Path, rows: list[Row], text_at: int, label_at: int, labels: set[str],
                     delimiter: str, width: int) -> None:
    """A quoted text spanning lines that holds whole rows of the file (a label seen elsewhere in the label column's
    place) is a quote left open that a later quote happened to close: refuse it rather than lose those rows."""
    for row in rows:
        if row.last == row.line:
            continue
        for field in row.fields:
            for inner in field.splitlines()[1:]:
                try:
                    parsed = next(csv.reader([inner], delimiter=delimiter))
                except (csv.Error, StopIteration):
                    continue
                if len(parsed) == width and parsed[label_at].strip() in labels and parsed[text_at].strip():
                    raise FewShotError(f"{path}: a quoted field runs from line {row.line} to line {row.last} and "
                                       f"holds what looks like a row of its own ({inner.strip()[:60]!r}): a quote "
                                       "left open? close it, or double a quote inside a quoted text (\"\")")


def _pairs_from_csv(path: Path, text_column: str, label_column: str, delimiter: str) -> list[tuple[int, str, str]]:
    header, rows = read_csv(path, delimiter)
    text_at = find_column(path, header, text_column, "text")
    label_at = find_column(path, header, label_column, "label")
    if text_at == label_at:
        raise FewShotError(f"the text and label columns are the same column {header[text_at]!r}")
    labels = {row.fields[label_at].strip() for row in rows} - {""}
    _check_swallowed(path, rows, text_at, label_at, labels, delimiter, len(header))
    return [(row.line, row.fields[text_at], row.fields[label_at]) for row in rows]


def _pairs_from_jsonl(path: Path, text_column: str, label_column: str) -> list[tuple[int, str, str]]:
    if not path.is_file():
        raise FewShotError(f"JSON Lines file {path} does not exist")
    pairs = []
    for number, line in enumerate(read_text(path, "JSON Lines file").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = parse_json(line)
        except JSONReadError as exc:
            raise FewShotError(f"{path}: line {number} is {exc}; a .jsonl file holds one JSON object per line"
                               ) from exc
        if not isinstance(item, dict):
            raise FewShotError(f"{path}: line {number} is a JSON {type(item).__name__}, not an object with keys "
                               f"{text_column!r} and {label_column!r}")
        values = []
        for role, key in (("text", text_column), ("label", label_column)):
            value = item.get(key)
            if value is None:
                raise FewShotError(f"{path}: line {number} has no {role} key {key!r}; its keys are "
                                   f"{', '.join(repr(k) for k in item) or 'none'}")
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise FewShotError(f"{path}: line {number}: the {role} {key!r} must be a string, got "
                                   f"{type(value).__name__}")
            values.append(value if isinstance(value, str) else str(value))
        pairs.append((number, values[0], values[1]))
    if not pairs:
        raise FewShotError(f"{path} is empty: expected one JSON object per line with keys {text_column!r} and "
                           f"{label_column!r}")
    return pairs


def load_csv_text(
    path: str | os.PathLike, text_column: str = "text", label_column: str = "label", min_per_class: int = 1,
    delimiter: str | None = None, min_classes: int = 2,
) -> TextClassDataset:
    """Read ``path`` (CSV, TSV or JSON Lines) into classes of sentences (classes sorted by name; empty texts skipped).

    ``min_per_class``: every class needs at least this many examples (e.g. K + Q of the episodes to sample).
    ``min_classes``: at least this many classes (a classifier needs two). ``delimiter``: ``None`` = tab for a
    ``.tsv`` file, comma otherwise.
    """
    path = Path(path)
    if path.suffix.lower() == ".jsonl":
        numbered = _pairs_from_jsonl(path, text_column, label_column)
    else:
        if not path.is_file():
            raise FewShotError(f"CSV file {path} does not exist")
        numbered = _pairs_from_csv(path, text_column, label_column, delimiter or default_delimiter(path))
    pairs, unlabelled, rows_with_label = [], [], 0
    for line, text, label in numbered:
        text, label = text.strip(), label.strip()
        rows_with_label += bool(label)
        if not text:
            continue
        if not label:
            unlabelled.append(line)
            continue
        pairs.append((text, label))
    if numbered and not rows_with_label:
        raise FewShotError(f"{path}: the label column {label_column!r} is empty in all {len(numbered)} rows; "
                           "give every text its class")
    if unlabelled:
        lines = ", ".join(map(str, unlabelled[:5])) + (", ..." if len(unlabelled) > 5 else "")
        raise FewShotError(f"{path}: {len(unlabelled)} text(s) have an empty label {label_column!r} (line "
                           f"{lines}); give each its class or delete the row")
    if not pairs:
        raise FewShotError(f"{path} has a header but no rows with text in column {text_column!r}")
    data = TextClassDataset.from_pairs(pairs)
    if len(data.class_names) < min_classes:
        raise FewShotError(f"{path} has {len(data.class_names)} class(es) ({', '.join(map(repr, data.class_names))}); "
                           f"a classifier needs at least {min_classes}: add texts of another class")
    sizes = data.class_sizes.tolist()
    small = [(name, n) for name, n in zip(data.class_names, sizes, strict=True) if n < min_per_class]
    if small:
        listed = ", ".join(f"{name!r} ({n})" for name, n in small[:5])
        raise FewShotError(f"{path}: {len(small)} of {len(sizes)} classes have fewer than {min_per_class} examples "
                           f"(shot + query), e.g. {listed}")
    return data


def load_text_column(path: str | os.PathLike, column: str = "text", delimiter: str | None = None) -> list[str]:
    """The non-empty texts of one column of a CSV / TSV file (or one key of a JSON Lines file), in file order."""
    path = Path(path)
    if path.suffix.lower() == ".jsonl":
        return [t.strip() for _, t, _ in _pairs_from_jsonl(path, column, column) if t.strip()]
    header, rows = read_csv(path, delimiter, "queries file")
    at = find_column(path, header, column, "text")
    texts = [row.fields[at].strip() for row in rows if row.fields[at].strip()]
    if not texts:
        raise FewShotError(f"{path} has no texts in column {column!r}")
    return texts


@dataclass
class CsvTextConfig:
    path: str = ""
    """CSV, TSV or JSON Lines file; ``{split}`` in it is replaced by train / val / test. Relative paths are under the
    data root."""
    text_column: str = "text"
    label_column: str = "label"
    min_per_class: int = 1
    """Fail early, naming the classes, if any class has fewer examples (set it to shot + query)."""
    delimiter: str = ""
    """One character; empty: tab for a ``.tsv`` file, comma otherwise."""

    def __post_init__(self) -> None:
        if not self.path:
            raise FewShotError("data.options.path must name the CSV file")
        if self.min_per_class < 1:
            raise FewShotError(f"min_per_class must be >= 1, got {self.min_per_class}")
        if len(self.delimiter) > 1:
            raise FewShotError(f"data.options.delimiter must be one character, got {self.delimiter!r}")


def build(split: str, root: str | None, options: CsvTextConfig) -> TextClassDataset:
    """Registry builder (see :mod:`fewshot.registry`)."""
    path = Path(options.path.replace("{split}", split)).expanduser()
    if not path.is_absolute():
        from fewshot.data.download import data_root

        candidate = data_root(root) / path
        path = candidate if candidate.exists() or not path.exists() else path
    return load_csv_text(path, options.text_column, options.label_column, options.min_per_class,
                         options.delimiter or None)
