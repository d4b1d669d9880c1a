"""Passes, scenes and whole recordings.

* **Passes.** A bat passing by emits a train of calls: parameters are drawn as quantiles of
  the species' ranges that drift slowly (a reflected random walk) from call to call, the
  inter-pulse interval is jittered, call types alternate (Barbastella type 1 / type 2,
  Nyctalus noctula's pairs, alternating generic QCF bats). Without propagation the level rises
  and falls by 20 dB over a 1-5 s pass; with it (``propagation``), the bat flies a straight
  line past the microphone and its distance sets spreading, air absorption and Doppler
  (:mod:`.propagation`). Calls that would fall below the noise floor, cross a file edge or lie
  wholly above the anti-alias edge are neither rendered nor annotated. A pass may end a search
  in a feeding buzz or hold social calls (:mod:`.behaviour`).
* **Scenes.** A recording holds no bat, one bat, or two or three bats passing at once (of
  different groups, or generic bats, each its own species). In those multi-bat scenes one call
  of every bat starts at exactly the same sample, so the annotations hold the same position
  with several classes: how the reference system encodes simultaneous calls. A species is only
  drawn where the file's anti-alias edge leaves room for its peak frequency (Rhinolophus
  hipposideros at 108-114 kHz needs >= 250 kHz).
* **Recordings.** Background noises (:mod:`.noise`), optionally a real background, the calls
  through the recorder's response, then gain, clipping and the converter (:mod:`.recorder`).

Randomness: every factor of :class:`~pipeline.simulation.settings.SimulationSettings` that is
off (a probability of 0, a constant range) draws nothing, so the default settings draw exactly
what the simulator drew before domain randomisation, and write the same bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import scipy.fft

from pipeline.config import REFERENCE_GROUPS
from pipeline.simulation import behaviour, noise
from pipeline.simulation.calls import (
    ANTIALIAS_FRACTION,
    Call,
    SpeciesModel,
    add_call,
    call_shape,
    eligible_species,
    lerp,
)
from pipeline.simulation.generic import draw_generic_species
from pipeline.simulation.propagation import Air, AirPath, doppler_factor, draw_flight
from pipeline.simulation.recorder import Recorder, apply_gain, draw_recorder, to_pcm
from pipeline.simulation.settings import SimulationSettings

#: Relative abundance of the groups when drawing a bat (Pip50: the commonest bats).
GROUP_WEIGHTS = {
    "Barbarg": 1.0, "Envsp": 1.5, "Myosp": 1.5, "Pip35": 1.0, "Pip50": 2.5, "Plesp": 1.0, "Rhisp": 1.0,
}

_PASS_SECONDS = (1.0, 5.0)          # time a bat takes to fly by
_PASS_FADE_DB = 20.0                # level drop from a pass's centre to its ends (without propagation)
_QUANTILE_STEP = 0.05               # random-walk step of a call parameter's quantile
_IPI_JITTER = 0.05                  # relative jitter of inter-pulse intervals
_MIN_GAP_S = 0.005                  # silence between consecutive calls of one bat
_CALL_MARGIN_S = 0.08               # room after a scene's shared call (longest call: 60 ms)
_SCENE_OFFSET_S = 0.3               # spread of the pass centres of bats flying together
MAX_BATS = 3                        # bats in the busiest scene
_REVERB_TAPS = (4, 12)
_REVERB_DECAY_DB = 30.0             # fall of the tail's echoes over its length
_SOCIAL_CLEARANCE_S = 0.005

_DEFAULT = SimulationSettings()


def _draw(bounds: tuple[float, float], rng: np.random.Generator) -> float:
    """A uniform draw in ``bounds``; no draw (and the constant) when both ends are equal."""
    return bounds[0] if bounds[0] == bounds[1] else float(rng.uniform(*bounds))


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
    ipi_ms = lerp(species.ipi_ms, quantiles[:, 4]) * (1.0 + _IPI_JITTER * rng.standard_normal(n))
    ipi_s = 1e-3 * np.maximum(ipi_ms, call_ms + 1e3 * _MIN_GAP_S)
    starts = np.concatenate([[0.0], np.cumsum(ipi_s[:-1])])
    return types, quantiles, call_ms, starts + anchor - starts[n_side]


def _echo_structure(settings: SimulationSettings, rate: int, n: int, first_delays: np.ndarray,
                    first_gains: np.ndarray, rng: np.random.Generator) -> list[tuple[tuple[int, float], ...]]:
    """Per call, its echoes: the discrete ones, then the bat's reverberation tail if it has one."""
    if settings.echo_count == (1, 1):
        count = 1
    else:
        count = int(rng.integers(settings.echo_count[0], settings.echo_count[1] + 1))
    delay_s = (settings.echo_delay_ms[0] / 1e3, settings.echo_delay_ms[1] / 1e3)
    extra = []
    if count > 1:
        extra = [
            (np.round(rng.uniform(*delay_s, n) * rate).astype(np.int64),
             10 ** (rng.uniform(*settings.echo_gain_db, n) / 20))
            for _ in range(count - 1)
        ]
    tail: tuple[tuple[int, float], ...] = ()
    if settings.reverberation_probability > 0 and rng.random() < settings.reverberation_probability:
        length_s = rng.uniform(*settings.reverberation_ms) / 1e3
        taps = int(rng.integers(_REVERB_TAPS[0], _REVERB_TAPS[1] + 1))
        delays = np.sort(rng.uniform(delay_s[1], delay_s[1] + length_s, taps))
        level_db = settings.echo_gain_db[0] - 3.0 - _REVERB_DECAY_DB * (delays - delay_s[1]) / length_s
        gains = 10 ** ((level_db - rng.uniform(0.0, 6.0, taps)) / 20)
        tail = tuple((int(round(d * rate)), float(g)) for d, g in zip(delays, gains, strict=True))
    echoes = []
    for i in range(n):
        own = [] if count == 0 else [(int(first_delays[i]), float(first_gains[i]))]
        own += [(int(d[i]), float(g[i])) for d, g in extra]
        echoes.append(tuple(own) + tail)
    return echoes


def draw_pass(species: SpeciesModel, rate: int, n_samples: int, *, centre: float, anchor: float,
              noise_rms: float, rng: np.random.Generator, settings: SimulationSettings | None = None,
              air: Air | None = None, edge_fraction: float = ANTIALIAS_FRACTION) -> list[Call]:
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
    settings
        The simulator's factors (default: :class:`SimulationSettings` defaults).
    air
        The recording's air (needed with ``settings.propagation``).
    edge_fraction
        Fraction of Nyquist where the recording's anti-alias filter starts; calls whose
        loudest component lies wholly above it are dropped.

    Returns
    -------
    list of Call
        The calls that lie wholly inside the recording and above the noise, in time order
        (echolocation calls, and the pass's buzz and social calls if it has any).
    """
    s = settings or _DEFAULT
    duration = rng.uniform(*_PASS_SECONDS)
    peak_snr_db = rng.uniform(*species.snr_db)
    types, quantiles, call_ms, starts = _call_train(species, duration, anchor, rng)
    snr_db = peak_snr_db - _PASS_FADE_DB * ((starts - centre) / (duration / 2)) ** 2
    onsets = np.round(starts * rate).astype(np.int64)
    lengths = np.round(1e-3 * call_ms * rate).astype(np.int64)
    harmonic_levels = rng.uniform(size=(starts.size, len(species.harmonics)))
    delay_s = (s.echo_delay_ms[0] / 1e3, s.echo_delay_ms[1] / 1e3)
    echo_delays = np.round(rng.uniform(*delay_s, starts.size) * rate).astype(np.int64)
    echo_gains = 10 ** (rng.uniform(*s.echo_gain_db, starts.size) / 20)
    # Domain randomisation: nothing below draws when its factor is off.
    peak_hz = 1e3 * species.dominant * np.array(
        [lerp(species.call_types[t].peak_khz, q) for t, q in zip(types, quantiles[:, 0], strict=True)])
    scale = np.ones(starts.size)
    distances = None
    if s.propagation:
        if air is None:
            raise ValueError("propagation needs the recording's air")
        flight = draw_flight(centre, s.distance_m, s.flight_speed_m_s, rng)
        snr_db = peak_snr_db + flight.level_db(starts, peak_hz, air)
        if s.doppler:
            scale = doppler_factor(flight.radial_speed(starts), air.speed_of_sound)
            lengths = np.round(1e-3 * call_ms * rate / scale).astype(np.int64)
        distances = flight.distance(starts)
    snr_db = snr_db + _draw(s.snr_offset_db, rng)
    echoes = _echo_structure(s, rate, starts.size, echo_delays, echo_gains, rng)
    kept = (np.abs(starts - centre) <= duration / 2) & (snr_db >= 0) & (onsets >= 0) & (onsets + lengths <= n_samples)
    edge_hz = edge_fraction * rate / 2
    calls = []
    for i in np.flatnonzero(kept):
        contour, envelope = call_shape(species, species.call_types[types[i]], quantiles[i], call_ms[i])
        if scale[i] != 1.0:
            contour = tuple((u, f * scale[i]) for u, f in contour)
        if species.dominant * min(f for _, f in contour) >= edge_hz:
            continue
        harmonics = tuple(
            (h.multiple, 10 ** (lerp(h.level_db, level) / 20))
            for h, level in zip(species.harmonics, harmonic_levels[i], strict=True)
        )
        fundamental = 1.0 if species.fundamental_db == (0.0, 0.0) else 10 ** (_draw(species.fundamental_db, rng) / 20)
        path = None if distances is None else AirPath(air, float(distances[i]), float(peak_hz[i] * scale[i]))
        calls.append(Call(
            species=species, rate=rate, onset=int(onsets[i]), length=int(lengths[i]), contour=contour,
            envelope=envelope, amplitude=noise_rms * 10 ** (snr_db[i] / 20), harmonics=harmonics,
            echoes=echoes[i], fundamental_gain=fundamental, path=path,
        ))
    if calls and s.buzz_probability > 0 and rng.random() < s.buzz_probability:
        calls = _with_buzz(calls, n_samples, noise_rms, rng, s)
    if calls and s.social_probability > 0 and rng.random() < s.social_probability:
        calls = _with_social_calls(calls, species, rate, n_samples, centre, noise_rms, rng, s)
    return calls


def _audible(calls: list[Call], n_samples: int, noise_rms: float) -> list[Call]:
    return [c for c in calls if c.onset >= 0 and c.onset + c.length <= n_samples and c.amplitude >= noise_rms]


def _with_buzz(calls: list[Call], n_samples: int, noise_rms: float, rng: np.random.Generator,
               s: SimulationSettings) -> list[Call]:
    """The pass with a feeding buzz in place of the search calls from one call on."""
    j = int(rng.integers(len(calls)))
    buzz, resume = behaviour.feeding_buzz(calls[j], rng, s.buzz_ipi_ms)
    start = calls[j].onset
    kept = [c for c in calls if not start <= c.onset < resume]
    return sorted(kept + _audible(buzz, n_samples, noise_rms), key=lambda c: c.onset)


def _with_social_calls(calls: list[Call], species: SpeciesModel, rate: int, n_samples: int, centre: float,
                       noise_rms: float, rng: np.random.Generator, s: SimulationSettings) -> list[Call]:
    """The pass with 1-4 social calls, the calls they overlap removed."""
    reference = min(calls, key=lambda c: abs(c.position - centre))
    span = (min(c.onset for c in calls), max(c.onset + c.length for c in calls))
    social = _audible(
        behaviour.social_calls(species, rate, span, reference, rng, s.social_frequency_khz, s.social_duration_ms),
        n_samples, noise_rms)
    clearance = int(_SOCIAL_CLEARANCE_S * rate)
    kept = [
        c for c in calls
        if all(c.onset + c.length + clearance <= o.onset or o.onset + o.length + clearance <= c.onset for o in social)
    ]
    return sorted(kept + social, key=lambda c: c.onset)


def _draw_species(rate: int, n_bats: int, rng: np.random.Generator, settings: SimulationSettings,
                  edge_fraction: float) -> list[SpeciesModel]:
    """``n_bats`` species: generic ones (each its own) and ones of different groups, groups weighted by abundance."""
    n_generic = 0
    if settings.generic_fraction > 0:
        n_generic = int((rng.random(n_bats) < settings.generic_fraction).sum())
    n_groups = n_bats - n_generic
    species = []
    if n_groups:
        candidates = eligible_species(rate, edge_fraction)
        groups = sorted({model.group for model in candidates}, key=REFERENCE_GROUPS.index)
        if n_groups > len(groups):
            raise ValueError(f"{n_groups} bats of different groups cannot be drawn from {len(groups)} group(s)")
        weights = np.array([GROUP_WEIGHTS[group] for group in groups])
        chosen = rng.choice(len(groups), size=n_groups, replace=False, p=weights / weights.sum())
        for g in chosen:
            members = [model for model in candidates if model.group == groups[g]]
            species.append(members[rng.integers(len(members))])
    species += [draw_generic_species(rate, edge_fraction, settings, rng) for _ in range(n_generic)]
    return species


def draw_calls(rate: int, n_samples: int, n_bats: int, noise_rms: float, rng: np.random.Generator, *,
               settings: SimulationSettings | None = None, air: Air | None = None,
               edge_fraction: float = ANTIALIAS_FRACTION) -> list[Call]:
    """The calls of a scene of ``n_bats`` bats flying past together.

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
    settings, air, edge_fraction
        As for :func:`draw_pass`.

    Returns
    -------
    list of Call
        Every call, ordered by onset then class. In a multi-bat scene one call of each bat
        starts at the same sample (unless a buzz or social call replaced it).
    """
    s = settings or _DEFAULT
    if n_bats == 0:
        return []
    anchor = rng.uniform(0.0, max(n_samples / rate - _CALL_MARGIN_S, 0.0))
    calls = []
    for i, species in enumerate(_draw_species(rate, n_bats, rng, s, edge_fraction)):
        centre = anchor + (rng.uniform(-_SCENE_OFFSET_S, _SCENE_OFFSET_S) if i else 0.0)
        calls += draw_pass(species, rate, n_samples, centre=centre, anchor=anchor, noise_rms=noise_rms, rng=rng,
                           settings=s, air=air, edge_fraction=edge_fraction)
    return sorted(calls, key=lambda call: (call.onset, call.species.label))


# ---------------------------------------------------------------------------------------------
# Recordings


@dataclass(frozen=True, eq=False)
class SimulatedRecording:
    """One simulated recording.

    Parameters
    ----------
    samples
        int16 samples at the real-time rate (for 8-bit recordings, codes in the high byte).
    rate
        Real-time sample rate, Hz.
    calls
        Its calls, ordered by onset then class.
    noise_rms
        RMS of its background (self-noise and any real background; full-scale units), the
        reference of the call levels.
    recorder
        Its recording chain.
    factors
        What else was drawn for it (noises, background, air, gain), for ``recordings.csv``.
    """

    samples: np.ndarray
    rate: int
    calls: tuple[Call, ...]
    noise_rms: float
    recorder: Recorder | None = None
    factors: dict = field(default_factory=dict)


def _background(n: int, rate: int, noise_rms: float, s: SimulationSettings, recorder: Recorder,
                rng: np.random.Generator, factors: dict) -> np.ndarray:
    """Float32 background: self-noise and the noises of the settings, through the recorder."""
    colour_db = _draw(s.noise_colour_db, rng)
    plain = recorder.plain and colour_db == 0
    if plain:
        samples = rng.standard_normal(n, dtype=np.float32)
        samples *= noise_rms
        acoustic = samples
    else:
        acoustic = np.zeros(n)
    kinds = []
    if rng.random() < s.low_frequency_noise_probability:
        acoustic += noise.low_frequency_noise(n, rate, noise_rms * 10 ** (rng.uniform(10, 30) / 20), rng)
        kinds.append("low-frequency")
    if rng.random() < s.insect_band_probability:
        acoustic += noise.insect_band(n, rate, noise_rms * 10 ** (rng.uniform(0, 15) / 20), rng)
        kinds.append("insect-band")
    noise.add_clicks(acoustic, rate, noise_rms, rng, s.click_probability)
    if s.insect_train_probability > 0 and rng.random() < s.insect_train_probability:
        level = noise_rms * 10 ** (rng.uniform(5, 30) / 20)
        acoustic += noise.insect_train(n, rate, level, s.insect_frequency_khz, rng)
        kinds.append("insect-train")
    if s.rain_probability > 0 and rng.random() < s.rain_probability:
        acoustic += noise.rain(n, rate, noise_rms, rng)
        kinds.append("rain")
    if s.wind_probability > 0 and rng.random() < s.wind_probability:
        acoustic += noise.wind(n, rate, noise_rms * 10 ** (rng.uniform(20, 40) / 20), noise_rms, rng)
        kinds.append("wind")
    if not plain:
        size = scipy.fft.next_fast_len(n, real=True)
        freqs = np.fft.rfftfreq(size, 1.0 / rate)
        spectrum = scipy.fft.rfft(acoustic, size) * recorder.response(freqs)
        scale = noise_rms * math.sqrt(size / 2)
        white = rng.standard_normal((2, freqs.size))
        shape = recorder.antialias(freqs) if colour_db == 0 else recorder.antialias(freqs) * noise.colour_gain(
            freqs, colour_db, rng)
        spectrum += (scale * shape) * (white[0] + 1j * white[1])
        samples = scipy.fft.irfft(spectrum, size)[:n].astype(np.float32)
    if s.electrical_probability > 0 and rng.random() < s.electrical_probability:
        samples += noise.electrical_tone(n, rate, noise_rms, s.electrical_frequency_khz,
                                         recorder.antialias_edge * rate / 2, rng).astype(np.float32)
        kinds.append("electrical")
    factors["noises"] = ";".join(kinds)
    factors["noise_colour_db"] = colour_db
    return samples


def simulate_recording(rate: int, n_samples: int, n_bats: int, rng: np.random.Generator, *,
                       settings: SimulationSettings | None = None, bit_depth: int = 16,
                       backgrounds: noise.BackgroundLibrary | None = None) -> SimulatedRecording:
    """Simulate one recording: background noises and the calls of ``n_bats`` passing bats.

    Parameters
    ----------
    rate
        Real-time sample rate, Hz.
    n_samples
        Length of the recording in samples.
    n_bats
        Number of bats flying past together (0 for a recording with no bat).
    rng
        Source of randomness; the result is a function of its state.
    settings
        The simulator's factors (default: :class:`SimulationSettings` defaults).
    bit_depth
        16 or 8: the converter's resolution.
    backgrounds
        Real recordings to draw a background from (``settings.background_probability``).

    Returns
    -------
    SimulatedRecording
        The int16 samples, the calls (ordered by onset, then class), the noise RMS and what
        was drawn.
    """
    s = settings or _DEFAULT
    noise_rms = 10 ** (rng.uniform(*s.noise_dbfs) / 20)
    recorder = draw_recorder(rate, s, rng)
    factors: dict = {"microphone": recorder.describe(), "antialias_edge": recorder.antialias_edge}
    air = None
    if s.propagation:
        air = Air(_draw(s.temperature_c, rng), _draw(s.humidity_percent, rng))
        factors.update(temperature_c=air.temperature_c, humidity_percent=air.humidity_percent)
    real, reference_rms = None, noise_rms
    if backgrounds is not None and rng.random() < s.background_probability:
        real, factors["background"] = backgrounds.segment(n_samples, rate, rng)
        real *= 10 ** (_draw(s.background_gain_db, rng) / 20)
        reference_rms = math.hypot(noise_rms, noise.robust_rms(real))
    calls = draw_calls(rate, n_samples, n_bats, reference_rms, rng, settings=s, air=air,
                       edge_fraction=recorder.antialias_edge)
    samples = _background(n_samples, rate, noise_rms, s, recorder, rng, factors)
    if real is not None:
        samples += real.astype(np.float32)
    response = None if recorder.plain else recorder.response
    for call in calls:
        add_call(samples, call, response)
    factors["gain_db"] = apply_gain(samples, recorder, reference_rms, bit_depth)
    factors["clipped"] = bool(samples.size and np.abs(samples).max() >= 1.0)
    return SimulatedRecording(to_pcm(samples, bit_depth), rate, tuple(calls), reference_rms, recorder, factors)
