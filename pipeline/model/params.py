"""Default hyperparameters of the networks and of XGBoost, one CSV row per network or booster.

The packaged files hold the reference system's defaults: ``params/networks.csv`` (rows ``cnn_8``, ``cnn_2``,
``cnn_7``, ``resnet_8``, ``resnet_2``, ``resnet_7``) and ``params/xgboost.csv`` (row
``xgboost_spectrogram``). A user changes training by copying a file, editing a value and
passing its path::

    from pipeline.model.params import load_params
    load_params("cnn_8")                       # the packaged defaults
    load_params("cnn_8", "my_networks.csv")    # the same row from the user's copy

Every file has a ``name`` column naming the row; the other columns are among :data:`COLUMNS`,
each with its type and its allowed range. An empty cell means that the column does not apply
to that row (a CNN has no batch norm, a ResNet no ``filters``) and is left out of the dict.

Columns of ``networks.csv``

- ``conv_layers``, ``filters``, ``kernel``, ``pool_size``: the CNN's convolution blocks, all of
  them counted (the reference system's "extra conv layers" is ``conv_layers - 1``); each block is a
  ``kernel x kernel`` convolution with ``filters`` filters, then a ``pool_size`` max-pool;
- ``dense_layers``, ``dense_units``: the CNN's hidden dense layers (the last one is its
  ``embedding``); ``dropout_conv`` (after the convolutions), ``dropout_dense`` (after each
  dense layer);
- ``time_padding`` (``same``, the default when empty, or ``valid``), ``time_kernel`` (default
  ``kernel``): the CNN's padding and kernel length along time. ``valid`` makes each window's
  output independent of any zero padding at its time edges, so that the outputs of all the
  windows of a strip of columns can be computed by one fully convolutional pass
  (:mod:`pipeline.model.dense_scoring`); rows ``cnn_8_dense`` and ``cnn_8_dense_light``;
- ``l2``: L2 weight decay (ResNet; a CNN row may set it too); ``batch_norm_momentum``,
  ``batch_norm_epsilon``: the ResNet's batch normalisation;
- ``learning_rate``, ``beta_1``, ``beta_2``, ``adam_epsilon``: Adam;
- ``batch_size``, ``epochs`` (at most), ``patience`` and ``min_delta``: early stopping on the
  validation loss.

Columns of ``xgboost.csv``: ``max_depth``, ``eta``, ``n_estimators``, ``gamma``, ``subsample``,
``scale_pos_weight``, ``min_child_weight``, with XGBoost's meanings.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType

#: The packaged parameter files, searched in this order when no path is given.
PACKAGED_FILES = ("networks.csv", "xgboost.csv")


class ParamsError(ValueError):
    """A parameter file, row or value that cannot be used; its message is one line for the user."""


@dataclass(frozen=True)
class _Column:
    """The type and allowed range of one column (bounds are inclusive unless marked open)."""

    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def allowed(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        left = "(" if self.low_open else "["
        right = ")" if self.high_open else "]"
        return f"in {left}{self.low:g}, {self.high:g}{right}"

    def convert(self, text: str) -> int | float:
        """The typed value of a cell; ``ValueError`` with the reason when it is not usable."""
        try:
            number = float(text)
        except ValueError:
            raise ValueError("is not a number") from None
        if not math.isfinite(number):
            raise ValueError("is not a finite number")
        if self.kind is int:
            if not number.is_integer():
                raise ValueError("is not a whole number")
            value: int | float = int(number)
        else:
            value = number
        below = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        above = self.high is not None and (
            value >= self.high if self.high_open else value > self.high
        )
        if below or above:
            raise ValueError(f"must be {self.allowed()}")
        return value


@dataclass(frozen=True)
class _Choice:
    """A column whose value is one word of a fixed list (e.g. ``time_padding``: same or valid)."""

    options: tuple[str, ...]
    kind: type = str

    def allowed(self) -> str:
        return f"one of {', '.join(self.options)}"

    def convert(self, text: str) -> str:
        """The word itself; ``ValueError`` with the reason when it is not one of :attr:`options`."""
        if text not in self.options:
            raise ValueError(f"must be {self.allowed()}")
        return text


_POSITIVE_INT = _Column(int, 1)
_FRACTION = _Column(float, 0, 1, high_open=True)

_COLUMNS = {
    # networks.csv: architecture
    "conv_layers": _POSITIVE_INT,
    "filters": _POSITIVE_INT,
    "kernel": _POSITIVE_INT,
    "pool_size": _POSITIVE_INT,
    "dense_layers": _POSITIVE_INT,
    "dense_units": _POSITIVE_INT,
    "dropout_conv": _FRACTION,
    "dropout_dense": _FRACTION,
    "time_padding": _Choice(("same", "valid")),
    "time_kernel": _POSITIVE_INT,
    "l2": _Column(float, 0),
    "batch_norm_momentum": _FRACTION,
    "batch_norm_epsilon": _Column(float, 0, low_open=True),
    # networks.csv: training
    "learning_rate": _Column(float, 0, low_open=True),
    "beta_1": _FRACTION,
    "beta_2": _FRACTION,
    "adam_epsilon": _Column(float, 0, low_open=True),
    "batch_size": _POSITIVE_INT,
    "epochs": _POSITIVE_INT,
    "patience": _Column(int, 0),
    "min_delta": _Column(float, 0),
    # xgboost.csv
    "max_depth": _Column(int, 0),
    "eta": _Column(float, 0, 1, low_open=True),
    "n_estimators": _POSITIVE_INT,
    "gamma": _Column(float, 0),
    "subsample": _Column(float, 0, 1, low_open=True),
    "scale_pos_weight": _Column(float, 0, low_open=True),
    "min_child_weight": _Column(float, 0),
}

#: Every known column, mapped to the Python type of its values (``int``, ``float``, or ``str``
#: for a column of words such as ``time_padding``).
COLUMNS: Mapping[str, type] = MappingProxyType({name: c.kind for name, c in _COLUMNS.items()})


def _packaged_path(file_name: str) -> Path:
    return Path(str(resources.files("pipeline.model").joinpath("params", file_name)))


def _read_rows(path: Path, row: str | None) -> dict[str, dict[str, str]]:
    """Every row of ``path`` as raw text cells keyed by column, itself keyed by row name
    (``row`` is the one asked for, named in error messages)."""
    where = f"{path}, row {row!r}" if row is not None else str(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            lines = list(csv.reader(f))
    except OSError as error:
        raise ParamsError(f"{where}: cannot read the file ({error.strerror or error})") from None
    except (csv.Error, UnicodeDecodeError) as error:
        raise ParamsError(f"{where}: not a readable CSV file ({error})") from None
    lines = [cells for cells in lines if any(cell.strip() for cell in cells)]
    if not lines:
        raise ParamsError(f"{where}: the file is empty")
    header = [cell.strip() for cell in lines[0]]
    if "name" not in header:
        raise ParamsError(f"{where}: the header has no 'name' column")
    unknown = [column for column in header if column != "name" and column not in _COLUMNS]
    if unknown:
        raise ParamsError(
            f"{where}: unknown column(s) {', '.join(unknown)}; known: {', '.join(_COLUMNS)}"
        )
    duplicated = sorted({column for column in header if header.count(column) > 1})
    if duplicated:
        raise ParamsError(f"{where}: column(s) {', '.join(duplicated)} appear more than once")
    rows: dict[str, dict[str, str]] = {}
    for number, cells in enumerate(lines[1:], start=2):
        if len(cells) > len(header):
            raise ParamsError(
                f"{where}: line {number} has {len(cells)} cells but the header {len(header)}"
            )
        record = dict(zip(header, (cell.strip() for cell in cells)))
        name = record.get("name", "")
        if not name:
            raise ParamsError(f"{where}: line {number} has no name")
        if name in rows:
            raise ParamsError(f"{where}: row {name!r} appears more than once")
        rows[name] = record
    return rows


def list_rows(path: str | os.PathLike | None = None) -> tuple[str, ...]:
    """The row names of a parameter file (of every packaged file when ``path`` is None).

    Parameters
    ----------
    path : str or os.PathLike, optional
        A user's parameter CSV; by default the packaged ``networks.csv`` and ``xgboost.csv``.

    Returns
    -------
    tuple of str
        The rows in file order.
    """
    paths = [Path(path)] if path is not None else [_packaged_path(f) for f in PACKAGED_FILES]
    return tuple(name for p in paths for name in _read_rows(p, None))


def load_params(row: str, path: str | os.PathLike | None = None) -> dict[str, int | float | str]:
    """The typed hyperparameters of one network or booster.

    Parameters
    ----------
    row : str
        The row's ``name``, e.g. ``"cnn_8"``, ``"resnet_7"`` or ``"xgboost_spectrogram"``.
    path : str or os.PathLike, optional
        A user's CSV with the packaged files' columns (a subset of them is enough when the
        row's builder does not need the others). By default the packaged file holding ``row``.

    Returns
    -------
    dict
        Column name to value, ``int`` or ``float`` as :data:`COLUMNS` says, without ``name``
        and without the columns whose cell is empty.

    Raises
    ------
    ParamsError
        When the file cannot be read, has an unknown column, lacks the row or holds a value of
        the wrong type or out of range; the message is one line naming the file and the row.
    """
    if path is not None:
        candidates = [Path(path)]
    else:
        candidates = [_packaged_path(f) for f in PACKAGED_FILES]
    for candidate in candidates:
        rows = _read_rows(candidate, row)
        if row in rows:
            return _typed(rows[row], candidate, row)
    where = ", ".join(str(c) for c in candidates)
    known = [name for c in candidates for name in _read_rows(c, row)]
    raise ParamsError(f"{where}, row {row!r}: no such row; rows: {', '.join(known) or 'none'}")


def _typed(record: Mapping[str, str], path: Path, row: str) -> dict[str, int | float | str]:
    values: dict[str, int | float | str] = {}
    for column, text in record.items():
        if column == "name" or text == "":
            continue
        try:
            values[column] = _COLUMNS[column].convert(text)
        except ValueError as reason:
            raise ParamsError(f"{path}, row {row!r}: {column} = {text!r} {reason}") from None
    return values


def check_required(params: Mapping[str, object], names: Iterable[str], *, needed_by: str) -> None:
    """Refuse, with one line, a parameter dict that lacks values a builder needs.

    Parameters
    ----------
    params : Mapping
        Hyperparameters, as :func:`load_params` returns them.
    names : iterable of str
        The columns the builder reads.
    needed_by : str
        What needs them, for the message (e.g. ``"build_cnn"``).

    Raises
    ------
    ParamsError
        Naming the missing columns.
    """
    missing = [name for name in names if name not in params]
    if missing:
        raise ParamsError(
            f"{needed_by} needs {', '.join(missing)}, which the parameters given lack "
            f"(they have: {', '.join(sorted(params)) or 'nothing'})"
        )
