"""Public helpers for tests: small valid recordings and a corpus of bad and odd WAV files.

Tests of reading, ingesting, detecting and training use :func:`write_bad_corpus` to check
that every kind of broken input found in real archives is refused with a clear one-line
reason, or read correctly when it is merely odd, and :func:`write_tone` to make small
valid recordings (optionally with GUANO metadata). Corrupt headers are written byte by
byte with :mod:`struct`, so that no audio library "fixes" them on the way.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

#: Expectation of a file that is read and analysed without complaint.
OK = "ok"

#: Rate, length and pitch of the valid files of the corpus (a bat-like 40 kHz tone).
_RATE = 384_000
_SECONDS = 0.1
_FREQUENCY = 40_000.0

_WAVE_FORMAT_PCM = 1
_WAVE_FORMAT_IEEE_FLOAT = 3
#: A declared data size of almost 4 GiB, as written by a recorder that crashed.
_GIGABYTES = 0xFFFFFF00

#: A file name of 250 bytes (most file systems allow 255), with spaces and a dot inside.
LONG_NAME = "very long name. " * 15 + "x" * 6 + ".wav"

#: Metadata of a time-expanded recording: 50 kHz in the header, 500 kHz in real time.
_TIME_EXPANDED_GUANO = {
    "TE": 10,
    "Timestamp": "2024-06-01T22:15:30",
    "Make": "Pettersson",
    "Model": "D240X",
}
#: GUANO with text that is not UTF-8, a line without a colon, and unusable TE and timestamp.
_MALFORMED_GUANO = (
    b"GUANO|Version: 1.0\n"
    b"Make: Pettersson\n"
    b"TE: ten\n"
    b"Timestamp: yesterday evening\n"
    b"a line without a colon\n"
    b"Note: caf\xe9 au lait\n"
)


def tone(rate: int, seconds: float, freq: float, channels: int = 1) -> np.ndarray:
    """The samples :func:`write_tone` writes.

    Parameters
    ----------
    rate
        Sample rate (Hz) of the header.
    seconds
        Length in header seconds; the file holds ``round(rate * seconds)`` frames.
    freq
        Tone frequency (Hz) at the header rate.
    channels
        Channel ``c`` carries the tone at amplitude ``0.5 / (c + 1)``, so that channels
        differ and their mix is known.

    Returns
    -------
    numpy.ndarray
        float64 of shape ``(frames, channels)``.
    """
    frames = round(rate * seconds)
    wave = np.sin(2 * np.pi * freq * np.arange(frames) / rate)
    return np.stack([0.5 / (c + 1) * wave for c in range(channels)], axis=1)


def write_tone(
    path: str | os.PathLike,
    rate: int,
    seconds: float,
    freq: float,
    channels: int = 1,
    subtype: str = "PCM_16",
    guano: Mapping[str, Any] | None = None,
) -> Path:
    """Write a valid WAV recording of a sine tone.

    Parameters
    ----------
    path
        Where to write; missing parent folders are created.
    rate, seconds, freq, channels
        As for :func:`tone`.
    subtype
        soundfile subtype: ``'PCM_U8'``, ``'PCM_16'``, ``'PCM_24'``, ``'PCM_32'``,
        ``'FLOAT'``, ``'DOUBLE'``.
    guano
        GUANO fields (``{'TE': 10, 'Make': ...}``), written with ``str`` after a
        ``GUANO|Version: 1.0`` line in a ``guan`` chunk after the audio data.

    Returns
    -------
    pathlib.Path
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, tone(rate, seconds, freq, channels), rate, subtype=subtype, format="WAV")
    if guano is not None:
        _append_chunk(Path(path), b"guan", _guano_bytes(guano))
    return Path(path)


def write_bad_corpus(folder: str | os.PathLike) -> dict[str, str]:
    """Write a corpus of bad and odd recordings, each small (< 1 MB).

    Parameters
    ----------
    folder
        Created if needed.

    Returns
    -------
    dict
        ``{file name: expectation}``, all directly in ``folder``. The expectation is
        ``'ok'`` or a substring of the reason the file is refused for, at the step that
        finds the problem: the header read (empty, not audio, truncated header, zero
        rate or channels, no frames), the usability check (rate too low, too short) or
        the decoding of the samples (``'contains NaN or infinite samples'``: the float
        files whose second half holds NaN or inf; header reads see nothing wrong).
        Merely odd files are ``'ok'``: truncated data and a header claiming gigabytes
        (what is really there is read), 8/24/32-bit and float samples, stereo, silence,
        clipping, GUANO with time expansion, malformed GUANO (noted, ignored), odd-sized
        data with and without its pad byte, unusual names (spaces, non-ASCII, upper-case
        suffixes, a leading dash, 250 bytes long). ``x.wav`` is an empty
        directory (``'is a directory'``), which archive discovery does not list.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    expectations = {}
    for name, write, expectation in _corpus():
        write(folder / name)
        expectations[name] = expectation
    return expectations


def _corpus() -> list[tuple[str, Callable[[Path], Any], str]]:
    """``(name, writer, expectation)`` of every file of the bad corpus."""
    samples = tone(_RATE, _SECONDS, _FREQUENCY)
    pcm16 = _pcm16(samples)
    header = _wav_header(_RATE, 1, 16, len(pcm16))
    no_channels = _wav_header(_RATE, 0, 16, len(pcm16))
    text = b"Recorded at 22:15 by the river, no bats tonight.\n" * 20
    valid = partial(write_tone, rate=_RATE, seconds=_SECONDS, freq=_FREQUENCY)
    time_expanded = partial(valid, rate=50_000, seconds=0.5, freq=4_000.0, guano=_TIME_EXPANDED_GUANO)
    not_audio = "not a WAV/audio file"
    non_finite = "contains NaN or infinite samples"
    return [
        ("empty.wav", _bytes_writer(b""), "empty file (0 bytes)"),
        ("header_only.wav", _bytes_writer(_wav_header(_RATE, 1, 16, 0)), "no audio frames"),
        ("truncated_header.wav", _bytes_writer(header[:24]), "truncated header"),
        ("truncated_data.wav", _bytes_writer(header + pcm16[: len(pcm16) // 2]), OK),
        ("text.wav", _bytes_writer(text), not_audio),
        ("random_bytes.wav", _bytes_writer(np.random.default_rng(0).bytes(4096)), not_audio),
        ("claims_gigabytes.wav", _bytes_writer(_wav_header(_RATE, 1, 16, _GIGABYTES) + pcm16), OK),
        ("claims_gigabytes_float.wav", _bytes_writer(_float_wav_claiming_gigabytes()), OK),
        ("zero_rate.wav", _bytes_writer(_wav_header(0, 1, 16, len(pcm16)) + pcm16), "sample rate is 0"),
        ("zero_channels.wav", _bytes_writer(no_channels + pcm16), "channel count is 0"),
        ("pcm8.wav", partial(valid, subtype="PCM_U8"), OK),
        ("pcm16.wav", valid, OK),
        ("pcm24.wav", partial(valid, subtype="PCM_24"), OK),
        ("pcm32.wav", partial(valid, subtype="PCM_32"), OK),
        ("float32.wav", partial(valid, subtype="FLOAT"), OK),
        ("float64.wav", partial(valid, subtype="DOUBLE"), OK),
        ("float_nan.wav", partial(_write_non_finite, value=np.nan), non_finite),
        ("float_inf.wav", partial(_write_non_finite, value=np.inf), non_finite),
        ("stereo.wav", partial(valid, channels=2), OK),
        ("rate_8khz.wav", partial(valid, rate=8_000, freq=1_000.0), "too low for bat ultrasound"),
        ("ten_samples.wav", partial(valid, seconds=10 / _RATE), "too short"),
        ("silence.wav", partial(_write_samples, samples=np.zeros_like(samples)), OK),
        ("clipping.wav", partial(_write_samples, samples=np.sign(samples)), OK),
        ("guano_te10_50khz.wav", time_expanded, OK),
        ("guano_malformed.wav", _write_malformed_guano, OK),
        ("guano_odd_data_padded.wav", _bytes_writer(_odd_data_with_guano(padded=True)), OK),
        ("guano_odd_data_unpadded.wav", _bytes_writer(_odd_data_with_guano(padded=False)), OK),
        ("x.wav", partial(Path.mkdir, exist_ok=True), "is a directory"),
        ("with spaces in the name.wav", valid, OK),
        ("Chauve-souris été.wav", valid, OK),
        ("UPPER.WAV", valid, OK),
        ("Mixed.Wav", valid, OK),
        ("-leading dash.wav", valid, OK),
        (LONG_NAME, valid, OK),
    ]


def _bytes_writer(data: bytes) -> Callable[[Path], int]:
    return partial(Path.write_bytes, data=data)


def _write_samples(path: Path, samples: np.ndarray) -> None:
    soundfile.write(path, samples, _RATE, subtype="PCM_16", format="WAV")


def _write_non_finite(path: Path, value: float) -> None:
    """A float recording whose second half starts with one non-finite sample."""
    samples = tone(_RATE, _SECONDS, _FREQUENCY)
    samples[len(samples) // 2] = value
    soundfile.write(path, samples, _RATE, subtype="FLOAT", format="WAV")


def _write_malformed_guano(path: Path) -> None:
    write_tone(path, _RATE, _SECONDS, _FREQUENCY)
    _append_chunk(path, b"guan", _MALFORMED_GUANO)


def _wav_header(
    rate: int,
    channels: int,
    bits: int,
    data_size: int,
    *,
    format_tag: int = _WAVE_FORMAT_PCM,
    trailing: int = 0,
) -> bytes:
    """A canonical 44-byte WAV header declaring ``data_size`` bytes of audio data.

    ``trailing`` counts the bytes of chunks after the data chunk, for the RIFF size.
    """
    block_align = channels * bits // 8
    fmt = struct.pack("<HHIIHH", format_tag, channels, rate, rate * block_align, block_align, bits)
    riff_size = min(4 + 8 + len(fmt) + 8 + data_size + trailing, 0xFFFFFFFF)
    return (
        b"RIFF" + struct.pack("<I", riff_size) + b"WAVE"
        + b"fmt " + struct.pack("<I", len(fmt)) + fmt
        + b"data" + struct.pack("<I", data_size)
    )


def _pcm16(samples: np.ndarray) -> bytes:
    return np.round(np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


def _float_wav_claiming_gigabytes() -> bytes:
    samples = tone(_RATE, _SECONDS / 2, _FREQUENCY).astype("<f4").tobytes()
    return _wav_header(_RATE, 1, 32, _GIGABYTES, format_tag=_WAVE_FORMAT_IEEE_FLOAT) + samples


def _odd_data_with_guano(*, padded: bool) -> bytes:
    """8-bit audio of an odd byte count, then a ``guan`` chunk after its pad byte or not."""
    samples = tone(_RATE, _SECONDS, _FREQUENCY)[:-1]
    data = np.round(128 + 127 * samples).astype(np.uint8).tobytes()
    pad = b"\x00" if padded else b""
    guano = _chunk(b"guan", _guano_bytes(_TIME_EXPANDED_GUANO | {"TE": 1}))
    header = _wav_header(_RATE, 1, 8, len(data), trailing=len(pad) + len(guano))
    return header + data + pad + guano


def _guano_bytes(fields: Mapping[str, Any]) -> bytes:
    lines = ["GUANO|Version: 1.0"]
    lines += [f"{key}: {value}" for key, value in fields.items() if key != "GUANO|Version"]
    return "\n".join(lines).encode("utf-8")


def _chunk(chunk_id: bytes, body: bytes) -> bytes:
    """A RIFF chunk, with its pad byte when the body size is odd."""
    return chunk_id + struct.pack("<I", len(body)) + body + b"\x00" * (len(body) % 2)


def _append_chunk(path: Path, chunk_id: bytes, body: bytes) -> None:
    """Append a chunk to a WAV file and update the RIFF size."""
    with path.open("r+b") as fh:
        end = fh.seek(0, os.SEEK_END)
        fh.write(b"\x00" * (end % 2) + _chunk(chunk_id, body))
        riff_size = fh.tell() - 8
        fh.seek(4)
        fh.write(struct.pack("<I", riff_size))


def swallow_signal(signum: int, where: str = "bare except") -> bool:
    """Send ``signum`` to this process where its handler's exception is lost: in a bare
    ``except:``, as a library does (Keras's model saving), or in a ``"finaliser"``, which
    Python reports to :func:`sys.unraisablehook` and goes on (distributed's gc callback).
    Whether the handler raised, and was swallowed."""
    import signal
    import sys
    import time

    raised = []

    def interrupted() -> None:
        try:
            signal.raise_signal(signum)
            time.sleep(5)  # the handler runs in the main thread as soon as it gets there
        except BaseException as exc:
            raised.append(exc)
            raise

    if where == "bare except":
        try:
            interrupted()
        except:  # noqa: E722 - the point: an interruption lost in a library
            pass
    elif where == "finaliser":

        class Dying:
            def __del__(self):
                interrupted()

        Dying()  # dropped at once, its exception reported to sys.unraisablehook
        sys.stderr.flush()
    else:
        raise ValueError(f"where must be 'bare except' or 'finaliser', not {where!r}")
    return bool(raised)
