"""Detection on the TensorFlow-free runtime: graphs in bundles or exported on load, the scorer of
the workers (strip passes, boosters near the head's peaks), exact block borders, no TensorFlow in
the workers, the in-process cluster for small inputs."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.detection.scoring import Scan

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "pipeline" / "model" / "default"


@pytest.fixture(scope="module")
def bundle():
    from pipeline.model.bundle import load_bundle

    return load_bundle(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def real_spectrogram(real_data):
    """A dense real bat pass (0166, Batlogger, CC BY-NC 4.0) as the cube stores it, and its times."""
    from pipeline import spectrogram as sg
    from pipeline.config import SpectrogramSettings
    from pipeline.io.audio import read_info, read_samples

    wav = sorted((real_data / "unannotated").glob("0166_*.wav"))[0]
    info = read_info(wav)
    spec = sg.spectrogram(read_samples(wav, channel=0), info.real_rate, SpectrogramSettings())
    return spec.astype(np.float16).astype(np.float32), sg.column_times(len(spec), info.real_rate, SpectrogramSettings())


def _valid_time_network(seed: int = 5):
    import keras

    from pipeline.model.cnn import build_cnn
    from pipeline.model.params import load_params

    keras.utils.set_random_seed(seed)
    return build_cnn(8, load_params("cnn_8_dense"), name="cnn_8")


def _events_equal(a: pd.DataFrame, b: pd.DataFrame, atol: float = 1e-5) -> None:
    assert len(a) == len(b) and len(a) > 0
    np.testing.assert_array_equal(a["time"].to_numpy(), b["time"].to_numpy())
    probs = [c for c in a.columns if c.startswith("prob") or c == "score"]
    np.testing.assert_allclose(a[probs].to_numpy(float), b[probs].to_numpy(float), atol=atol)


# ------------------------------------------------------------------ graphs in bundles, or exported on load


def test_a_saved_bundle_lists_its_runtime_graphs_and_checks_them(tmp_path, bundle):
    from pipeline.config import SpectrogramSettings
    from pipeline.model.bundle import FORMAT_VERSION, BundleError, load_bundle, save_bundle
    from pipeline.model.inference import runtime_graphs

    path = save_bundle(
        tmp_path / "valid-time", architecture="hybrid_cnn_xgboost", classes=list(bundle.classes),
        networks={"cnn_8": _valid_time_network()}, boosters=bundle.boosters(), thresholds=bundle.thresholds,
        spectrogram=SpectrogramSettings(), training={}, metrics={}, params={},
    )  # fmt: skip
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION == 2
    roles = {entry["role"] for entry in manifest["files"].values()}
    assert {"graph:cnn_8.windows", "graph:cnn_8.strip1", "graph:cnn_8.strip2", "graph:cnn_8.strip4"} <= roles
    assert manifest["runtime"]["precision"] == "float"
    graphs = runtime_graphs(load_bundle(path))
    assert graphs.origin == "bundle" and sorted(graphs.strips) == [1, 2, 4]
    with pytest.raises(BundleError, match="holds no int8 graphs"):
        runtime_graphs(load_bundle(path), "int8")
    strip = path / "runtime" / "cnn_8.strip4.onnx"
    strip.write_bytes(strip.read_bytes()[:-1] + b"\0")
    with pytest.raises(BundleError, match="tampered or corrupted: runtime/cnn_8.strip4.onnx"):
        load_bundle(path)


def _format_1_copy(folder: Path) -> Path:
    """A copy of the bundled model as batml wrote bundles before runtime graphs (format 1): the
    same networks and boosters, no ``runtime`` section, no graph files."""
    import shutil

    copy = folder / "format-1"
    shutil.copytree(DEFAULT_MODEL, copy, ignore=shutil.ignore_patterns("runtime"))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = 1
    manifest.pop("runtime", None)
    manifest["files"] = {name: entry for name, entry in manifest["files"].items()
                         if not entry["role"].startswith("graph:")}  # fmt: skip
    (copy / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return copy


def test_an_older_bundle_gets_its_graphs_exported_once_into_the_cache(tmp_path, monkeypatch):
    """A format-1 bundle has no graphs: they are exported on load into the cache folder, read from
    there by later processes without TensorFlow, and refused when altered."""
    from pipeline.model.bundle import load_bundle
    from pipeline.model.inference import runtime_graphs
    from pipeline.model.runtime import RuntimeModelError

    older = _format_1_copy(tmp_path)
    bundle = load_bundle(older)
    assert bundle.manifest["format_version"] == 1 and not bundle.graph_files()
    monkeypatch.setenv("BATML_CACHE_DIR", str(tmp_path / "cache"))
    graphs = runtime_graphs(bundle)
    assert graphs.origin == "cache" and graphs.precision == "float" and graphs.strips == {}  # same padding
    assert Path(graphs.windows.path).is_relative_to(tmp_path / "cache")
    script = textwrap.dedent(
        f"""
        import sys
        from pipeline.model.bundle import load_bundle
        from pipeline.model.inference import runtime_graphs
        graphs = runtime_graphs(load_bundle({str(older)!r}))
        graphs.open(1)
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
        print(graphs.origin, "IMPORTED", heavy)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "BATML_CACHE_DIR": str(tmp_path / "cache")})  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "cache IMPORTED []" in done.stdout
    cached = Path(graphs.windows.path)
    cached.write_bytes(cached.read_bytes()[:-1] + b"\1")
    with pytest.raises(RuntimeModelError, match="tampered or corrupted"):
        runtime_graphs(bundle).open(1)


# ------------------------------------------------------------------ the scorer: equal to Keras where exact


@pytest.mark.parametrize("margin", [3, None])
def test_runtime_events_equal_the_keras_path(bundle, real_spectrogram, margin):
    """The bundled hybrid (float graphs) on ONNX Runtime and in Keras, the same scan and boosters'
    policy: the same events on a dense real pass. With ``booster_margin=None`` (boosters on every
    window whose head reaches the gate) the reference is the Keras Predictor itself."""
    from pipeline.detection.recording import detect_recording
    from pipeline.detection.scorers import WindowScorer, model_scorer
    from pipeline.model.inference import runtime_graphs
    from pipeline.model.predictor import KerasNetwork, Predictor
    from pipeline.model.runtime import NetworkRuntime

    spec, times = real_spectrogram
    scan = Scan()
    runtime = model_scorer(bundle, graphs=runtime_graphs(bundle), booster_gate=0.01, booster_margin=margin)
    keras_path = model_scorer(bundle, booster_gate=0.01, booster_margin=margin, engine="keras")
    assert isinstance(runtime, WindowScorer) and isinstance(keras_path, WindowScorer)
    assert isinstance(runtime.network, NetworkRuntime) and isinstance(keras_path.network, KerasNetwork)
    got = detect_recording(runtime, spec, times, bundle.classes, bundle.thresholds, scan=scan)
    _events_equal(got, detect_recording(keras_path, spec, times, bundle.classes, bundle.thresholds, scan=scan))
    if margin is None:
        predictor = Predictor.from_bundle(bundle, booster_gate=0.01)
        _events_equal(got, detect_recording(predictor, spec, times, bundle.classes, bundle.thresholds, scan=scan))


def test_the_boosters_run_near_the_heads_peaks_among_the_scored_windows(bundle, real_spectrogram):
    """The fast path's probabilities: the boosters' at the scored windows within the margin of a
    peak of the head's smoothed call score, the head's at the other scored windows, "not call" at
    the windows the scan skipped; on a dense real pass the boosters run on a minority of windows."""
    from pipeline.detection.scorers import model_scorer
    from pipeline.detection.scoring import scored_columns
    from pipeline.model.inference import runtime_graphs
    from pipeline.model.runtime import booster_columns, booster_probabilities

    spec, _ = real_spectrogram
    graphs = runtime_graphs(bundle)
    scorer = model_scorer(bundle, graphs=graphs, booster_gate=0.01, booster_margin=3)
    n, scan = len(spec), Scan()
    network = graphs.open(1)
    head = scored_columns(lambda w: network.embed(w)[0], spec, 0, n, n, 20, 256, 8, scan)  # the network alone
    scored = head[:, 0] < 1.0
    mask = booster_columns(head, gate=0.01, margin=3) & scored
    assert 0.05 < mask.sum() / scored.sum() < 0.5
    probs = scorer.score_columns(spec, 0, n, n, scan)
    windows = np.ascontiguousarray(np.lib.stride_tricks.sliding_window_view(spec, 20, axis=0)[np.flatnonzero(mask)][..., None])
    np.testing.assert_allclose(probs[mask], booster_probabilities(bundle.boosters(), network.embed(windows)[1]), atol=1e-5)
    np.testing.assert_allclose(probs[scored & ~mask], head[scored & ~mask], atol=1e-6)
    assert np.all(probs[~scored, 0] == 1.0)


def test_a_valid_time_network_scans_by_strips_as_window_by_window(bundle, real_spectrogram):
    """A valid-time network (random weights, the bundled boosters on its 320 values): the strided
    strip of the coarse grid and the stride-1 strips of the refined runs give the probabilities of
    scoring the same windows one by one, for several scans and both boosters' policies."""
    from pipeline.detection.scorers import WindowScorer
    from pipeline.model.export import runtime_graphs as export_graphs
    from pipeline.model.runtime import NetworkRuntime

    spec, _ = real_spectrogram
    spec = spec[:1500]
    graphs = export_graphs(_valid_time_network())
    strips = NetworkRuntime(graphs["windows"], {k: g for k, g in graphs.items() if k != "windows"})
    windows = NetworkRuntime(graphs["windows"])
    assert strips.strides == (1, 2, 4) and windows.strides == ()
    n = len(spec)
    for scan in (Scan(stride=4, gamma=0.0), Scan(stride=8, gamma=0.3), Scan(stride=2, gamma=0.5), Scan(stride=1)):
        for margin in (3, None):
            a = WindowScorer(strips, bundle.boosters(), booster_gate=0.0, booster_margin=margin)
            b = WindowScorer(windows, bundle.boosters(), booster_gate=0.0, booster_margin=margin)
            got = a.score_columns(spec, 0, n, n, scan)
            np.testing.assert_allclose(got, b.score_columns(spec, 0, n, n, scan), rtol=1e-4, atol=2e-5)
            assert got[:, 0].min() < 0.999  # some windows were scored and differ from "not call"


def test_block_borders_stay_exact_with_the_boosters_near_the_peaks(bundle, real_spectrogram):
    """Blocks of any size give the events of the whole recording: the halo covers the boosters'
    reach (their mask reads the head's peaks), and a halo without it is refused."""
    from pipeline.detection.recording import detect_block, detect_columns, detect_recording, minimum_halo_columns
    from pipeline.detection.scorers import model_scorer
    from pipeline.model.inference import runtime_graphs

    spec, times = real_spectrogram
    scorer = model_scorer(bundle, graphs=runtime_graphs(bundle), booster_gate=0.01, booster_margin=3)
    assert scorer.extra_reach == 10 + 2 + 3
    scan = Scan()
    whole = detect_recording(scorer, spec, times, bundle.classes, bundle.thresholds, scan=scan)
    for block in (300, 1024):
        blocks = detect_columns(
            scorer, lambda a, b: spec[a:b], len(spec), times, bundle.classes, bundle.thresholds,
            block_columns=block, scan=scan,
        )  # fmt: skip
        _events_equal(blocks.drop(columns="column"), whole.drop(columns="column"), atol=1e-6)
    minimum = minimum_halo_columns(10, 0.5, scan, scorer.extra_reach)
    with pytest.raises(ValueError, match="boosters reach 15"):
        detect_block(scorer, spec, 0, len(spec), times, (500, 900), bundle.classes, halo_columns=minimum - 1, scan=scan)


# ------------------------------------------------------------------ the workers: no TensorFlow


def _import_result(name: str) -> str:
    try:
        __import__(name)
    except ImportError as exc:
        return f"ImportError: {exc}"
    return "imported"


def _heavy_modules() -> list[str]:
    return sorted(m for m, module in sys.modules.items() if module is not None and m.split(".")[0] in ("tensorflow", "keras"))


def test_detection_runs_with_no_tensorflow_importable_in_the_workers(tmp_path, real_data):
    """Worker processes where importing TensorFlow or Keras fails (a preload marks them missing):
    ``batml detect``'s job runs there, and gives the events of the same job in this process."""
    from distributed import Client, LocalCluster

    from pipeline.detection.archive import detect_archive
    from pipeline.outputs.parts import read_detections

    blocker = tmp_path / "no_tensorflow.py"
    blocker.write_text("import sys\nsys.modules['tensorflow'] = None\nsys.modules['keras'] = None\n")
    audio = tmp_path / "audio"
    audio.mkdir()
    for wav in sorted((real_data / "unannotated").glob("0166_*.wav"))[:2]:
        (audio / wav.name).write_bytes(wav.read_bytes())
    reference = detect_archive(audio, tmp_path / "in-process", cluster="in-process", progress=False)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
                      preload=[str(blocker)]) as cluster, Client(cluster) as client:  # fmt: skip
        assert all(r.startswith("ImportError") for r in client.run(_import_result, "tensorflow").values())
        assert all(r.startswith("ImportError") for r in client.run(_import_result, "keras").values())
        report = detect_archive(audio, tmp_path / "workers", client=client, progress=False)
        loaded = client.run(_heavy_modules)
    assert report.complete and reference.complete and report.n_detections > 10
    assert all(modules == [] for modules in loaded.values())
    assert report.model["runtime"]["engine"] == "onnxruntime"
    ours, theirs = read_detections(tmp_path / "workers"), read_detections(tmp_path / "in-process")
    _events_equal(ours.sort_values(["file", "time"]).reset_index(drop=True),
                  theirs.sort_values(["file", "time"]).reset_index(drop=True), atol=1e-6)  # fmt: skip


# ------------------------------------------------------------------ small inputs: in this process


def test_a_small_input_runs_in_process_and_help_says_so(tmp_path, real_data, capsys):
    from pipeline.cli import main
    from pipeline.detection.archive import choose_cluster

    audio = tmp_path / "audio"
    audio.mkdir()
    wav = sorted((real_data / "unannotated").glob("0166_*.wav"))[0]
    (audio / wav.name).write_bytes(wav.read_bytes())
    assert choose_cluster(audio) == "in-process"
    assert choose_cluster(audio, n_workers=2) == "local"
    for k in range(20):  # 20 x 4 s: more than one cube chunk (76 s)
        (audio / f"copy{k}.wav").write_bytes(wav.read_bytes())
    assert choose_cluster(audio) == "local"
    assert main(["detect", str(audio / wav.name), "--out", str(tmp_path / "out"), "-q", "--format", "parquet"]) == 0
    out = capsys.readouterr().out
    assert "cluster: in-process" in out and "network runs on: onnxruntime (float" in out
    with pytest.raises(SystemExit):
        main(["detect", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "in this process" in help_text and "ONNX Runtime" in help_text


# ------------------------------------------------------------------ int8 at bundle time


def test_training_keeps_int8_only_where_it_keeps_the_detection_ap_and_the_map(tmp_path, small_archive, bundle):
    """The bundled network and boosters, a small simulated archive: the int8 variants are measured
    against float on its test recordings, int8 graphs are kept only when one of them is within
    the tolerance, and the saved bundle runs at the precision chosen."""
    from pipeline.annotations.dataset import read_dataset
    from pipeline.distributed import connect
    from pipeline.ingestion import ingest
    from pipeline.io.cube import open_cube
    from pipeline.model.bundle import load_bundle, save_bundle
    from pipeline.model.inference import runtime_graphs
    from pipeline.training.precision import AP_TOLERANCE, INT8_VARIANTS, choose_runtime_graphs

    with connect("in-process") as client:
        ingest(small_archive.root, tmp_path / "cube.zarr", client=client, progress=False)
    cube = open_cube(tmp_path / "cube.zarr")
    annotations = read_dataset(small_archive.annotations_npz)
    graphs, runtime = choose_runtime_graphs(
        bundle.network("cnn_8"), bundle.boosters(), cube, annotations.train, annotations.test, bundle.classes
    )
    check = runtime["int8_check"]
    assert check["events_float"] > 10 and 0.5 < check["detection_ap_float"] <= 1.0
    tried = [v for v in INT8_VARIANTS if f"detection_ap_{v}" in check]
    within = [
        v for v in tried
        if max(check["detection_ap_float"] - check[f"detection_ap_{v}"], check["class_map_float"] - check[f"class_map_{v}"])
        <= AP_TOLERANCE
    ]  # fmt: skip
    quantized = any(node.op_type == "QuantizeLinear" for node in graphs["windows"].graph.node)
    if runtime["precision"] == "int8":
        assert check["kept"] == within[0] == tried[-1] and quantized
    else:
        assert tried == list(INT8_VARIANTS) and not within and not quantized
    saved = save_bundle(
        tmp_path / "model", architecture=bundle.architecture, classes=bundle.classes,
        networks={"cnn_8": bundle.network("cnn_8")}, boosters=bundle.boosters(), thresholds=bundle.thresholds,
        spectrogram=bundle.spectrogram, training={}, metrics={}, params={}, graphs={"cnn_8": graphs}, runtime=runtime,
    )  # fmt: skip
    reloaded = load_bundle(saved)
    assert reloaded.runtime["precision"] == runtime["precision"]
    assert runtime_graphs(reloaded).precision == runtime["precision"]
    assert runtime_graphs(reloaded, "float").precision == "float"


def test_int8_is_kept_only_when_it_keeps_the_detection_ap_and_the_map():
    from pipeline.model.accuracy import ScorerAccuracy
    from pipeline.training.precision import AP_TOLERANCE, keeps_accuracy

    float_ = ScorerAccuracy(detection_ap=0.90, class_map=0.80, n_events=100)
    assert keeps_accuracy(float_, ScorerAccuracy(0.90 - AP_TOLERANCE / 2, 0.80 - AP_TOLERANCE / 2, 100))
    assert not keeps_accuracy(float_, ScorerAccuracy(0.90, 0.80 - 0.019, 100))  # the species lost
    assert not keeps_accuracy(float_, ScorerAccuracy(0.90 - 0.01, 0.80, 100))
    detector = ScorerAccuracy(detection_ap=0.90, class_map=float("nan"), n_events=100)  # no class has an AP
    assert keeps_accuracy(detector, ScorerAccuracy(0.899, float("nan"), 100))
    assert not keeps_accuracy(float_, ScorerAccuracy(0.90, float("nan"), 100))  # the classes' AP lost
