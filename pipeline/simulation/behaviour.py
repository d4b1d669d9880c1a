"""What a passing bat does besides searching: feeding buzzes and social calls.

* **Feeding buzz** (annotated ``event="buzz"``). When an aerial-hawking bat closes in on an
  insect its calls speed up into a "buzz" (named by Griffin, Webster & Michael 1960, Anim
  Behav 8:141): the interval falls from the search interval to a terminal phase ("buzz II",
  Kalko & Schnitzler 1989, Behav Ecol Sociobiol 24:225; Kalko 1995, Anim Behav 50:861) of
  calls about 5 ms apart - up to about 190 calls per second (Ratcliffe, Elemans, Jakobsen &
  Surlykke 2013, Science 342:1203) - that last well under 1 ms and sweep lower than search
  calls, and are fainter, as bats lower their output by several dB per halving of the distance
  to a target (Surlykke & Kalko 2008, PLoS ONE 3:e2036, 4-7 dB). Simulated: 5-12 calls of
  "buzz I" whose interval falls geometrically from 12-20 ms to the terminal interval, then
  8-25 calls of "buzz II" at the terminal interval (``buzz_ipi_ms``, 4-7 ms) jittered by 5 %;
  durations fall from the search call's (at most 3 ms) to 0.3-1 ms; start and end frequencies
  fall by up to 25 % and 15 %; the level falls by 3-12 dB; then 100-300 ms of silence before
  the search calls resume. Every call of buzz I and II is annotated as ``buzz``.
* **Social calls** (annotated ``event="social"``). European vespertilionids' social calls are
  lower and longer than their echolocation calls and often made of several frequency-modulated
  components (Pfalzer & Kusch 2003, J Zool 261:21); the song-flight calls of pipistrelles have
  about four components with fundamentals near 15-25 kHz (Barlow & Jones 1997, J Zool 241:315;
  CALLS.md); Myotis septentrionalis emits 6 ms curved sweeps from 70 to 30 kHz (Faure, Fullard
  & Dawson 1993, Bioacoustics 5:67). Simulated, 1-4 per pass, one of three kinds: a trill of
  2-5 short downward sweeps, a long curved sweep (rising then falling or the reverse), or a
  sinusoidally frequency-modulated call (modulation 50-300 Hz, depth 10-30 %); fundamental within
  ``social_frequency_khz`` (10-35 kHz), total length within ``social_duration_ms`` (5-80 ms),
  a 2nd and 3rd harmonic 6-18 dB below, level 0-6 dB above the pass's search calls.
  Echolocation calls that a buzz or a social call overlaps are removed.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from pipeline.simulation.calls import Call, SpeciesModel, sweep_envelope

_BUZZ_I_CALLS = (5, 12)
_BUZZ_II_CALLS = (8, 25)
_BUZZ_START_IPI_MS = (12.0, 20.0)
_BUZZ_END_MS = (0.3, 1.0)
_BUZZ_LEVEL_DROP_DB = (3.0, 12.0)
_BUZZ_PAUSE_MS = (100.0, 300.0)
_SOCIAL_CALLS = (1, 4)
_SOCIAL_KINDS = ("trill", "curved", "modulated")


def feeding_buzz(search: Call, rng: np.random.Generator, ipi_ms: tuple[float, float]) -> tuple[list[Call], int]:
    """The calls of a feeding buzz that starts at a search call's onset, and the silence's end.

    Parameters
    ----------
    search
        The search call the buzz replaces (its timing, frequencies, level and air path are the
        buzz's starting point).
    rng
        Source of randomness.
    ipi_ms
        Range of the terminal interval (ms).

    Returns
    -------
    (list of Call, int)
        The buzz calls (``event="buzz"``, steep FM, no echoes) and the sample at which
        search calls may resume.
    """
    rate = search.rate
    n_one = int(rng.integers(_BUZZ_I_CALLS[0], _BUZZ_I_CALLS[1] + 1))
    n_two = int(rng.integers(_BUZZ_II_CALLS[0], _BUZZ_II_CALLS[1] + 1))
    terminal = rng.uniform(*ipi_ms)
    first = rng.uniform(*_BUZZ_START_IPI_MS)
    intervals = np.concatenate([
        np.geomspace(first, terminal, n_one),
        terminal * (1.0 + 0.05 * rng.standard_normal(n_two)),
    ])
    n = intervals.size
    progress = np.minimum(np.arange(n) / max(n_one - 1, 1), 1.0)
    start_call_ms = min(search.length / rate * 1e3, 3.0)
    end_ms = rng.uniform(*_BUZZ_END_MS)
    durations = start_call_ms + (end_ms - start_call_ms) * progress
    freqs = [freq for _, freq in search.contour]
    top, bottom = max(freqs), min(freqs)
    top_drop, bottom_drop = rng.uniform(0.0, 0.25), rng.uniform(0.0, 0.15)
    level_drop = rng.uniform(*_BUZZ_LEVEL_DROP_DB)
    onsets = search.onset + np.round(np.concatenate([[0.0], np.cumsum(intervals[:-1])]) * 1e-3 * rate).astype(int)
    calls = []
    for i in range(n):
        length = max(int(round(durations[i] * 1e-3 * rate)), 8)
        start = top * (1.0 - top_drop * progress[i])
        end = bottom * (1.0 - bottom_drop * progress[i])
        calls.append(replace(
            search, onset=int(onsets[i]), length=length, contour=((0.0, start), (1.0, max(end, 0.3 * start))),
            envelope=sweep_envelope(0.4), amplitude=search.amplitude * 10 ** (-level_drop * progress[i] / 20),
            echoes=(), event="buzz",
        ))
    resume = int(onsets[-1] + intervals[-1] * 1e-3 * rate + rng.uniform(*_BUZZ_PAUSE_MS) * 1e-3 * rate)
    return calls, resume


def social_calls(species: SpeciesModel, rate: int, span: tuple[int, int], reference: Call,
                 rng: np.random.Generator, frequency_khz: tuple[float, float],
                 duration_ms: tuple[float, float]) -> list[Call]:
    """1-4 social calls of a passing bat, at random times within ``span`` (samples).

    Parameters
    ----------
    species
        The bat's species (the calls' class).
    rate
        Real-time sample rate (Hz).
    span
        First and last sample at which a social call may start.
    reference
        A search call of the pass near its centre: its amplitude and air path are reused.
    rng
        Source of randomness.
    frequency_khz, duration_ms
        Ranges of the fundamental's frequency and of the whole call's length.

    Returns
    -------
    list of Call
        ``event="social"`` calls, in time order, without echoes.
    """
    count = int(rng.integers(_SOCIAL_CALLS[0], _SOCIAL_CALLS[1] + 1))
    calls = []
    for _ in range(count):
        duration = math.exp(rng.uniform(math.log(duration_ms[0]), math.log(duration_ms[1])))
        length = max(int(round(duration * 1e-3 * rate)), 16)
        if span[1] - length <= span[0]:
            continue
        onset = int(rng.integers(span[0], span[1] - length))
        kind = _SOCIAL_KINDS[int(rng.integers(len(_SOCIAL_KINDS)))]
        contour, envelope = _social_shape(kind, frequency_khz, duration, rng)
        harmonics = tuple((float(m), 10 ** (rng.uniform(-18.0, -6.0) / 20)) for m in (2, 3))
        calls.append(replace(
            reference, species=species, onset=onset, length=length, contour=contour, envelope=envelope,
            amplitude=reference.amplitude * 10 ** (rng.uniform(0.0, 6.0) / 20), harmonics=harmonics,
            fundamental_gain=1.0, echoes=(), event="social", dominant=1.0,
        ))
    return sorted(calls, key=lambda call: call.onset)


def _social_shape(kind: str, frequency_khz: tuple[float, float], duration_ms: float,
                  rng: np.random.Generator) -> tuple[tuple, tuple]:
    """Contour (Hz) and envelope of a social call of ``kind``."""
    lo, hi = 1e3 * frequency_khz[0], 1e3 * frequency_khz[1]
    if kind == "trill":
        parts = int(rng.integers(2, 6))
        top = rng.uniform(lo + 0.3 * (hi - lo), hi)
        bottom = rng.uniform(lo, lo + 0.6 * (top - lo))
        width = 1.0 / parts
        contour, envelope = [(0.0, top)], [(0.0, 0.0)]
        for k in range(parts):  # each component sweeps down; the glide back up is silent
            on, off = (k + 0.05) * width, (k + 0.75) * width
            contour += [(on, top), (off, bottom)]
            envelope += [(on, 0.0), (0.5 * (on + off), 1.0), (off, 0.0)]
        return tuple(contour + [(1.0, bottom)]), tuple(envelope + [(1.0, 0.0)])
    if kind == "curved":
        ends = rng.uniform(lo, hi, 2)
        middle = rng.uniform(lo, hi)
        contour = ((0.0, ends[0]), (0.5, middle), (1.0, ends[1]))
        return contour, ((0.0, 0.0), (0.15, 1.0), (0.85, 1.0), (1.0, 0.0))
    centre = rng.uniform(lo, hi)
    depth = rng.uniform(0.1, 0.3)
    cycles = max(rng.uniform(50.0, 300.0) * duration_ms * 1e-3, 1.0)
    u = np.linspace(0.0, 1.0, max(int(cycles * 8), 16))
    freqs = np.clip(centre * (1.0 + depth * np.sin(2 * np.pi * cycles * u)), lo, hi)
    return tuple(zip(u.tolist(), freqs.tolist(), strict=True)), ((0.0, 0.0), (0.1, 1.0), (0.9, 1.0), (1.0, 0.0))

