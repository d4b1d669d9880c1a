"""The recorder: microphone response, anti-alias filter, gain, clipping, converter and file.

* **Microphones.** Ultrasound microphones are not flat: their response gets rougher and falls
  at high frequencies, and the frequency ranges that makers quote are the highest frequency
  detected, not -3 dB points (Avisoft Bioacoustics, "Some notes on ultrasound microphones");
  a flat response within +-2 dB needs a measurement microphone. The Song Meter Mini Bat 2's
  microphone, for example, is most sensitive at 26 kHz, about 27 dB less sensitive at 100 kHz
  and falls steeply above (Wildlife Acoustics, Song Meter Mini Bat 2 user guide, microphone
  specifications). Three kinds, one drawn per file from ``microphones``:

  - ``flat``: gain 1 (measurement microphone);
  - ``rolloff``: flat, then falling as a Butterworth magnitude ``1 / sqrt(1 + (f/fc)^2n)``
    above the corner ``fc`` (``rolloff_khz``, 80-100 kHz), ``6 n`` dB per octave
    (``rolloff_db_per_octave``, 12-24);
  - ``resonant``: a roll-off microphone with a resonance: a peak of ``resonance_db`` (4-12 dB)
    at ``resonance_khz`` (20-40 kHz), a Lorentzian in dB of quality factor 1-3, as electret and
    MEMS capsules show.

  The microphone shapes what it hears (calls, insects, rain, wind), not the recorder's own
  electronic noise and interference (Gaussian self-noise, electrical tones), so a roll-off
  makes high-frequency calls fainter against the noise, as the Mini Bat 2's signal-to-noise
  ratio falls from 113-123 dB below 80 kHz to 67 dB at 140 kHz.
* **Anti-alias filter.** Sound fades linearly from ``antialias_edge`` x Nyquist to 0 at
  Nyquist (default edge 0.95; converters with gentler filters start lower), applied to every
  component at its instantaneous frequency, so nothing above Nyquist folds back: a 192 kHz
  recorder simply misses what lies above 96 kHz and cuts the top of a sweep that starts there.
* **Gain and clipping.** A per-file gain scales everything before the converter; files chosen
  with ``clipping_fraction`` are driven 3-20 dB past full scale at their loudest sample, and
  the converter clips them (flat tops at full scale).
* **Converter and file.** 16-bit PCM, or 8-bit (``eight_bit_fraction``: 8-bit files are given
  the gain that lifts their noise to at least -45 dB full scale, as an 8-bit recorder's gain
  would be set, else the noise would vanish under the quantisation step); WAV files whose
  ``guan`` chunk holds GUANO metadata (``guano``), time-expanded x10 files with the header rate
  divided by 10 and GUANO ``TE: 10``.
"""

from __future__ import annotations

import io
import math
import struct
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import soundfile

from pipeline.simulation.calls import ANTIALIAS_FRACTION, antialias_gain

_RESONANCE_Q = (1.0, 3.0)
_CLIP_OVERDRIVE_DB = (3.0, 20.0)
_EIGHT_BIT_NOISE_DBFS = -45.0


@dataclass(frozen=True)
class Recorder:
    """One file's recording chain.

    Parameters
    ----------
    rate
        Real-time sample rate (Hz).
    microphone
        ``"flat"``, ``"rolloff"`` or ``"resonant"``.
    corner_hz, order
        Roll-off corner and Butterworth order (``rolloff`` and ``resonant``).
    resonance_hz, resonance_db, resonance_q
        The resonant peak (``resonant``).
    antialias_edge
        Fraction of Nyquist where the anti-alias filter starts.
    gain_db
        Gain before the converter.
    overdrive_db
        If not ``None``, the file is scaled so that its loudest sample is this many dB above
        full scale (clipping).
    """

    rate: int
    microphone: str = "flat"
    corner_hz: float = 0.0
    order: float = 0.0
    resonance_hz: float = 0.0
    resonance_db: float = 0.0
    resonance_q: float = 1.0
    antialias_edge: float = ANTIALIAS_FRACTION
    gain_db: float = 0.0
    overdrive_db: float | None = None

    @property
    def plain(self) -> bool:
        """A flat microphone and the default anti-alias filter (the simulator before randomisation)."""
        return self.microphone == "flat" and self.antialias_edge == ANTIALIAS_FRACTION

    def antialias(self, freq_hz: np.ndarray) -> np.ndarray:
        """Amplitude gain of the anti-alias filter."""
        return antialias_gain(freq_hz, self.rate, self.antialias_edge)

    def microphone_gain(self, freq_hz: np.ndarray) -> np.ndarray:
        """Amplitude gain of the microphone."""
        f = np.abs(np.asarray(freq_hz, dtype=np.float64))
        if self.microphone == "flat":
            return np.ones_like(f)
        gain = 1.0 / np.sqrt(1.0 + (f / self.corner_hz) ** (2.0 * self.order))
        if self.microphone == "resonant":
            width = self.resonance_hz / (2.0 * self.resonance_q)
            gain = gain * 10 ** (self.resonance_db / (1.0 + ((f - self.resonance_hz) / width) ** 2) / 20.0)
        return gain

    def response(self, freq_hz: np.ndarray) -> np.ndarray:
        """Amplitude gain of the whole chain for sound reaching the microphone."""
        if self.microphone == "flat":
            return self.antialias(freq_hz)
        return self.microphone_gain(freq_hz) * self.antialias(freq_hz)

    def describe(self) -> str:
        """A short text for ``recordings.csv``."""
        if self.microphone == "flat":
            return "flat"
        text = f"rolloff {self.corner_hz / 1e3:.0f} kHz {6 * self.order:.0f} dB/oct"
        if self.microphone == "resonant":
            text = f"resonant {self.resonance_hz / 1e3:.0f} kHz +{self.resonance_db:.0f} dB, " + text
        return text


def _draw(bounds: tuple[float, float], rng: np.random.Generator) -> float:
    """A uniform draw in ``bounds``; no draw (and the constant) when both ends are equal."""
    return bounds[0] if bounds[0] == bounds[1] else float(rng.uniform(*bounds))


def draw_recorder(rate: int, settings, rng: np.random.Generator) -> Recorder:
    """One file's recording chain, drawn from ``settings`` (no draw for constant factors).

    Parameters
    ----------
    rate
        Real-time sample rate (Hz).
    settings
        :class:`~pipeline.simulation.settings.SimulationSettings`.
    rng
        Source of randomness.
    """
    kinds = settings.microphones
    kind = kinds[0] if len(kinds) == 1 else kinds[int(rng.integers(len(kinds)))]
    fields = {}
    if kind != "flat":
        fields.update(corner_hz=1e3 * _draw(settings.rolloff_khz, rng),
                      order=_draw(settings.rolloff_db_per_octave, rng) / 6.0)
    if kind == "resonant":
        fields.update(resonance_hz=1e3 * _draw(settings.resonance_khz, rng),
                      resonance_db=_draw(settings.resonance_db, rng), resonance_q=_draw(_RESONANCE_Q, rng))
    clipped = settings.clipping_fraction > 0 and rng.random() < settings.clipping_fraction
    return Recorder(
        rate=rate, microphone=kind, antialias_edge=_draw(settings.antialias_edge, rng),
        gain_db=_draw(settings.gain_db, rng), overdrive_db=_draw(_CLIP_OVERDRIVE_DB, rng) if clipped else None,
        **fields,
    )


def apply_gain(samples: np.ndarray, recorder: Recorder, noise_rms: float, bit_depth: int) -> float:
    """Scale full-scale float samples in place by the recorder's gain; return the gain (dB).

    Overdriven files are scaled so that their loudest sample lies ``overdrive_db`` above full
    scale; 8-bit files at least so far that the noise RMS reaches -45 dB full scale.
    """
    gain_db = recorder.gain_db
    if bit_depth == 8:
        gain_db = max(gain_db, _EIGHT_BIT_NOISE_DBFS - 20 * math.log10(noise_rms))
    if recorder.overdrive_db is not None:
        peak = float(np.abs(samples).max()) if samples.size else 0.0
        if peak > 0:
            gain_db = recorder.overdrive_db - 20 * math.log10(peak)
    if gain_db != 0.0:
        samples *= np.float32(10 ** (gain_db / 20)) if samples.dtype == np.float32 else 10 ** (gain_db / 20)
    return gain_db


def to_pcm(samples: np.ndarray, bit_depth: int = 16) -> np.ndarray:
    """Full-scale float samples as int16 codes, clipped like a recorder's converter.

    For 8-bit files the codes are multiples of 256 (the 8-bit value in the high byte), which
    ``soundfile`` writes as unsigned 8-bit PCM without loss.
    """
    if bit_depth == 8:
        codes = np.clip(np.round(samples * 128.0), -128, 127).astype(np.int16)
        return codes * np.int16(256)
    samples *= 32767.0
    np.clip(samples, -32768.0, 32767.0, out=samples)
    return samples.astype(np.int16)


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


def wav_bytes(samples: np.ndarray, header_rate: int, guano: str | None, bit_depth: int = 16) -> bytes:
    """A mono PCM WAV file, with a ``guan`` chunk after the data holding ``guano`` if given.

    Parameters
    ----------
    samples
        int16 samples (for 8-bit files, codes from :func:`to_pcm`).
    header_rate
        Sample rate written in the header (the real rate divided by any time expansion).
    guano
        GUANO metadata text, or ``None`` for none.
    bit_depth
        16 (``PCM_16``) or 8 (``PCM_U8``).

    Returns
    -------
    bytes
        The whole file: soundfile's RIFF header and data, then the ``guan`` chunk (padded to an
        even length), with the RIFF size updated.
    """
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, header_rate, subtype="PCM_16" if bit_depth == 16 else "PCM_U8", format="WAV")
    if guano is None:
        return buffer.getvalue()
    payload = guano.encode("utf-8")
    chunk = b"guan" + struct.pack("<I", len(payload)) + payload + b"\0" * (len(payload) % 2)
    riff = bytearray(buffer.getvalue() + chunk)
    riff[4:8] = struct.pack("<I", len(riff) - 8)
    return bytes(riff)
