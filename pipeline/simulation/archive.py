"""The archive writer: a tree of WAV files named like recorder files, and what is in them.

``simulate_archive`` writes:

* ``site01/20260612_213015.wav`` ...: mono PCM WAV files (16-bit, or 8-bit for
  ``eight_bit_fraction``), with a GUANO chunk (``guano``), some time-expanded x10;
* ``annotations.csv``: one row per call: ``file, split, position, end, class, species_group,
  species, low_freq, high_freq, call_duration, duration, event`` (times in real seconds,
  frequencies in Hz: the box of the call's loudest component; ``duration`` is the
  recording's, ``call_duration`` the call's). ``class`` is the reference system's integer
  1..7 when every call can be one (the seven groups, echolocation only), else the class name
  (the group, or ``bat`` for the generic family) on every row; ``species_group`` always holds
  the name; ``event`` is ``echolocation``, ``buzz`` or ``social``;
* ``annotations.npz``: the reference system's format (see :mod:`pipeline.io.annotations`),
  only when every call can be a class 1..7 echolocation call
  (:attr:`SimulationSettings.seed_compatible`); otherwise it is not written (a stale one of
  an earlier run is removed) and the summary says so;
* ``recordings.csv``: one row per file with what was drawn for it (rate, bit depth, time
  expansion, microphone, gain, noises, background...);
* ``simulation.json``: the settings, the seed, the package version, the counts of calls per
  class and event, and the real backgrounds used with their licence and SHA-256.

Everything is a function of the seed and the settings: the same seed writes the same bytes.
Insects, rain and the other noises are not annotated.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from pipeline._version import __version__
from pipeline.files import write_bytes, write_text
from pipeline.io.annotations import RecordingCalls, write_reference_npz
from pipeline.simulation.calls import Call, eligible_species
from pipeline.simulation.noise import BackgroundLibrary
from pipeline.simulation.recorder import guano_text, wav_bytes
from pipeline.simulation.scene import MAX_BATS, simulate_recording
from pipeline.simulation.settings import SimulationError, SimulationSettings

#: Columns of ``annotations.csv``; frequencies in Hz, times in real seconds. ``duration`` is the
#: recording's (as a CSV of calls for ``batml train`` has it), ``call_duration`` the call's.
CSV_COLUMNS = (
    "file", "split", "position", "end", "class", "species_group", "species",
    "low_freq", "high_freq", "call_duration", "duration", "event",
)

_SITES = ("site01", "site02")


@dataclass(frozen=True)
class SimulatedArchive:
    """A simulated archive on disk.

    Parameters
    ----------
    root
        Folder holding the archive.
    files
        Paths of the WAV files relative to ``root`` (POSIX separators), in name order.
    n_calls
        Number of annotated calls.
    duration_s
        Total real-time duration of the recordings, seconds.
    annotations_npz
        The annotations in the reference system's format, or ``None`` when the archive holds
        calls that format cannot (generic bats, buzzes, social calls).
    annotations_csv
        One CSV row per call.
    recordings_csv, metadata
        ``recordings.csv`` (what was drawn per file) and ``simulation.json``.
    notes
        Remarks for the user (e.g. why ``annotations.npz`` was not written).
    """

    root: Path
    files: list[str]
    n_calls: int
    duration_s: float
    annotations_npz: Path | None
    annotations_csv: Path
    recordings_csv: Path | None = None
    metadata: Path | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class _RecordingPlan:
    """What a recording of the archive will be, drawn before any sample is made."""

    index: int
    name: str
    rate: int
    n_samples: int
    n_bats: int
    time_expansion: int
    split: str
    timestamp: datetime
    bit_depth: int = 16


def _file_durations(total: float, bounds: tuple[float, float], rng: np.random.Generator) -> list[float]:
    """Durations drawn uniformly in ``bounds`` that add up to ``total``; the last takes the rest."""
    low, high = bounds
    durations, remaining = [], total
    while remaining > high:
        durations.append(rng.uniform(low, max(low, min(high, remaining - low))))
        remaining -= durations[-1]
    return durations + [remaining]


def _chosen(n: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask selecting ``round(fraction * n)`` of ``n`` items at random."""
    mask = np.zeros(n, dtype=bool)
    mask[rng.permutation(n)[:round(fraction * n)]] = True
    return mask


def _plan_archive(minutes: float, seed: int, s: SimulationSettings) -> list[_RecordingPlan]:
    """Draw every recording's name, rate, length, scene size, expansion, split and bit depth."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    durations = _file_durations(60.0 * minutes, s.file_seconds, rng)
    n = len(durations)
    rates = rng.choice(np.asarray(s.sample_rates, dtype=np.int64), n)
    empty = _chosen(n, s.empty_fraction, rng)
    multi = np.zeros(n, dtype=bool)
    multi[~empty] = _chosen(int((~empty).sum()), s.overlap_fraction, rng)
    n_bats = np.where(empty, 0, np.where(multi, rng.choice((2, MAX_BATS), n, p=(0.7, 0.3)), 1))
    expanded = _chosen(n, s.time_expanded_fraction, rng)
    test = _chosen(n, s.test_fraction, rng)
    sites = rng.integers(len(_SITES), size=n)
    gaps = rng.integers(5, 900, size=n)
    clock = datetime(2026, 6, 1, 21, 30) + timedelta(days=int(rng.integers(92)))
    eight_bit = _chosen(n, s.eight_bit_fraction, rng) if s.eight_bit_fraction > 0 else np.zeros(n, dtype=bool)
    plans = []
    for i, duration in enumerate(durations):
        plans.append(_RecordingPlan(
            index=i, name=f"{_SITES[sites[i]]}/{clock:%Y%m%d_%H%M%S}", rate=int(rates[i]),
            n_samples=round(duration * rates[i]), n_bats=int(n_bats[i]), time_expansion=10 if expanded[i] else 1,
            split="test" if test[i] else "train", timestamp=clock, bit_depth=8 if eight_bit[i] else 16,
        ))
        clock += timedelta(seconds=math.ceil(duration) + int(gaps[i]))
    return plans


def _check_archive(minutes: float, s: SimulationSettings) -> None:
    """Refuse settings that cannot make an archive of ``minutes`` (one line, every problem)."""
    problems = []
    if s.time_expanded_fraction > 0 and any(rate % 10 for rate in s.sample_rates):
        problems.append(f"time expansion x10 needs sample_rates divisible by 10, got {s.sample_rates}")
    elif s.generic_fraction < 1:
        lowest_edge = s.antialias_edge[0]
        too_low = [rate for rate in s.sample_rates
                   if len({m.group for m in eligible_species(rate, lowest_edge)}) < MAX_BATS]
        if too_low:
            problems.append(f"sample rate(s) {too_low} Hz too low for {MAX_BATS} groups of bats")
    if not 0.5 <= s.file_seconds[0] <= s.file_seconds[1]:
        problems.append(f"file_seconds={s.file_seconds} must satisfy 0.5 <= low <= high")
    elif not 60.0 * minutes >= s.file_seconds[0]:
        problems.append(f"minutes={minutes} must give at least one file of {s.file_seconds[0]} s")
    if problems:
        raise SimulationError("; ".join(problems))


def _annotation_rows(plan: _RecordingPlan, calls: tuple[Call, ...], numbered: bool) -> list[dict]:
    return [
        {
            "file": plan.name, "split": plan.split, "position": call.position, "end": call.end,
            "class": call.species.label if numbered else call.class_name, "species_group": call.class_name,
            "species": call.species.species, "low_freq": call.low_hz, "high_freq": call.high_hz,
            "call_duration": call.length / call.rate, "duration": plan.n_samples / plan.rate, "event": call.event,
        }
        for call in calls
    ]


def simulate_archive(out_dir: str | os.PathLike, minutes: float, seed: int = 0, *,
                     settings: SimulationSettings | None = None, progress: bool = False,
                     **factors) -> SimulatedArchive:
    """Write a synthetic archive of annotated bat recordings.

    Parameters
    ----------
    out_dir
        Folder to write into (created if needed); files of the same names are overwritten,
        nothing else is touched (but a stale ``annotations.npz`` is removed when this archive
        cannot have one).
    minutes
        Total real-time duration of the recordings.
    seed
        Seed of everything: the same seed and settings write the same bytes.
    settings
        The simulator's factors (default: :class:`SimulationSettings` defaults, the seven
        groups as before domain randomisation; :meth:`SimulationSettings.varied` switches every
        factor on).
    progress
        Show a progress bar over the files.
    **factors
        Fields of :class:`SimulationSettings` to change, e.g. ``empty_fraction=0.5``,
        ``sample_rates=(384_000,)``, ``time_expanded_fraction=0.3``.

    Returns
    -------
    SimulatedArchive
        Where everything was written, with counts and notes.

    Raises
    ------
    SimulationError
        (a ``ValueError``) if a setting is out of range, or a background file unreadable.
    TypeError
        If a keyword is not a field of :class:`SimulationSettings`.

    Notes
    -----
    Every file's samples come from its own child seed (``SeedSequence(seed, spawn_key=(1, i))``),
    so files are independent; one file is in memory at a time.
    """
    s = (settings or SimulationSettings()).replace(**factors) if factors else (settings or SimulationSettings())
    _check_archive(minutes, s)
    backgrounds = None
    if s.background_folder is not None:
        backgrounds = BackgroundLibrary(s.background_folder, s.background_exclude, s.background_time_expansion)
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    plans = _plan_archive(minutes, seed, s)
    numbered = s.seed_compatible
    rows, drawn, recordings = [], [], {"train": [], "test": []}
    for plan in tqdm(plans, desc="simulate", unit="file", disable=not progress):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, plan.index)))
        recording = simulate_recording(plan.rate, plan.n_samples, plan.n_bats, rng, settings=s,
                                       bit_depth=plan.bit_depth, backgrounds=backgrounds)
        path = root / f"{plan.name}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        guano = None
        if s.guano:
            guano = guano_text(timestamp=plan.timestamp, time_expansion=plan.time_expansion, rate=plan.rate)
        write_bytes(path, wav_bytes(recording.samples, plan.rate // plan.time_expansion, guano, plan.bit_depth))
        rows += _annotation_rows(plan, recording.calls, numbered)
        drawn.append({
            "file": plan.name, "split": plan.split, "rate": plan.rate, "time_expansion": plan.time_expansion,
            "guano": s.guano, "bit_depth": plan.bit_depth, "n_bats": plan.n_bats, "n_calls": len(recording.calls),
            "noise_dbfs": round(20 * math.log10(recording.noise_rms), 2),
            **{k: round(v, 3) if isinstance(v, float) else v for k, v in recording.factors.items()},
        })
        if numbered:
            recordings[plan.split].append(RecordingCalls(
                file=plan.name, duration=plan.n_samples / plan.rate,
                positions=np.array([call.position for call in recording.calls], dtype=np.float64),
                classes=np.array([call.species.label for call in recording.calls], dtype=np.int64),
            ))
    notes = []
    npz = root / "annotations.npz"
    if numbered:
        by_name = {split: sorted(items, key=lambda r: r.file) for split, items in recordings.items()}
        write_reference_npz(npz, by_name["train"], by_name["test"])
    else:
        npz.unlink(missing_ok=True)
        npz = None
        notes.append("annotations.npz not written: generic bats, buzzes or social calls are not classes 1..7 of "
                     "the reference system's format; annotations.csv holds every call with its class and event")
    table = pd.DataFrame(rows, columns=list(CSV_COLUMNS)).sort_values(["file", "position", "class"], kind="stable")
    csv = write_text(root / "annotations.csv", table.to_csv(index=False, lineterminator="\n"))
    recordings_csv = root / "recordings.csv"
    write_text(recordings_csv, pd.DataFrame(drawn).to_csv(index=False, lineterminator="\n"))
    counts = Counter((row["species_group"], row["event"]) for row in rows)
    metadata = {
        "batml_version": __version__, "seed": seed, "minutes": minutes, "settings": s.to_dict(),
        "calls": [{"class": c, "event": e, "count": n} for (c, e), n in sorted(counts.items())],
        "annotations_npz": npz is not None, "notes": notes,
        "backgrounds": None if backgrounds is None else backgrounds.provenance(s.background_licence),
    }
    metadata_path = root / "simulation.json"
    write_text(metadata_path, json.dumps(metadata, indent=1) + "\n")
    return SimulatedArchive(
        root=root, files=sorted(f"{plan.name}.wav" for plan in plans), n_calls=len(rows),
        duration_s=sum(plan.n_samples / plan.rate for plan in plans), annotations_npz=npz, annotations_csv=csv,
        recordings_csv=recordings_csv, metadata=metadata_path, notes=tuple(notes),
    )
