"""Everything a bat detector hears that is not a bat; none of it is annotated as a call.

Levels are in dB above the recorder's Gaussian self-noise RMS (``noise_dbfs``, -66 to -50 dB
full scale per file).

* **Self-noise** (always): white Gaussian noise, through the anti-alias filter when it is not
  the default one, coloured by smooth random bumps of up to ``noise_colour_db`` (:func:`colour_gain`).
* **Low-frequency noise** (``low_frequency_noise_probability``): steady noise below 2-10 kHz
  (traffic, distant wind, electronics), 10-30 dB.
* **Insect band** (``insect_band_probability``): continuous band-pass noise somewhere in
  10-40 kHz, 0-15 dB (CALLS.md: insect stridulation bands).
* **Insect trains** (``insect_train_probability``): pulsed stridulation of bush-crickets. Their
  songs are trains of syllables - the sound of one closing stroke of the fore wings, 10-50 ms,
  often broken into pulses about 1 ms apart by the file's teeth - repeated 5-40 times per
  second in echemes of 0.1-3 s separated by pauses of 0.1 to several seconds (Ragge &
  Reynolds 1998, *The Songs of the Grasshoppers and Crickets of Western Europe*: e.g.
  Tettigonia viridissima, disyllabic echemes at 5-20 per second, hemisyllables 10-50 ms), with
  broadband ultrasonic carriers. Simulated: band noise of 10-80 % relative bandwidth centred in
  ``insect_frequency_khz`` (10-60 kHz), gated by syllables of 2-40 ms at 5-60 per second, half
  of them broken into 1-3 ms pulses, in echemes of 0.1-3 s with pauses of 0.1-2 s; 5-30 dB.
  Real bush-cricket songs are in the Tadarida sample (``Tetvir``, ``Leppun``, ``Plaint``:
  ``../shared/data/README.md``) for comparison.
* **Rain** (``rain_probability``): drops hitting the microphone, its housing and the leaves
  around: broadband impulses (exponentially decaying noise bursts of 0.05-0.5 ms time
  constant) at 20-200 per second, each 0-35 dB.
* **Wind** (``wind_probability``): gusty noise below 0.5-3 kHz whose level follows a slow
  random gust envelope (0.3-3 s gusts, +-8 dB), 20-40 dB, with leaf rustle (band noise
  2-25 kHz following the same gusts, 0-15 dB).
* **Electrical tones** (``electrical_probability``): constant narrow lines from switching power
  supplies, LED drivers, ultrasonic pest repellers or the recorder's own electronics: a
  fundamental in ``electrical_frequency_khz`` (15-60 kHz) and 0-4 harmonics below the
  anti-alias edge, each 0-25 dB, constant in frequency and level over the file.
* **Clicks** (``click_probability``): a few broadband decaying impulses of a few microseconds
  (0.5-5 per second, 10-30 dB).
* **Real backgrounds** (``background_folder``): segments of real recordings without bats,
  resampled to the simulated rate, their licence recorded in ``simulation.json``
  (:class:`BackgroundLibrary`).

Sounds that reach the microphone (all but self-noise and electrical tones) pass through its
response (:mod:`.recorder`).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.fft
import scipy.signal
import soundfile

from pipeline.simulation.settings import SimulationError

# ---------------------------------------------------------------------------------------------
# The noises of the simulator before randomisation (kept as they were: same draws, same bytes)


def low_frequency_noise(n: int, rate: int, level: float, rng: np.random.Generator) -> np.ndarray:
    """Noise band-limited below 2-10 kHz (wind, traffic, electronics), by polyphase upsampling."""
    factor = math.ceil(rate / (2 * rng.uniform(2e3, 10e3)))
    coarse = level * rng.standard_normal(n // factor + 1, dtype=np.float32)
    return scipy.signal.resample_poly(coarse, factor, 1)[:n]


def insect_band(n: int, rate: int, level: float, rng: np.random.Generator) -> np.ndarray:
    """Continuous stridulation: band-pass noise somewhere in 10-40 kHz."""
    low = rng.uniform(10e3, 30e3)
    high = min(40e3, low + rng.uniform(4e3, 15e3))
    sos = scipy.signal.butter(4, (low, high), btype="bandpass", fs=rate, output="sos")
    band = scipy.signal.sosfilt(sos, rng.standard_normal(n))
    return (level / band.std()) * band


def add_clicks(samples: np.ndarray, rate: int, noise_rms: float, rng: np.random.Generator,
               probability: float = 0.4) -> None:
    """Add broadband clicks (rain drops, insects, electronics): decaying impulses of a few µs."""
    per_second = rng.uniform(0.5, 5.0) if rng.random() < probability else 0.0
    for _ in range(rng.poisson(per_second * samples.size / rate)):
        at = rng.integers(samples.size)
        decay = rng.uniform(2e-6, 20e-6) * rate
        amplitude = rng.choice((-1.0, 1.0)) * noise_rms * 10 ** (rng.uniform(10, 30) / 20)
        shape = np.exp(-np.arange(min(math.ceil(8 * decay) + 1, samples.size - at)) / decay)
        samples[at:at + shape.size] += amplitude * shape


def _db(bounds: tuple[float, float], rng: np.random.Generator) -> float:
    return 10 ** (rng.uniform(*bounds) / 20)


# ---------------------------------------------------------------------------------------------
# Domain randomisation: insects, rain, wind, electrical tones


def band_noise(n: int, rate: int, low_hz: float, high_hz: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise whose spectrum is flat in ``[low_hz, high_hz]`` and zero elsewhere."""
    size = scipy.fft.next_fast_len(n, real=True)
    freqs = np.fft.rfftfreq(size, 1.0 / rate)
    inside = (freqs >= low_hz) & (freqs <= min(high_hz, rate / 2))
    spectrum = np.zeros(freqs.size, dtype=np.complex128)
    count = int(inside.sum())
    spectrum[inside] = rng.standard_normal(count) + 1j * rng.standard_normal(count)
    band = scipy.fft.irfft(spectrum, size)[:n]
    rms = float(np.sqrt(np.mean(band * band))) if n else 0.0
    return band / rms if rms > 0 else band


def colour_gain(freqs_hz: np.ndarray, depth_db: float, rng: np.random.Generator) -> np.ndarray:
    """Amplitude gain of a coloured noise floor: 2-5 smooth bumps and dips, at most ``depth_db``.

    Real recorders' noise floors are not white (preamplifier and microphone noise rise and fall
    with frequency, e.g. a broad hump at 60-100 kHz in the Tadarida sample's SM2BAT+ files); the
    bumps are Gaussian in log-frequency (0.3-1.5 octaves wide) centred between 5 kHz and Nyquist.
    """
    f = np.maximum(np.asarray(freqs_hz, dtype=np.float64), 100.0)
    top = max(float(f.max()), 6e3)
    db = np.zeros_like(f)
    for _ in range(int(rng.integers(2, 6))):
        centre = math.exp(rng.uniform(math.log(5e3), math.log(top)))
        width = rng.uniform(0.3, 1.5)
        db += rng.uniform(-1.0, 1.0) * np.exp(-0.5 * (np.log2(f / centre) / width) ** 2)
    peak = float(np.abs(db).max())
    return 10 ** (db * (depth_db / peak if peak > 0 else 0.0) / 20)


def _gate(n: int, rate: int, onsets_s: np.ndarray, durations_s: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """An envelope of half-sine bumps, one per (onset, duration, level)."""
    gate = np.zeros(n)
    for onset, duration, level in zip(onsets_s, durations_s, levels, strict=True):
        a, b = int(onset * rate), min(int((onset + duration) * rate), n)
        if b - a > 2:
            gate[a:b] = np.maximum(gate[a:b], level * np.sin(np.linspace(0.0, np.pi, b - a)))
    return gate


def insect_train(n: int, rate: int, level: float, band_khz: tuple[float, float],
                 rng: np.random.Generator) -> np.ndarray:
    """Pulsed bush-cricket stridulation: band noise gated by syllables grouped in echemes.

    Parameters
    ----------
    n, rate
        Length (samples) and real-time rate (Hz).
    level
        RMS of the carrier while a syllable sounds (full-scale units).
    band_khz
        Range of the carrier's centre frequency (kHz).
    rng
        Source of randomness.
    """
    centre = 1e3 * rng.uniform(*band_khz)
    width = rng.uniform(0.1, 0.8) * centre
    carrier = band_noise(n, rate, max(centre - width / 2, 1e3), centre + width / 2, rng)
    syllable_s = rng.uniform(2e-3, 40e-3)
    period_s = max(1.0 / rng.uniform(5.0, 60.0), 1.2 * syllable_s)
    onsets, t, total = [], rng.uniform(0.0, 0.5), n / rate
    while t < total:
        echeme = rng.uniform(0.1, 3.0)
        onsets += list(np.arange(t, min(t + echeme, total), period_s))
        t += echeme + rng.uniform(0.1, 2.0)
    onsets = np.asarray(onsets)
    durations = syllable_s * rng.uniform(0.8, 1.2, onsets.size)
    gate = _gate(n, rate, onsets, durations, 10 ** (rng.uniform(-3, 3, onsets.size) / 20))
    if rng.random() < 0.5:  # syllables broken into tooth-impact pulses
        pulse_s = rng.uniform(1e-3, 3e-3)
        gate *= 0.5 * (1.0 - np.cos(2 * np.pi * np.arange(n) / (pulse_s * rate)))
    return level * gate * carrier


def rain(n: int, rate: int, level: float, rng: np.random.Generator) -> np.ndarray:
    """Rain drops: broadband, exponentially decaying noise bursts at 20-200 per second."""
    out = np.zeros(n)
    drops = rng.poisson(rng.uniform(20.0, 200.0) * n / rate)
    for at in np.sort(rng.integers(0, max(n, 1), drops)):
        decay = rng.uniform(0.05e-3, 0.5e-3) * rate
        length = min(int(6 * decay) + 1, n - at)
        burst = rng.standard_normal(length) * np.exp(-np.arange(length) / decay)
        out[at:at + length] += level * 10 ** (rng.uniform(0.0, 35.0) / 20) * burst
    return out


def wind(n: int, rate: int, level: float, noise_rms: float, rng: np.random.Generator) -> np.ndarray:
    """Gusty wind: low-frequency noise and leaf rustle under a slow random gust envelope."""
    cutoff = rng.uniform(500.0, 3000.0)
    factor = max(int(rate / (2 * cutoff)), 1)
    low = scipy.signal.resample_poly(rng.standard_normal(n // factor + 2), factor, 1)[:n]
    gust_s = rng.uniform(0.3, 3.0)
    knots = rng.standard_normal(int(n / rate / gust_s) + 3)
    envelope = np.interp(np.arange(n) / rate / gust_s, np.arange(knots.size), knots)
    envelope = 10 ** (8.0 * np.clip(envelope, -2.5, 2.5) / 20)
    rustle = band_noise(n, rate, 2e3, min(25e3, 0.45 * rate), rng) * noise_rms * _db((0.0, 15.0), rng)
    return envelope * (level * low / max(float(np.std(low)), 1e-12) + rustle)


def electrical_tone(n: int, rate: int, level: float, fundamental_khz: tuple[float, float], edge_hz: float,
                    rng: np.random.Generator) -> np.ndarray:
    """A constant tone and up to 4 harmonics below ``edge_hz``, each 0-25 dB (``level`` = 0 dB)."""
    f0 = 1e3 * rng.uniform(*fundamental_khz)
    t = np.arange(n) / rate
    out = np.zeros(n)
    for multiple in range(1, 2 + int(rng.integers(0, 5))):
        if multiple * f0 >= edge_hz:
            break
        amplitude = math.sqrt(2) * level * _db((0.0, 25.0), rng) * (1.0 if multiple == 1 else _db((-20.0, 0.0), rng))
        out += amplitude * np.sin(2 * np.pi * multiple * f0 * t + rng.uniform(0, 2 * np.pi))
    return out


# ---------------------------------------------------------------------------------------------
# Real backgrounds

#: Room kept around every excluded span (its calls' echoes and faint starts), seconds.
EXCLUDE_MARGIN_S = 0.05
_MIN_PIECE_S = 0.02
_REAL_TIME_MIN_RATE = 96_000     # a header rate below this, without GUANO TE, means time expansion
_CROSSFADE_S = 0.002


@dataclass(frozen=True)
class BackgroundFile:
    """A real recording usable as background: where it is and which parts of it are free."""

    name: str
    path: Path
    rate: float
    free: tuple[tuple[float, float], ...]


class BackgroundLibrary:
    """Segments of real recordings without bats, resampled to any rate.

    Parameters
    ----------
    folder
        Folder searched recursively for ``.wav`` files (any case), in name order.
    exclude
        Optional CSV of spans to leave out (columns ``file``, ``position``, ``end``: real
        seconds; ``file`` as a path relative to ``folder``, with or without ``.wav``, or a
        file's stem); spans are widened by :data:`EXCLUDE_MARGIN_S`.
    time_expansion
        Time expansion of files without a GUANO ``TE`` field whose header rate is below 96 kHz
        (too low for ultrasound in real time); other files are real time.

    Raises
    ------
    SimulationError
        If the folder holds no usable WAV file, a file cannot be read, or the CSV is malformed.
    """

    def __init__(self, folder: Path, exclude: Path | None = None, time_expansion: int = 1):
        from pipeline.io.audio import RecordingError, read_info

        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise SimulationError(f"{self.folder}: background folder not found")
        spans = _read_spans(exclude) if exclude is not None else {}
        files = []
        for path in sorted(p for p in self.folder.rglob("*") if p.is_file() and p.suffix.lower() == ".wav"):
            name = path.relative_to(self.folder).as_posix()
            try:
                info = read_info(path)
            except RecordingError as exc:
                raise SimulationError(f"background {exc}") from None
            expansion = info.time_expansion if "TE" in info.guano else (
                time_expansion if info.sample_rate < _REAL_TIME_MIN_RATE else 1)
            duration = info.frames / (info.sample_rate * expansion)
            taken = spans.get(name[:-4], []) + spans.get(path.stem, []) + spans.get(name, [])
            free = _free_parts(duration, taken)
            if free:
                files.append(BackgroundFile(name, path, info.sample_rate * expansion, tuple(free)))
        if not files:
            raise SimulationError(f"{self.folder}: no WAV file with {_MIN_PIECE_S * 1e3:.0f} ms free of excluded spans")
        self.files = tuple(files)
        self._cache: dict[tuple[str, int], np.ndarray] = {}
        self.used: set[str] = set()

    def _resampled(self, item: BackgroundFile, rate: int) -> np.ndarray:
        key = (item.name, rate)
        if key not in self._cache:
            samples, _ = soundfile.read(item.path, dtype="float64", always_2d=True)
            samples = samples[:, 0]
            ratio = Fraction(rate) / Fraction(item.rate).limit_denominator(1000)
            ratio = ratio.limit_denominator(1000)
            if ratio != 1:
                samples = scipy.signal.resample_poly(samples, ratio.numerator, ratio.denominator)
            self._cache[key] = samples
        return self._cache[key]

    def segment(self, n: int, rate: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
        """``n`` samples at ``rate`` Hz made of free pieces of one real recording.

        Pieces (from the free parts of the chosen file, at random offsets) are joined with 2 ms
        cross-fades until ``n`` samples are filled.

        Returns
        -------
        (numpy.ndarray, str)
            The float64 segment (full-scale units, as recorded) and the file's name.
        """
        item = self.files[int(rng.integers(len(self.files)))]
        self.used.add(item.name)
        source = self._resampled(item, rate)
        parts = [(int(a * rate), min(int(b * rate), source.size)) for a, b in item.free]
        parts = [(a, b) for a, b in parts if b - a >= 4]
        lengths = np.array([b - a for a, b in parts], dtype=np.float64)
        fade = max(int(_CROSSFADE_S * rate), 1)
        out = np.zeros(n)
        filled = 0
        while filled < n:
            a, b = parts[int(rng.choice(len(parts), p=lengths / lengths.sum()))]
            shortest = min(b - a, int(_MIN_PIECE_S * rate))
            start = int(rng.integers(a, b - shortest + 1))
            piece = source[start:min(b, start + n - filled + fade)].copy()
            if filled and piece.size > 2 * fade:
                ramp = 0.5 * (1 - np.cos(np.linspace(0, np.pi, fade)))
                piece[:fade] *= ramp
                out[filled - fade:filled] *= ramp[::-1]
                filled -= fade
            take = min(piece.size, n - filled)
            out[filled:filled + take] += piece[:take]
            filled += take
        return out, item.name

    def provenance(self, licence: str) -> dict:
        """What ``simulation.json`` records: folder, licence and the files used with their SHA-256."""
        return {
            "folder": str(self.folder), "licence": licence,
            "files": [
                {"file": item.name, "sha256": hashlib.sha256(item.path.read_bytes()).hexdigest()}
                for item in self.files if item.name in self.used
            ],
        }


def robust_rms(samples: np.ndarray) -> float:
    """RMS of the noise floor of ``samples``: 1.4826 times the median absolute deviation."""
    if not samples.size:
        return 0.0
    return 1.4826 * float(np.median(np.abs(samples - np.median(samples))))


def _read_spans(path: Path) -> dict[str, list[tuple[float, float]]]:
    try:
        table = pd.read_csv(path, dtype={"file": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise SimulationError(f"{path}: not a readable CSV ({exc})") from None
    missing = [c for c in ("file", "position", "end") if c not in table.columns]
    if missing:
        raise SimulationError(f"{path}: missing column(s) {', '.join(missing)}")
    spans: dict[str, list[tuple[float, float]]] = {}
    for row, (name, start, end) in enumerate(zip(table["file"], table["position"], table["end"], strict=True), start=2):
        try:
            start, end = float(start), float(end)
        except (TypeError, ValueError):
            raise SimulationError(f"{path}: row {row}: position and end must be numbers") from None
        if not (np.isfinite(start) and np.isfinite(end)) or end < start:
            raise SimulationError(f"{path}: row {row}: end must be a number >= position")
        key = str(name)
        key = key[:-4] if key.lower().endswith(".wav") else key
        spans.setdefault(key, []).append((start, end))
    return spans


def _free_parts(duration: float, taken: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Parts of ``[0, duration]`` at least ``EXCLUDE_MARGIN_S`` away from every taken span."""
    free, at = [], 0.0
    for start, end in sorted((max(a - EXCLUDE_MARGIN_S, 0.0), b + EXCLUDE_MARGIN_S) for a, b in taken):
        if start - at >= _MIN_PIECE_S:
            free.append((at, start))
        at = max(at, end)
    if duration - at >= _MIN_PIECE_S:
        free.append((at, duration))
    return free
