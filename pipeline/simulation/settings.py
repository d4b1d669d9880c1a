"""Every factor of the simulator, as one frozen dataclass with a default and a help line each.

:class:`SimulationSettings` is what :func:`pipeline.simulation.simulate_archive` and
``batml simulate`` take. Its defaults reproduce the simulator as it was before domain
randomisation (the seven European groups of ``CALLS.md``, a fixed rise and fall of level over a
pass, one echo, Gaussian noise with sometimes low-frequency noise, a continuous insect band and
clicks): the same seed still writes the same bytes, ``annotations.npz`` included.
:meth:`SimulationSettings.varied` (``batml simulate --preset varied``) switches the rest on.

The numbers behind each factor, with their sources, are in the docstrings of the modules that
use them: :mod:`.calls` (the seven groups), :mod:`.generic` (the generic bat family),
:mod:`.behaviour` (feeding buzzes and social calls), :mod:`.propagation` (distance, air
absorption, Doppler, echoes), :mod:`.recorder` (microphones, converters, files) and
:mod:`.noise` (insects, rain, wind, electrical tones, real backgrounds).

Each field's ``metadata`` holds ``help`` (one line) and ``section``; the command line is built
from them by :func:`add_arguments`, so a new field is listed by ``batml simulate --help`` as
soon as it exists.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path


class SimulationError(ValueError):
    """A setting of the simulator is out of range or inconsistent (one line, names the setting)."""


#: Microphone response kinds (see :mod:`pipeline.simulation.recorder`).
MICROPHONES = ("flat", "rolloff", "resonant")
#: Call shapes of the generic bat family (see :mod:`pipeline.simulation.generic`).
GENERIC_SHAPES = ("FM", "FM-QCF", "QCF", "CF-FM", "broadband-FM")

#: Sections of ``batml simulate --help``, in order.
SECTIONS = {
    "archive": "archive: files, splits, formats",
    "recorder": "recorder: microphone, filter, gain, converter",
    "bats": "bats: the seven groups and the generic family",
    "behaviour": "behaviour: feeding buzzes and social calls",
    "propagation": "propagation: distance, air, Doppler, echoes",
    "noise": "noise",
    "backgrounds": "real backgrounds (no-bat parts of real recordings)",
}


def _factor(default, help: str, section: str, *, choices: tuple[str, ...] | None = None):
    """A field with its default, its help line, its section of the help and its allowed values."""
    return field(default=default, metadata={"help": help, "section": section, "choices": choices})


@dataclass(frozen=True)
class SimulationSettings:
    """The factors of a simulated archive; every one has a default and a one-line help text.

    Ranges are ``(low, high)`` pairs drawn uniformly (per file, per bat or per call, as the
    help says); a range whose ends are equal is a constant and draws nothing. Probabilities
    and fractions are in [0, 1]. The defaults are the simulator before domain randomisation;
    :meth:`varied` gives the domain-randomised preset.

    Raises
    ------
    SimulationError
        On construction, listing every setting out of range in one line.
    """

    # --- archive -----------------------------------------------------------------------------
    sample_rates: tuple[int, ...] = _factor(
        (250_000, 256_000, 384_000, 500_000), "real-time sample rates (Hz), one drawn per file", "archive")
    file_seconds: tuple[float, float] = _factor((1.0, 8.0), "range of file durations (s), per file", "archive")
    empty_fraction: float = _factor(0.25, "fraction of files with no bat", "archive")
    overlap_fraction: float = _factor(
        0.2, "fraction of the files with bats that hold 2 or 3 bats calling at once", "archive")
    test_fraction: float = _factor(0.25, "fraction of files in the test split", "archive")
    time_expanded_fraction: float = _factor(
        0.0, "fraction of files written time-expanded x10 (header rate divided by 10)", "archive")
    guano: bool = _factor(
        True, "write GUANO metadata; without it, time-expanded files need --time-expansion 10 to be read",
        "archive")
    eight_bit_fraction: float = _factor(0.0, "fraction of files written as 8-bit PCM instead of 16-bit", "archive")

    # --- recorder ----------------------------------------------------------------------------
    microphones: tuple[str, ...] = _factor(
        ("flat",), "microphone responses, one drawn per file", "recorder", choices=MICROPHONES)
    rolloff_khz: tuple[float, float] = _factor(
        (80.0, 100.0), "corner frequency (kHz) of a roll-off microphone, per file", "recorder")
    rolloff_db_per_octave: tuple[float, float] = _factor(
        (12.0, 24.0), "slope of a roll-off microphone above its corner (dB/octave)", "recorder")
    resonance_khz: tuple[float, float] = _factor(
        (20.0, 40.0), "frequency (kHz) of a resonant microphone's peak, per file", "recorder")
    resonance_db: tuple[float, float] = _factor(
        (4.0, 12.0), "height (dB) of a resonant microphone's peak", "recorder")
    antialias_edge: tuple[float, float] = _factor(
        (0.95, 0.95), "fraction of Nyquist where the anti-alias filter starts; sound fades to 0 at Nyquist",
        "recorder")
    gain_db: tuple[float, float] = _factor(
        (0.0, 0.0), "recorder gain (dB) applied to everything before the converter, per file", "recorder")
    clipping_fraction: float = _factor(
        0.0, "fraction of files driven 3-20 dB past full scale at their loudest call (clipped)", "recorder")

    # --- bats --------------------------------------------------------------------------------
    snr_offset_db: tuple[float, float] = _factor(
        (0.0, 0.0), "added to each bat's call level (dB, per bat); negative values make faint calls common",
        "bats")
    generic_fraction: float = _factor(
        0.0, "fraction of bats drawn from the generic family (class 'bat') instead of the seven groups",
        "bats")
    generic_shapes: tuple[str, ...] = _factor(
        GENERIC_SHAPES, "call shapes of generic bats, one drawn per bat", "bats", choices=GENERIC_SHAPES)
    generic_frequency_khz: tuple[float, float] = _factor(
        (10.0, 150.0), "frequency range (kHz) of generic bats' loudest harmonic", "bats")
    generic_duration_ms: tuple[float, float] = _factor(
        (0.5, 60.0), "duration range (ms) of generic bats' echolocation calls", "bats")
    generic_upper_harmonic_fraction: float = _factor(
        0.3, "fraction of generic FM, FM-QCF and QCF bats whose loudest component is the 2nd or 3rd harmonic "
        "(CF-FM bats: 0.8, broadband-FM bats: 0.6)", "bats")
    generic_harmonics: tuple[int, int] = _factor(
        (1, 4), "number of components (fundamental included) of generic bats' calls", "bats")

    # --- behaviour ---------------------------------------------------------------------------
    buzz_probability: float = _factor(
        0.0, "fraction of passes with a feeding buzz (calls labelled event 'buzz')", "behaviour")
    buzz_ipi_ms: tuple[float, float] = _factor(
        (4.0, 7.0), "inter-pulse interval (ms) of a buzz's terminal phase", "behaviour")
    social_probability: float = _factor(
        0.0, "fraction of passes with social calls (labelled event 'social')", "behaviour")
    social_frequency_khz: tuple[float, float] = _factor(
        (10.0, 35.0), "frequency range (kHz) of social calls", "behaviour")
    social_duration_ms: tuple[float, float] = _factor(
        (5.0, 80.0), "duration range (ms) of social calls", "behaviour")

    # --- propagation -------------------------------------------------------------------------
    propagation: bool = _factor(
        False, "fly each bat past the microphone on a straight line: spreading, air absorption and Doppler "
        "follow its distance (off: a fixed 20 dB rise and fall over the pass)", "propagation")
    distance_m: tuple[float, float] = _factor(
        (1.0, 20.0), "closest approach (m) of a passing bat, log-uniform (with --propagation)", "propagation")
    flight_speed_m_s: tuple[float, float] = _factor(
        (2.0, 10.0), "flight speed (m/s) of a passing bat (with --propagation)", "propagation")
    temperature_c: tuple[float, float] = _factor(
        (5.0, 30.0), "air temperature (C), per file (with --propagation)", "propagation")
    humidity_percent: tuple[float, float] = _factor(
        (30.0, 100.0), "relative humidity (percent), per file (with --propagation)", "propagation")
    doppler: bool = _factor(
        True, "shift frequency and duration by the bat's radial speed (with --propagation)", "propagation")
    echo_count: tuple[int, int] = _factor((1, 1), "number of discrete echoes per call, per bat", "propagation")
    echo_delay_ms: tuple[float, float] = _factor((1.0, 5.0), "delay (ms) of a discrete echo", "propagation")
    echo_gain_db: tuple[float, float] = _factor(
        (-18.0, -6.0), "level (dB) of a discrete echo relative to the call", "propagation")
    reverberation_probability: float = _factor(
        0.0, "fraction of passes whose calls trail a reverberation tail (many weak, filtered echoes)",
        "propagation")
    reverberation_ms: tuple[float, float] = _factor(
        (5.0, 40.0), "length (ms) of a reverberation tail", "propagation")

    # --- noise -------------------------------------------------------------------------------
    noise_dbfs: tuple[float, float] = _factor(
        (-66.0, -50.0), "RMS (dB re full scale) of the recorder's Gaussian self-noise, per file", "noise")
    noise_colour_db: tuple[float, float] = _factor(
        (0.0, 0.0), "largest deviation (dB) of the self-noise spectrum from white: smooth random bumps, per file",
        "noise")
    low_frequency_noise_probability: float = _factor(
        0.5, "fraction of files with steady noise below 2-10 kHz", "noise")
    insect_band_probability: float = _factor(
        0.2, "fraction of files with a continuous insect band (10-40 kHz)", "noise")
    insect_train_probability: float = _factor(
        0.0, "fraction of files with pulsed insect stridulation (trains of syllables)", "noise")
    insect_frequency_khz: tuple[float, float] = _factor(
        (10.0, 60.0), "band (kHz) of insect stridulation trains", "noise")
    rain_probability: float = _factor(0.0, "fraction of files with rain (broadband impulses)", "noise")
    wind_probability: float = _factor(0.0, "fraction of files with wind (gusty low-frequency noise)", "noise")
    electrical_probability: float = _factor(
        0.0, "fraction of files with an electrical tone (constant narrow band and its harmonics)", "noise")
    electrical_frequency_khz: tuple[float, float] = _factor(
        (15.0, 60.0), "fundamental (kHz) of electrical tones", "noise")
    click_probability: float = _factor(0.4, "fraction of files with broadband clicks (0.5-5 per s)", "noise")

    # --- real backgrounds --------------------------------------------------------------------
    background_folder: Path | None = _factor(
        None, "folder of WAV files without bats whose segments become backgrounds (resampled)", "backgrounds")
    background_exclude: Path | None = _factor(
        None, "CSV of spans to avoid in those files (columns file, position, end; real s), e.g. their calls",
        "backgrounds")
    background_licence: str = _factor(
        "", "licence of the background recordings (required with a folder; kept in simulation.json)",
        "backgrounds")
    background_probability: float = _factor(
        0.5, "fraction of files laid over a real background (with a folder)", "backgrounds")
    background_gain_db: tuple[float, float] = _factor(
        (-6.0, 6.0), "gain (dB) applied to a real background segment", "backgrounds")
    background_time_expansion: int = _factor(
        1, "time expansion of background files without GUANO TE whose header rate is below 96 kHz", "backgrounds")

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for item in dataclasses.fields(self):
            object.__setattr__(self, item.name, _coerce(getattr(self, item.name), hints[item.name]))
        problems = _problems(self)
        if problems:
            raise SimulationError("; ".join(problems))

    @classmethod
    def varied(cls, **changes) -> SimulationSettings:
        """The domain-randomised preset: every factor on, ranges as wide as real archives show.

        Parameters
        ----------
        **changes
            Fields to set on top of the preset.

        Returns
        -------
        SimulationSettings
            Seven groups and generic bats in equal parts, buzzes and social calls, flight past
            the microphone (spreading, air absorption, Doppler), several echoes and
            reverberation, three microphone kinds, anti-alias filters from 0.8 of Nyquist,
            gains that sometimes clip, sample rates from 192 to 500 kHz, some 8-bit and
            time-expanded files, insects, rain, wind and electrical tones.
        """
        preset = dict(
            sample_rates=(192_000, 250_000, 256_000, 312_500, 384_000, 441_000, 500_000),
            time_expanded_fraction=0.1, eight_bit_fraction=0.03,
            microphones=MICROPHONES, antialias_edge=(0.8, 0.95), gain_db=(-6.0, 12.0), clipping_fraction=0.05,
            snr_offset_db=(-8.0, 2.0), generic_fraction=0.5,
            buzz_probability=0.15, social_probability=0.1,
            propagation=True, echo_count=(1, 3), reverberation_probability=0.3,
            insect_train_probability=0.25, rain_probability=0.05, wind_probability=0.15,
            electrical_probability=0.1, noise_colour_db=(0.0, 10.0),
        )
        return cls(**{**preset, **changes})

    def replace(self, **changes) -> SimulationSettings:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @property
    def seed_compatible(self) -> bool:
        """Whether every call will be an echolocation call of the seven groups.

        Only then is ``annotations.npz`` (the reference system's format, classes 1..7) written.
        """
        return self.generic_fraction == 0 and self.buzz_probability == 0 and self.social_probability == 0

    def to_dict(self) -> dict:
        """The settings as JSON-ready values (tuples as lists, paths as strings)."""
        return {item.name: _plain(getattr(self, item.name)) for item in dataclasses.fields(self)}


PRESETS = {"default": SimulationSettings, "varied": SimulationSettings.varied}


# ---------------------------------------------------------------------------------------------
# Validation


def _coerce(value, hint):
    """A value as its field's type: lists become tuples of the element type, strings paths."""
    origin = typing.get_origin(hint)
    if origin is tuple and value is not None:
        element = typing.get_args(hint)[0]
        return tuple(element(v) for v in value)
    if hint == Path | None:
        return None if value in (None, "") else Path(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _problems(s: SimulationSettings) -> list[str]:
    problems = []
    hints = typing.get_type_hints(type(s))
    for item in dataclasses.fields(s):
        name, value, hint = item.name, getattr(s, item.name), hints[item.name]
        if hint is float and (name.endswith("_fraction") or name.endswith("_probability")) and not 0 <= value <= 1:
            problems.append(f"{name}={value} must be in [0, 1]")
        elif typing.get_origin(hint) is tuple and typing.get_args(hint)[-1] is not Ellipsis:
            if len(value) != 2 or value[0] > value[1]:
                problems.append(f"{name}={value} must be a range (low, high) with low <= high")
        choices = item.metadata.get("choices")
        if choices and (not value or set(value) - set(choices)):
            problems.append(f"{name}={value} must be one or more of {', '.join(choices)}")
    positive = ("distance_m", "flight_speed_m_s", "rolloff_khz", "rolloff_db_per_octave", "resonance_khz",
                "generic_frequency_khz", "generic_duration_ms", "buzz_ipi_ms", "social_frequency_khz",
                "social_duration_ms", "insect_frequency_khz", "electrical_frequency_khz", "echo_delay_ms",
                "reverberation_ms")
    problems += [f"{name}={getattr(s, name)} must be positive" for name in positive if min(getattr(s, name)) <= 0]
    if not s.sample_rates or min(s.sample_rates) <= 0:
        problems.append(f"sample_rates={s.sample_rates} must be positive rates")
    if not (0.5 <= s.antialias_edge[0] and s.antialias_edge[1] < 1):
        problems.append(f"antialias_edge={s.antialias_edge} must lie in [0.5, 1)")
    if not (0 <= s.humidity_percent[0] and s.humidity_percent[1] <= 100):
        problems.append(f"humidity_percent={s.humidity_percent} must lie in [0, 100]")
    if not -30 <= s.temperature_c[0] <= s.temperature_c[1] <= 50:
        problems.append(f"temperature_c={s.temperature_c} must lie in [-30, 50]")
    if s.echo_count[0] < 0 or s.generic_harmonics[0] < 1:
        problems.append("echo_count must be >= 0 and generic_harmonics >= 1")
    if not (5 <= s.generic_frequency_khz[0] and s.generic_frequency_khz[1] <= 250):
        problems.append(f"generic_frequency_khz={s.generic_frequency_khz} must lie in [5, 250]")
    if s.background_time_expansion < 1:
        problems.append(f"background_time_expansion={s.background_time_expansion} must be >= 1")
    if s.background_folder is not None and not s.background_licence.strip():
        problems.append(f"background_folder={s.background_folder} needs background_licence (the recordings' licence)")
    if not s.guano and 0 < s.time_expanded_fraction < 1:
        problems.append("without GUANO, time-expanded and real-time files cannot be told apart: "
                        "set time_expanded_fraction to 0 or 1, or keep guano")
    return problems


def _plain(value):
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


# ---------------------------------------------------------------------------------------------
# Command line


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _shown(value) -> str:
    if isinstance(value, tuple):
        return " ".join(map(str, value)) if value else "none"
    if value is None or value == "":
        return "none"
    return str(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--preset`` and one option per field of :class:`SimulationSettings`, by section.

    Every option defaults to "not given" (``argparse.SUPPRESS``), so that the preset's value
    holds unless the option is used; the help shows the default of the plain settings.

    Parameters
    ----------
    parser
        The ``simulate`` subcommand's parser.
    """
    parser.add_argument(
        "--preset", choices=tuple(PRESETS), default="default",
        help="starting values of every factor below: 'default' (the seven groups, as before) or 'varied' "
        "(domain randomisation: every factor on); options given override it",
    )
    hints = typing.get_type_hints(SimulationSettings)
    groups = {key: parser.add_argument_group(title) for key, title in SECTIONS.items()}
    for item in dataclasses.fields(SimulationSettings):
        hint, meta = hints[item.name], item.metadata
        text = f"{meta['help']} (default: {_shown(item.default)})"
        kwargs: dict = {"default": argparse.SUPPRESS, "help": text, "dest": item.name}
        if hint is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(hint) is tuple:
            element, *rest = typing.get_args(hint)
            kwargs["type"] = element
            if rest == [Ellipsis]:
                kwargs["nargs"] = "+"
                kwargs["metavar"] = "NAME" if element is str else "VALUE"
            else:
                kwargs["nargs"] = 2
                kwargs["metavar"] = ("LOW", "HIGH")
            if meta.get("choices"):
                kwargs["choices"] = meta["choices"]
        elif hint == Path | None:
            kwargs["type"] = Path
            kwargs["metavar"] = "PATH"
        else:
            kwargs["type"] = hint
            kwargs["metavar"] = {float: "X", int: "N", str: "TEXT"}[hint]
        groups[meta["section"]].add_argument(_option(item.name), **kwargs)


def settings_from_arguments(args: argparse.Namespace) -> SimulationSettings:
    """The settings a parsed command line asks for: its preset, with the options given.

    Raises
    ------
    SimulationError
        If a value is out of range.
    """
    given = {item.name: getattr(args, item.name) for item in dataclasses.fields(SimulationSettings)
             if hasattr(args, item.name)}
    return PRESETS[getattr(args, "preset", "default")](**given)
