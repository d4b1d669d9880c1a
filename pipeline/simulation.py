"""A synthetic archive of bat recordings whose every call is annotated exactly.

The recordings imitate what a full-spectrum bat detector hears at night, with the call
parameters of the seed's seven groups (``CALLS.md``: European field-guide ranges):

* **Calls.** Each call follows an instantaneous-frequency contour (piecewise linear through a
  few breakpoints) integrated into a phase, under a smooth envelope made of two half-cosine
  ramps. Four shapes: FM (one steep sweep), FM-QCF (steep sweep, then a shallow
  quasi-constant-frequency tail), QCF (mostly the shallow tail) and CF (Rhinolophus: a short
  upward FM, a long constant frequency, a short downward FM). The envelope peaks where the
  contour crosses the drawn peak frequency, so the spectrum's maximum lies at that frequency.
  Harmonics (the 2nd 10-20 dB below the fundamental; Plecotus: a strong 2nd; Rhinolophus: a
  weak half-frequency component), and an echo: a weaker copy 1-5 ms later.
* **Passes.** A bat passing by emits a train of calls: parameters are drawn as quantiles of
  the species' ranges that drift slowly (a reflected random walk) from call to call, the
  inter-pulse interval is jittered, call types alternate (Barbastella type 1 / type 2,
  Nyctalus noctula's pairs), and the level rises and falls by 20 dB over a 1-5 s pass. Calls
  that would fall below the noise floor or cross a file edge are neither rendered nor
  annotated.
* **Scenes.** A recording holds no bat, one bat, or two or three bats of different groups
  passing at once. In those multi-bat scenes one call of every bat starts at exactly the same
  sample, so the annotations hold the same position with several classes: how the seed encodes
  simultaneous calls. A species is only drawn where the file's Nyquist frequency leaves room
  for its peak frequency (Rhinolophus hipposideros at 108-114 kHz needs >= 250 kHz).
* **Background.** Gaussian noise at a per-file level, and sometimes low-frequency noise below
  10 kHz, an insect stridulation band (10-40 kHz, continuous) and broadband clicks.

The archive is a tree of 16-bit PCM WAV files named like recorder files
(``site01/20260612_213015.wav``), each carrying a GUANO chunk, plus ``annotations.npz`` (the
seed's format, see :mod:`pipeline.io.annotations`) and ``annotations.csv`` (one row per call).
Everything is a function of the seed: the same seed writes the same bytes.
"""

from __future__ import annotations

import io
import math
import os
import struct
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.signal
import soundfile
from tqdm.auto import tqdm

from pipeline.config import SEED_SPECIES
from pipeline.io.annotations import RecordingCalls, write_calls_csv, write_seed_npz

#: Columns of ``annotations.csv``; frequencies in Hz, times in real seconds. ``duration`` is the
#: recording's (as a CSV of calls for ``batml train`` has it), ``call_duration`` the call's.
CSV_COLUMNS = (
    "file", "split", "position", "end", "class", "species_group", "species",
    "low_freq", "high_freq", "call_duration", "duration",
)

#: Fraction of the Nyquist frequency above which a recorder's anti-aliasing filter fades
#: sound out; a species is only drawn where its peak frequency lies below it.
ANTIALIAS_FRACTION = 0.95

#: Relative abundance of the groups when drawing a bat (Pip50: the commonest bats).
GROUP_WEIGHTS = {
    "Barbarg": 1.0, "Envsp": 1.5, "Myosp": 1.5, "Pip35": 1.0, "Pip50": 2.5, "Plesp": 1.0, "Rhisp": 1.0,
}

_NOISE_DBFS = (-66.0, -50.0)        # RMS of the Gaussian background, dB re full scale
_PASS_SECONDS = (1.0, 5.0)          # time a bat takes to fly by
_PASS_FADE_DB = 20.0                # level drop from a pass's centre to its ends
_QUANTILE_STEP = 0.05               # random-walk step of a call parameter's quantile
_IPI_JITTER = 0.05                  # relative jitter of inter-pulse intervals
_MIN_GAP_S = 0.005                  # silence between consecutive calls of one bat
_ECHO_DELAY_S = (0.001, 0.005)
_ECHO_GAIN_DB = (-18.0, -6.0)
_CALL_MARGIN_S = 0.08               # room after a scene's shared call (longest call: 60 ms)
_SCENE_OFFSET_S = 0.3               # spread of the pass centres of bats flying together
_MAX_BATS = 3                       # bats in the busiest scene
_SITES = ("site01", "site02")


# ---------------------------------------------------------------------------------------------
# Species call models


@dataclass(frozen=True)
class CallType:
    """Ranges of one call type of a species (kHz and ms), each drawn uniformly.

    For CF calls ``start_khz`` and ``end_khz`` are the two ends of the short FM parts and
    ``peak_khz`` is the constant frequency.
    """

    start_khz: tuple[float, float]
    end_khz: tuple[float, float]
    peak_khz: tuple[float, float]
    duration_ms: tuple[float, float]


@dataclass(frozen=True)
class Harmonic:
    """A component at ``multiple`` times the call's frequency, ``level_db`` below it."""

    multiple: float
    level_db: tuple[float, float]


_SECOND_HARMONIC = (Harmonic(2.0, (-20.0, -10.0)),)


@dataclass(frozen=True)
class SpeciesModel:
    """How a species calls: shape, call types (alternating along a pass), rhythm and loudness.

    Parameters
    ----------
    species, group
        Latin name and the seed's group (one of :data:`pipeline.config.SEED_SPECIES`).
    shape
        ``"FM"``, ``"FM-QCF"``, ``"QCF"`` or ``"CF"``.
    call_types
        One or more call types; consecutive calls of a pass cycle through them.
    ipi_ms
        Range of the inter-pulse interval.
    snr_db
        Range of the call level at the pass centre, in dB above the background noise RMS.
    harmonics
        Extra components of each call.
    """

    species: str
    group: str
    shape: str
    call_types: tuple[CallType, ...]
    ipi_ms: tuple[float, float]
    snr_db: tuple[float, float]
    harmonics: tuple[Harmonic, ...] = _SECOND_HARMONIC

    @property
    def label(self) -> int:
        """The seed's integer class of the species' group (1..7)."""
        return SEED_SPECIES.index(self.group) + 1

    @property
    def max_peak_hz(self) -> float:
        """Highest peak frequency the species can call at."""
        return 1e3 * max(call_type.peak_khz[1] for call_type in self.call_types)


def _one_type(start, end, peak, duration) -> tuple[CallType, ...]:
    return (CallType(start, end, peak, duration),)


#: The species of the seed's seven groups, with ranges from CALLS.md.
SPECIES_MODELS: tuple[SpeciesModel, ...] = (
    SpeciesModel(
        "Barbastella barbastellus", "Barbarg", "FM",
        (CallType((40, 43), (28, 31), (32, 34), (3, 5)), CallType((43, 45), (29, 32), (40, 43), (3, 5))),
        ipi_ms=(60, 90), snr_db=(12, 24),
    ),
    SpeciesModel("Eptesicus serotinus", "Envsp", "FM-QCF", _one_type((50, 60), (23, 26), (26, 30), (8, 14)),
                 ipi_ms=(100, 130), snr_db=(20, 38)),
    SpeciesModel(
        "Nyctalus noctula", "Envsp", "QCF",
        (CallType((25, 28), (17, 19), (19, 20.5), (15, 25)), CallType((27, 30), (18, 20), (20.5, 22), (15, 25))),
        ipi_ms=(250, 400), snr_db=(28, 45),
    ),
    SpeciesModel("Nyctalus leisleri", "Envsp", "FM-QCF", _one_type((35, 45), (22, 26), (24, 27), (8, 15)),
                 ipi_ms=(120, 180), snr_db=(24, 40)),
    SpeciesModel("Vespertilio murinus", "Envsp", "QCF", _one_type((30, 35), (22, 24), (23, 26), (10, 15)),
                 ipi_ms=(150, 250), snr_db=(20, 36)),
    SpeciesModel("Myotis daubentonii", "Myosp", "FM", _one_type((80, 95), (25, 35), (43, 50), (2, 5)),
                 ipi_ms=(60, 100), snr_db=(18, 32)),
    SpeciesModel("Myotis nattereri", "Myosp", "FM", _one_type((100, 120), (20, 28), (40, 50), (2, 4)),
                 ipi_ms=(60, 100), snr_db=(16, 30)),
    SpeciesModel("Myotis mystacinus", "Myosp", "FM", _one_type((85, 105), (28, 35), (45, 55), (2, 5)),
                 ipi_ms=(60, 100), snr_db=(16, 30)),
    SpeciesModel("Pipistrellus nathusii", "Pip35", "FM-QCF", _one_type((60, 70), (36, 39), (37, 40), (5, 10)),
                 ipi_ms=(90, 120), snr_db=(20, 38)),
    SpeciesModel("Pipistrellus kuhlii", "Pip35", "FM-QCF", _one_type((60, 70), (36, 39), (38, 41), (5, 10)),
                 ipi_ms=(90, 120), snr_db=(20, 38)),
    SpeciesModel("Pipistrellus pipistrellus", "Pip50", "FM-QCF", _one_type((65, 80), (43, 46), (45, 48), (4, 7)),
                 ipi_ms=(70, 100), snr_db=(22, 40)),
    SpeciesModel("Pipistrellus pygmaeus", "Pip50", "FM-QCF", _one_type((70, 80), (50, 52), (53, 56), (4, 7)),
                 ipi_ms=(70, 100), snr_db=(22, 40)),
    SpeciesModel("Plecotus auritus", "Plesp", "FM", _one_type((45, 55), (22, 28), (30, 45), (2, 4)),
                 ipi_ms=(50, 100), snr_db=(8, 16), harmonics=(Harmonic(2.0, (-8.0, -3.0)),)),
    SpeciesModel("Plecotus austriacus", "Plesp", "FM", _one_type((45, 55), (22, 28), (30, 40), (2, 4)),
                 ipi_ms=(50, 100), snr_db=(8, 16), harmonics=(Harmonic(2.0, (-8.0, -3.0)),)),
    SpeciesModel("Rhinolophus ferrumequinum", "Rhisp", "CF", _one_type((72, 78), (65, 72), (80, 84), (40, 60)),
                 ipi_ms=(70, 100), snr_db=(20, 36), harmonics=(Harmonic(0.5, (-30.0, -20.0)),)),
    SpeciesModel("Rhinolophus hipposideros", "Rhisp", "CF", _one_type((98, 104), (90, 98), (108, 114), (20, 35)),
                 ipi_ms=(60, 90), snr_db=(16, 30), harmonics=(Harmonic(0.5, (-30.0, -20.0)),)),
)

#: Shallow-tail sweeps: the knee (end of the steep part) lies this fraction of the way from the
#: peak frequency up to the start frequency, reached after this range of fractions of the call.
_KNEES = {"FM-QCF": (0.1, (0.3, 0.5)), "QCF": (0.15, (0.1, 0.25))}
_CF_RAMP_MS = {"rise": (1.0, 2.0), "fall": (1.5, 3.0)}
_FLOOR = 0.3        # sweep envelope away from its peak (-10 dB)
_BUMP_WIDTH = 0.7   # half-width of the envelope's bump, relative to the room around the peak


def eligible_species(rate: float) -> tuple[SpeciesModel, ...]:
    """Species whose peak frequency a recording at ``rate`` Hz (real time) can hold.

    Parameters
    ----------
    rate
        Real-time sample rate in Hz.

    Returns
    -------
    tuple of SpeciesModel
        The models of :data:`SPECIES_MODELS` whose highest peak frequency lies below the
        anti-aliasing edge, ``ANTIALIAS_FRACTION`` times the Nyquist frequency.
    """
    edge = ANTIALIAS_FRACTION * rate / 2
    return tuple(model for model in SPECIES_MODELS if model.max_peak_hz < edge)


# ---------------------------------------------------------------------------------------------
# Calls


@dataclass(frozen=True)
class Call:
    """One emitted call, as rendered into a recording and annotated.

    Parameters
    ----------
    species
        The calling species.
    rate
        Real-time sample rate of the recording, Hz.
    onset, length
        First sample and number of samples of the call (its echo comes after).
    contour
        Breakpoints ``(fraction of the call, frequency in Hz)`` of the fundamental's
        instantaneous frequency, linearly interpolated.
    envelope
        Breakpoints ``(fraction of the call, relative amplitude)`` of the amplitude envelope,
        joined by half-cosines; 0 at both ends, 1 at its maximum.
    amplitude
        Peak amplitude of the fundamental, as a fraction of full scale.
    harmonics
        ``(multiple, amplitude ratio)`` of each extra component.
    echo_delay, echo_gain
        Delay (samples) and amplitude ratio of the echo.
    """

    species: SpeciesModel
    rate: int
    onset: int
    length: int
    contour: tuple[tuple[float, float], ...]
    envelope: tuple[tuple[float, float], ...]
    amplitude: float
    harmonics: tuple[tuple[float, float], ...]
    echo_delay: int
    echo_gain: float

    @property
    def position(self) -> float:
        """Start time in real seconds (the annotation's position)."""
        return self.onset / self.rate

    @property
    def end(self) -> float:
        """End time in real seconds (before the echo)."""
        return (self.onset + self.length) / self.rate

    @property
    def low_hz(self) -> float:
        """Lowest frequency of the fundamental."""
        return min(freq for _, freq in self.contour)

    @property
    def high_hz(self) -> float:
        """Highest frequency of the fundamental that the recording holds (at most Nyquist)."""
        return min(max(freq for _, freq in self.contour), self.rate / 2)


def _lerp(bounds: tuple[float, float], quantile: float) -> float:
    return bounds[0] + quantile * (bounds[1] - bounds[0])


def _sweep_shape(shape: str, call_type: CallType, q: np.ndarray) -> tuple[tuple, tuple]:
    """Contour and envelope of an FM, FM-QCF or QCF call, loudest where it crosses its peak.

    ``q`` holds the quantiles of (peak, start, end, duration, IPI, knee) in [0, 1].
    """
    peak = _lerp(call_type.peak_khz, q[0])
    start = _lerp((max(call_type.start_khz[0], peak + 1), max(call_type.start_khz[1], peak + 1)), q[1])
    end = _lerp((min(call_type.end_khz[0], peak - 0.5), min(call_type.end_khz[1], peak - 0.5)), q[2])
    if shape in _KNEES:
        knee_height, knee_at = _KNEES[shape]
        knee = peak + knee_height * (start - peak)
        points = ((0.0, start), (_lerp(knee_at, q[5]), knee), (1.0, end))
    else:
        points = ((0.0, start), (1.0, end))
    fractions, freqs = zip(*points, strict=True)
    peak_at = float(np.interp(peak, freqs[::-1], fractions[::-1]))
    return tuple((u, 1e3 * f) for u, f in points), _sweep_envelope(float(np.clip(peak_at, 0.1, 0.9)))


def _cf_shape(call_type: CallType, q: np.ndarray, duration_ms: float) -> tuple[tuple, tuple]:
    """Contour and envelope of a Rhinolophus call: upward FM, CF, downward FM."""
    cf = _lerp(call_type.peak_khz, q[0])
    rise = _lerp(_CF_RAMP_MS["rise"], q[5]) / duration_ms
    fall = _lerp(_CF_RAMP_MS["fall"], q[5]) / duration_ms
    points = (
        (0.0, _lerp(call_type.start_khz, q[1])), (rise, cf), (1.0 - fall, cf), (1.0, _lerp(call_type.end_khz, q[2]))
    )
    return tuple((u, 1e3 * f) for u, f in points), ((0.0, 0.0), (rise, 1.0), (1.0 - fall, 1.0), (1.0, 0.0))


def _sweep_envelope(peak_at: float) -> tuple[tuple[float, float], ...]:
    """Envelope of a sweep: a symmetric bump at ``peak_at`` over a floor ``_FLOOR`` below it.

    A symmetric bump keeps the spectrum's maximum at the frequency swept at ``peak_at``; a
    lopsided one would shift it towards its gentler side.
    """
    half_width = _BUMP_WIDTH * min(peak_at, 1.0 - peak_at)
    return (
        (0.0, 0.0), (peak_at - half_width, _FLOOR), (peak_at, 1.0), (peak_at + half_width, _FLOOR), (1.0, 0.0)
    )


def _smooth_interp(u: np.ndarray, points: tuple[tuple[float, float], ...]) -> np.ndarray:
    """Interpolate between breakpoints with half-cosines (smooth, no overshoot)."""
    xs, ys = map(np.asarray, zip(*points, strict=True))
    segment = np.clip(np.searchsorted(xs, u, side="right") - 1, 0, len(xs) - 2)
    s = (u - xs[segment]) / (xs[segment + 1] - xs[segment])
    return ys[segment] + (ys[segment + 1] - ys[segment]) * 0.5 * (1.0 - np.cos(np.pi * s))


def _antialias_gain(freq: np.ndarray, rate: float) -> np.ndarray:
    """1 below the anti-aliasing edge, fading linearly to 0 at the Nyquist frequency."""
    nyquist = rate / 2
    return np.clip((nyquist - freq) / ((1.0 - ANTIALIAS_FRACTION) * nyquist), 0.0, 1.0)


def synthesize_call(call: Call) -> np.ndarray:
    """The waveform of a call (fundamental and harmonics, without its echo).

    Parameters
    ----------
    call
        The call to render.

    Returns
    -------
    numpy.ndarray
        ``call.length`` float64 samples in full-scale units, zero at both ends: the frequency
        contour is integrated into a phase, ``2 pi cumsum(f) / rate``, and shaped by the
        envelope; components above the recorder's anti-aliasing edge fade out.
    """
    u = np.linspace(0.0, 1.0, call.length)
    fractions, freqs = zip(*call.contour, strict=True)
    freq = np.interp(u, fractions, freqs)
    phase = 2.0 * np.pi * np.cumsum(freq) / call.rate
    wave = _antialias_gain(freq, call.rate) * np.sin(phase)
    for multiple, gain in call.harmonics:
        wave += gain * _antialias_gain(multiple * freq, call.rate) * np.sin(multiple * phase)
    return call.amplitude * _smooth_interp(u, call.envelope) * wave


# ---------------------------------------------------------------------------------------------
# Passes and scenes


def _reflect(quantiles: np.ndarray) -> np.ndarray:
    """Fold values back into [0, 1] as if reflected at both walls."""
    return 1.0 - np.abs(np.mod(quantiles, 2.0) - 1.0)


def _call_train(species: SpeciesModel, span: float, anchor: float, rng: np.random.Generator):
    """Parameters of a train of calls covering ``anchor +- span`` seconds.

    Returns the call types (cycling), the parameter quantiles (a reflected random walk, one row
    per call: peak, start, end, duration, IPI, knee), the call durations (ms) and the call start
    times (s), the middle call starting exactly at ``anchor``.
    """
    n_side = math.ceil(span / (1e-3 * species.ipi_ms[0] * (1 - 3 * _IPI_JITTER))) + 1
    n = 2 * n_side + 1
    quantiles = _reflect(rng.uniform(size=6) + np.cumsum(rng.normal(0.0, _QUANTILE_STEP, (n, 6)), axis=0))
    types = (np.arange(n) + rng.integers(len(species.call_types))) % len(species.call_types)
    bounds = np.array([species.call_types[t].duration_ms for t in types])
    call_ms = bounds[:, 0] + quantiles[:, 3] * (bounds[:, 1] - bounds[:, 0])
    ipi_ms = _lerp(species.ipi_ms, quantiles[:, 4]) * (1.0 + _IPI_JITTER * rng.standard_normal(n))
    ipi_s = 1e-3 * np.maximum(ipi_ms, call_ms + 1e3 * _MIN_GAP_S)
    starts = np.concatenate([[0.0], np.cumsum(ipi_s[:-1])])
    return types, quantiles, call_ms, starts + anchor - starts[n_side]


def draw_pass(species: SpeciesModel, rate: int, n_samples: int, *, centre: float, anchor: float,
              noise_rms: float, rng: np.random.Generator) -> list[Call]:
    """The calls of one bat flying past the recorder.

    Parameters
    ----------
    species
        The passing bat's species.
    rate, n_samples
        Real-time sample rate and length of the recording.
    centre
        Time (s) of the bat's closest approach, where its calls are loudest.
    anchor
        Time (s) at which one call of the train starts exactly (bats of a scene share it).
    noise_rms
        Background noise RMS (full-scale units); calls quieter than it are dropped.
    rng
        Source of randomness.

    Returns
    -------
    list of Call
        The calls that lie wholly inside the recording and above the noise, in time order.
    """
    duration = rng.uniform(*_PASS_SECONDS)
    peak_snr_db = rng.uniform(*species.snr_db)
    types, quantiles, call_ms, starts = _call_train(species, duration, anchor, rng)
    snr_db = peak_snr_db - _PASS_FADE_DB * ((starts - centre) / (duration / 2)) ** 2
    onsets = np.round(starts * rate).astype(np.int64)
    lengths = np.round(1e-3 * call_ms * rate).astype(np.int64)
    harmonic_levels = rng.uniform(size=(starts.size, len(species.harmonics)))
    echo_delays = np.round(rng.uniform(*_ECHO_DELAY_S, starts.size) * rate).astype(np.int64)
    echo_gains = 10 ** (rng.uniform(*_ECHO_GAIN_DB, starts.size) / 20)
    kept = (np.abs(starts - centre) <= duration / 2) & (snr_db >= 0) & (onsets >= 0) & (onsets + lengths <= n_samples)
    calls = []
    for i in np.flatnonzero(kept):
        call_type = species.call_types[types[i]]
        if species.shape == "CF":
            contour, envelope = _cf_shape(call_type, quantiles[i], call_ms[i])
        else:
            contour, envelope = _sweep_shape(species.shape, call_type, quantiles[i])
        harmonics = tuple(
            (h.multiple, 10 ** (_lerp(h.level_db, level) / 20))
            for h, level in zip(species.harmonics, harmonic_levels[i], strict=True)
        )
        calls.append(Call(
            species=species, rate=rate, onset=int(onsets[i]), length=int(lengths[i]), contour=contour,
            envelope=envelope, amplitude=noise_rms * 10 ** (snr_db[i] / 20), harmonics=harmonics,
            echo_delay=int(echo_delays[i]), echo_gain=float(echo_gains[i]),
        ))
    return calls


def _draw_species(rate: int, n_bats: int, rng: np.random.Generator) -> list[SpeciesModel]:
    """``n_bats`` species of different groups, groups weighted by abundance."""
    candidates = eligible_species(rate)
    groups = sorted({model.group for model in candidates}, key=SEED_SPECIES.index)
    if n_bats > len(groups):
        raise ValueError(f"{n_bats} bats of different groups cannot be drawn from {len(groups)} group(s)")
    weights = np.array([GROUP_WEIGHTS[group] for group in groups])
    chosen = rng.choice(len(groups), size=n_bats, replace=False, p=weights / weights.sum())
    species = []
    for g in chosen:
        members = [model for model in candidates if model.group == groups[g]]
        species.append(members[rng.integers(len(members))])
    return species


def draw_calls(rate: int, n_samples: int, n_bats: int, noise_rms: float, rng: np.random.Generator) -> list[Call]:
    """The calls of a scene of ``n_bats`` bats of different groups flying past together.

    Parameters
    ----------
    rate, n_samples
        Real-time sample rate and length of the recording.
    n_bats
        0 (no bat), 1, or more for a multi-label scene.
    noise_rms
        Background noise RMS (full-scale units).
    rng
        Source of randomness.

    Returns
    -------
    list of Call
        Every call, ordered by onset then class. In a multi-bat scene one call of each bat
        starts at the same sample.
    """
    if n_bats == 0:
        return []
    anchor = rng.uniform(0.0, max(n_samples / rate - _CALL_MARGIN_S, 0.0))
    calls = []
    for i, species in enumerate(_draw_species(rate, n_bats, rng)):
        centre = anchor + (rng.uniform(-_SCENE_OFFSET_S, _SCENE_OFFSET_S) if i else 0.0)
        calls += draw_pass(species, rate, n_samples, centre=centre, anchor=anchor, noise_rms=noise_rms, rng=rng)
    return sorted(calls, key=lambda call: (call.onset, call.species.label))


# ---------------------------------------------------------------------------------------------
# Background


def _low_frequency_noise(n: int, rate: int, level: float, rng: np.random.Generator) -> np.ndarray:
    """Noise band-limited below 2-10 kHz (wind, traffic, electronics), by polyphase upsampling."""
    factor = math.ceil(rate / (2 * rng.uniform(2e3, 10e3)))
    coarse = level * rng.standard_normal(n // factor + 1, dtype=np.float32)
    return scipy.signal.resample_poly(coarse, factor, 1)[:n]


def _insect_band(n: int, rate: int, level: float, rng: np.random.Generator) -> np.ndarray:
    """Continuous stridulation: band-pass noise somewhere in 10-40 kHz."""
    low = rng.uniform(10e3, 30e3)
    high = min(40e3, low + rng.uniform(4e3, 15e3))
    sos = scipy.signal.butter(4, (low, high), btype="bandpass", fs=rate, output="sos")
    band = scipy.signal.sosfilt(sos, rng.standard_normal(n))
    return (level / band.std()) * band


def _add_clicks(samples: np.ndarray, rate: int, noise_rms: float, rng: np.random.Generator) -> None:
    """Add broadband clicks (rain drops, insects, electronics): decaying impulses of a few µs."""
    per_second = rng.uniform(0.5, 5.0) if rng.random() < 0.4 else 0.0
    for _ in range(rng.poisson(per_second * samples.size / rate)):
        at = rng.integers(samples.size)
        decay = rng.uniform(2e-6, 20e-6) * rate
        amplitude = rng.choice((-1.0, 1.0)) * noise_rms * 10 ** (rng.uniform(10, 30) / 20)
        shape = np.exp(-np.arange(min(math.ceil(8 * decay) + 1, samples.size - at)) / decay)
        samples[at:at + shape.size] += amplitude * shape


def _background(n: int, rate: int, noise_rms: float, rng: np.random.Generator) -> np.ndarray:
    """Float32 background of a recording: Gaussian noise plus, sometimes, the other noises."""
    samples = rng.standard_normal(n, dtype=np.float32)
    samples *= noise_rms
    if rng.random() < 0.5:
        samples += _low_frequency_noise(n, rate, noise_rms * 10 ** (rng.uniform(10, 30) / 20), rng)
    if rng.random() < 0.2:
        samples += _insect_band(n, rate, noise_rms * 10 ** (rng.uniform(0, 15) / 20), rng)
    _add_clicks(samples, rate, noise_rms, rng)
    return samples


# ---------------------------------------------------------------------------------------------
# Recordings


@dataclass(frozen=True, eq=False)
class SimulatedRecording:
    """One simulated recording.

    Parameters
    ----------
    samples
        int16 samples at the real-time rate.
    rate
        Real-time sample rate, Hz.
    calls
        Its calls, ordered by onset then class.
    noise_rms
        RMS of its Gaussian background (full-scale units), the reference of the call levels.
    """

    samples: np.ndarray
    rate: int
    calls: tuple[Call, ...]
    noise_rms: float


def _add_call(samples: np.ndarray, call: Call) -> None:
    wave = synthesize_call(call)
    samples[call.onset:call.onset + call.length] += wave
    echo_at = call.onset + call.echo_delay
    echo = call.echo_gain * wave[:max(samples.size - echo_at, 0)]
    samples[echo_at:echo_at + echo.size] += echo


def _to_pcm16(samples: np.ndarray) -> np.ndarray:
    """Full-scale float samples as int16, clipped like a recorder's converter."""
    samples *= 32767.0
    np.clip(samples, -32768.0, 32767.0, out=samples)
    return samples.astype(np.int16)


def simulate_recording(rate: int, n_samples: int, n_bats: int, rng: np.random.Generator) -> SimulatedRecording:
    """Simulate one recording: background noises and the calls of ``n_bats`` passing bats.

    Parameters
    ----------
    rate
        Real-time sample rate, Hz.
    n_samples
        Length of the recording in samples.
    n_bats
        Number of bats of different groups flying past together (0 for a recording with no bat).
    rng
        Source of randomness; the result is a function of its state.

    Returns
    -------
    SimulatedRecording
        The int16 samples, the calls (ordered by onset, then class) and the noise RMS.
    """
    noise_rms = 10 ** (rng.uniform(*_NOISE_DBFS) / 20)
    calls = draw_calls(rate, n_samples, n_bats, noise_rms, rng)
    samples = _background(n_samples, rate, noise_rms, rng)
    for call in calls:
        _add_call(samples, call)
    return SimulatedRecording(_to_pcm16(samples), rate, tuple(calls), noise_rms)


def guano_text(*, timestamp: datetime, time_expansion: int, rate: int) -> str:
    """The GUANO metadata of a simulated recording (``rate``: the real-time sample rate)."""
    return (
        "GUANO|Version: 1.0\n"
        "Make: batml\n"
        "Model: simulate\n"
        f"Timestamp: {timestamp.isoformat()}\n"
        f"TE: {time_expansion}\n"
        f"Samplerate: {rate}\n"
    )


def wav_bytes(samples: np.ndarray, header_rate: int, guano: str) -> bytes:
    """A mono 16-bit PCM WAV file whose ``guan`` chunk, after the data, holds ``guano``.

    Parameters
    ----------
    samples
        int16 samples.
    header_rate
        Sample rate written in the header (the real rate divided by any time expansion).
    guano
        GUANO metadata text.

    Returns
    -------
    bytes
        The whole file: soundfile's RIFF header and data, then the ``guan`` chunk (padded to an
        even length), with the RIFF size updated.
    """
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, header_rate, subtype="PCM_16", format="WAV")
    payload = guano.encode("utf-8")
    chunk = b"guan" + struct.pack("<I", len(payload)) + payload + b"\0" * (len(payload) % 2)
    riff = bytearray(buffer.getvalue() + chunk)
    riff[4:8] = struct.pack("<I", len(riff) - 8)
    return bytes(riff)


# ---------------------------------------------------------------------------------------------
# Archives


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
    annotations_npz, annotations_csv
        The annotations in the seed's format and as one CSV row per call.
    """

    root: Path
    files: list[str]
    n_calls: int
    duration_s: float
    annotations_npz: Path
    annotations_csv: Path


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


def _plan_archive(minutes: float, seed: int, *, sample_rates: tuple[int, ...], empty_fraction: float,
                  overlap_fraction: float, file_seconds: tuple[float, float], test_fraction: float,
                  time_expanded_fraction: float) -> list[_RecordingPlan]:
    """Draw every recording's name, rate, length, scene size, expansion and split."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    durations = _file_durations(60.0 * minutes, file_seconds, rng)
    n = len(durations)
    rates = rng.choice(np.asarray(sample_rates, dtype=np.int64), n)
    empty = _chosen(n, empty_fraction, rng)
    multi = np.zeros(n, dtype=bool)
    multi[~empty] = _chosen(int((~empty).sum()), overlap_fraction, rng)
    n_bats = np.where(empty, 0, np.where(multi, rng.choice((2, _MAX_BATS), n, p=(0.7, 0.3)), 1))
    expanded = _chosen(n, time_expanded_fraction, rng)
    test = _chosen(n, test_fraction, rng)
    sites = rng.integers(len(_SITES), size=n)
    gaps = rng.integers(5, 900, size=n)
    clock = datetime(2026, 6, 1, 21, 30) + timedelta(days=int(rng.integers(92)))
    plans = []
    for i, duration in enumerate(durations):
        plans.append(_RecordingPlan(
            index=i, name=f"{_SITES[sites[i]]}/{clock:%Y%m%d_%H%M%S}", rate=int(rates[i]),
            n_samples=round(duration * rates[i]), n_bats=int(n_bats[i]), time_expansion=10 if expanded[i] else 1,
            split="test" if test[i] else "train", timestamp=clock,
        ))
        clock += timedelta(seconds=math.ceil(duration) + int(gaps[i]))
    return plans


def _check_arguments(minutes, sample_rates, empty_fraction, overlap_fraction, file_seconds, test_fraction,
                     time_expanded_fraction) -> None:
    fractions = {
        "empty_fraction": empty_fraction, "overlap_fraction": overlap_fraction,
        "test_fraction": test_fraction, "time_expanded_fraction": time_expanded_fraction,
    }
    problems = [f"{name}={value} must be in [0, 1]" for name, value in fractions.items() if not 0 <= value <= 1]
    if not len(sample_rates) or min(sample_rates) <= 0:
        problems.append(f"sample_rates={sample_rates} must be positive rates")
    elif time_expanded_fraction > 0 and any(rate % 10 for rate in sample_rates):
        problems.append(f"time expansion x10 needs sample_rates divisible by 10, got {sample_rates}")
    else:
        too_low = [rate for rate in sample_rates if len({m.group for m in eligible_species(rate)}) < _MAX_BATS]
        if too_low:
            problems.append(f"sample rate(s) {too_low} Hz too low for {_MAX_BATS} groups of bats")
    if not 0.5 <= file_seconds[0] <= file_seconds[1]:
        problems.append(f"file_seconds={file_seconds} must satisfy 0.5 <= low <= high")
    elif not 60.0 * minutes >= file_seconds[0]:
        problems.append(f"minutes={minutes} must give at least one file of {file_seconds[0]} s")
    if problems:
        raise ValueError("; ".join(problems))


def _annotation_rows(plan: _RecordingPlan, calls: tuple[Call, ...]) -> list[dict]:
    return [
        {
            "file": plan.name, "split": plan.split, "position": call.position, "end": call.end,
            "class": call.species.label, "species_group": call.species.group, "species": call.species.species,
            "low_freq": call.low_hz, "high_freq": call.high_hz, "call_duration": call.length / call.rate,
            "duration": plan.n_samples / plan.rate,
        }
        for call in calls
    ]


def simulate_archive(out_dir: str | os.PathLike, minutes: float, seed: int = 0, *,
                     sample_rates=(250_000, 256_000, 384_000, 500_000), empty_fraction: float = 0.25,
                     overlap_fraction: float = 0.2, file_seconds=(1.0, 8.0), test_fraction: float = 0.25,
                     time_expanded_fraction: float = 0.0, progress: bool = False) -> SimulatedArchive:
    """Write a synthetic archive of annotated bat recordings.

    Parameters
    ----------
    out_dir
        Folder to write into (created if needed); files of the same names are overwritten,
        nothing else is touched.
    minutes
        Total real-time duration of the recordings.
    seed
        Seed of everything: the same seed writes the same bytes.
    sample_rates
        Real-time sample rates (Hz) to draw each file's rate from.
    empty_fraction
        Fraction of the files with no bat.
    overlap_fraction
        Fraction of the files with bats holding two or three bats of different groups at once.
    file_seconds
        Range of the file durations (s), drawn uniformly; the last file takes the remainder.
    test_fraction
        Fraction of the files in the test split.
    time_expanded_fraction
        Fraction of the files written time-expanded x10: same samples, header rate divided by
        10, GUANO ``TE: 10``. Annotations stay in real seconds.
    progress
        Show a progress bar over the files.

    Returns
    -------
    SimulatedArchive
        Where everything was written, with counts.

    Raises
    ------
    ValueError
        If an argument is out of range.

    Notes
    -----
    Every file's samples come from its own child seed (``SeedSequence(seed, spawn_key=(1, i))``),
    so files are independent; one file is in memory at a time.
    """
    _check_arguments(minutes, sample_rates, empty_fraction, overlap_fraction, file_seconds, test_fraction,
                     time_expanded_fraction)
    root = Path(out_dir)
    plans = _plan_archive(
        minutes, seed, sample_rates=sample_rates, empty_fraction=empty_fraction, overlap_fraction=overlap_fraction,
        file_seconds=file_seconds, test_fraction=test_fraction, time_expanded_fraction=time_expanded_fraction,
    )
    rows, recordings = [], {"train": [], "test": []}
    for plan in tqdm(plans, desc="simulate", unit="file", disable=not progress):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, plan.index)))
        recording = simulate_recording(plan.rate, plan.n_samples, plan.n_bats, rng)
        path = root / f"{plan.name}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        guano = guano_text(timestamp=plan.timestamp, time_expansion=plan.time_expansion, rate=plan.rate)
        path.write_bytes(wav_bytes(recording.samples, plan.rate // plan.time_expansion, guano))
        rows += _annotation_rows(plan, recording.calls)
        recordings[plan.split].append(RecordingCalls(
            file=plan.name, duration=plan.n_samples / plan.rate,
            positions=np.array([call.position for call in recording.calls], dtype=np.float64),
            classes=np.array([call.species.label for call in recording.calls], dtype=np.int64),
        ))
    by_name = {split: sorted(items, key=lambda r: r.file) for split, items in recordings.items()}
    npz = write_seed_npz(root / "annotations.npz", by_name["train"], by_name["test"])
    table = pd.DataFrame(rows, columns=list(CSV_COLUMNS)).sort_values(["file", "position", "class"], kind="stable")
    csv = write_calls_csv(root / "annotations.csv", table)
    return SimulatedArchive(
        root=root, files=sorted(f"{plan.name}.wav" for plan in plans), n_calls=len(rows),
        duration_s=sum(plan.n_samples / plan.rate for plan in plans), annotations_npz=npz, annotations_csv=csv,
    )
