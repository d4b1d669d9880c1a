"""Delimited text tables as annotation tools write them: decoded, split, rows numbered.

Raven Pro's selection tables and Tadarida's ``.eti``/``.ta`` files are tab-separated text with a
header line. Their rows sometimes end with an extra empty field (Tadarida's ``.eti`` files do),
and their encoding depends on the tool and the computer (UTF-8, with or without a byte-order
mark, or a Windows/Latin-1 code page for accented names). :func:`read_delimited` reads them with
the :mod:`csv` module, keeping each row's line number for the messages.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from pipeline.io.annotations import AnnotationError


@dataclass(frozen=True)
class DelimitedTable:
    """A header and its rows, each row a dict of text, with its line number in the file."""

    path: Path
    header: list[str]
    rows: list[dict[str, str]]
    lines: list[int]

    def where(self, index: int) -> str:
        """Where row ``index`` is: ``"<path>, line <n>"``."""
        return f"{self.path}, line {self.lines[index]}"

    def column(self, name: str) -> list[str]:
        """The values of one column, in row order."""
        return [row[name] for row in self.rows]

    def require(self, *names: str) -> None:
        """Raise AnnotationError naming the file if a column is missing."""
        missing = [name for name in names if name not in self.header]
        if missing:
            raise AnnotationError(
                f"{self.path}: missing column(s) {', '.join(map(repr, missing))} "
                f"(the header has {', '.join(map(repr, self.header))})"
            )


def read_utf8(path: str | Path, *, hint: str = "") -> str:
    """The whole of a UTF-8 text file (a byte-order mark dropped), or one line for the user.

    Raises
    ------
    AnnotationError
        ``"<path>: file not found"``, ``"<path>: not UTF-8 text (byte N)<hint>"`` or
        ``"<path>: cannot read (<reason>)"``.
    """
    path = Path(path)
    try:
        return path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise AnnotationError(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise AnnotationError(f"{path}: not UTF-8 text (byte {exc.start}){hint}") from None
    except OSError as exc:
        raise AnnotationError(f"{path}: cannot read ({exc.strerror or exc})") from None


def decode_text(data: bytes, *, per_line: bool = False) -> str:
    """Text from bytes: UTF-8 (a byte-order mark dropped), else Latin-1.

    With ``per_line``, each line is decoded on its own, for files whose lines were written with
    different encodings (Tadarida's species list mixes both).
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if per_line:
        return "".join(decode_text(line) for line in data.splitlines(keepends=True))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def read_delimited(path: str | Path, *, delimiter: str = "\t", per_line: bool = False) -> DelimitedTable:
    """Read a delimited text table with a header line.

    Parameters
    ----------
    path : str or Path
        The file.
    delimiter : str
        The field separator (a tab by default).
    per_line : bool
        Decode each line on its own (see :func:`decode_text`).

    Returns
    -------
    DelimitedTable
        Header names stripped of surrounding spaces; rows as dicts of stripped text; blank
        lines skipped; empty fields past the header's length dropped.

    Raises
    ------
    AnnotationError
        If the file cannot be read, is empty, or a row has more non-empty fields than the header.
    """
    path = Path(path)
    try:
        text = decode_text(path.read_bytes(), per_line=per_line)
    except FileNotFoundError:
        raise AnnotationError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise AnnotationError(f"{path}: is a folder, expected a table") from None
    except OSError as exc:
        raise AnnotationError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if "\x00" in text:
        raise AnnotationError(f"{path}: not a text table (binary content)")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    rows: list[dict[str, str]] = []
    lines: list[int] = []
    try:
        for fields in reader:
            line = reader.line_num
            if not any(field.strip() for field in fields):
                continue
            if header is None:
                header = [field.strip() for field in fields]
                while header and header[-1] == "":
                    header.pop()
                continue
            extra = fields[len(header):]
            if any(field.strip() for field in extra):
                raise AnnotationError(
                    f"{path}, line {line}: {len(fields)} fields for a header of {len(header)} columns"
                )
            values = [field.strip() for field in fields[: len(header)]]
            values += [""] * (len(header) - len(values))
            rows.append(dict(zip(header, values)))
            lines.append(line)
    except csv.Error as exc:
        raise AnnotationError(f"{path}, line {reader.line_num}: not a readable table ({exc})") from None
    if header is None:
        raise AnnotationError(f"{path}: empty file, expected a header line")
    return DelimitedTable(path=path, header=header, rows=rows, lines=lines)
