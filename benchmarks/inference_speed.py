"""Cost and accuracy of the ways to score windows: Keras per window, strip passes, ONNX engines.

On the real dense bat passes ``../shared/data/real/unannotated/0166_*.wav`` (Batlogger, 5 x 4 s;
CC BY-NC 4.0, from the batdetect2 repository; spectrogram by :func:`pipeline.spectrogram.spectrogram`),
on ONE thread, CPU time by ``time.process_time()`` (every thread of this process counted), it
prints seconds of audio per CPU-second and microseconds per column of the network alone
(its head and its 320-value embedding, every window scored) for:

- Keras per window (batches of 256 windows), for the per-window network (``--model``, default the
  bundled ``cnn_8``) and the valid-time one (``--dense-model``, a bundle trained with
  ``cnn_8_dense``; default: ``cnn_8_dense`` with random weights, for speed only);
- Keras strip: the fully convolutional pass (:func:`pipeline.model.dense_scoring.strip_network`);
- ONNX Runtime and OpenVINO, windows and strips, float32, bf16 (OpenVINO) and int8
  (:func:`pipeline.model.export.quantized_int8`, calibrated on the simulated training split);

then the boosters of the bundled hybrid on 320-value embeddings: XGBoost ``inplace_predict``
against a tl2cgen-compiled predictor, per window, and the fraction of windows the default
``booster_gate`` lets through on these files; and, when ``--archive`` (a simulated archive with a
test split) and ``--dense-model`` are given, the detection AP and class mAP of each path on the
test split, through batml's detection and evaluation (:mod:`pipeline.model.accuracy`).

Usage::

    python benchmarks/inference_speed.py [--model DIR] [--dense-model DIR] [--archive SIM_DIR --cube CUBE]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "unannotated"
WIDTH = 20


def cpu_seconds(function, repeat: int = 2) -> float:
    """The least CPU time (s, all threads of this process) of ``repeat`` runs, after a warm-up."""
    function()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        function()
        best = min(best, time.process_time() - t0)
    return best


def real_spectrograms() -> tuple[list[np.ndarray], float]:
    """The model-ready spectrograms (n_columns, 130) of the 0166 files, and their seconds of audio."""
    import soundfile as sf

    from pipeline.config import SpectrogramSettings
    from pipeline.io.audio import read_samples
    from pipeline.spectrogram import spectrogram

    files = sorted(REAL.glob("0166_*.wav"))
    if not files:
        raise SystemExit(f"no 0166_*.wav in {REAL} (see ../shared/data/README.md)")
    spectrograms, seconds = [], 0.0
    for f in files:
        info = sf.info(str(f))
        spectrograms.append(spectrogram(read_samples(f), info.samplerate, SpectrogramSettings()).astype(np.float32))
        seconds += info.duration
    return spectrograms, seconds


def windows_of(spectrograms):
    from pipeline.detection.scoring import recording_windows

    for s in spectrograms:
        n = s.shape[0] - WIDTH + 1
        for start in range(0, n, 256):
            yield recording_windows(s, np.arange(start, min(start + 256, n)))


def load_network(bundle_dir):
    """The bundle's (first) network and its boosters (None when not a hybrid)."""
    from pipeline.model.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    network = bundle.network(bundle.spec.network_rows[0])
    return network, (bundle.boosters() or None), bundle


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="per-window model bundle (default: the bundled one)")
    parser.add_argument("--dense-model", nargs="+", default=[],
                        help="model bundle(s) trained with a valid-time row (cnn_8_dense, cnn_8_dense_light)")
    parser.add_argument("--archive", type=Path, help="simulated archive (its annotations.npz) for AP")
    parser.add_argument("--cube", type=Path, help="the archive's spectrogram cube (as batml train made it)")
    parser.add_argument("--piece", type=int, nargs="+", default=[256, 2048, 8192], help="strip piece sizes (windows)")
    parser.add_argument("--skip-keras", action="store_true")
    parser.add_argument("--sections", nargs="+", default=["network", "boosters", "accuracy"],
                        choices=["network", "boosters", "accuracy"], help="what to measure (default: all)")
    args = parser.parse_args(argv)

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    from pipeline.model.dense_scoring import strip_network
    from pipeline.model.export import quantized_int8, strip_graph, window_graph
    from pipeline.model.runtime import NetworkRuntime
    from pipeline.model.predictor import embedding_and_head

    model_dir = args.model or str(Path(__file__).resolve().parents[1] / "pipeline" / "model" / "default")
    window_net, boosters, _ = load_network(model_dir)
    dense = [load_network(d) for d in args.dense_model]
    if not dense:
        from pipeline.model.cnn import build_cnn
        from pipeline.model.params import load_params

        keras.utils.set_random_seed(0)
        dense = [(build_cnn(8, load_params(row), name=row), None, None) for row in ("cnn_8_dense", "cnn_8_dense_light")]
    names = [f"{net.name}:{net.get_layer('conv_1').filters}f" for net, _, _ in dense]

    spectrograms, seconds = real_spectrograms()
    n_columns = sum(s.shape[0] for s in spectrograms)
    print(f"real files: {len(spectrograms)} recordings, {seconds:.1f} s of audio, {n_columns} columns; one thread")
    spectrogram_cpu = cpu_seconds(real_spectrograms, 1)
    print(f"  the spectrogram (decoding included)   {seconds / spectrogram_cpu:8.1f} s audio/CPU-s "
          f"{1e6 * spectrogram_cpu / n_columns:9.1f} us/column")  # fmt: skip
    if "network" not in args.sections:
        if boosters and "boosters" in args.sections:
            booster_costs(window_net, boosters, spectrograms)
            booster_policies(args, window_net, boosters, spectrograms)
        return
    calibration_strips, calibration_windows = calibration_data(args, spectrograms)
    rows = []

    def record(name, seconds_cpu):
        rows.append((name, seconds / seconds_cpu, 1e6 * seconds_cpu / n_columns))
        print(f"  {name:<52} {seconds / seconds_cpu:8.1f} s audio/CPU-s {1e6 * seconds_cpu / n_columns:9.1f} us/column", flush=True)

    def time_windows(runtime):
        return cpu_seconds(lambda: [runtime.embed(w) for w in windows_of(spectrograms)])

    def time_strip(runtime, piece):
        return cpu_seconds(lambda: [runtime.strip(s.T, piece_windows=piece) for s in spectrograms])

    print("network (head + embedding), every window (stride k: every k-th window):")
    if not args.skip_keras:
        for label, net in (("cnn_8", window_net), *((n, d[0]) for n, d in zip(names, dense))):
            both = embedding_and_head(net)
            record(f"keras windows {label}", cpu_seconds(lambda: [both(w, training=False) for w in windows_of(spectrograms)], 1))
        strip_twin = strip_network(dense[0][0])
        record(f"keras strip {names[0]} (2048)", cpu_seconds(
            lambda: [strip_twin(s.T[None, :, i : i + 2048 + WIDTH - 1, None], training=False)
                     for s in spectrograms for i in range(0, s.shape[0] - WIDTH + 1, 2048)], 1))  # fmt: skip

    window_float = window_graph(window_net)
    window_int8 = quantized_int8(window_float, calibration_windows)
    for engine in ("onnxruntime", "openvino"):
        record(f"{engine} windows cnn_8", time_windows(NetworkRuntime(window_float, engine=engine)))
        if engine == "openvino":
            record(f"{engine} windows cnn_8 bf16", time_windows(NetworkRuntime(window_float, engine=engine, precision="bf16")))
        record(f"{engine} windows cnn_8 int8", time_windows(NetworkRuntime(window_int8, engine=engine)))
    runtimes = {}
    for name, (net, _, _) in zip(names, dense):
        windows_dense = window_graph(net)
        record(f"onnxruntime windows {name}", time_windows(NetworkRuntime(windows_dense)))
        for stride in (1, 2, 4):
            strip_float = strip_graph(net, stride=stride)
            strip_int8 = quantized_int8(strip_float, calibration_strips)
            tag = f" stride {stride}" if stride > 1 else ""
            for engine, precision, graph, label in (
                ("onnxruntime", "f32", strip_float, "f32"),
                ("onnxruntime", "f32", strip_int8, "int8"),
                ("openvino", "f32", strip_float, "f32"),
                ("openvino", "bf16", strip_float, "bf16"),
                ("openvino", "int8", strip_int8, "int8"),
            ):
                if engine == "openvino" and stride > 1:
                    continue
                runtime = NetworkRuntime(windows_dense, graph, engine=engine, precision="bf16" if precision == "bf16" else "f32")
                pieces = args.piece if engine == "onnxruntime" and stride == 1 else [2048]
                for piece in pieces:
                    record(f"{engine} strip {name}{tag} {label} ({piece})", time_strip(runtime, piece))
                if stride == 1:
                    runtimes[(name, f"{engine} strip {label}")] = runtime
    best = max((r for r in rows if r[0].startswith(("onnxruntime", "openvino"))), key=lambda r: r[1])
    print(f"fastest: {best[0]}: {best[1]:.1f} s of audio per CPU-second")

    if boosters and "boosters" in args.sections:
        booster_costs(window_net, boosters, spectrograms)
        booster_policies(args, window_net, boosters, spectrograms)
    if args.archive and args.dense_model and "accuracy" in args.sections:
        for name, (net, dense_boosters, bundle) in zip(names, dense):
            accuracy(args, name, bundle, dense_boosters, {k[1]: v for k, v in runtimes.items() if k[0] == name})


def calibration_data(args, spectrograms):
    """Strips (130, 531) and window batches for int8 calibration: the simulated archive's
    training split when given, else the real files (then the int8 AP is optimistic)."""
    from pipeline.detection.scoring import recording_windows

    sources = spectrograms
    if args.archive and args.cube:
        from pipeline.io.cube import open_cube
        from pipeline.annotations.matching import match_recordings
        from pipeline.annotations.dataset import read_dataset

        cube = open_cube(args.cube)
        train = read_dataset(args.archive / "annotations.npz").train
        indices, _ = match_recordings(cube, [rec.file for rec in train])
        sources = [cube.batml.recording(r)["spectrogram"].values.astype(np.float32) for r in indices if r is not None][:40]
    strips = [s.T[:, i : i + 512 + WIDTH - 1] for s in sources for i in range(0, s.shape[0] - 512 - WIDTH, 4096)]
    rng = np.random.default_rng(0)
    strips = [strips[i] for i in rng.permutation(len(strips))[:24]]
    windows = [recording_windows(s.T, np.arange(0, s.shape[1] - WIDTH + 1, 8)[:128]) for s in strips]
    return strips, windows


def booster_costs(network, boosters, spectrograms) -> None:
    """Per-window cost of the hybrid's boosters: inplace_predict against tl2cgen."""
    import tl2cgen
    import treelite

    from pipeline.model.export import window_graph
    from pipeline.model.runtime import NetworkRuntime, booster_probabilities

    rt = NetworkRuntime(window_graph(network))
    heads, embeddings = zip(*(rt.embed(w) for w in windows_of(spectrograms)))
    head, embedding = np.concatenate(heads), np.concatenate(embeddings)
    n = len(embedding)
    for b in boosters.values():
        b.set_param({"nthread": 1})
    t_xgb = cpu_seconds(lambda: booster_probabilities(boosters, embedding))
    print(f"boosters ({len(boosters)}) on {n} embeddings of 320 values, one thread:")
    print(f"  xgboost inplace_predict   {1e6 * t_xgb / n:8.2f} us/window")
    with tempfile.TemporaryDirectory(prefix="batml-tl2cgen-") as tmp:
        predictors = []
        for j, b in enumerate(boosters.values()):
            lib = Path(tmp) / f"booster_{j}.so"
            tl2cgen.export_lib(treelite.frontend.from_xgboost(b), toolchain="gcc", libpath=str(lib),
                               params={"parallel_comp": 8})  # fmt: skip
            predictors.append(tl2cgen.Predictor(str(lib), nthread=1))
        matrix = tl2cgen.DMatrix(embedding, dtype="float32")

        def compiled():
            return np.column_stack([p.predict(matrix).reshape(n, -1)[:, -1] for p in predictors])

        t_tl = cpu_seconds(compiled)
        diff = float(np.abs(compiled() - booster_probabilities(boosters, embedding)).max())
        print(f"  tl2cgen compiled (gcc)    {1e6 * t_tl / n:8.2f} us/window  (max |difference| {diff:.2g})")
    for gate in (0.01, 0.05):
        share = float(np.mean((1.0 - head[:, 0]) >= gate))
        print(f"  booster_gate {gate}: boosters on {100 * share:.1f} % of the windows of these dense passes")


def booster_policies(args, network, boosters, spectrograms) -> None:
    """Where a hybrid's boosters run: every window, ``booster_gate``, or near the head's NMS
    peaks (:func:`pipeline.model.runtime.booster_columns`): the share of windows on the real
    dense passes, and the AP and mAP on the simulated test split."""
    from pipeline.detection.scoring import recording_windows
    from pipeline.model.export import window_graph
    from pipeline.model.runtime import NetworkRuntime, booster_columns, hybrid_probabilities

    runtime = NetworkRuntime(window_graph(network))
    cache: dict = {}

    def head_and_embedding(spec):
        key = (spec.shape, float(spec.sum()))
        if key not in cache:
            n = max(spec.shape[0] - WIDTH + 1, 0)
            head = np.zeros((spec.shape[0], 8), np.float32)
            head[:, 0] = 1.0
            embedding = np.zeros((spec.shape[0], 320), np.float32)
            for start in range(0, n, 256):
                columns = np.arange(start, min(start + 256, n))
                head[columns], embedding[columns] = runtime.embed(recording_windows(spec, columns))
            cache[key] = head, embedding
        return cache[key]

    policies = {
        "everywhere": lambda head: np.ones(len(head), bool),
        "booster_gate 0.01": lambda head: (1.0 - head[:, 0]) >= 0.01,
        **{f"near head peaks, margin {m}": (lambda head, m=m: booster_columns(head, margin=m)) for m in (2, 3, 5)},
    }
    print("where the boosters run:")
    for label, policy in policies.items():
        share = np.mean(np.concatenate([policy(head_and_embedding(s)[0]) for s in spectrograms]))
        line = f"  {label:<30} {100 * share:5.1f} % of the windows of the real dense passes"
        if args.archive and args.cube:
            from pipeline.io.cube import open_cube
            from pipeline.model.accuracy import scorer_accuracy
            from pipeline.annotations.dataset import read_dataset

            cube = open_cube(args.cube)
            annotations = read_dataset(args.archive / "annotations.npz")

            def score(spec, policy=policy):
                head, embedding = head_and_embedding(spec)
                return hybrid_probabilities(head, embedding, boosters, policy(head))

            result = scorer_accuracy(score, cube, annotations.test, annotations.classes)
            line += f"; simulated test split: AP {result.detection_ap:.4f} mAP {result.class_map:.4f}"
        print(line, flush=True)


def accuracy(args, name, bundle, boosters, runtimes) -> None:
    """Detection AP and class mAP of the paths on the simulated test split."""
    from pipeline.detection.scoring import column_probabilities
    from pipeline.io.cube import open_cube
    from pipeline.model.accuracy import scorer_accuracy
    from pipeline.model.predictor import Predictor
    from pipeline.annotations.dataset import read_dataset

    cube = open_cube(args.cube)
    annotations = read_dataset(args.archive / "annotations.npz")
    predictor = Predictor.from_bundle(bundle)
    paths = {"keras windows (float reference)": lambda s: column_probabilities(predictor, s)}
    for label, rt in runtimes.items():
        if boosters:
            rt.boosters = boosters
        paths[label] = rt.column_probabilities
    print(f"accuracy of {name} on the simulated test split ({len(annotations.test)} recordings):")
    reference = None
    for label, score in paths.items():
        result = scorer_accuracy(score, cube, annotations.test, bundle.classes)
        reference = reference or result
        print(f"  {label:<44} AP {result.detection_ap:.4f} ({result.detection_ap - reference.detection_ap:+.4f})"
              f"  mAP {result.class_map:.4f} ({result.class_map - reference.class_map:+.4f})", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
