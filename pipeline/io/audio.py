"""Reading one recording: its header, its GUANO metadata and its samples.

A recording is a WAV file on a local disk or behind an fsspec URL (``memory://``,
``file://``, ``s3://`` ...). :func:`read_info` reads what the header and the GUANO chunk
say without decoding a single sample, :func:`check_usable` decides whether the recording
can hold bat ultrasound at the spectrogram settings, and :func:`read_samples` decodes one
range of one channel (or the mix of all channels), so that hour-long files can be
streamed in blocks.

Every problem with a file is a :class:`RecordingError` whose message is one line,
``'<path>: <reason>'``, so that a run over millions of files can list what it skipped
and why. Non-fatal oddities (malformed GUANO, a header claiming more data than the file
holds) are kept in :attr:`RecordingInfo.note`.

The GUANO chunk (``guan``) is found by walking the RIFF chunk list: chunk headers are
read and chunk bodies are skipped, so the audio data is never read, odd-sized chunks may
or may not carry their pad byte, and a ``data`` chunk whose declared size runs past the
end of the file simply ends the walk.
"""

from __future__ import annotations

import math
import os
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any

import numpy as np
import soundfile
from fsspec import AbstractFileSystem
from fsspec.core import split_protocol, url_to_fs
from guano import GuanoFile

from pipeline.config import CHANNEL_POLICIES, SpectrogramSettings

#: libsndfile's error code for bytes that are no audio format it knows (SF_ERR_UNRECOGNISED_FORMAT).
_UNRECOGNISED_FORMAT = 1
#: The container ids of a WAV file and the form type that must follow them.
_RIFF_IDS = (b"RIFF", b"RF64")
_WAVE_FORM = b"WAVE"
_CHUNK_HEADER = struct.Struct("<4sI")
#: The start of a 'fmt ' chunk body: format tag, channel count, sample rate.
_FMT_START = struct.Struct("<HHI")
_FMT_MIN_SIZE = 16
#: A declared chunk size meaning "unknown" (RF64 files, recorders that stream their header).
_UNKNOWN_SIZE = 0xFFFFFFFF


class RecordingError(ValueError):
    """A recording that cannot be used; ``str(exc)`` is one line, ``'<path>: <reason>'``.

    Parameters
    ----------
    path
        The recording as it was given (local path or fsspec URL).
    reason
        Short, lower-case, specific; line breaks are folded into spaces.
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = " ".join(str(reason).split())
        super().__init__(f"{self.path}: {self.reason}")

    def __reduce__(self):
        # Exceptions travel between dask workers by pickle, which would otherwise call
        # the class with the formatted message as its only argument.
        return type(self), (self.path, self.reason)


@dataclass(frozen=True)
class RecordingInfo:
    """What a recording's header and GUANO metadata say, read without decoding samples.

    Attributes
    ----------
    path
        As given (local path or fsspec URL).
    size
        File size in bytes.
    mtime
        Modification time in POSIX seconds (0.0 when the filesystem does not say).
    sample_rate
        Sample rate of the header (Hz), before time expansion.
    frames
        Samples per channel that the file really holds (never what a lying header claims).
    channels
        Channel count.
    subtype
        soundfile subtype, e.g. ``'PCM_16'``, ``'FLOAT'``.
    time_expansion
        Effective time-expansion factor: the override, else GUANO ``TE``, else 1.
    timestamp
        GUANO ``Timestamp`` as ISO 8601, if present and readable.
    recorder
        GUANO ``Make`` and ``Model`` joined by a space, if present.
    guano
        Every readable GUANO field as a string, keyed ``'Key'`` or ``'Namespace|Key'``.
    note
        Non-fatal remarks, ``'; '``-separated (malformed GUANO, truncated data).
    """

    path: str
    size: int
    mtime: float
    sample_rate: int
    frames: int
    channels: int
    subtype: str
    time_expansion: float
    timestamp: str | None
    recorder: str | None
    guano: dict[str, str] = field(hash=False)
    note: str = ""

    @property
    def real_rate(self) -> float:
        """Real-time sample rate (Hz): the header rate times the time-expansion factor."""
        return self.sample_rate * self.time_expansion

    @property
    def duration(self) -> float:
        """Real-time duration in seconds."""
        return self.frames / self.real_rate


@dataclass(frozen=True)
class _WaveChunks:
    """What the RIFF chunk list of a WAV file holds, found without reading the audio data."""

    fmt: bytes = b""
    data_declared: int | None = None
    data_available: int = 0
    guano: bytes | None = None


@dataclass(frozen=True)
class _Guano:
    """A recording's GUANO metadata, reduced to what a recording's description needs."""

    fields: dict[str, str]
    time_expansion: float
    timestamp: str | None
    recorder: str | None
    problems: tuple[str, ...]


def read_info(
    path: str | os.PathLike,
    *,
    time_expansion: float | None = None,
    filesystem: AbstractFileSystem | None = None,
) -> RecordingInfo:
    """Read a recording's header and GUANO metadata, never its samples.

    Parameters
    ----------
    path
        Local path or fsspec URL (or a path inside ``filesystem``).
    time_expansion
        Factor overriding GUANO's ``TE``; ``None`` takes GUANO's value, or 1.
    filesystem
        fsspec filesystem holding ``path``; by default local paths are opened directly
        and URLs through :func:`fsspec.core.url_to_fs`.

    Returns
    -------
    RecordingInfo

    Raises
    ------
    RecordingError
        Missing file, directory (or other non-regular file), empty file, not audio,
        truncated header, zero sample rate, zero channels or no audio frames.
    ValueError
        ``time_expansion`` is not a positive number.
    """
    if time_expansion is not None and not time_expansion > 0:
        raise ValueError(f"time_expansion={time_expansion} must be > 0")
    path = os.fspath(path)
    fs, location = _filesystem(path, filesystem)
    size, mtime = _file_status(path, fs, location)
    if size == 0:
        raise RecordingError(path, "empty file (0 bytes)")
    try:
        with _open_binary(fs, location) as fh:
            chunks = _wave_chunks(fh, size)
            fh.seek(0)
            sample_rate, frames, channels, subtype = _sound_header(path, fh, chunks)
    except OSError as exc:
        raise RecordingError(path, f"cannot read ({exc.strerror or exc})") from exc
    if frames == 0:
        raise RecordingError(path, "no audio frames")
    guano = _read_guano(chunks.guano if chunks else None)
    notes = [_truncation_note(chunks)]
    if guano.problems:
        notes.append("malformed GUANO ignored: " + "; ".join(guano.problems))
    return RecordingInfo(
        path=path,
        size=size,
        mtime=mtime,
        sample_rate=sample_rate,
        frames=frames,
        channels=channels,
        subtype=subtype,
        time_expansion=float(time_expansion) if time_expansion is not None else guano.time_expansion,
        timestamp=guano.timestamp,
        recorder=guano.recorder,
        guano=guano.fields,
        note="; ".join(note for note in notes if note),
    )


def check_usable(info: RecordingInfo, settings: SpectrogramSettings) -> None:
    """Refuse a recording whose rate cannot hold bat ultrasound or that is too short.

    Parameters
    ----------
    info
        The recording's description from :func:`read_info`.
    settings
        Spectrogram settings giving the minimum real-time rate and the STFT window.

    Raises
    ------
    RecordingError
        The real-time rate is below ``settings.min_sample_rate`` (a time-expanded file
        read without its factor looks like this), or the recording is shorter than one
        model-ready spectrogram column.
    """
    rate = info.real_rate
    if rate < settings.min_sample_rate:
        raise RecordingError(
            info.path,
            f"sample rate {rate:.0f} Hz is too low for bat ultrasound "
            f"(minimum {settings.min_sample_rate:.0f} Hz real time; "
            "time-expanded? pass --time-expansion)",
        )
    if settings.n_columns(info.frames, rate) == 0:
        minimum = settings.nfft(rate) + (settings.zoom - 1) * settings.hop(rate)
        raise RecordingError(
            info.path,
            f"too short ({1e3 * info.duration:.3g} ms; "
            f"one spectrogram column needs {1e3 * minimum / rate:.3g} ms)",
        )


def read_samples(
    path: str | os.PathLike,
    start: int = 0,
    stop: int | None = None,
    *,
    channel: int | str = "mix",
    filesystem: AbstractFileSystem | None = None,
) -> np.ndarray:
    """Decode frames ``[start, stop)`` of one channel, or of the mix of all channels.

    Only that range is read (the decoder seeks to ``start``), so a long recording can be
    streamed in blocks.

    Parameters
    ----------
    path
        Local path or fsspec URL (or a path inside ``filesystem``).
    start, stop
        Frame range; ``stop=None`` reads to the end.
    channel
        Channel index, or ``"mix"`` for the mean of all channels.
    filesystem
        fsspec filesystem holding ``path`` (see :func:`read_info`).

    Returns
    -------
    numpy.ndarray
        float32, 1-D, scaled to [-1, 1] as soundfile scales integer samples.

    Raises
    ------
    RecordingError
        The range holds NaN or infinite samples, the file holds fewer frames than asked
        ("data truncated"), the channel does not exist, or the file cannot be decoded.
    ValueError
        ``channel`` is neither an index nor ``"mix"``, or the range is reversed or negative.
    """
    path = os.fspath(path)
    fs, location = _filesystem(path, filesystem)
    try:
        with _open_binary(fs, location) as fh, soundfile.SoundFile(fh) as sound:
            _check_channel(path, channel, sound.channels)
            block = _read_block(path, sound, start, stop)
    except soundfile.LibsndfileError as exc:
        raise RecordingError(path, f"cannot decode ({_libsndfile_message(exc)})") from exc
    except FileNotFoundError:
        raise RecordingError(path, "no such file") from None
    except OSError as exc:
        raise RecordingError(path, f"cannot read ({exc.strerror or exc})") from exc
    _check_finite(path, block, start)
    if channel != "mix":
        return np.ascontiguousarray(block[:, channel])
    channels = block.shape[1]
    if channels == 1:
        return block[:, 0]
    # A matrix-vector product: ten times faster than a mean over the short channel axis.
    return block @ np.full(channels, 1 / channels, dtype=np.float32)


def file_status(
    path: str | os.PathLike, *, filesystem: AbstractFileSystem | None = None
) -> tuple[int, float]:
    """Size (bytes) and modification time (POSIX seconds), as :func:`read_info` gives them.

    Cheap (one stat), so that a recording whose size and mtime have not changed since
    the manifest was built need not be read again.

    Raises
    ------
    RecordingError
        The file does not exist, is a directory, or cannot be stat'ed.
    """
    path = os.fspath(path)
    return _file_status(path, *_filesystem(path, filesystem))


def channel_units(channels: int, policy: str) -> list[int | str]:
    """The channel selectors (for :func:`read_samples`) a file yields under a policy.

    Parameters
    ----------
    channels
        The file's channel count (:attr:`RecordingInfo.channels`).
    policy
        ``"each"``: every channel on its own; ``"first"``: channel 0; ``"mix"``: the
        mean of the channels. A mono recording always yields ``[0]``.

    Returns
    -------
    list of int or str
    """
    if policy not in CHANNEL_POLICIES:
        raise ValueError(f"channel policy {policy!r}; choose one of {', '.join(CHANNEL_POLICIES)}")
    if channels == 1:
        return [0]
    return {"each": list(range(channels)), "first": [0], "mix": ["mix"]}[policy]


def _filesystem(
    path: str, filesystem: AbstractFileSystem | None
) -> tuple[AbstractFileSystem | None, str]:
    """The filesystem of a recording (``None`` for a plain local path) and its path there."""
    if filesystem is not None:
        return filesystem, path
    if split_protocol(path)[0] is None:
        return None, path
    return url_to_fs(path)


def _file_status(path: str, fs: AbstractFileSystem | None, location: str) -> tuple[int, float]:
    """Size (bytes) and modification time of a recording that must be a regular file."""
    try:
        kind, size, mtime = _stat(fs, location)
    except FileNotFoundError:
        raise RecordingError(path, "no such file") from None
    except OSError as exc:
        raise RecordingError(path, f"cannot read ({exc.strerror or exc})") from exc
    if kind == "directory":
        raise RecordingError(path, "is a directory")
    if kind != "file":
        raise RecordingError(path, "not a regular file")
    return size, mtime


def _stat(fs: AbstractFileSystem | None, location: str) -> tuple[str, int, float]:
    """``(kind, size, mtime)``, the kind being 'file', 'directory' or something else."""
    if fs is None:
        status = os.stat(location)
        if stat.S_ISREG(status.st_mode):
            return "file", status.st_size, status.st_mtime
        return "directory" if stat.S_ISDIR(status.st_mode) else "other", 0, 0.0
    details = fs.info(location)
    if details["type"] != "file":
        return details["type"], 0, 0.0
    try:
        mtime = fs.modified(location).timestamp()
    except NotImplementedError:
        mtime = 0.0
    return "file", int(details["size"]), mtime


def _open_binary(fs: AbstractFileSystem | None, location: str) -> IO[bytes]:
    return open(location, "rb") if fs is None else fs.open(location, "rb")


def _wave_chunks(fh: IO[bytes], size: int) -> _WaveChunks | None:
    """Walk the top-level RIFF chunks; ``None`` when the file is no RIFF/WAVE file.

    A RIFF file cut inside its first 12 bytes gives empty chunks (a truncated header).
    """
    fh.seek(0)
    riff = fh.read(12)
    if riff[:4] not in _RIFF_IDS or (len(riff) == 12 and riff[8:] != _WAVE_FORM):
        return None
    fmt, data_declared, data_available, guano = b"", None, 0, None
    for chunk_id, body, declared in _riff_chunks(fh, size):
        available = max(0, min(declared, size - body))
        if chunk_id == b"fmt " and not fmt:
            fh.seek(body)
            fmt = fh.read(min(available, _FMT_MIN_SIZE))
        elif chunk_id == b"data" and data_declared is None:
            data_declared, data_available = declared, available
        elif chunk_id == b"guan" and guano is None:
            fh.seek(body)
            guano = fh.read(available)
    return _WaveChunks(fmt, data_declared, data_available, guano)


def _riff_chunks(fh: IO[bytes], size: int) -> Iterator[tuple[bytes, int, int]]:
    """``(chunk id, body offset, declared body size)`` of each chunk, seeking over bodies.

    The walk ends at the end of the file, or at bytes that are no chunk id (garbage, or
    the zeros of a preallocated file), after which nothing can be found.
    """
    position = 12
    while position + _CHUNK_HEADER.size <= size:
        fh.seek(position)
        chunk_id, declared = _CHUNK_HEADER.unpack(fh.read(_CHUNK_HEADER.size))
        if not _is_chunk_id(chunk_id):
            return
        body = position + _CHUNK_HEADER.size
        yield chunk_id, body, declared
        position = _next_chunk(fh, size, body + declared, declared % 2)


def _next_chunk(fh: IO[bytes], size: int, end: int, padded: int) -> int:
    """Where the next chunk starts after a chunk whose body ends at ``end``.

    RIFF pads odd-sized chunks with one byte, but some writers leave it out: the pad is
    skipped unless only the unpadded position holds something like a chunk.
    """
    if padded and not _holds_chunk(fh, size, end + 1) and _holds_chunk(fh, size, end):
        return end
    return end + padded


def _holds_chunk(fh: IO[bytes], size: int, position: int) -> bool:
    """Whether a plausible chunk header starts at ``position``: an id, and a body that fits."""
    fh.seek(position)
    header = fh.read(_CHUNK_HEADER.size)
    if len(header) < _CHUNK_HEADER.size:
        return False
    chunk_id, declared = _CHUNK_HEADER.unpack(header)
    return _is_chunk_id(chunk_id) and position + len(header) + declared <= size


def _is_chunk_id(chunk_id: bytes) -> bool:
    """RIFF chunk ids are four printable ASCII characters (``'fmt '``, ``'data'``, ``'guan'``)."""
    return all(0x20 <= byte <= 0x7E for byte in chunk_id)


def _sound_header(path: str, fh: IO[bytes], chunks: _WaveChunks | None) -> tuple[int, int, int, str]:
    """``(sample rate, frames, channels, subtype)`` as libsndfile reads the header.

    libsndfile counts the frames the file really holds, whatever the header claims.
    Raises the most specific reason when it cannot read the header.
    """
    try:
        with soundfile.SoundFile(fh) as sound:
            return sound.samplerate, sound.frames, sound.channels, sound.subtype
    except soundfile.LibsndfileError as exc:
        raise RecordingError(path, _header_reason(chunks, exc)) from None


def _header_reason(chunks: _WaveChunks | None, error: soundfile.LibsndfileError) -> str:
    """Why libsndfile refused a header, from the RIFF chunks when they say more."""
    if chunks is not None:
        if len(chunks.fmt) < _FMT_MIN_SIZE:
            return "truncated header (no complete fmt chunk)"
        _, channels, rate = _FMT_START.unpack_from(chunks.fmt)
        if rate == 0:
            return "sample rate is 0"
        if channels == 0:
            return "channel count is 0"
        if chunks.data_declared is None:
            return "truncated header (no data chunk)"
    message = _libsndfile_message(error)
    if error.code == _UNRECOGNISED_FORMAT:
        return f"not a WAV/audio file ({message})"
    return f"unreadable audio header ({message})"


def _libsndfile_message(error: soundfile.LibsndfileError) -> str:
    message = error.error_string.strip().rstrip(".")
    return message[:1].lower() + message[1:]


def _truncation_note(chunks: _WaveChunks | None) -> str:
    """A remark when the data chunk claims more bytes than the file holds."""
    declared = chunks.data_declared if chunks else None
    if declared is None or declared == _UNKNOWN_SIZE or declared <= chunks.data_available:
        return ""
    return f"data truncated: header claims {declared} bytes of audio, file holds {chunks.data_available}"


def _read_guano(raw: bytes | None) -> _Guano:
    """Parse a GUANO chunk leniently: every readable line is kept, problems are listed."""
    values, problems = _guano_values(raw) if raw is not None else ({}, [])
    time_expansion, time_expansion_problem = _time_expansion(values.get("TE"))
    timestamp, timestamp_problem = _timestamp(values.get("Timestamp"))
    recorder = " ".join(str(values[key]) for key in ("Make", "Model") if key in values)
    return _Guano(
        fields={key: _guano_text(value) for key, value in values.items()},
        time_expansion=time_expansion,
        timestamp=timestamp,
        recorder=recorder or None,
        problems=tuple(p for p in (*problems, time_expansion_problem, timestamp_problem) if p),
    )


def _guano_values(raw: bytes) -> tuple[dict[str, Any], list[str]]:
    """GUANO values by full key (typed by the guano package), line by line."""
    problems = []
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        problems.append("not UTF-8")
    values: dict[str, Any] = {}
    unreadable = 0
    for line in text.split("\n"):
        try:
            values.update(GuanoFile.from_string(line).items())
        except ValueError:
            unreadable += 1
    if unreadable:
        problems.append(f"{unreadable} unreadable line(s)")
    return values, problems


def _time_expansion(value: Any) -> tuple[float, str]:
    """GUANO ``TE`` as a factor (1 when absent or unusable) and what was wrong with it."""
    if value is None:
        return 1.0, ""
    try:
        factor = float(value)
    except ValueError:
        factor = math.nan
    if math.isfinite(factor) and factor > 0:
        return factor, ""
    return 1.0, f"TE {str(value)!r} is not a positive number"


def _timestamp(value: Any) -> tuple[str | None, str]:
    """GUANO ``Timestamp`` as ISO 8601 (the guano package parsed it when it could)."""
    if value is None:
        return None, ""
    if isinstance(value, datetime):
        return value.isoformat(), ""
    return None, f"timestamp {str(value)!r} is not ISO 8601"


def _guano_text(value: Any) -> str:
    """A typed GUANO value back as text."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, tuple):
        return " ".join(map(str, value))
    return str(value)


def _check_channel(path: str, channel: int | str, channels: int) -> None:
    if isinstance(channel, str):
        if channel != "mix":
            raise ValueError(f"channel must be an index or 'mix', not {channel!r}")
    elif not 0 <= channel < channels:
        raise RecordingError(path, f"no channel {channel} (the recording has {channels})")


def _read_block(path: str, sound: soundfile.SoundFile, start: int, stop: int | None) -> np.ndarray:
    """Frames ``[start, stop)`` of all channels, as float32 of shape (frames, channels)."""
    stop = sound.frames if stop is None else stop
    if not 0 <= start <= stop:
        raise ValueError(f"invalid frame range [{start}, {stop})")
    sound.seek(min(start, sound.frames))
    block = sound.read(stop - start, dtype="float32", always_2d=True)
    if len(block) < stop - start:
        raise RecordingError(
            path, f"data truncated: frames [{start}, {stop}) asked, the file holds {sound.frames}"
        )
    return block


def _check_finite(path: str, block: np.ndarray, start: int) -> None:
    if not np.isfinite(block).all():
        first = start + int(np.argmin(np.isfinite(block).all(axis=1)))
        raise RecordingError(path, f"contains NaN or infinite samples (first at frame {first})")
