"""Call shapes, the species models of the seven European groups, and call synthesis.

Each call follows an instantaneous-frequency contour (piecewise linear through a few
breakpoints) integrated into a phase, under a smooth envelope made of half-cosine ramps. Four
shapes: FM (one steep sweep), FM-QCF (steep sweep, then a shallow quasi-constant-frequency
tail), QCF (mostly the shallow tail) and CF (a short upward FM, a long constant frequency, a
short downward FM, as Rhinolophus). The envelope of a sweep peaks where the contour crosses the
drawn peak frequency, so the spectrum's maximum lies at that frequency. Harmonics are extra
components at multiples of the fundamental's phase; the fundamental itself may be weaker than a
harmonic (:attr:`SpeciesModel.dominant`), as in many tropical families (:mod:`.generic`).

The seven groups' ranges come from ``../shared/reference/CALLS.md`` (European field guides:
search-phase calls in open or edge habitat): frequencies in kHz, durations and inter-pulse
intervals in ms; the 2nd harmonic 10-20 dB below the fundamental (Plecotus: a strong 2nd, 3-8 dB
below; Rhinolophus: a weak component at half the constant frequency, 20-30 dB below, because the
constant frequency heard is the 2nd harmonic of a weak fundamental).

The rendered sound is shaped by frequency-dependent gains evaluated at each component's
instantaneous frequency: the recorder's response (microphone and anti-alias filter,
:mod:`.recorder`) and, with propagation on, the air's absorption over the call's path and over
each echo's extra path (:mod:`.propagation`). For a sweep this is the stationary-phase
approximation: at each instant a component has one frequency, and a filter scales it by its
gain there. It costs a multiplication per sample instead of a convolution per call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np

from pipeline.config import REFERENCE_GROUPS

if TYPE_CHECKING:
    from pipeline.simulation.propagation import AirPath

#: Fraction of the Nyquist frequency above which a recorder's anti-aliasing filter fades
#: sound out, by default; a species is only drawn where its peak frequency lies below it.
ANTIALIAS_FRACTION = 0.95

#: Class name of the generic bat family (and of its calls' ``class`` in ``annotations.csv``).
GENERIC_CLASS = "bat"

#: Kinds of annotated events.
EVENTS = ("echolocation", "buzz", "social")

FrequencyGain = Callable[[np.ndarray], np.ndarray]


# ---------------------------------------------------------------------------------------------
# Species call models


@dataclass(frozen=True)
class CallType:
    """Ranges of one call type of a species (kHz and ms), each drawn uniformly.

    For CF calls ``start_khz`` and ``end_khz`` are the two ends of the short FM parts and
    ``peak_khz`` is the constant frequency. Frequencies are the fundamental's.
    """

    start_khz: tuple[float, float]
    end_khz: tuple[float, float]
    peak_khz: tuple[float, float]
    duration_ms: tuple[float, float]


@dataclass(frozen=True)
class Harmonic:
    """A component at ``multiple`` times the call's frequency, ``level_db`` relative to the call's amplitude."""

    multiple: float
    level_db: tuple[float, float]


_SECOND_HARMONIC = (Harmonic(2.0, (-20.0, -10.0)),)


@dataclass(frozen=True)
class SpeciesModel:
    """How a species calls: shape, call types (alternating along a pass), rhythm and loudness.

    Parameters
    ----------
    species, group
        Latin name (or, for the generic family, a description) and the class: one of the
        seven groups of :data:`pipeline.config.REFERENCE_GROUPS`, or ``"bat"``.
    shape
        ``"FM"``, ``"FM-QCF"``, ``"QCF"`` or ``"CF"`` (the synthesis shape).
    call_types
        One or more call types; consecutive calls of a pass cycle through them.
    ipi_ms
        Range of the inter-pulse interval.
    snr_db
        Range of the call level at the pass centre, in dB above the background noise RMS.
    harmonics
        Extra components of each call.
    fundamental_db
        Level of the fundamental relative to the call's amplitude (0 dB: the fundamental is
        the loudest component).
    dominant
        Multiple of the fundamental of the loudest component: the annotation's frequency box
        is this component's.
    """

    species: str
    group: str
    shape: str
    call_types: tuple[CallType, ...]
    ipi_ms: tuple[float, float]
    snr_db: tuple[float, float]
    harmonics: tuple[Harmonic, ...] = _SECOND_HARMONIC
    fundamental_db: tuple[float, float] = (0.0, 0.0)
    dominant: float = 1.0

    @property
    def label(self) -> int:
        """The reference system's integer class of the species' group (1..7), 0 for generic bats."""
        return REFERENCE_GROUPS.index(self.group) + 1 if self.group in REFERENCE_GROUPS else 0

    @property
    def max_peak_hz(self) -> float:
        """Highest peak frequency of the loudest component the species can call at."""
        return 1e3 * self.dominant * max(call_type.peak_khz[1] for call_type in self.call_types)


def _one_type(start, end, peak, duration) -> tuple[CallType, ...]:
    return (CallType(start, end, peak, duration),)


#: The species of the seven groups, with ranges from CALLS.md.
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


def eligible_species(rate: float, edge_fraction: float = ANTIALIAS_FRACTION) -> tuple[SpeciesModel, ...]:
    """Species whose peak frequency a recording at ``rate`` Hz (real time) can hold.

    Parameters
    ----------
    rate
        Real-time sample rate in Hz.
    edge_fraction
        Fraction of the Nyquist frequency where the recorder's anti-alias filter starts.

    Returns
    -------
    tuple of SpeciesModel
        The models of :data:`SPECIES_MODELS` whose highest peak frequency lies below the
        anti-aliasing edge, ``edge_fraction`` times the Nyquist frequency.
    """
    edge = edge_fraction * rate / 2
    return tuple(model for model in SPECIES_MODELS if model.max_peak_hz < edge)


# ---------------------------------------------------------------------------------------------
# Calls


@dataclass(frozen=True)
class Call:
    """One emitted call, as rendered into a recording and annotated.

    Parameters
    ----------
    species
        The calling species (for the generic family, the bat's drawn model).
    rate
        Real-time sample rate of the recording, Hz.
    onset, length
        First sample and number of samples of the call (its echoes come after).
    contour
        Breakpoints ``(fraction of the call, frequency in Hz)`` of the fundamental's
        instantaneous frequency, linearly interpolated (as received: Doppler included).
    envelope
        Breakpoints ``(fraction of the call, relative amplitude)`` of the amplitude envelope,
        joined by half-cosines; 0 at both ends, 1 at its maximum.
    amplitude
        Peak amplitude of the loudest component at its reference frequency, as a fraction
        of full scale (before the microphone's response).
    harmonics
        ``(multiple, amplitude ratio)`` of each extra component.
    echoes
        ``(delay in samples, amplitude ratio)`` of each echo.
    event
        ``"echolocation"``, ``"buzz"`` or ``"social"``.
    fundamental_gain
        Amplitude ratio of the fundamental (1: the fundamental is the loudest component).
    path
        The air between bat and microphone, whose absorption tilts the call's spectrum and
        filters its echoes; ``None``: no absorption, echoes are plain copies.
    dominant
        Multiple of the fundamental of the loudest component, when not the species' (social
        calls: the fundamental).
    """

    species: SpeciesModel
    rate: int
    onset: int
    length: int
    contour: tuple[tuple[float, float], ...]
    envelope: tuple[tuple[float, float], ...]
    amplitude: float
    harmonics: tuple[tuple[float, float], ...]
    echoes: tuple[tuple[int, float], ...] = ()
    event: str = "echolocation"
    fundamental_gain: float = 1.0
    path: AirPath | None = field(default=None, repr=False)
    dominant: float | None = None

    @property
    def loudest_multiple(self) -> float:
        """Multiple of the fundamental of the loudest component (the annotated box's)."""
        return self.species.dominant if self.dominant is None else self.dominant

    @property
    def class_name(self) -> str:
        """The annotated class: the group's name, or ``"bat"`` for the generic family."""
        return self.species.group

    @property
    def position(self) -> float:
        """Start time in real seconds (the annotation's position)."""
        return self.onset / self.rate

    @property
    def end(self) -> float:
        """End time in real seconds (before the echoes)."""
        return (self.onset + self.length) / self.rate

    @property
    def low_hz(self) -> float:
        """Lowest frequency of the loudest component."""
        return self.loudest_multiple * min(freq for _, freq in self.contour)

    @property
    def high_hz(self) -> float:
        """Highest frequency of the loudest component that the recording holds (at most Nyquist)."""
        return min(self.loudest_multiple * max(freq for _, freq in self.contour), self.rate / 2)


def lerp(bounds: tuple[float, float], quantile):
    """The point at ``quantile`` (0..1, scalar or array) between the two ends of ``bounds``."""
    return bounds[0] + quantile * (bounds[1] - bounds[0])


def sweep_shape(shape: str, call_type: CallType, q: np.ndarray) -> tuple[tuple, tuple]:
    """Contour and envelope of an FM, FM-QCF or QCF call, loudest where it crosses its peak.

    ``q`` holds the quantiles of (peak, start, end, duration, IPI, knee) in [0, 1].
    """
    peak = lerp(call_type.peak_khz, q[0])
    start = lerp((max(call_type.start_khz[0], peak + 1), max(call_type.start_khz[1], peak + 1)), q[1])
    end = lerp((min(call_type.end_khz[0], peak - 0.5), min(call_type.end_khz[1], peak - 0.5)), q[2])
    if shape in _KNEES:
        knee_height, knee_at = _KNEES[shape]
        knee = peak + knee_height * (start - peak)
        points = ((0.0, start), (lerp(knee_at, q[5]), knee), (1.0, end))
    else:
        points = ((0.0, start), (1.0, end))
    fractions, freqs = zip(*points, strict=True)
    peak_at = float(np.interp(peak, freqs[::-1], fractions[::-1]))
    return tuple((u, 1e3 * f) for u, f in points), sweep_envelope(float(np.clip(peak_at, 0.1, 0.9)))


def cf_shape(call_type: CallType, q: np.ndarray, duration_ms: float) -> tuple[tuple, tuple]:
    """Contour and envelope of a CF call: upward FM, constant frequency, downward FM."""
    cf = lerp(call_type.peak_khz, q[0])
    rise = min(lerp(_CF_RAMP_MS["rise"], q[5]) / duration_ms, 0.2)
    fall = min(lerp(_CF_RAMP_MS["fall"], q[5]) / duration_ms, 0.3)
    points = (
        (0.0, lerp(call_type.start_khz, q[1])), (rise, cf), (1.0 - fall, cf), (1.0, lerp(call_type.end_khz, q[2]))
    )
    return tuple((u, 1e3 * f) for u, f in points), ((0.0, 0.0), (rise, 1.0), (1.0 - fall, 1.0), (1.0, 0.0))


def sweep_envelope(peak_at: float) -> tuple[tuple[float, float], ...]:
    """Envelope of a sweep: a symmetric bump at ``peak_at`` over a floor ``_FLOOR`` below it.

    A symmetric bump keeps the spectrum's maximum at the frequency swept at ``peak_at``; a
    lopsided one would shift it towards its gentler side.
    """
    half_width = _BUMP_WIDTH * min(peak_at, 1.0 - peak_at)
    return (
        (0.0, 0.0), (peak_at - half_width, _FLOOR), (peak_at, 1.0), (peak_at + half_width, _FLOOR), (1.0, 0.0)
    )


def call_shape(species: SpeciesModel, call_type: CallType, q: np.ndarray, duration_ms: float) -> tuple[tuple, tuple]:
    """Contour and envelope of one call of ``species`` at parameter quantiles ``q``."""
    if species.shape == "CF":
        return cf_shape(call_type, q, duration_ms)
    return sweep_shape(species.shape, call_type, q)


def smooth_interp(u: np.ndarray, points: tuple[tuple[float, float], ...]) -> np.ndarray:
    """Interpolate between breakpoints with half-cosines (smooth, no overshoot)."""
    xs, ys = map(np.asarray, zip(*points, strict=True))
    segment = np.clip(np.searchsorted(xs, u, side="right") - 1, 0, len(xs) - 2)
    s = (u - xs[segment]) / (xs[segment + 1] - xs[segment])
    return ys[segment] + (ys[segment + 1] - ys[segment]) * 0.5 * (1.0 - np.cos(np.pi * s))


def antialias_gain(freq: np.ndarray, rate: float, edge_fraction: float = ANTIALIAS_FRACTION) -> np.ndarray:
    """1 below the anti-aliasing edge, fading linearly to 0 at the Nyquist frequency."""
    nyquist = rate / 2
    return np.clip((nyquist - freq) / ((1.0 - edge_fraction) * nyquist), 0.0, 1.0)


def _components(call: Call, response: FrequencyGain | None):
    """Per component: (instantaneous frequency array, phase multiple, amplitude-ratio array).

    The ratio holds the component's level and the frequency-dependent gains of the recorder
    and of the air along the direct path.
    """
    u = np.linspace(0.0, 1.0, call.length)
    fractions, freqs = zip(*call.contour, strict=True)
    freq = np.interp(u, fractions, freqs)
    phase = 2.0 * np.pi * np.cumsum(freq) / call.rate

    def gain(f):
        g = response(f) if response is not None else antialias_gain(f, call.rate)
        return g if call.path is None else g * call.path.tilt(f)

    return u, freq, phase, gain


def synthesize_call(call: Call, response: FrequencyGain | None = None) -> np.ndarray:
    """The waveform of a call as the microphone hears it directly (without its echoes).

    Parameters
    ----------
    call
        The call to render.
    response
        Amplitude gain of the recorder per frequency (Hz): microphone and anti-alias filter.
        Default: a flat microphone and the default anti-alias filter at the call's rate.

    Returns
    -------
    numpy.ndarray
        ``call.length`` float64 samples in full-scale units, zero at both ends: the frequency
        contour is integrated into a phase, ``2 pi cumsum(f) / rate``, and shaped by the
        envelope; each component is scaled by the gains at its instantaneous frequency, so
        that components above the anti-aliasing edge fade out and nothing aliases.
    """
    return render_call(call, response)[0]


def render_call(call: Call, response: FrequencyGain | None = None) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """The direct waveform of a call and its echoes, each with its delay in samples.

    Echoes are copies of the direct sound scaled by their amplitude ratio; when the call has
    an air path, each echo is also filtered by the air's absorption over its extra path
    (the echo's delay times the speed of sound), so late echoes are duller.

    Returns
    -------
    (numpy.ndarray, list of (int, numpy.ndarray))
        The direct waveform (as :func:`synthesize_call`) and ``(delay, waveform)`` per echo.
    """
    u, freq, phase, gain = _components(call, response)
    envelope = call.amplitude * smooth_interp(u, call.envelope)
    filtered = call.path is not None and call.echoes
    parts = []
    wave = gain(freq) * np.sin(phase)
    if call.fundamental_gain != 1.0:
        wave *= call.fundamental_gain
    if filtered:
        parts.append((freq, wave.copy()))
    for multiple, ratio in call.harmonics:
        component = ratio * gain(multiple * freq) * np.sin(multiple * phase)
        wave += component
        if filtered:
            parts.append((multiple * freq, component))
    direct = envelope * wave
    if not filtered:
        return direct, [(delay, ratio * direct) for delay, ratio in call.echoes]
    echoes = []
    for delay, ratio in call.echoes:
        extra_m = call.path.speed_of_sound * delay / call.rate
        echo = sum(call.path.extra_gain(f, extra_m) * component for f, component in parts)
        echoes.append((delay, ratio * envelope * echo))
    return direct, echoes


def add_call(samples: np.ndarray, call: Call, response: FrequencyGain | None = None) -> None:
    """Add a call and its echoes into ``samples`` (full-scale float), cut at the recording's end."""
    direct, echoes = render_call(call, response)
    samples[call.onset:call.onset + call.length] += direct
    for delay, wave in echoes:
        at = call.onset + delay
        echo = wave[:max(samples.size - at, 0)]
        samples[at:at + echo.size] += echo
