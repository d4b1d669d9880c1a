"""Plots of a detection run (pipeline.plot), 'batml plot', and one-call access from Python.

One small simulated archive (5 recordings, 2 sites, 2 hours of the night) is detected once
with the bundled model; every plot is drawn from those real outputs and checked by what it
holds (boxes, curves, bars, legend entries, counts) and by the image file it gives (format,
pixel size, weight), never by its pixels.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from matplotlib.patches import Rectangle
from PIL import Image

import pipeline
from pipeline import plot
from pipeline.cli import main
from pipeline.evaluation.matching import match_detections
from pipeline.evaluation.metrics import class_average_precision, detection_average_precision

RECORDING = "site01/20260825_213959.wav"


@pytest.fixture(scope="module")
def run(tmp_path_factory, client):
    """``(archive, out)``: a 0.4-minute simulated archive and its detection run (read only), at a
    low detection threshold: the bundled model scores the simulator's ~100 kHz Rhisp calls below
    0.1 (README, "The bundled default model"), and the plots need calls in every recording."""
    from pipeline.detection.archive import detect_archive
    from pipeline.detection.settings import DetectSettings
    from pipeline.simulation import simulate_archive

    archive = simulate_archive(tmp_path_factory.mktemp("plot") / "audio", minutes=0.4, seed=7)
    out = tmp_path_factory.mktemp("plot") / "out"
    settings = DetectSettings(thresholds={"detection": 0.05})
    report = detect_archive(archive.root, out, settings=settings, client=client, progress=False)
    assert report.complete and report.n_detections > 20
    return archive, out


@pytest.fixture(scope="module")
def detections(run):
    return pipeline.read_detections(run[1])


@pytest.fixture(scope="module")
def cube(run):
    return pipeline.open_cube(run[1] / "cube.zarr")


@pytest.fixture(scope="module")
def calls(run):
    return pd.read_csv(run[0].annotations_csv)[["file", "split", "position", "class"]]  # classes 1..7


def _png(figure, path, size):
    plot.save_figure(figure, path)
    assert path.stat().st_size > 10_000
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == size
    assert not list(path.parent.glob(".*tmp*"))


def _legend(ax) -> list[str]:
    return [text.get_text() for text in ax.get_legend().get_texts()]


# --------------------------------------------------------------------------------------------
# Spectrogram
# --------------------------------------------------------------------------------------------


def _busiest_second(detections, recording):
    """A one-second range of the recording with the most confident calls."""
    times = detections.batml.recording(recording).query("probability >= 0.5")["time"].to_numpy()
    begin = float(times[np.argmax([np.sum((times >= t) & (times < t + 1.0)) for t in times])]) - 0.05
    return begin, begin + 1.0


def test_spectrogram_boxes_the_calls_of_its_range(cube, detections, tmp_path):
    begin, end = _busiest_second(detections, RECORDING)
    figure = plot.spectrogram(cube, RECORDING, begin, end, detections=detections, min_probability=0.5)
    (ax,) = figure.axes
    mine = detections.batml.recording(RECORDING)
    expected = mine[(mine["time"] >= begin) & (mine["time"] < end) & (mine["probability"] >= 0.5)]
    boxes = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert len(boxes) == len(expected) >= 3
    assert sorted(b.get_x() for b in boxes) == pytest.approx(sorted(expected["time"]))
    labels = [t.get_text() for t in ax.texts]
    assert all(label.split()[0] == name for label, name in zip(labels, expected["class"]))
    # the image is the range's columns only: 130 rows, one column per 1.16 ms
    image = ax.images[0].get_array()
    offsets = cube.batml.time_range(RECORDING, begin, end)["offset"].values
    assert image.shape == (130, len(offsets))
    _png(figure, tmp_path / "spectrogram.png", (1200, 500))


def test_spectrogram_with_a_model_draws_its_probabilities(cube, detections, run):
    begin, end = _busiest_second(detections, RECORDING)
    end = begin + 0.3
    figure = plot.spectrogram(cube, RECORDING, begin, end, detections=run[1], model=pipeline.open_model())
    spectrum, probabilities = figure.axes[:2]
    assert len(probabilities.lines) == 1 + 7 + 1  # the call, each class, the detection threshold
    assert _legend(probabilities) == ["call", *pipeline.open_model().classes]
    call = probabilities.lines[0].get_ydata()
    times = probabilities.lines[0].get_xdata()
    for box in (p for p in spectrum.patches if isinstance(p, Rectangle)):
        near = np.abs(times - box.get_x()) < 0.005  # the run's call: the model's call score is high there
        assert call[near].max() > 0.05  # the run's detection threshold (the line is the calibrated score)


def test_spectrogram_refuses_an_unknown_recording_and_an_empty_range(run):
    cube_path = run[1] / "cube.zarr"
    with pytest.raises(plot.PlotError, match="cube.zarr: no recording 'site09/x.wav'"):
        plot.spectrogram(cube_path, "site09/x.wav")
    with pytest.raises(plot.PlotError, match="no column from 100 s"):
        plot.spectrogram(cube_path, RECORDING, 100.0, 101.0)


# --------------------------------------------------------------------------------------------
# Precision-recall and confusion against the annotations
# --------------------------------------------------------------------------------------------


def test_precision_recall_draws_the_detection_and_each_annotated_class(calls, detections, tmp_path):
    classes = detections.batml.classes
    figure = plot.precision_recall(calls, detections, classes)
    (ax,) = figure.axes
    annotated = sorted({classes[k - 1] for k in calls["class"]})
    assert len(ax.lines) == 1 + len(annotated)
    legend = _legend(ax)
    # the APs are those of pipeline.evaluate, on the same matching
    aligned_calls, aligned = plot.align_recordings(calls, detections)
    annotated_files = aligned["recording"].isin(set(aligned_calls["recording"]))
    assert aligned.loc[~annotated_files, "recording"].str.endswith(".wav").all()  # files without bats: kept as paths
    assert annotated_files.mean() > 0.5
    matches = match_detections(aligned_calls, aligned)
    detection = detection_average_precision(aligned_calls, aligned, matches=matches)
    per_class = class_average_precision(aligned_calls, aligned, classes, matches=matches).per_class
    assert legend[0] == f"detection (AP {detection.average_precision:.3f})"
    assert legend[1:] == [
        f"{name} (AP {per_class[name].average_precision:.3f}, {per_class[name].n_positives} calls)"
        for name in classes
        if name in annotated
    ]
    _png(figure, tmp_path / "pr.png", (700, 600))


def test_confusion_counts_every_annotated_call_once(calls, detections, tmp_path):
    counts = plot.confusion_counts(calls, detections)
    assert list(counts.columns) == [*detections.batml.classes, plot.MISSED]
    assert counts.to_numpy().sum() == len(calls)
    per_class = calls["class"].map(lambda k: detections.batml.classes[k - 1]).value_counts()
    assert counts.sum(axis=1)[per_class.index].tolist() == per_class.tolist()
    assert np.trace(counts.to_numpy()[:, :-1]) > 0.6 * len(calls)  # the model is right on most
    figure = plot.confusion(calls, detections)
    ax = figure.axes[0]
    assert len(ax.texts) == counts.size
    assert sorted(int(t.get_text()) for t in ax.texts) == sorted(counts.to_numpy().ravel())
    _png(figure, tmp_path / "confusion.png", (750, 600))


def test_align_recordings_names_files_as_the_annotations_do():
    calls = pd.DataFrame({"file": ["site01/a", "b"], "position": [1.0, 2.0], "class": [1, 2]})
    found = pd.DataFrame({"file": ["/d/site01/a.wav", "/d/site01/a.wav", "/d/x/b.WAV", "/d/c.wav"], "channel": [0, 1, 0, 0]})
    _, aligned = plot.align_recordings(calls, found)
    assert aligned["recording"].tolist() == ["site01/a", "b", "/d/c.wav"]  # first channel; unannotated kept


# --------------------------------------------------------------------------------------------
# Activity
# --------------------------------------------------------------------------------------------


def test_activity_per_hour_of_night(run, cube, detections, tmp_path):
    counts = plot.activity_counts(detections, by="hour", timestamps=cube)
    # recordings from 21:30 to 22:04: the hours from the first confident call's to the last's
    assert counts.index.tolist() in (["21:00"], ["21:00", "22:00"])
    confident = detections[detections["probability"] >= 0.5]
    assert counts.to_numpy().sum() == plot.species_reached(confident, 0.5).to_numpy().sum()
    assert counts.attrs["left_out"] == 0
    from_names = plot.activity_counts(run[1], by="hour")  # the file names say the same
    pd.testing.assert_frame_equal(counts, from_names)
    figure = plot.activity(detections, timestamps=cube)
    (ax,) = figure.axes
    species = [name for name in counts.columns if counts[name].sum()]
    assert _legend(ax) == species
    assert len(ax.patches) == len(species) * len(counts)
    _png(figure, tmp_path / "activity.png", (1000, 500))


def test_activity_per_site(detections):
    counts = plot.activity_counts(detections, by="site", min_probability=0.9)
    assert counts.index.tolist() == ["site01", "site02"]
    assert counts.to_numpy().sum() == plot.species_reached(detections, 0.9).to_numpy().sum()
    assert len(plot.activity(detections, by="site").axes[0].get_xticklabels()) == 2


def test_activity_leaves_out_recordings_without_a_time_and_says_so(detections):
    renamed = detections.assign(file=detections["file"].str.replace("20260825_213959", "no_time", regex=False))
    counts = plot.activity_counts(renamed, by="hour")
    n_left = int((renamed["file"].str.contains("no_time") & (renamed["probability"] >= 0.5)).sum())
    assert counts.attrs["left_out"] == n_left > 0
    title = plot.activity(renamed).axes[0].get_title()
    assert f"{n_left} calls of recordings without a time stamp left out" in title
    with pytest.raises(plot.PlotError, match="by='night'"):
        plot.activity_counts(detections, by="night")


def test_recording_times_from_a_mapping_a_cube_or_the_name(cube):
    files = ["/data/site01/20260612_213015.wav", "/data/site02/x.wav", "/data/site02/y.wav"]
    times = plot.recording_timestamps(files, {"site02/x.wav": "2026-06-12T23:59:00+02:00"})
    assert times.tolist()[:2] == [pd.Timestamp("2026-06-12 21:30:15"), pd.Timestamp("2026-06-12 23:59:00")]
    assert pd.isna(times.iloc[2])
    assert plot.night_hour(times).tolist()[:2] == [9, 11]
    manifest = cube.batml.manifest  # the simulator writes GUANO time stamps that agree with the names
    from_cube = plot.recording_timestamps(manifest["path"], cube)
    assert from_cube.tolist() == [plot.timestamp_from_name(p) for p in manifest["path"]]
    pd.testing.assert_series_equal(plot.recording_timestamps(manifest["path"], manifest), from_cube)
    assert plot.site_of(["/a/s1/x.wav", "/a/s2/n/y.wav", "/a/z.wav"]).tolist() == ["s1", "s2", "a"]
    assert plot.site_of(["/a/s1/x.wav"]).tolist() == ["s1"]
    assert plot.site_of(["x.wav", "y.wav"]).tolist() == [plot.TOP_FOLDER] * 2


# --------------------------------------------------------------------------------------------
# One-call access from Python
# --------------------------------------------------------------------------------------------


def test_detections_accessor_selects_species_and_recordings(run, detections):
    pip = detections.batml.species("Pip35", min_probability=0.8)
    assert len(pip) and (pip["prob_Pip35"] >= 0.8).all()
    assert len(pip) == int((detections["prob_Pip35"].astype(float) >= 0.8).sum())
    either = detections.batml.species(["Pip35", "Rhisp"], min_probability=0.8)
    assert len(either) >= len(pip)
    one = detections.batml.recording(RECORDING)
    assert len(one) and set(one["file"]) == {next(f for f in detections["file"] if f.endswith(RECORDING))}
    read = pipeline.read_detections(run[1], files=one["file"].iat[0])  # only that file read
    pd.testing.assert_frame_equal(read, one.reset_index(drop=True))
    with pytest.raises(KeyError, match="no detections"):
        detections.batml.recording("site09/x.wav")
    with pytest.raises(ValueError, match="unknown species"):
        detections.batml.species("Nyctalus")


def test_pipeline_opens_models_and_detections_in_one_call_and_stays_light(run):
    assert pipeline.open_model().architecture == "hybrid_cnn_xgboost"
    lazy = pipeline.open_detections(run[1], species="Rhisp")
    assert len(lazy.compute()) == len(pipeline.read_detections(run[1], species="Rhisp"))
    code = "import sys, pipeline; pipeline.open_cube; print(sorted({'matplotlib', 'tensorflow'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_figures_show_as_images_in_jupyter(detections):
    pytest.importorskip("IPython")
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    try:
        plot._show_figures_in_jupyter()  # what importing pipeline.plot does in a kernel
        shown, _ = shell.display_formatter.format(plot.activity(detections))
        assert shown["image/png"][:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        InteractiveShell.clear_instance()


# --------------------------------------------------------------------------------------------
# batml plot
# --------------------------------------------------------------------------------------------


def _batml(argv, capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_draws_every_kind_from_a_run(run, detections, tmp_path, capsys):
    archive, out = run
    begin, end = _busiest_second(detections, RECORDING)
    commands = {
        "spectrogram": ["spectrogram", str(out / "cube.zarr"), RECORDING, "--start", str(begin), "--end", str(end),
                        "--detections", str(out)],
        "activity": ["activity", str(out), "--cube", str(out / "cube.zarr")],
        "sites": ["activity", str(out), "--by", "site"],
        "pr": ["pr", "--calls", str(archive.annotations_csv), "--detections", str(out)],
        "confusion": ["confusion", "--calls", str(archive.annotations_npz), "--detections", str(out), "--split", "train"],
    }  # fmt: skip
    for name, argv in commands.items():
        image = tmp_path / f"{name}.png"
        code, printed, err = _batml(["plot", *argv, "-o", str(image), "--dpi", "50"], capsys)
        assert code == 0, err
        assert printed.strip().endswith(str(image))
        with Image.open(image) as png:
            assert png.format == "PNG" and min(png.size) >= 250
    code, _, _ = _batml(["plot", "activity", str(out), "-o", str(tmp_path / "a.pdf")], capsys)
    assert code == 0 and (tmp_path / "a.pdf").read_bytes().startswith(b"%PDF")
    assert not list(tmp_path.glob(".*tmp*"))


def test_cli_confusion_runs_a_model_on_the_test_split(run, client, tmp_path, capsys):
    archive, out = run
    image = tmp_path / "confusion.png"
    from pipeline.model.bundle import DEFAULT_BUNDLE

    argv = ["plot", "confusion", str(DEFAULT_BUNDLE), str(archive.annotations_npz),
            "--audio", str(archive.root), "--cube", str(out / "cube.zarr"), "--cluster", client.scheduler.address,
            "-q", "-o", str(image)]  # fmt: skip
    code, _, err = _batml(argv, capsys)
    assert code == 0, err
    assert image.stat().st_size > 10_000


@pytest.mark.parametrize(
    "argv, message",
    [
        (["spectrogram", "{out}/cube.zarr", "site09/x.wav"], "cube.zarr: no recording 'site09/x.wav' in the cube"),
        (["spectrogram", "{out}/nothing.zarr", "0"], "nothing.zarr: not a zarr store"),
        (["spectrogram", "{out}/cube.zarr", "0", "--model", "{out}"], "no manifest.json: not a model bundle"),
        (["activity", "{archive}"], "detections.parquet: no detections (no such folder)"),
        (["pr", "--calls", "{out}/detections.csv", "--detections", "{out}"], "detections.csv: missing column(s) file, position"),
        (["confusion", "--calls", "{archive}/annotations.csv", "--detections", "{archive}"], "no detections"),
    ],
)  # fmt: skip
def test_cli_bad_input_is_one_line_and_exit_1(run, tmp_path, capsys, argv, message):
    archive, out = run
    argv = [a.format(out=out, archive=archive.root) for a in argv]
    code, _, err = _batml(["plot", *argv, "-o", str(tmp_path / "x.png")], capsys)
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("batml: error: ") and message in err
    assert not list(tmp_path.iterdir())


def test_cli_bad_command_line_exits_2(run, tmp_path, capsys):
    _, out = run
    with pytest.raises(SystemExit) as exit_:
        main(["plot", "activity", str(out), "-o", str(tmp_path / "x.gif")])
    assert exit_.value.code == 2 and "must end with .png" in capsys.readouterr().err
    code, _, err = _batml(["plot", "pr", "--detections", str(out), "-o", str(tmp_path / "x.png")], capsys)
    assert code == 2 and "give --calls DATASET and --detections OUT_DIR" in err


def test_cli_plot_help_is_complete(capsys):
    for argv in (["plot"], ["plot", "spectrogram"], ["plot", "activity"], ["plot", "pr"], ["plot", "confusion"]):
        with pytest.raises(SystemExit) as exit_:
            main([*argv, "--help"])
        text = capsys.readouterr().out
        assert exit_.value.code == 0 and f"usage: batml {' '.join(argv)}" in text and "Examples:\n  batml plot" in text
    parser = pipeline.cli.build_parser()
    plot_parser = parser._subparsers._group_actions[0].choices["plot"]
    for name, kind in plot_parser._subparsers._group_actions[0].choices.items():
        assert all(action.help for action in kind._actions), name
        for line in kind.epilog.splitlines()[1:]:
            parser.parse_args(line.split()[1:])  # every example parses
