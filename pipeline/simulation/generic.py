"""The generic bat family: a new random species for every generic bat (class ``bat``).

The seven European groups cover a small part of what bats emit. A detector that must find any
echolocation call, anywhere, has to see the others too, so a generic bat draws its own call
design from five shapes that span the families of the world (the guild scheme of Schnitzler &
Kalko 2001, BioScience 51:557: open-space, edge-space and narrow-space foragers, and
flutter-detecting CF bats), then flies past like any other bat (:mod:`.scene`). Each shape's
ranges are for its loudest component; every frequency is clipped to
``SimulationSettings.generic_frequency_khz`` (10-150 kHz) and every duration to
``generic_duration_ms`` (0.5-60 ms).

========== ======================================================================================
shape      ranges and where they come from
========== ======================================================================================
FM         steep downward sweep of narrow-space and gleaning vespertilionids: start 1.4-2.8 x
           peak, end 0.45-0.8 x peak, peak 20-80 kHz, 1-6 ms, IPI 40-120 ms. Myotis
           septentrionalis sweeps about 117 to 49 kHz in 2.4 ms (Faure, Fullard & Dawson 1993,
           Bioacoustics 5:67); Myotis nattereri 120 to 20 kHz (CALLS.md).
FM-QCF     steep sweep into a shallow tail, the commonest design of edge foragers
           (pipistrelles, serotines): start 1.2-2.2 x peak, end 0.85-0.98 x peak, peak
           15-75 kHz, 3-15 ms, IPI 50-200 ms. Eptesicus fuscus in Cuba: a downward sweep into a
           quasi-constant part near 33 kHz, under 8 ms (Rodriguez & Mora 2006, Caribbean Journal
           of Science 42:121).
QCF        shallow, long, low calls of open-space bats (noctules, free-tailed Molossidae,
           sheath-tailed Emballonuridae), often alternating in frequency between calls: start
           1.05-1.4 x peak, end 0.85-0.97 x peak, peak 10-50 kHz, 6-30 ms, IPI 100-450 ms, half
           of them alternating two call types 3-10 % apart. Saccopteryx bilineata alternates
           pairs at 44.5-46.6 and 46.6-48.7 kHz (O'Farrell & Miller 1997, J Mammal 78:954) with
           most energy in the 2nd harmonic (about 46 kHz); Cormura brevirostris puts most in the
           5th (Jakobsen, Kalko & Surlykke 2012, Behav Ecol Sociobiol 66:1493).
CF-FM      a long constant frequency ending in a downward sweep, high duty cycle
           (Rhinolophidae, Hipposideridae, Pteronotus parnellii): CF 25-140 kHz, a short rise
           from 0.9-0.99 x CF, a terminal sweep to 0.75-0.92 x CF, 10-60 ms, duty cycle 25-60 %.
           Pteronotus parnellii: CF 63.5 kHz then a sweep to about 54.5 kHz (O'Farrell & Miller
           1997); Rhinolophus ferrumequinum 80-84 kHz for 40-60 ms (CALLS.md). The CF heard is the
           2nd harmonic of a weak fundamental in these families, so 80 % of CF-FM bats get a
           loudest 2nd harmonic whatever ``generic_upper_harmonic_fraction`` says.
broadband  very short, broadband, multi-harmonic, faint sweeps of gleaning and frugivorous
-FM        Phyllostomidae: start 1.3-2 x peak, end 0.4-0.75 x peak, peak 40-120 kHz,
           0.5-3 ms, IPI 15-80 ms, 3-20 dB above the noise. Phyllops falcatus sweeps its
           fundamental from about 73 to 23 kHz in 4.5 ms in open flight and shortens to about
           2 ms, then 1 ms, near clutter, moving energy into its 2nd and 3rd harmonics (Macias,
           Mora, Koch & von Helversen 2005, Acta Chiropterologica 7:275); phyllostomid source
           levels are 96-110 dB SPL at 10 cm against 122-134 dB for open-space bats (Brinklov,
           Kalko & Surlykke 2009, J Exp Biol 212:11; Surlykke & Kalko 2008, PLoS ONE 3:e2036):
           they are heard from nearer and fainter. 60 % get a loudest upper harmonic.
========== ======================================================================================

Harmonics: ``generic_harmonics`` components in all (fundamental included); in the loudest-
upper-harmonic case the 2nd (three times in four) or the 3rd is loudest and the fundamental
4-20 dB below it (15-30 dB for CF-FM bats, whose fundamental is faint), as in Pteronotus
davyi, whose 2nd harmonic is usually the more intense
(Ibanez, Guillen, Juste & Perez-Jorda 1999, J Mammal 80:924); other harmonics 8-24 dB below
the loudest. Within one bat, each call varies around the bat's values (peak 2 %, start and end
4 %, duration 15 %, interval 10 %).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.simulation.calls import GENERIC_CLASS, CallType, Harmonic, SpeciesModel


@dataclass(frozen=True)
class GenericShape:
    """Ranges of one generic call shape (of the loudest component; ratios are of its peak).

    ``ipi_ms`` is ``None`` for the high-duty-cycle shape, whose interval follows from the
    duration and ``duty_cycle``.
    """

    synthesis: str
    peak_khz: tuple[float, float]
    start_ratio: tuple[float, float]
    end_ratio: tuple[float, float]
    duration_ms: tuple[float, float]
    ipi_ms: tuple[float, float] | None
    snr_db: tuple[float, float]
    upper_harmonic: float | None = None
    alternation: float = 0.0
    duty_cycle: tuple[float, float] = (0.25, 0.6)


#: The five shapes of the generic family (sources in the module docstring).
GENERIC_SHAPE_MODELS: dict[str, GenericShape] = {
    "FM": GenericShape("FM", (20, 80), (1.4, 2.8), (0.45, 0.8), (1, 6), (40, 120), (8, 30)),
    "FM-QCF": GenericShape("FM-QCF", (15, 75), (1.2, 2.2), (0.85, 0.98), (3, 15), (50, 200), (12, 40)),
    "QCF": GenericShape("QCF", (10, 50), (1.05, 1.4), (0.85, 0.97), (6, 30), (100, 450), (15, 45), alternation=0.5),
    "CF-FM": GenericShape("CF", (25, 140), (0.9, 0.99), (0.75, 0.92), (10, 60), None, (15, 38), upper_harmonic=0.8),
    "broadband-FM": GenericShape("FM", (40, 120), (1.3, 2.0), (0.4, 0.75), (0.5, 3), (15, 80), (3, 20),
                                 upper_harmonic=0.6),
}

_JITTER = {"peak": 0.02, "sweep": 0.04, "duration": 0.15, "ipi": 0.1}
_ALTERNATION_STEP = (0.03, 0.10)
_FUNDAMENTAL_DB = (-20.0, -4.0)     # below a loudest upper harmonic
_CF_FUNDAMENTAL_DB = (-30.0, -15.0)  # rhinolophids' and Pteronotus' fundamental is weak
_MARGIN = 0.97          # the loudest component's peak stays this far below the anti-alias edge


def _log_uniform(bounds: tuple[float, float], rng: np.random.Generator) -> float:
    return math.exp(rng.uniform(math.log(bounds[0]), math.log(bounds[1])))


def _spread(value: float, jitter: float) -> tuple[float, float]:
    return (value * (1.0 - jitter), value * (1.0 + jitter))


def eligible_shapes(names: tuple[str, ...], edge_khz: float, frequency_khz: tuple[float, float]) -> list[str]:
    """Shapes of ``names`` whose peak range reaches below the recording's anti-alias edge."""
    top = min(edge_khz * _MARGIN, frequency_khz[1])
    return [name for name in names if max(GENERIC_SHAPE_MODELS[name].peak_khz[0], frequency_khz[0]) < top]


def draw_generic_species(rate: int, edge_fraction: float, settings, rng: np.random.Generator) -> SpeciesModel:
    """A new species of the generic family, for one bat recorded at ``rate`` Hz.

    Parameters
    ----------
    rate
        Real-time sample rate (Hz) of the recording.
    edge_fraction
        Fraction of Nyquist where the recording's anti-alias filter starts: the loudest
        component's peak is drawn below it (sweeps may still start above it and be cut).
    settings
        :class:`~pipeline.simulation.settings.SimulationSettings`.
    rng
        Source of randomness.

    Returns
    -------
    SpeciesModel
        Group ``"bat"``; call types in the fundamental's kHz; one or two alternating types.

    Raises
    ------
    ValueError
        If no allowed shape fits below the anti-alias edge.
    """
    f_lo, f_hi = settings.generic_frequency_khz
    edge_khz = edge_fraction * rate / 2e3
    names = eligible_shapes(settings.generic_shapes, edge_khz, settings.generic_frequency_khz)
    if not names:
        raise ValueError(f"no generic call shape fits below {edge_khz:.0f} kHz")
    name = names[int(rng.integers(len(names)))]
    shape = GENERIC_SHAPE_MODELS[name]
    peak = _log_uniform((max(shape.peak_khz[0], f_lo), min(shape.peak_khz[1], edge_khz * _MARGIN, f_hi)), rng)
    start = min(peak * rng.uniform(*shape.start_ratio), f_hi)
    end = max(peak * rng.uniform(*shape.end_ratio), f_lo)
    d_lo, d_hi = settings.generic_duration_ms
    duration = _log_uniform((max(shape.duration_ms[0], d_lo), max(min(shape.duration_ms[1], d_hi),
                                                                  max(shape.duration_ms[0], d_lo))), rng)
    if shape.ipi_ms is None:
        ipi = duration / rng.uniform(*shape.duty_cycle)
    else:
        ipi = max(_log_uniform(shape.ipi_ms, rng), 2.0 * duration)
    harmonics, fundamental_db, dominant = _draw_harmonics(shape, settings, rng)
    bounds = (settings.generic_frequency_khz, settings.generic_duration_ms)
    types = [_call_type(peak, start, end, duration, dominant, *bounds)]
    if shape.alternation and rng.random() < shape.alternation:
        step = 1.0 + rng.uniform(*_ALTERNATION_STEP)
        types.append(_call_type(min(peak * step, start - 0.5), start, min(end * step, peak * step - 0.5),
                                duration, dominant, *bounds))
    return SpeciesModel(
        species=f"generic {name}", group=GENERIC_CLASS, shape=shape.synthesis, call_types=tuple(types),
        ipi_ms=_spread(ipi, _JITTER["ipi"]), snr_db=shape.snr_db, harmonics=harmonics,
        fundamental_db=fundamental_db, dominant=float(dominant),
    )


def _call_type(peak: float, start: float, end: float, duration: float, dominant: int,
               frequency_khz: tuple[float, float], duration_ms: tuple[float, float]) -> CallType:
    """Ranges around one call design (kept inside the allowed ranges), in the fundamental's kHz."""
    k = float(dominant)

    def around(value, jitter, bounds, scale=k):
        return tuple(float(np.clip(v, *bounds)) / scale for v in _spread(value, jitter))

    return CallType(
        start_khz=around(start, _JITTER["sweep"], frequency_khz),
        end_khz=around(end, _JITTER["sweep"], frequency_khz),
        # room for the sweep shapes' minimum steps around the peak (1 and 0.5 kHz of the fundamental)
        peak_khz=around(peak, _JITTER["peak"], (frequency_khz[0] + 0.5 * k, frequency_khz[1] - k)),
        duration_ms=around(duration, _JITTER["duration"], duration_ms, 1.0),
    )


def _draw_harmonics(shape: GenericShape, settings, rng: np.random.Generator):
    """``(harmonics, fundamental level range, loudest multiple)`` of one generic bat."""
    upper = shape.upper_harmonic if shape.upper_harmonic is not None else settings.generic_upper_harmonic_fraction
    dominant = (2 if rng.random() < 0.75 else 3) if rng.random() < upper else 1
    lo, hi = settings.generic_harmonics
    count = max(int(rng.integers(lo, hi + 1)), dominant)
    harmonics = []
    fundamental_db = (0.0, 0.0)
    if dominant > 1:
        level = rng.uniform(*(_CF_FUNDAMENTAL_DB if shape.synthesis == "CF" else _FUNDAMENTAL_DB))
        fundamental_db = (level - 2.0, level + 2.0)
    for multiple in range(2, count + 1):
        if multiple == dominant:
            harmonics.append(Harmonic(float(multiple), (0.0, 0.0)))
        else:
            level = rng.uniform(-24.0, -8.0)
            harmonics.append(Harmonic(float(multiple), (level - 2.0, level + 2.0)))
    return tuple(harmonics), fundamental_db, dominant
