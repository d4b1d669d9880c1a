"""soundClass's SQLite database of point labels.

Facts of the format (the R package soundClass, repository bmsasilva/soundClass, GPL-3: its
labelling app ``app_label``, ``create_db``, ``import_audio`` and ``ms2samples``; and its demo
database ``extdata/recordings/demo_db.sqlite3``, in ``../shared/data/real/soundclass``):

- A SQLite database with the table ``labels(recording TEXT, label_position NUMERIC,
  label_class TEXT)`` (later versions add ``observations``). One row per labelled sound event.
- ``recording``: the file's name without its extension and folder (``Bbar001`` for
  ``Bbar001.wav``).
- ``label_position``: a **sample index** in the file. The labeller clicks "on the middle of the
  event" in a spectrogram drawn in milliseconds of real time (the file's sample rate times the
  time-expansion factor), and the app stores ``floor(rate * tx * ms / 1000)``: the header rate
  times the factor times real seconds, which is the index of the sample in the file whatever the
  expansion. So real seconds = ``label_position / (header rate * time expansion)``.
- ``label_class``: the class as typed; the app's "Add irrelevant" stores ``"0"`` for a noise
  sample (the loudest moment of a file without the sounds of interest).
- The database stores neither the sample rate nor the time expansion: the reader takes the rate
  from each recording's WAV header (found in ``audio``, default the database's folder) or from
  ``sample_rate``, and the factor from ``time_expansion`` (soundClass's own "auto" rule, ``tx = 10``
  below a 50 kHz header rate and 1 above, with ``time_expansion="auto"``).

**Checked against the audio** (``python benchmarks/annotation_units.py``, on the demo's 14
stereo recordings, 44.1 kHz headers, x10 time expanded, so 441 kHz real): every
``label_position`` lies inside its file (at most 0.959 of its frames), so it is not a time in ms.
Taken as a sample index, the smoothed envelope of the signal above 15 kHz (real) is, within 1 ms
of it, above 3 times the recording's median for 75 % of the 150 labels (11 % at 1.3 times those
times, a wrong unit); the envelope peaks a median 65 samples (147 us real) from it, and the
call's energy rises a median 473 samples (1.07 ms real) before it: the position marks the
**middle of the call**, as the app asks, not its start. It is kept as ``position``; ``end``
stays unknown. The 99 ``Bbar`` and 74 ``Mesc`` labels include 23 of ``Mesc001``, whose recording
the demo lacks: without its audio (and without ``sample_rate``) they cannot be placed in time and
are listed in ``skipped``.
"""

from __future__ import annotations

import math
import os
import sqlite3
from pathlib import Path

import pandas as pd
import soundfile

from pipeline.annotations.table import AnnotationSet, check_time_expansion, class_and_event, empty_calls, validate_calls
from pipeline.io.annotations import AnnotationError

TABLE = "labels"
COLUMNS = ("recording", "label_position", "label_class")
#: The class soundClass stores for noise ("irrelevant") samples.
NOISE_CLASS = "0"
#: Header rates below this are time-expanded x10 under soundClass's "auto" rule.
AUTO_THRESHOLD_HZ = 50_000
AUDIO_SUFFIXES = (".wav",)


def is_soundclass_database(path: Path) -> bool:
    """Whether ``path`` is a SQLite database with a ``labels`` table."""
    try:
        with open(path, "rb") as fh:
            if fh.read(16) != b"SQLite format 3\x00":
                return False
        with _connect(path) as db:
            return TABLE in _tables(db)
    except (OSError, sqlite3.Error):
        return False


def _connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)


def _tables(db: sqlite3.Connection) -> list[str]:
    return [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")]


def _read_labels(path: Path) -> list[tuple]:
    if not path.is_file():
        raise AnnotationError(f"{path}: file not found")
    try:
        with open(path, "rb") as fh:
            if fh.read(16) != b"SQLite format 3\x00":
                raise AnnotationError(f"{path}: not a SQLite database")
        db = _connect(path)
        try:
            tables = _tables(db)
            if TABLE not in tables:
                raise AnnotationError(
                    f"{path}: no table {TABLE!r} (tables: {', '.join(tables) or 'none'}); expected soundClass's "
                    f"{TABLE}({', '.join(COLUMNS)})"
                )
            columns = [row[1] for row in db.execute(f"PRAGMA table_info({TABLE})")]
            missing = [name for name in COLUMNS if name not in columns]
            if missing:
                raise AnnotationError(f"{path}: table {TABLE!r} lacks column(s) {', '.join(missing)}")
            return db.execute(f"SELECT rowid, {', '.join(COLUMNS)} FROM {TABLE} ORDER BY rowid").fetchall()
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise AnnotationError(f"{path}: unreadable SQLite database ({exc})") from None


def _audio_of(folder: Path) -> dict[str, Path]:
    """Recording name (file name without extension) -> its audio file, under ``folder``."""
    found: dict[str, Path] = {}
    for file in sorted(folder.rglob("*"), key=lambda p: (len(p.parts), str(p))):
        if file.is_file() and file.suffix.lower() in AUDIO_SUFFIXES:
            found.setdefault(file.stem, file)
    return found


def read_soundclass(
    path: str | os.PathLike,
    *,
    time_expansion: float | str = 1.0,
    sample_rate: float | None = None,
    audio: str | os.PathLike | None = None,
) -> AnnotationSet:
    """Read soundClass's SQLite database of labels.

    Parameters
    ----------
    path : str or os.PathLike
        The database (``.sqlite3``).
    time_expansion : float or "auto"
        The recordings' time-expansion factor (10 for the demo's files). ``"auto"``:
        soundClass's rule, 10 for a header rate below 50 kHz and 1 above. Default 1.
    sample_rate : float, optional
        The header sample rate (Hz) of every recording. Default: read from each recording's WAV
        header in ``audio``.
    audio : str or os.PathLike, optional
        The folder of the recordings (searched recursively for ``<recording>.wav``). Default:
        the database's folder.

    Returns
    -------
    AnnotationSet
        ``source="soundclass"``; ``position`` the labelled middle of each call (real s),
        ``end`` and frequencies unknown, ``duration`` from the audio when found; class ``"0"``
        is a noise sample; ``windows`` None; ``classes`` None. Labels of a recording whose audio
        is not found (without ``sample_rate``) are left out and listed in ``skipped``.

    Raises
    ------
    AnnotationError
        One line naming the database, the row and the reason: not a SQLite database, no
        ``labels`` table or column, a position that is not a number or negative.
    """
    path = Path(path)
    rows = _read_labels(path)
    auto = isinstance(time_expansion, str) and time_expansion.strip().lower() == "auto"
    fixed = None if auto else check_time_expansion(time_expansion)
    if sample_rate is not None:
        try:
            sample_rate = float(sample_rate)
        except (TypeError, ValueError):
            sample_rate = math.nan
        if not (math.isfinite(sample_rate) and sample_rate > 0):
            raise AnnotationError(f"{path}: sample_rate must be a positive number of Hz")
    files = _audio_of(Path(audio) if audio is not None else path.parent) if sample_rate is None else {}
    info: dict[str, tuple[float, float] | None] = {}
    records, where, missing = [], [], {}
    for rowid, recording, position, label in rows:
        here = f"{path}: {TABLE} row {rowid}"
        name = "" if recording is None else str(recording).strip()
        if not name:
            raise AnnotationError(f"{here}: recording is empty")
        if isinstance(position, bool) or not isinstance(position, (int, float)):
            try:
                position = float(str(position).strip())
            except ValueError:
                raise AnnotationError(f"{here}: label_position {position!r} is not a number") from None
        if not math.isfinite(position) or position < 0:
            raise AnnotationError(f"{here}: label_position {position!r} is not a sample index (>= 0)")
        if name not in info:
            if sample_rate is not None:
                info[name] = (sample_rate, math.nan)
            elif name in files:
                try:
                    header = soundfile.info(str(files[name]))
                except (RuntimeError, soundfile.LibsndfileError) as exc:
                    raise AnnotationError(f"{files[name]}: cannot read the WAV header ({exc})") from None
                info[name] = (float(header.samplerate), float(header.frames))
            else:
                info[name] = None
        if info[name] is None:
            missing[name] = missing.get(name, 0) + 1
            continue
        rate, frames = info[name]
        factor = fixed if fixed is not None else (10.0 if rate < AUTO_THRESHOLD_HZ else 1.0)
        label_text = None if label is None else str(label)
        cls, kind = (None, "noise") if label_text is not None and label_text.strip() == NOISE_CLASS else class_and_event(label_text)
        records.append(
            {
                "file": name, "position": position / (rate * factor), "class": cls, "event": kind,
                "duration": frames / (rate * factor),
            }
        )  # fmt: skip
        where.append(here)
    searched = Path(audio) if audio is not None else path.parent
    skipped = [
        f"{path}: {n} label(s) of {name} left out: no {name}.wav under {searched} to give its sample rate "
        "(give sample_rate= to keep them)"
        for name, n in missing.items()
    ]
    calls = pd.DataFrame(records) if records else empty_calls()
    calls = validate_calls(calls, where=where, origin=str(path))
    return AnnotationSet(calls=calls, windows=None, classes=None, source="soundclass", skipped=skipped)
