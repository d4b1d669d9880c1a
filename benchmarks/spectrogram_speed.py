"""Spectrogram benchmark: seconds of audio per CPU-second of :func:`pipeline.spectrogram.spectrogram`.

For 30 s of simulated audio (white noise plus frequency-modulated "chirps", in [-1, 1]) at
250, 384 and 500 kHz, prints the best of ``--repeat`` runs of ``spectrogram()``, timed with
:func:`time.process_time` (CPU time of this process: run it on an otherwise idle core), and
with ``--stages`` the CPU time of each step (frame power, log scale, denoise, smoothing and
zoom).

Usage::

    python benchmarks/spectrogram_speed.py [--seconds 30] [--repeat 5] [--stages]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

RATES = (250_000, 384_000, 500_000)


def noise_and_chirps(rate: int, seconds: float, seed: int = 0) -> np.ndarray:
    """Float32 samples: noise at -54 dBFS and a 3 ms chirp (100 -> 30 kHz) every 50 ms."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 0.002, int(rate * seconds)).astype(np.float32)
    n = int(0.003 * rate)
    t = np.arange(n) / rate
    f0, f1 = 100_000.0, 30_000.0
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * t[-1]))
    chirp = (0.3 * np.hanning(n) * np.sin(phase)).astype(np.float32)
    for start in range(0, len(x) - n, int(0.05 * rate)):
        x[start : start + n] += chirp
    return x


def _cpu(fn, *args, repeat: int, fresh=None):
    """Best CPU time of ``repeat`` calls of ``fn(*args)``, and the last result.

    ``fresh``, when given, makes new arguments before each call (outside the timing), for
    steps that overwrite their input.
    """
    best = float("inf")
    for _ in range(repeat):
        if fresh is not None:
            args = fresh()
        t0 = time.process_time()
        result = fn(*args)
        best = min(best, time.process_time() - t0)
    return best, result


def stages(x: np.ndarray, rate: int, settings, repeat: int) -> dict[str, float]:
    """CPU seconds of each step of ``spectrogram()``, run as it runs them (best of ``repeat``)."""
    from pipeline import spectrogram as sg

    overwrite = {"overwrite": True} if hasattr(sg, "smooth_and_zoom") else {}  # the reference system's API has none
    times = {}
    times["frame_power"], power = _cpu(sg.frame_power, x, rate, settings, repeat=repeat)
    times["log_scale"], log_spec = _cpu(
        lambda p: sg.log_scale(p, rate, settings, **overwrite), repeat=repeat, fresh=lambda: (power.copy(),)
    )
    times["active frames, statistics"], (active, stats) = _cpu(
        lambda: (a := sg.active_frames(log_spec, settings), sg.denoise_statistics(log_spec, settings, a)),
        repeat=repeat,
    )
    times["denoise"], clean = _cpu(
        lambda s: sg.denoise(s, stats, settings, active, **overwrite), repeat=repeat, fresh=lambda: (log_spec.copy(),)
    )
    if hasattr(sg, "smooth_and_zoom"):
        times["smooth_and_zoom"], _ = _cpu(sg.smooth_and_zoom, clean, settings, repeat=repeat)
    times["zoom_out(smooth()) (reference)"], _ = _cpu(
        lambda: sg.zoom_out(sg.smooth(clean, settings), settings.zoom), repeat=repeat
    )
    return times


def main(argv=None) -> None:
    from pipeline import spectrogram as sg
    from pipeline.config import SpectrogramSettings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="audio per rate (default 30)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per rate; the best is kept (default 5)")
    parser.add_argument("--stages", action="store_true", help="also time each step")
    args = parser.parse_args(argv)

    settings = SpectrogramSettings()
    print(f"spectrogram() on {args.seconds:g} s of noise + chirps, best of {args.repeat} (CPU time)")
    for rate in RATES:
        x = noise_and_chirps(rate, args.seconds)
        sg.spectrogram(x[: rate // 10], rate, settings)  # warm-up (imports, FFT plans)
        cpu, _ = _cpu(sg.spectrogram, x, rate, settings, repeat=args.repeat)
        print(f"{rate / 1000:5.0f} kHz: {cpu:6.3f} CPU-s, {args.seconds / cpu:6.1f} s of audio per CPU-second")
        if args.stages:
            for name, t in stages(x, rate, settings, args.repeat).items():
                print(f"    {name:30s} {t:6.3f} s")


if __name__ == "__main__":
    main()
