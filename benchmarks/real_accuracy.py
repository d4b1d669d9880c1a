"""Accuracy on the real annotated recordings of ../shared/data/real, split by recording.

For each annotated set (Tadarida's reference database sample, soundClass's demo, batdetect2's
examples), a deterministic split by recording (about 2/3 train, 1/3 test, stratified over the
species the recordings hold), then, on the test recordings:

* ``bundled``: the bundled model as it is (the current one was trained on every set here, so its
  rows are *not* held out; the previous one, zero-shot). Its classes are the seven European groups,
  so the species are mapped to them through ``pipeline/io/species_groups.csv``: top-1 is then a
  group accuracy, over the calls of species that have a group;
* ``scratch``: a model trained from scratch on the train recordings (classes: the set's species);
* ``from bundled``: the bundled model fine-tuned on them (``batml train --from``);
* ``from MODEL``: fine-tuned from any other bundle given with ``--parent`` (e.g. the reference
  system's converted networks).

It prints detection AP, species mAP, top-1 species accuracy on matched calls (all, and over the
species with at least ``--min-train-calls`` training calls), the number of test calls and the
training time. The data's licences: Tadarida and soundClass GPL-3, batdetect2's examples CC BY-NC
4.0 (see ../shared/data/README.md); nothing trained here is kept.

With ``--leave-one-out`` (issue 16's benchmark), for each real set instead: the bundled
model's recipe (``recipes/default_model.py``: the varied simulated archive plus the other real
sets) is trained without it and tested on the whole of it, beside the bundled model as it is
(trained on every set: not held out, a reference point only):
detection AP, top-1 group accuracy, recall at a call score of 0.01.

    python benchmarks/real_accuracy.py                      # every set, every model
    python benchmarks/real_accuracy.py --sets tadarida_rsdb --models from-bundled --epochs 30
    python benchmarks/real_accuracy.py --leave-one-out --minutes 30 --work /tmp/loo
    python benchmarks/real_accuracy.py --leave-one-out --work /tmp/loo --reuse   # test again, no training
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


@dataclass(frozen=True)
class RealSet:
    """An annotated real set: where its annotations and audio are, how to read them."""

    name: str
    annotations: Path
    audio: Path
    audio_time_expansion: float | None
    options: dict
    channels: str = "each"


SETS = {
    "tadarida_rsdb": RealSet("tadarida_rsdb", REAL / "tadarida_rsdb/RSDB_sample/20160822",
                             REAL / "tadarida_rsdb/RSDB_sample/20160822", 10.0, {"format": "tadarida"}),
    # soundClass's files are stereo with the calls on the second channel (its labels name files,
    # not channels): the mix of the channels is what the labels describe.
    "soundclass": RealSet("soundclass", REAL / "soundclass/demo_db.sqlite3", REAL / "soundclass", 10.0,
                          {"format": "soundclass", "time_expansion": 10.0}, channels="mix"),
    "annotated": RealSet("annotated", REAL / "annotated/anns", REAL / "annotated/audio", None,
                         {"format": "batdetect2"}),
}  # fmt: skip

MODELS = ("bundled", "scratch", "from-bundled")


def split_by_recording(annotation_set, test_fraction: float = 1 / 3, seed: int = 0):
    """The set with a ``split`` for every call and window: a deterministic split of its recordings,
    stratified over the species they hold (multi-label iterative stratification)."""
    from skmultilearn.model_selection import IterativeStratification

    calls = annotation_set.calls
    files = sorted(set(calls["file"]) | set(annotation_set.windows["file"] if annotation_set.windows is not None else []))
    species = sorted(calls["class"].dropna().unique())
    presence = np.zeros((len(files), len(species)), dtype=int)
    index = {f: i for i, f in enumerate(files)}
    for file, name in zip(calls["file"], calls["class"]):
        if isinstance(name, str):
            presence[index[file], species.index(name)] = 1
    order = np.random.default_rng(seed).permutation(len(files))
    stratifier = IterativeStratification(
        n_splits=2, order=1, sample_distribution_per_fold=[test_fraction, 1 - test_fraction]
    )
    state = np.random.get_state()
    np.random.seed(seed)  # scikit-multilearn breaks ties with numpy's global generator
    _, test_rows = next(stratifier.split(np.zeros((len(files), 1)), presence[order]))
    np.random.set_state(state)
    if len(test_rows) == 0:  # too few recordings for the stratifier: one for testing
        test_rows = [len(files) - 1]
    test = {files[order[i]] for i in test_rows}
    split = {f: "test" if f in test else "train" for f in files}
    calls = calls.assign(split=calls["file"].map(split))
    windows = annotation_set.windows
    if windows is not None:
        windows = windows.assign(split=windows["file"].map(split))
    return replace(annotation_set, calls=calls, windows=windows)


def species_to_groups(annotation_set):
    """The set with each species replaced by its group of the seven (None where it has none)."""
    from pipeline.annotations.names import species_groups

    groups = species_groups()
    calls = annotation_set.calls.assign(class_=annotation_set.calls["class"].map(groups))
    calls = calls.drop(columns="class").rename(columns={"class_": "class"})[annotation_set.calls.columns]
    return replace(annotation_set, calls=calls, classes=None)


def top1_over(metrics: dict, species: list[str]) -> float:
    """Top-1 accuracy over the matched events of ``species`` (weighted by their events)."""
    per_class = metrics["classification"]["per_class"]
    right = total = 0.0
    for name in species:
        scores = per_class.get(name)
        if scores is None or scores.get("top1_accuracy") is None:
            continue
        n = scores["n_events"] * (scores["recall"] if scores.get("recall") is not None else 1.0)
        right += scores["top1_accuracy"] * n
        total += n
    return right / total if total else math.nan


def run_set(real: RealSet, models: list[str], args, work: Path, client) -> list[dict]:
    from pipeline.annotations import read_annotations
    from pipeline.annotations.dataset import dataset_from
    from pipeline.config import Settings
    from pipeline.training.job import TrainSettings, train

    annotation_set = split_by_recording(read_annotations(real.annotations, **real.options), seed=args.seed)
    dataset = dataset_from(annotation_set)
    run_settings = Settings()
    run_settings = type(run_settings)(
        spectrogram=run_settings.spectrogram,
        ingest=run_settings.ingest.replace(time_expansion=real.audio_time_expansion, channels=real.channels),
    )
    train_calls = pd.Series(
        [dataset.classes[c - 1] for rec in dataset.train for c in rec.classes if c >= 1], dtype=object
    ).value_counts()
    common = [name for name, n in train_calls.items() if n >= args.min_train_calls]
    n_test = sum(len(rec.positions) for rec in dataset.test)
    print(f"{real.name}: {len(dataset.train)} train / {len(dataset.test)} test recordings, {n_test} test calls; "
          f"classes {', '.join(f'{c} ({train_calls.get(c, 0)})' for c in dataset.classes)}", file=sys.stderr)  # fmt: skip
    for note in dataset.notes:
        print(f"  note: {note}", file=sys.stderr)
    rows = []
    for model in models:
        t0 = time.perf_counter()
        parent = None if model in ("scratch", "bundled") else ("default" if model == "from-bundled" else model.removeprefix("from:"))
        reads = "default" if model == "bundled" else parent  # the bundle whose spectrogram the model reads
        cube = work / f"{real.name}.{_fingerprint(reads, run_settings)}.cube.zarr"  # one per spectrogram setting
        if model == "bundled":
            grouped = dataset_from(species_to_groups(annotation_set))
            metrics = _evaluate_bundled(grouped, real.audio, run_settings.ingest, cube, client)
            rows.append(_row(real.name, "bundled (groups)", metrics, list(metrics["classification"]["per_class"]),
                             n_test, time.perf_counter() - t0))  # fmt: skip
            continue
        settings = TrainSettings(model_type=args.model_type, epochs=args.epochs, seed=args.seed, parent=parent)
        report = train(dataset, real.audio, work / f"{real.name}-{model.replace(':', '_').replace('/', '_')}",
                       settings=settings, cube=cube, run_settings=run_settings, client=client, progress=False)  # fmt: skip
        rows.append(_row(real.name, model, report.metrics, common, n_test, time.perf_counter() - t0))
    return rows


def _fingerprint(bundle: str | None, run_settings) -> str:
    """The spectrogram fingerprint of a bundle (``"default"``: the bundled model's; a converted
    reference network has its own), or the run's for a model trained from scratch."""
    from pipeline.model.bundle import DEFAULT_BUNDLE, load_bundle

    if bundle is None:
        return run_settings.spectrogram.fingerprint()
    return load_bundle(DEFAULT_BUNDLE if bundle == "default" else bundle).fingerprint


def _evaluate_bundled(dataset, audio: Path, ingest_settings, cube: Path, client) -> dict:
    """The bundled model's scores on the test recordings (not written next to it)."""
    from pipeline.evaluation.recordings import evaluate_model
    from pipeline.evaluation.run import model_on_annotations
    from pipeline.model.bundle import DEFAULT_BUNDLE
    from pipeline.model.predictor import Predictor

    bundle, cube_ds, recordings, _, _ = model_on_annotations(
        DEFAULT_BUNDLE, dataset, audio, cube=cube, ingest_settings=ingest_settings, client=client, progress=False
    )
    return evaluate_model(
        Predictor.from_bundle(bundle), cube_ds, recordings, bundle.classes, bundle.thresholds, bundle.calibration
    )


def _recipe():
    """``recipes/default_model.py`` as a module (it is a script, not part of the package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "recipes" / "default_model.py"
    spec = importlib.util.spec_from_file_location("default_model_recipe", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def scores_on(bundle, dataset, audio: Path, cube: Path, client) -> tuple[dict, float]:
    """A bundle's evaluation on a dataset's test recordings, and its recall at a call score of 0.01."""
    from pipeline.evaluation.matching import match_detections
    from pipeline.evaluation.recordings import calls_table, detect_recordings
    from pipeline.evaluation.report import evaluate
    from pipeline.evaluation.run import model_on_annotations
    from pipeline.model.predictor import Predictor

    bundle, cube_ds, recordings, _, _ = model_on_annotations(bundle, dataset, audio, cube=cube, client=client,
                                                            progress=False)  # fmt: skip
    calls = calls_table(recordings, cube_ds)
    detections = detect_recordings(Predictor.from_bundle(bundle), cube_ds, recordings, bundle.classes)
    metrics = evaluate(calls, detections, bundle.classes, bundle.thresholds)
    found = detections[match_detections(calls, detections) >= 0]
    events = calls.drop_duplicates(["recording", "position"])
    recall = float((found["score"] >= 0.01).sum() / len(events)) if len(events) else math.nan
    return metrics, recall


def leave_one_out(args, work: Path, client) -> list[dict]:
    """Issue 16's benchmark: the recipe trained without each real set, tested on all of it."""
    from pipeline.annotations.dataset import dataset_from
    from pipeline.model.bundle import DEFAULT_BUNDLE
    from pipeline.training.job import TrainSettings, train

    recipe = _recipe()
    rows = []
    for name in args.sets:
        folder = work / f"without-{name}"
        others = [s for s in recipe.REAL_SETS if s != name]
        annotation_set, licence = recipe.assemble(folder, minutes=args.minutes, sets=others, hold_out=name,
                                                  seed=args.seed)  # fmt: skip
        dataset = dataset_from(annotation_set)
        test = dataset.with_splits([], dataset.test)
        n_test = sum(len(rec.positions) for rec in dataset.test)
        t0 = time.perf_counter()
        metrics, recall = scores_on(DEFAULT_BUNDLE, test, folder / "audio", folder / "bundled.cube.zarr", client)
        rows.append({**_row(name, "bundled model", metrics, [], n_test, time.perf_counter() - t0), "recall@0.01": recall})
        t0 = time.perf_counter()
        # float graphs, as the recipe keeps the bundled model
        settings = TrainSettings(model_type=args.model_type, epochs=args.epochs, seed=args.seed, hnm_rounds=args.hnm,
                                 networks_csv=None if args.params is None else str(args.params), parent=args.parent,
                                 xgboost_csv=str(Path(recipe.HERE) / "default_xgboost.csv"), licence=licence,
                                 runtime_precision="float")  # fmt: skip
        model = folder / "model"
        reused = args.reuse and (model / "manifest.json").is_file()
        if not reused:
            train(dataset, folder / "audio", model, settings=settings, cube=folder / "cube.zarr", client=client,
                  progress=False)  # fmt: skip
        metrics, recall = scores_on(model, test, folder / "audio", folder / "cube.zarr", client)
        label = f"recipe without {name}" + (" (reused: testing time only)" if reused else "")
        rows.append({**_row(name, label, metrics, [], n_test, time.perf_counter() - t0),
                     "recall@0.01": recall})  # fmt: skip
        print(pd.DataFrame(rows[-2:]).to_string(index=False), file=sys.stderr)
    return rows


def _row(name: str, model: str, metrics: dict, common: list[str], n_test: int, seconds: float) -> dict:
    classification = metrics.get("classification", {})
    return {
        "set": name,
        "model": model,
        "detection AP": metrics.get("detection", {}).get("ap"),
        "mAP": classification.get("map"),
        "top-1": classification.get("top1_accuracy"),
        "top-1 (>= N train calls)": top1_over(metrics, common) if metrics else math.nan,
        "test calls": n_test,
        "seconds": seconds,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--models", nargs="+", default=list(MODELS),
                        help="bundled, scratch, from-bundled, or from:MODEL_DIR (fine-tune that bundle)")
    parser.add_argument("--model-type", default="hybrid_cnn_xgboost")
    parser.add_argument("--epochs", type=int, default=None, help="cap on epochs (default: the CSV's, early stopping)")
    parser.add_argument("--min-train-calls", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work", type=Path, help="folder for cubes and models (default: a temporary one)")
    parser.add_argument("--leave-one-out", action="store_true", help="issue 16's benchmark (see above)")
    parser.add_argument("--minutes", type=float, default=30.0, help="--leave-one-out: simulated audio (default 30)")
    parser.add_argument("--hnm", type=int, default=1, help="--leave-one-out: hard negative mining rounds (default 1)")
    parser.add_argument("--from", dest="parent", type=Path,
                        help="--leave-one-out: the recipe fine-tunes this bundle (e.g. a converted reference network)")
    parser.add_argument("--reuse", action="store_true",
                        help="--leave-one-out: test the model already in --work/without-SET/model instead of training "
                        "it (whatever settings it was trained with)")  # fmt: skip
    parser.add_argument("--params", type=Path, help="--leave-one-out: network hyperparameters (e.g. recipes/default_networks.csv)")
    args = parser.parse_args(argv)
    from distributed import Client, LocalCluster

    import pipeline.distributed  # noqa: F401  (batml's Dask defaults)

    rows = []
    with tempfile.TemporaryDirectory(prefix="batml-real-") as tmp, \
            LocalCluster(n_workers=args.workers, threads_per_worker=1, dashboard_address=":0") as cluster, \
            Client(cluster) as client:  # fmt: skip
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.leave_one_out:
            rows = leave_one_out(args, work, client)
        else:
            for name in args.sets:
                rows += run_set(SETS[name], args.models, args, work, client)
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.3f}".format):
        print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
