"""``batml evaluate`` (and ``batml plot pr|confusion MODEL_DIR``): a model bundle on annotated recordings.

:func:`model_on_annotations` builds (or reuses) the cube of the annotated recordings with the
model's spectrogram settings and keeps the recordings that can be used;
:func:`evaluate_saved_model` scores the model on them and writes ``evaluation.json`` and
``evaluation.txt`` next to it.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.annotations.dataset import Annotations, read_dataset
from pipeline.annotations.matching import usable_recordings
from pipeline.config import Settings
from pipeline.evaluation.recordings import evaluate_model
from pipeline.files import write_json, write_text
from pipeline.model.predictor import Predictor
from pipeline.training import TrainingError


def model_on_annotations(
    model: str | os.PathLike,
    dataset: str | os.PathLike,
    audio_dir: str | os.PathLike,
    *,
    split: str = "test",
    cube: str | os.PathLike | None = None,
    trust_npz: bool = False,
    dataset_options: dict | None = None,
    ingest_settings=None,
    cluster: str | None = None,
    client=None,
    n_workers: int | None = None,
    progress: bool = True,
):
    """A model bundle, the cube of the annotated recordings made with its settings, the
    recordings of ``split`` (``"test"``: the test split, all recordings if none; ``"train"``;
    ``"all"``) that can be used, and one line per other one saying why (as
    :func:`usable_recordings`: not found, rejected, or a link outside ``audio_dir``), and the
    dataset's notes (classes the model does not have...): what ``batml evaluate`` and
    ``batml plot pr|confusion`` run the model on. The calls' classes are numbered as the
    model's (:meth:`~pipeline.annotations.dataset.Annotations.recoded`).
    """
    from pipeline.distributed import connect
    from pipeline.ingestion import ingest
    from pipeline.io.cube import open_cube
    from pipeline.model.bundle import load_bundle

    bundle = load_bundle(model)
    if not isinstance(dataset, Annotations):
        dataset = read_dataset(dataset, trust_npz=trust_npz, **(dataset_options or {}))
    annotations = dataset.recoded(bundle.classes)
    recordings = {
        "test": annotations.test or annotations.train,
        "train": annotations.train,
        "all": annotations.train + annotations.test,
    }[split]
    cube = Path(cube) if cube is not None else Path(model).with_name(Path(model).name + ".cube.zarr")
    with connect(cluster, client=client, n_workers=n_workers, quiet=not progress) as client:
        settings = Settings(spectrogram=bundle.spectrogram, ingest=ingest_settings or Settings().ingest)
        ingest(audio_dir, cube, settings=settings, client=client, progress=progress).require_complete()
    cube_ds = open_cube(cube)
    if cube_ds.attrs["fingerprint"] != bundle.fingerprint:
        raise TrainingError(
            f"{cube}: spectrogram fingerprint {cube_ds.attrs['fingerprint']} differs from the model's {bundle.fingerprint}"
        )
    usable, problems = usable_recordings(recordings, cube_ds, audio_dir)
    return bundle, cube_ds, usable, problems, annotations.notes


def evaluate_saved_model(
    model: str | os.PathLike,
    dataset: str | os.PathLike,
    audio_dir: str | os.PathLike,
    *,
    cube: str | os.PathLike | None = None,
    trust_npz: bool = False,
    dataset_options: dict | None = None,
    ingest_settings=None,
    cluster: str | None = None,
    client=None,
    n_workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Evaluate a model bundle on the test split (all recordings if none): ``batml evaluate``.

    The result is also written next to the model (``evaluation.json``, ``evaluation.txt``);
    ``ingest_settings`` (channels, time expansion) are used to build the cube of the recordings.
    Its ``"skipped"`` lists the annotated recordings left out, each with the reason, and its
    ``"notes"`` what else the user should know (classes of the annotations the model lacks).
    """
    bundle, cube_ds, recordings, problems, notes = model_on_annotations(
        model, dataset, audio_dir, cube=cube, trust_npz=trust_npz, dataset_options=dataset_options,
        ingest_settings=ingest_settings, cluster=cluster, client=client, n_workers=n_workers, progress=progress,
    )  # fmt: skip
    predictor = Predictor.from_bundle(bundle)
    metrics = evaluate_model(predictor, cube_ds, recordings, bundle.classes, bundle.thresholds, bundle.calibration)
    metrics["skipped"] = problems
    metrics["notes"] = notes
    if bundle.licence:
        metrics["licence"] = bundle.licence
    write_evaluation(Path(model), metrics)
    return metrics


def write_evaluation(out: Path, metrics: dict) -> None:
    """``evaluation.json`` and ``evaluation.txt`` in the folder ``out`` (each written atomically)."""
    from pipeline.evaluation.report import format_report

    write_json(Path(out) / "evaluation.json", metrics)
    write_text(Path(out) / "evaluation.txt", format_report(metrics))
