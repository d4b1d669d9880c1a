"""Simulator speed: CPU seconds per minute of simulated audio, per preset and per factor.

Prints, for ``--minutes`` of audio (one process, one core):

- the default settings (the seven groups, as before domain randomisation: the same bytes as
  the simulator of commit d0e1344);
- ``--preset varied`` (every factor on);
- the default settings with one factor family switched on at a time, to show what each costs.

    python benchmarks/simulate_speed.py --minutes 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from pipeline.simulation import SimulationSettings, simulate_archive

FACTORS = {
    "generic bats": dict(generic_fraction=0.5),
    "buzz + social": dict(buzz_probability=0.3, social_probability=0.3),
    "propagation + echoes + reverberation": dict(propagation=True, echo_count=(1, 3), reverberation_probability=0.5),
    "microphones + filters (FFT noise)": dict(microphones=("flat", "rolloff", "resonant"), antialias_edge=(0.8, 0.95),
                                              noise_colour_db=(0.0, 10.0)),
    "insects + rain + wind + tones": dict(insect_train_probability=0.5, rain_probability=0.5, wind_probability=0.5,
                                          electrical_probability=0.5),
}


def cpu_per_minute(settings: SimulationSettings, minutes: float, seed: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.process_time()
        archive = simulate_archive(Path(tmp), minutes=minutes, seed=seed, settings=settings)
        return (time.process_time() - start) / minutes, archive.n_calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    cases = {"default (before randomisation)": SimulationSettings(), "varied preset": SimulationSettings.varied()}
    cases.update({f"default + {name}": SimulationSettings(**changes) for name, changes in FACTORS.items()})
    print(f"{'settings':48s} {'CPU s / min of audio':>20s} {'calls':>7s}")
    for name, settings in cases.items():
        seconds, calls = cpu_per_minute(settings, args.minutes, args.seed)
        print(f"{name:48s} {seconds:20.2f} {calls:7d}")


if __name__ == "__main__":
    main()
