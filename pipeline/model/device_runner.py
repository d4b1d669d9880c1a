#!/usr/bin/env python3
"""Reference runner of a batml device export: WAV recordings -> detected bat calls.

Written by ``batml export MODEL_DIR --to DIR`` as ``DIR/runner.py``, beside the model it runs
(``model.json``, ``network.*.onnx``, ``boosters.npz``). It needs Python 3, numpy and ONNX Runtime
only (no batml, TensorFlow, XGBoost or Dask), and computes what ``batml detect`` computes, step by
step, so that a port to a recorder's firmware can be checked against it:

1. read the WAV (8/16/24/32-bit integer or 32/64-bit float PCM; GUANO's time expansion);
2. the spectrogram: Hann-windowed frames of ``window_s`` with ``overlap``, power of the FFT bins
   ``min_bin..max_bin``, ``log(1 + 2 / (rate * sum(hann^2)) * power)``, per-frequency means of the
   active and inactive frames subtracted (clipped at 0), Gaussian smoothing and ``zoom x zoom``
   block means in one separable pass, rounded to float16 as batml's cube stores it;
3. the network on windows of 20 columns: the windows at every ``stride``-th column, then those
   near the windows whose call score reaches ``gamma`` (whole strips at once when the network is
   valid along time);
4. a hybrid's boosters (the trees as flat arrays) on the network's embedding, near the peaks of
   the network's own call score;
5. Gaussian smoothing of the probabilities, non-maximum suppression of the call score
   ``1 - P(not call)``, the peak's score mapped through the model's score calibration
   (``score_calibration``: piecewise linear between breakpoints), and the events whose
   calibrated score reaches the detection threshold (a peak below it still suppresses its
   neighbours).

Usage::

    python runner.py RECORDING.wav [...] [-o calls.csv] [--time-expansion X] [--channels each|first|mix]

**The FFT.** batml computes its spectrogram with scipy's FFT in float32. When scipy is installed,
the runner uses it too (``--fft auto``), and its events are batml's; numpy's own FFT (``--fft
numpy``, or no scipy) rounds the last bit of some float32 values differently, which changes about
0.03 % of the stored (float16) spectrogram values by one step and, rarely, moves an event by one
column (``tests/test_device_export.py`` measures both).

It prints (or writes) one row per detected call, with the columns of batml's detections table:
``file, channel, time, class, probability, score, prob_<class>...``. The model's terms of use are
in ``model.json`` (``licence``) and ``README.txt``.
"""

from __future__ import annotations

import argparse
import csv
import json
import struct
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

# ---------------------------------------------------------------------------------------------
# WAV


class RecordingError(ValueError):
    """A recording this runner cannot use; the message names the file and the reason."""


def _chunks(data: bytes, path) -> dict:
    if len(data) < 12 or data[:4] not in (b"RIFF", b"RIFX") or data[8:12] != b"WAVE":
        raise RecordingError(f"{path}: not a WAV file")
    if data[:4] == b"RIFX":
        raise RecordingError(f"{path}: big-endian WAV is not supported")
    chunks, offset = {}, 12
    while offset + 8 <= len(data):
        name, size = data[offset : offset + 4], struct.unpack("<I", data[offset + 4 : offset + 8])[0]
        body = data[offset + 8 : offset + 8 + size]
        chunks.setdefault(name, body)
        offset += 8 + size + (size & 1)
    if b"fmt " not in chunks or b"data" not in chunks:
        raise RecordingError(f"{path}: no fmt or data chunk")
    return chunks


def _guano_time_expansion(body: bytes | None) -> float:
    if not body:
        return 1.0
    for line in body.decode("utf-8", errors="replace").splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "TE":
            try:
                factor = float(value.strip())
            except ValueError:
                return 1.0
            return factor if factor > 0 and np.isfinite(factor) else 1.0
    return 1.0


def read_wav(path) -> tuple[np.ndarray, int, float]:
    """``(samples float32 (channels, n) in [-1, 1], header rate, GUANO time expansion)``."""
    data = Path(path).read_bytes()
    chunks = _chunks(data, path)
    fmt = chunks[b"fmt "]
    tag, channels, rate = struct.unpack("<HHI", fmt[:8])
    bits = struct.unpack("<H", fmt[14:16])[0]
    if tag == 0xFFFE and len(fmt) >= 26:
        tag = struct.unpack("<H", fmt[24:26])[0]
    raw = chunks[b"data"]
    width = bits // 8
    if channels < 1 or rate < 1 or width < 1:
        raise RecordingError(f"{path}: invalid header")
    n = len(raw) // (width * channels)
    raw = raw[: n * width * channels]
    if tag == 3 and bits in (32, 64):
        samples = np.frombuffer(raw, dtype="<f4" if bits == 32 else "<f8").astype(np.float32)
    elif tag == 1 and bits == 8:
        samples = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / np.float32(128.0)
    elif tag == 1 and bits in (16, 32):
        ints = np.frombuffer(raw, dtype="<i2" if bits == 16 else "<i4")
        samples = ints.astype(np.float32) * np.float32(2.0 ** (1 - bits))
    elif tag == 1 and bits == 24:
        triples = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        ints = triples[:, 0] | (triples[:, 1] << 8) | (triples[:, 2] << 16)
        ints = np.where(ints >= 1 << 23, ints - (1 << 24), ints)
        samples = ints.astype(np.float32) * np.float32(2.0**-23)
    else:
        raise RecordingError(f"{path}: unsupported WAV encoding (format {tag}, {bits} bits)")
    samples = samples.reshape(n, channels)
    if not np.all(np.isfinite(samples)):
        raise RecordingError(f"{path}: NaN or infinite samples")
    return np.ascontiguousarray(samples.T), rate, _guano_time_expansion(chunks.get(b"guan"))


# ---------------------------------------------------------------------------------------------
# Spectrogram (batml's pipeline.spectrogram, in the same float32 operations)

INT16_SCALE = 32768.0
TRUNCATE = 4.0


def _reflect(i: np.ndarray, n: int) -> np.ndarray:
    """scipy.ndimage's ``mode="reflect"`` index (half-sample symmetric, periodic 2n)."""
    i = np.mod(i, 2 * n)
    return np.where(i >= n, 2 * n - 1 - i, i)


def _smooth_zoom_weights(sigma: float, zoom: int) -> np.ndarray:
    radius = int(TRUNCATE * sigma + 0.5)
    if radius == 0:
        gauss = np.ones(1)
    else:
        x = np.arange(-radius, radius + 1)
        gauss = np.exp(-0.5 / sigma**2 * x**2)
        gauss = gauss / gauss.sum()
    return np.convolve(gauss, np.ones(zoom) / zoom).astype(np.float32)


def rfft(frames: np.ndarray, fft: str = "auto") -> np.ndarray:
    """The real FFT of float32 frames along their last axis (complex64): scipy's when it is
    installed (batml's), else numpy's (see the module's docstring)."""
    if fft in ("auto", "scipy"):
        try:
            import scipy.fft

            return scipy.fft.rfft(frames, axis=1)
        except ImportError:
            if fft == "scipy":
                raise
    return np.fft.rfft(frames, axis=1)


def spectrogram(samples: np.ndarray, real_rate: float, s: dict, fft: str = "auto") -> np.ndarray:
    """Model-ready columns ``(n_columns, rows)`` float32 of one channel, as batml's cube holds them."""
    nfft = int(s["window_s"] * real_rate)
    hop = nfft - int(s["overlap"] * nfft)
    n_bins = s["max_bin"] - s["min_bin"] + 1
    zoom = s["zoom"]
    n_frames = 0 if len(samples) < nfft or nfft < 2 else 1 + (len(samples) - nfft) // hop
    n_columns, n_rows = n_frames // zoom, n_bins // zoom
    if n_columns == 0:
        return np.zeros((0, n_rows), np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(np.ascontiguousarray(samples, np.float32), nfft)[::hop][:n_frames]
    window = (np.hanning(nfft) * INT16_SCALE).astype(np.float32)
    power = np.zeros((n_frames, n_bins), np.float32)
    top = min(s["max_bin"], nfft // 2)
    kept = top - s["min_bin"] + 1
    if kept > 0:
        for first in range(0, n_frames, 512):
            spectrum = rfft(frames[first : first + 512] * window, fft)[:, s["min_bin"] : top + 1]
            re, im = spectrum.real.astype(np.float32), spectrum.imag.astype(np.float32)
            power[first : first + 512, :kept] = re * re + im * im
    rate = real_rate / s.get("log_scale_expansion", 1.0)
    scale = np.float32(2.0 / (rate * np.sum(np.hanning(nfft) ** 2)))
    log_spec = np.log1p(np.multiply(power, scale, dtype=np.float32))
    active = log_spec.sum(axis=1) > s["active_threshold"] * log_spec.shape[1]
    for mask in (active, ~active):
        if mask.any():
            mean = (log_spec[mask].sum(axis=0, dtype=np.float64) / max(int(mask.sum()), 1)).astype(np.float32)
            log_spec[mask] = np.maximum(log_spec[mask] - mean, np.float32(0.0))
    # Gaussian smoothing then zoom x zoom block means = one separable correlation, kept every zoom-th
    weights = _smooth_zoom_weights(s["smoothing_sigma"], zoom)
    radius = (len(weights) - zoom) // 2
    starts = zoom * np.arange(n_columns) - radius
    columns = weights[0] * log_spec[_reflect(starts, n_frames)]
    for m in range(1, len(weights)):
        columns += weights[m] * log_spec[_reflect(starts + m, n_frames)]
    rows = zoom * np.arange(n_rows) - radius
    out = weights[0] * columns[:, _reflect(rows, n_bins)]
    for m in range(1, len(weights)):
        out += weights[m] * columns[:, _reflect(rows + m, n_bins)]
    return out.astype(np.float16).astype(np.float32)


def column_times(n_columns: int, real_rate: float, s: dict) -> np.ndarray:
    nfft = int(s["window_s"] * real_rate)
    hop = nfft - int(s["overlap"] * nfft)
    return np.arange(n_columns, dtype=np.float64) * (s["zoom"] * hop / real_rate)


# ---------------------------------------------------------------------------------------------
# The network (ONNX Runtime) and the boosters (flat trees)


class Network:
    """The exported ONNX graphs: ``windows`` (one window at a time) and ``strip<k>`` (every k-th
    window of a strip of columns, for networks valid along time)."""

    BATCH = 256  # windows per run, as batml
    PIECE = 2048  # windows per strip run, as batml

    def __init__(self, folder: Path, network: dict, threads: int = 1):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1

        def session(name):
            return ort.InferenceSession(str(folder / name), options, providers=["CPUExecutionProvider"])

        self.windows = session(network["windows"])
        self.strips = {int(k): session(v) for k, v in network.get("strips", {}).items()}
        self.width = int(network["width"])

    def embed(self, windows: np.ndarray):
        heads, embeddings = [], []
        for start in range(0, len(windows), self.BATCH):
            head, embedding = self.windows.run(["probabilities", "embedding"], {"windows": windows[start : start + self.BATCH]})
            heads.append(head)
            embeddings.append(embedding)
        return np.concatenate(heads), np.concatenate(embeddings)

    def strip(self, columns: np.ndarray, stride: int):
        """Scores of the windows starting at columns 0, stride, 2 stride... of ``columns (rows, T)``."""
        session = self.strips[stride]
        n_windows = columns.shape[1] - self.width + 1
        piece = -(-self.PIECE // stride) * stride
        heads, embeddings = [], []
        for start in range(0, n_windows, piece):
            stop = min(start + piece, n_windows)
            head, embedding = session.run(
                ["probabilities", "embedding"], {"strip": np.ascontiguousarray(columns[:, start : stop + self.width - 1])}
            )
            wanted = -(-(stop - start) // stride)
            heads.append(head[:wanted])
            embeddings.append(embedding[:wanted])
        return np.concatenate(heads), np.concatenate(embeddings)


class Forest:
    """A hybrid's boosters (one per output column) as flat arrays of tree nodes."""

    def __init__(self, path: Path, n_outputs: int):
        with np.load(path, allow_pickle=False) as arrays:
            self.boosters = [{key[len(f"b{j}_") :]: arrays[key] for key in arrays.files if key.startswith(f"b{j}_")}
                             for j in range(n_outputs)]  # fmt: skip

    @staticmethod
    def margin(b: dict, x: np.ndarray) -> np.ndarray:
        """Sum over the trees of the leaf each row of ``x`` reaches, plus the base margin."""
        node = np.broadcast_to(b["roots"], (len(x), len(b["roots"]))).copy()
        rows = np.arange(len(x))[:, None]
        for _ in range(int(b["depth"])):
            inner = b["left"][node] >= 0
            if not inner.any():
                break
            value = x[rows, b["feature"][node]]
            go_left = np.where(np.isnan(value), b["default_left"][node] == 1, value < b["threshold"][node])
            node = np.where(inner, np.where(go_left, b["left"][node], b["right"][node]), node)
        return b["value"][node].astype(np.float64).sum(axis=1) + float(b["base_margin"])

    def __call__(self, embedding: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(embedding, np.float32)
        margins = np.column_stack([self.margin(b, x) for b in self.boosters])
        return (1.0 / (1.0 + np.exp(-margins))).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Detection (batml's pipeline.detection, for a whole recording)


def call_score(probs: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.float32(1.0) - probs[:, 0])


def smooth(probs: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing along time, edges repeated (scipy.ndimage's ``mode="nearest"``)."""
    radius = int(TRUNCATE * sigma + 0.5) if sigma > 0 else 0
    if radius == 0 or len(probs) == 0:
        return probs.copy()
    x = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 / sigma**2 * x**2)
    weights /= weights.sum()
    padded = np.concatenate([np.repeat(probs[:1], radius, 0), probs, np.repeat(probs[-1:], radius, 0)]).astype(np.float64)
    out = weights[radius] * padded[radius : radius + len(probs)]
    for j in range(1, radius + 1):
        out = out + weights[radius + j] * (padded[radius + j : radius + j + len(probs)] + padded[radius - j : radius - j + len(probs)])
    return out.astype(np.float32)


def peaks(score: np.ndarray, radius: int, threshold: float) -> np.ndarray:
    """Columns where no column within ``radius`` is greater, nor an earlier one equal."""
    n = len(score)
    if n == 0:
        return np.zeros(0, np.int64)
    padded = np.concatenate([np.full(radius, -np.inf, np.float32), score, np.full(radius, -np.inf, np.float32)])
    view = np.lib.stride_tricks.sliding_window_view(padded, 2 * radius + 1)
    before, after = view[:, :radius], view[:, radius + 1 :]
    keep = (score >= np.float32(threshold)) & ~(before >= score[:, None]).any(axis=1) & ~(after > score[:, None]).any(axis=1)
    return np.flatnonzero(keep).astype(np.int64)


def near_peaks(head: np.ndarray, detection: dict) -> np.ndarray:
    """Where the boosters run: within ``booster_margin`` columns of a peak of the head's smoothed
    call score that reaches ``booster_gate``."""
    score = call_score(smooth(head, detection["sigma_columns"]))
    found = peaks(score, detection["radius_columns"], 0.0)
    found = found[score[found] >= np.float32(detection["booster_gate"])]
    mask = np.zeros(len(head), bool)
    for offset in range(-detection["booster_margin"], detection["booster_margin"] + 1):
        near = found + offset
        mask[near[(near >= 0) & (near < len(head))]] = True
    return mask


def probabilities(spec: np.ndarray, network: Network, forest: Forest | None, d: dict, n_outputs: int) -> np.ndarray:
    """Per-column probabilities ``(n_columns, K + 1)`` of a recording, scanned coarse to fine."""
    width = network.width
    n = len(spec)
    head = np.zeros((n, n_outputs), np.float32)
    head[:, 0] = 1.0
    embedding = None
    scored = np.zeros(n, bool)
    starts = np.arange(max(n - width + 1, 0))
    stride, gamma = int(d["scan_stride"]), float(d["scan_gamma"])

    def store(columns, h, e):
        nonlocal embedding
        if embedding is None:
            embedding = np.zeros((n, e.shape[1]), np.float32)
        head[columns], embedding[columns] = h, e
        scored[columns] = True

    def by_window(columns):
        for start in range(0, len(columns), Network.BATCH):
            batch = columns[start : start + Network.BATCH]
            windows = np.lib.stride_tricks.sliding_window_view(spec, width, axis=0)[batch][..., None]
            store(batch, *network.embed(np.ascontiguousarray(windows, np.float32)))

    coarse = starts[starts % stride == 0] if stride > 1 else starts
    usable = [k for k in network.strips if stride % k == 0]
    if len(coarse) and usable:
        step = max(usable)
        h, e = network.strip(np.ascontiguousarray(spec[coarse[0] : coarse[-1] + width].T), step)
        store(coarse, h[:: stride // step], e[:: stride // step])
    elif len(coarse):
        by_window(coarse)
    gated = forest is not None and d["booster_margin"] is None
    probs = head.copy()

    def gate(columns):
        use = np.zeros(n, bool)
        use[columns] = call_score(head[columns]) >= np.float32(d["booster_gate"]) if d["booster_gate"] > 0 else True
        return use

    def boost(use):
        if use.any():
            probs[use] = forest(embedding[use])

    if gated:
        boost(gate(coarse))
    if stride > 1 and len(coarse):
        hot = coarse[call_score(probs[coarse]) >= np.float32(gamma)]
        near = np.unique((hot[:, None] + np.arange(-(stride - 1), stride)[None, :]).ravel())
        refined = near[(near >= 0) & (near < len(starts)) & (near % stride != 0)]
        if 1 in network.strips and len(refined):
            breaks = np.flatnonzero(np.diff(refined) > width - 1)
            for a, b in zip(np.r_[refined[0], refined[breaks + 1]], np.r_[refined[breaks], refined[-1]]):
                h, e = network.strip(np.ascontiguousarray(spec[a : b + width].T), 1)
                wanted = refined[(refined >= a) & (refined <= b)]
                store(wanted, h[wanted - a], e[wanted - a])
        elif len(refined):
            by_window(refined)
        probs[refined] = head[refined]
        if gated:
            boost(gate(refined))
    if forest is not None and not gated:
        boost(scored & near_peaks(head, d))
    return probs


def detect(spec, times, network, forest, model) -> list[dict]:
    """The events of one recording: ``time, score`` and the probability of every class."""
    d, classes = model["detection"], model["classes"]
    probs = probabilities(spec, network, forest, d, len(classes) + 1)
    smoothed = smooth(probs, d["sigma_columns"])
    score = call_score(smoothed)
    threshold = float(model["thresholds"].get("detection", 0.5))
    found = peaks(score, d["radius_columns"], -np.inf)
    calibration = model.get("score_calibration") or {"raw": [0.0, 1.0], "calibrated": [0.0, 1.0]}
    calibrated = np.interp(score[found].astype(np.float64), calibration["raw"], calibration["calibrated"])
    kept = calibrated >= threshold
    return [
        {"time": float(times[c]), "score": float(value), "probs": smoothed[c, 1:].astype(np.float32)}
        for c, value in zip(found[kept], calibrated[kept])
    ]


# ---------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Detect bat calls with a batml device export (numpy + ONNX Runtime).")
    parser.add_argument("recordings", nargs="+", type=Path, help="WAV files")
    parser.add_argument("--export", type=Path, default=HERE, help="the export folder (default: this script's)")
    parser.add_argument("-o", "--output", type=Path, help="CSV of the calls (default: standard output)")
    parser.add_argument("--time-expansion", type=float, help="time-expansion factor (default: GUANO's TE, else 1)")
    parser.add_argument("--channels", choices=("each", "first", "mix"), default="each")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fft", choices=("auto", "numpy", "scipy"), default="auto",
                        help="auto: scipy's when installed (batml's spectrogram exactly), else numpy's")
    args = parser.parse_args(argv)

    model = json.loads((args.export / "model.json").read_text(encoding="utf-8"))
    settings, classes = model["spectrogram"], model["classes"]
    network = Network(args.export, model["network"], args.threads)
    forest = Forest(args.export / model["boosters"], len(classes) + 1) if model.get("boosters") else None
    out = open(args.output, "w", newline="", encoding="utf-8") if args.output else sys.stdout
    writer = csv.writer(out)
    writer.writerow(["file", "channel", "time", "class", "probability", "score", *[f"prob_{c}" for c in classes]])
    failed = 0
    for path in args.recordings:
        try:
            samples, rate, te = read_wav(path)
        except (OSError, RecordingError) as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            failed += 1
            continue
        real_rate = rate * (args.time_expansion or te)
        if real_rate < settings["min_sample_rate"]:
            print(f"{path}: sample rate {real_rate:.0f} Hz is below {settings['min_sample_rate']:.0f} Hz", file=sys.stderr)
            failed += 1
            continue
        if args.channels == "mix" and len(samples) > 1:
            units = [(-1, samples.T @ np.full(len(samples), 1 / len(samples), dtype=np.float32))]
        else:
            units = list(enumerate(samples[:1] if args.channels == "first" else samples))
        for channel, mono in units:
            spec = spectrogram(mono, real_rate, settings, args.fft)
            times = column_times(len(spec), real_rate, settings)
            for event in detect(spec, times, network, forest, model):
                best = int(np.argmax(event["probs"]))
                writer.writerow([path, channel, repr(event["time"]), classes[best], repr(float(event["probs"][best])),
                                 repr(event["score"]), *[repr(float(p)) for p in event["probs"]]])  # fmt: skip
    if args.output:
        out.close()
    return 3 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
