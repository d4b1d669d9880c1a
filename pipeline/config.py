"""Typed settings with the reference system's defaults, loadable from a TOML file, with a stable fingerprint.

Every setting that changes a result lives in a frozen dataclass here. A dataclass's
:meth:`fingerprint` is a short hash of its canonical JSON form (and of a feature version
that is bumped whenever the code computing features changes meaning), so that a cube or a
model made with one set of settings is never reused with another.

Settings can come from three places, later ones winning: the defaults below, a TOML file
(``batml --config FILE``), and command-line options::

    [spectrogram]
    window_s = 0.002322
    smoothing_sigma = 1.0

    [ingest]
    channels = "each"
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

#: Bumped whenever the feature code changes what it computes for the same settings.
FEATURE_VERSION = 1

#: The reference system's seven bat groups (Natagora, Belgium), in the order of its integer classes 1..7.
REFERENCE_GROUPS = ("Barbarg", "Envsp", "Myosp", "Pip35", "Pip50", "Plesp", "Rhisp")

ChannelPolicy = Literal["each", "first", "mix"]
CHANNEL_POLICIES: tuple[str, ...] = ("each", "first", "mix")

#: ``channel`` of a recording that is the mean of all channels of its file.
MIX_CHANNEL = -1

#: Spectrogram columns in a model window (40 STFT frames, about 23 ms, zoomed by 2).
WINDOW_COLUMNS = 20


class SettingsError(ValueError):
    """A settings file or option that cannot be used; its message is one line for the user."""


def _canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


class _Settings:
    """Shared behaviour of the settings dataclasses (mixin, no state)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """16 hex digits identifying every result-affecting value (stable across runs)."""
        payload = {"feature_version": FEATURE_VERSION, type(self).__name__: self.to_dict()}
        return hashlib.sha256(_canonical_json(payload).encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "settings"):
        """Build from a mapping, refusing unknown keys and ill-typed values with one clear line."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise SettingsError(
                f"{source}: unknown setting(s) {', '.join(unknown)} for [{cls.section}]; "
                f"known: {', '.join(sorted(known))}"
            )
        converted = {}
        defaults = cls()
        for name, value in values.items():
            default = getattr(defaults, name)
            try:
                if isinstance(default, bool):
                    if not isinstance(value, bool):
                        raise TypeError
                    converted[name] = value
                elif isinstance(default, (int, float)) and not isinstance(default, bool):
                    converted[name] = type(default)(value)
                elif default is None or isinstance(default, str):
                    converted[name] = value if value is None else str(value)
                else:
                    converted[name] = value
            except (TypeError, ValueError):
                raise SettingsError(
                    f"{source}: [{cls.section}] {name} = {value!r} is not a valid "
                    f"{type(default).__name__}"
                ) from None
        obj = cls(**converted)
        obj.validate(source)
        return obj

    def replace(self, **changes):
        """A copy with some values changed (``None`` values are ignored, for CLI overrides)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        obj = dataclasses.replace(self, **changes)
        obj.validate("options")
        return obj

    def validate(self, source: str) -> None:  # pragma: no cover - overridden
        pass


@dataclass(frozen=True)
class SpectrogramSettings(_Settings):
    """How a recording becomes the model-ready spectrogram (the reference system's numbers by default).

    Parameters
    ----------
    window_s
        STFT window length in real-time seconds; ``nfft = int(window_s * real_rate)``.
    overlap
        Fraction of the window shared by consecutive frames (0.75: frame step ~0.58 ms).
    min_bin, max_bin
        Inclusive range of FFT bins kept (11..270: 260 rows, about 4.7-116 kHz at any rate).
        Bins above the Nyquist frequency of a low-rate recording are zero.
    active_threshold
        A frame whose mean log-magnitude exceeds this is "active" for the denoising.
    smoothing_sigma
        Standard deviation (in frames and bins) of the Gaussian smoothing after denoising.
    zoom
        Down-sampling factor of the model-ready spectrogram in both axes (2: 130 rows and one
        column per two frames), by block averaging.
    min_sample_rate
        Real-time sample rates below this (Hz) cannot hold bat ultrasound; such files are
        rejected with a reason (set a time-expansion factor for time-expanded files).
    log_scale_expansion
        The log scaling uses the rate ``real_rate / log_scale_expansion``:
        ``log(1 + 2 * log_scale_expansion / (real_rate * sum(hann**2)) * power)``. 1 (default)
        scales with the real rate. The reference system assumed audio time-expanded x10 and
        scaled with the expanded rate, a tenth of the real one: its published networks need 10
        (:mod:`pipeline.model.reference`).
    """

    section = "spectrogram"

    #: Settings added after the first feature version, left out of :meth:`to_dict` (and so
    #: of the fingerprint) while they hold this value, so that cubes and models made before
    #: they existed keep their fingerprint.
    optional_defaults = {"log_scale_expansion": 1.0}

    window_s: float = 0.002322
    overlap: float = 0.75
    min_bin: int = 11
    max_bin: int = 270
    active_threshold: float = 0.5
    smoothing_sigma: float = 1.0
    zoom: int = 2
    min_sample_rate: float = 96_000.0
    log_scale_expansion: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        for name, default in self.optional_defaults.items():
            if values[name] == default:
                del values[name]
            else:  # 10 and 10.0 must give one fingerprint
                values[name] = type(default)(values[name])
        return values

    def validate(self, source: str = "settings") -> None:
        problems = []
        if not 0 < self.window_s < 1:
            problems.append(f"window_s={self.window_s} must be in (0, 1) s")
        if not 0 <= self.overlap < 1:
            problems.append(f"overlap={self.overlap} must be in [0, 1)")
        if not 1 <= self.min_bin <= self.max_bin:
            problems.append(f"bins {self.min_bin}..{self.max_bin} must satisfy 1 <= min <= max")
        elif (self.max_bin - self.min_bin + 1) % self.zoom:
            problems.append(f"the {self.max_bin - self.min_bin + 1} bins kept must divide by zoom={self.zoom}")
        if self.smoothing_sigma < 0:
            problems.append(f"smoothing_sigma={self.smoothing_sigma} must be >= 0")
        if self.zoom < 1:
            problems.append(f"zoom={self.zoom} must be >= 1")
        if self.min_sample_rate <= 0:
            problems.append(f"min_sample_rate={self.min_sample_rate} must be > 0")
        if not self.log_scale_expansion > 0:
            problems.append(f"log_scale_expansion={self.log_scale_expansion} must be > 0")
        if problems:
            raise SettingsError(f"{source}: [spectrogram] " + "; ".join(problems))

    @property
    def n_bins(self) -> int:
        """Rows of the full-resolution spectrogram (260 by default)."""
        return self.max_bin - self.min_bin + 1

    @property
    def n_rows(self) -> int:
        """Rows of the model-ready spectrogram (130 by default)."""
        return self.n_bins // self.zoom

    def nfft(self, real_rate: float) -> int:
        """FFT length in samples at a real-time sample rate."""
        return int(self.window_s * real_rate)

    def hop(self, real_rate: float) -> int:
        """Samples between the starts of consecutive frames."""
        nfft = self.nfft(real_rate)
        return nfft - int(self.overlap * nfft)

    def n_frames(self, n_samples: int, real_rate: float) -> int:
        """Full-resolution frames that fit in ``n_samples`` (no padding)."""
        nfft = self.nfft(real_rate)
        if n_samples < nfft or nfft < 2:
            return 0
        return 1 + (n_samples - nfft) // self.hop(real_rate)

    def n_columns(self, n_samples: int, real_rate: float) -> int:
        """Model-ready columns of a recording of ``n_samples`` (a trailing odd frame is dropped)."""
        return self.n_frames(n_samples, real_rate) // self.zoom

    def column_step_s(self, real_rate: float) -> float:
        """Real-time seconds between consecutive model-ready columns."""
        return self.zoom * self.hop(real_rate) / real_rate

    def frequencies(self) -> "list[float]":
        """Nominal centre frequency (Hz) of each model-ready row, lowest first."""
        bin_hz = 1.0 / self.window_s
        return [
            (self.min_bin + self.zoom * r + (self.zoom - 1) / 2) * bin_hz for r in range(self.n_rows)
        ]


@dataclass(frozen=True)
class IngestSettings(_Settings):
    """How recordings of an archive become the recordings of a cube.

    Parameters
    ----------
    channels
        Multichannel policy: ``"each"`` (default) analyses every channel as its own
        recording; ``"first"`` keeps channel 0 only; ``"mix"`` averages the channels.
        Whatever the policy, the manifest lists each file's channel count and the cube
        records the policy, so no channel is ever dropped silently.
    time_expansion
        Time-expansion factor applied to every file, overriding GUANO's ``TE``; ``None``
        (default) takes GUANO's value, or 1 when a file has none.
    chunk_columns
        Columns per zarr chunk of the cube (65,536 columns x 130 rows of float16 = 17 MB,
        about 76 s of audio).
    """

    section = "ingest"

    channels: str = "each"
    time_expansion: float | None = None
    chunk_columns: int = 65_536

    def validate(self, source: str = "settings") -> None:
        if self.channels not in CHANNEL_POLICIES:
            raise SettingsError(
                f"{source}: [ingest] channels={self.channels!r}; choose one of {', '.join(CHANNEL_POLICIES)}"
            )
        if self.time_expansion is not None and not self.time_expansion > 0:
            raise SettingsError(f"{source}: [ingest] time_expansion={self.time_expansion} must be > 0")
        if self.chunk_columns < 64:
            raise SettingsError(f"{source}: [ingest] chunk_columns={self.chunk_columns} must be >= 64")

    def result_dict(self) -> dict[str, Any]:
        """The values that change a cube's content (chunking does not)."""
        return {"channels": self.channels, "time_expansion": self.time_expansion}


@dataclass(frozen=True)
class Settings:
    """All settings of a run, one section per step."""

    spectrogram: SpectrogramSettings = field(default_factory=SpectrogramSettings)
    ingest: IngestSettings = field(default_factory=IngestSettings)

    @classmethod
    def load(cls, path: str | Path | None = None) -> "Settings":
        """Defaults, overridden by the TOML file at ``path`` when given."""
        if path is None:
            return cls()
        path = Path(path)
        try:
            with path.open("rb") as fh:
                doc = tomllib.load(fh)
        except FileNotFoundError:
            raise SettingsError(f"{path}: settings file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{path}: not valid TOML ({exc})") from None
        sections = {"spectrogram": SpectrogramSettings, "ingest": IngestSettings}
        unknown = sorted(set(doc) - set(sections))
        if unknown:
            raise SettingsError(f"{path}: unknown section(s) [{'], ['.join(unknown)}]")
        return cls(
            **{name: kind.from_dict(doc.get(name, {}), source=str(path)) for name, kind in sections.items()}
        )
