"""Recipe of batml's bundled default model (run by ``recipes/default_model.sh``).

Training data, assembled in a work folder outside the repository (nothing here is committed
but the model):

* a simulated archive with every realism factor of the simulator on (``--preset varied``): the
  seven European groups and the generic bat family (any call shape, 10-150 kHz), buzzes and
  social calls, propagation, microphones, recorders and noises, over backgrounds taken from the
  real Tadarida recordings away from any sound Tadarida's detector found that could be a bat
  (so their insects, wind and electrical noise are there, unlabelled as noise);
* the real annotated sets of ``../shared/data/real`` that the licences allow, with their labels:
  Tadarida's reference-database sample (France, GPL-3), soundClass's demo (Portugal, GPL-3) and
  batdetect2's examples (UK, CC BY-NC 4.0). Species are mapped to the seven groups; a species
  without a group (Miniopterus...) and the generic bats are learned for detection only; insects,
  birds and noise are labelled negatives; buzzes and social calls are negatives (not calls to
  detect). The time-expanded sets are copied with a GUANO ``TE`` so that one cube holds them all.

The model inherits the terms of the data it learned from: CC BY-NC 4.0 (non-commercial) from
batdetect2's examples and GPL-3 from the Tadarida and soundClass samples (and, with
``--from-reference`` or ``--from`` a reference network, research use only); the manifest says so.

    python recipes/default_model.py --work /tmp/batml-default --out pipeline/model/default \
        --from-reference --minutes 10 --epochs 30 --hnm 0 --workers 1         # the bundled model
    python recipes/default_model.py --minutes 1 --epochs 1 --sets annotated     # a quick check

The bundled model starts from the reference system's ``cnn8`` (``--from-reference``: trained on
thousands of real Belgian and British calls, fed batml's default features), which detected
held-out real sets far better than a start from scratch (README, "The bundled default model").
Its graphs stay float (``--runtime-precision``): int8 cost it 0.019 class mAP on validation.

``--hold-out SET`` keeps one real set out of training and makes it the test split
(``benchmarks/real_accuracy.py --leave-one-out`` runs it for every set).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
#: The reference system's published networks (luciledierckx/batML; research use only).
REFERENCE_MODELS = Path(__file__).resolve().parents[2] / "shared" / "data" / "reference_models"
REFERENCE_CNN8 = "25_05_21_12_12_25_classif_cnn8_hnm1"


@dataclass(frozen=True)
class RealSet:
    """A real annotated set: its annotations, its audio, how to read them, its licence."""

    name: str
    annotations: Path
    audio: Path
    time_expansion: float
    options: dict
    licence: str


REAL_SETS = {
    "tadarida_rsdb": RealSet(
        "tadarida_rsdb", REAL / "tadarida_rsdb/RSDB_sample/20160822", REAL / "tadarida_rsdb/RSDB_sample/20160822",
        10.0, {"format": "tadarida"}, "GPL-3 (Tadarida-C reference database sample, YvesBas/Tadarida-C)",
    ),
    "soundclass": RealSet(
        "soundclass", REAL / "soundclass/demo_db.sqlite3", REAL / "soundclass", 10.0,
        {"format": "soundclass", "time_expansion": 10.0}, "GPL-3 (soundClass demo recordings, bmsasilva/soundClass)",
    ),
    "annotated": RealSet(
        "annotated", REAL / "annotated/anns", REAL / "annotated/audio", 1.0, {"format": "batdetect2"},
        "CC BY-NC 4.0 (batdetect2 example recordings, macaodha/batdetect2_GUI)",
    ),
}  # fmt: skip

#: Sounds of the bats that are not calls to detect, and unplaced sounds: kept out of backgrounds.
NOT_BACKGROUND = ("echolocation", "buzz", "social", "other")


def real_set(real: RealSet):
    """The set's annotations, species mapped to the seven groups (None: detection only)."""
    from pipeline.annotations import read_annotations
    from pipeline.annotations.names import species_groups

    annotation_set = read_annotations(real.annotations, **real.options)
    groups = species_groups()
    calls = annotation_set.calls.copy()
    bat = calls["event"].isin(["echolocation", "buzz", "social"])
    calls["class"] = calls["class"].where(~bat, calls["class"].map(groups))
    return replace(annotation_set, calls=calls, classes=None)


def copy_audio(real: RealSet, folder: Path) -> None:
    """The set's WAV files copied into ``folder``, with a GUANO ``TE`` when time-expanded; a
    multichannel file becomes the mean of its channels (its labels name the file, not a channel:
    soundClass's calls are on its second channel)."""
    import guano
    import soundfile

    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(p for p in real.audio.rglob("*") if p.suffix.lower() == ".wav"):
        target = folder / path.relative_to(real.audio)
        target.parent.mkdir(parents=True, exist_ok=True)
        info = soundfile.info(str(path))
        if info.channels > 1:
            samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
            soundfile.write(str(target), samples.mean(axis=1), rate, subtype=info.subtype)
        else:
            shutil.copy(path, target)
        if real.time_expansion != 1:
            tagged = guano.GuanoFile(str(target))
            tagged["TE"] = real.time_expansion
            tagged.write()


def background_exclusions(work: Path) -> Path:
    """The spans of the Tadarida recordings that may hold a bat (every labelled or unplaced sound
    but insects, birds and noise), as the simulator's ``--background-exclude`` CSV."""
    spans = real_set(REAL_SETS["tadarida_rsdb"]).calls
    spans = spans[spans["event"].isin(NOT_BACKGROUND)]
    path = work / "background_exclude.csv"
    spans[["file", "position", "end"]].to_csv(path, index=False)
    return path


def simulate(work: Path, minutes: float, seed: int) -> pd.DataFrame:
    """The varied simulated archive under ``work/audio/sim``; its calls (groups, or None for the generic bats)."""
    from pipeline.simulation import simulate_archive
    from pipeline.simulation.settings import SimulationSettings

    settings = SimulationSettings.varied(
        background_folder=REAL_SETS["tadarida_rsdb"].audio, background_exclude=background_exclusions(work),
        background_time_expansion=10, background_licence=REAL_SETS["tadarida_rsdb"].licence,
    )  # fmt: skip
    archive = simulate_archive(work / "audio" / "sim", minutes=minutes, seed=seed, settings=settings)
    calls = pd.read_csv(archive.annotations_csv)
    calls["file"] = "sim/" + calls["file"].astype(str)
    calls["class"] = calls["class"].astype(object).where(calls["class"].astype(str) != "bat", None)
    return calls


def assemble(work: Path, *, minutes: float, sets: list[str], hold_out: str | None = None, seed: int = 1):
    """The training set in ``work``: its annotations (an AnnotationSet) and its licence line.

    Every simulated and real recording is a training recording, but those of ``hold_out``,
    which are the test split; the simulator's own test split stays out (it is the simulated
    benchmark's).
    """
    from pipeline.annotations.table import AnnotationSet
    from pipeline.config import REFERENCE_GROUPS

    work.mkdir(parents=True, exist_ok=True)
    sim = simulate(work, minutes, seed)
    sim = sim[sim["split"] == "train"]
    tables, licences = [sim], []
    for name in [*sets, *([hold_out] if hold_out and hold_out not in sets else [])]:
        real = REAL_SETS[name]
        copy_audio(real, work / "audio" / name)
        calls = real_set(real).calls
        calls["file"] = f"{name}/" + calls["file"].astype(str).str.replace(r"\.wav$", "", regex=True, case=False)
        calls["split"] = "test" if name == hold_out else "train"
        tables.append(calls)
        if name != hold_out:
            licences.append(real.licence)
    calls = pd.concat(tables, ignore_index=True)
    columns = ["file", "position", "end", "low_freq", "high_freq", "class", "event", "split", "duration"]
    calls = calls.reindex(columns=columns)
    calls["class"] = calls["class"].astype(object).where(calls["class"].notna(), None)
    annotation_set = AnnotationSet(calls=calls, windows=None, classes=list(REFERENCE_GROUPS), source="recipe")
    return annotation_set, "; ".join(licences) or None


def reference_parent(work: Path, weights: Path) -> Path:
    """The reference's ``cnn8`` as a bundle that reads batml's *default* features (the reference's
    own log scaling would make the default model refuse default cubes): ``WORK/reference-cnn8``."""
    from pipeline.config import SpectrogramSettings
    from pipeline.model.reference import network_bundle

    return network_bundle(
        weights / f"{REFERENCE_CNN8}_weights.npy", work / "reference-cnn8",
        thresholds_path=weights / f"{REFERENCE_CNN8}_thresholds.npy", spectrogram=SpectrogramSettings(),
    )  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/batml-default-model"))
    parser.add_argument("--out", type=Path, help="the model bundle (default: WORK/model)")
    parser.add_argument("--minutes", type=float, default=30.0, help="simulated audio (default 30)")
    parser.add_argument("--sets", nargs="*", default=list(REAL_SETS), choices=list(REAL_SETS))
    parser.add_argument("--hold-out", choices=list(REAL_SETS), help="a real set kept out of training, as the test split")
    parser.add_argument("--model-type", default="hybrid_cnn_xgboost")
    parser.add_argument("--params", type=Path, help="network hyperparameters CSV (e.g. a cnn_8_dense row as cnn_8)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--hnm", type=int, default=1)
    parser.add_argument("--from", dest="parent", help="a bundle to fine-tune (default: train from scratch)")
    parser.add_argument("--from-reference", nargs="?", const=REFERENCE_MODELS, type=Path, metavar="WEIGHTS_DIR",
                        help="fine-tune the reference system's cnn8 (its .npy files in WEIGHTS_DIR; default: "
                        "shared/data/reference_models beside the repository), read through the default features; "
                        "the bundled model adds --minutes 10 --epochs 30 --hnm 0 --workers 1")  # fmt: skip
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--runtime-precision", choices=("auto", "float"), default="float",
                        help="the bundle's ONNX graphs (default float: int8 cost the bundled model 0.019 class mAP "
                        "on its validation recordings)")  # fmt: skip
    args = parser.parse_args(argv)

    import pipeline
    from pipeline.annotations.dataset import dataset_from

    if args.from_reference is not None:
        if args.parent:
            parser.error("--from and --from-reference: give one")
        if not (args.from_reference / f"{REFERENCE_CNN8}_weights.npy").is_file():
            parser.error(f"--from-reference {args.from_reference}: no {REFERENCE_CNN8}_weights.npy there")
        args.parent = str(reference_parent(args.work, args.from_reference))
    annotation_set, licence = assemble(args.work, minutes=args.minutes, sets=args.sets, hold_out=args.hold_out,
                                       seed=args.seed)  # fmt: skip
    dataset = dataset_from(annotation_set)
    for note in dataset.notes:
        print(f"note: {note}", file=sys.stderr)
    settings = pipeline.TrainSettings(
        model_type=args.model_type, epochs=args.epochs, hnm_rounds=args.hnm, seed=args.seed, parent=args.parent,
        networks_csv=None if args.params is None else str(args.params),
        xgboost_csv=str(HERE / "default_xgboost.csv"), licence=licence, runtime_precision=args.runtime_precision,
    )  # fmt: skip
    out = args.out or args.work / "model"
    report = pipeline.train(dataset, args.work / "audio", out, settings=settings, cube=args.work / "cube.zarr",
                            cluster="local", n_workers=args.workers)  # fmt: skip
    print(report.summary())
    sizes = {p.relative_to(out): p.stat().st_size for p in out.rglob("*") if p.is_file()}
    print(f"bundle: {sum(sizes.values()) / 1e6:.1f} MB, largest file {max(sizes.values()) / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
