"""The reference system's published networks converted to batml bundles (issue 15).

The round trip builds the reference's network independently here, as its ``cnn_helper.py``
built it (a Keras Sequential: conv/pool blocks, dropout, flatten, dense, dropout, head), loads
the published arrays into it, and compares it with the converted bundle on the same windows:
the bundle reads batml's windows (lowest frequency first), the reference network the same
windows upside down, as the reference computed them.
"""

from __future__ import annotations

import codecs
import io
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile
from numpy.lib import format as npy_format

from pipeline.cli import main
from pipeline.config import REFERENCE_GROUPS, Settings, SpectrogramSettings
from pipeline.model import reference
from pipeline.model.bundle import load_bundle
from pipeline.model.reference import ReferenceModelError

REFERENCE_MODELS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "reference_models"
CNN8 = "25_05_21_12_12_25_classif_cnn8_hnm1"
HYBRID = "02_06_21_09_32_04"
DETECTOR = "25_05_21_15_09_28_detect_cnn2_hnm0_weights.npy"

TINY_XGBOOST = "name,max_depth,eta,n_estimators,gamma,subsample,scale_pos_weight,min_child_weight\n" \
    "xgboost_spectrogram,4,0.3,20,0.001,0.9,1.5,1\n"  # fmt: skip


@pytest.fixture(scope="session")
def reference_models() -> Path:
    """The reference's published files (../shared/data/reference_models); skips when absent."""
    if not (REFERENCE_MODELS / f"{CNN8}_weights.npy").is_file():
        pytest.skip(f"reference networks not found at {REFERENCE_MODELS} (see ../shared/data/README.md)")
    return REFERENCE_MODELS


def reference_sequential(weights, *, blocks: int, kernel: int, units: int, outputs: int, head: str):
    """The reference's network, built as its code built it, holding ``weights``."""
    import keras
    from keras import layers

    net = keras.Sequential([keras.Input((130, 20, 1))])
    for _ in range(blocks):
        net.add(layers.Conv2D(48, (kernel, kernel), padding="same", activation="relu"))
        net.add(layers.MaxPool2D(pool_size=(2, 2)))
    net.add(layers.Dropout(0.5))
    net.add(layers.Flatten())
    net.add(layers.Dense(units, activation="relu"))
    net.add(layers.Dropout(0.5))
    net.add(layers.Dense(outputs, activation=head))
    net.set_weights(weights)
    return net


def real_windows(real_data: Path, settings: SpectrogramSettings, n: int = 96) -> np.ndarray:
    """Windows (lowest frequency first) of a real recording, calls included, as batml computes them."""
    from pipeline.detection.scoring import recording_windows
    from pipeline.spectrogram import spectrogram

    audio = real_data / "annotated" / "audio" / "20170701_213954-MYOMYS-LR_0_0.5.wav"
    samples, rate = soundfile.read(audio, dtype="float32")
    spec = spectrogram(samples, rate, settings)
    columns = np.linspace(0, len(spec) - 20, n).astype(np.int64)
    return recording_windows(spec, columns)


class _Exploit:
    """Pickles as a call to os.system; it is only ever pickled here, never unpickled."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.target}",))


class _Codec:
    """Pickles as ``_codecs.encode(b"...", "zlib_codec")``: allowed name, forbidden use."""

    def __reduce__(self):
        return (codecs.encode, (b"payload", "zlib_codec"))


def _object_npy(path: Path, items, protocol: int = 3) -> Path:
    array = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        array[i] = item
    with open(path, "wb") as fh:  # as numpy writes it, with the pickle protocol asked for
        npy_format.write_array_header_1_0(fh, npy_format.header_data_from_array_1_0(array))
        pickle.dump(array, fh, protocol=protocol)
    return path


# --- reading -----------------------------------------------------------------------------------


def test_a_malicious_npy_is_refused_in_one_line(tmp_path, capsys):
    pwned = tmp_path / "pwned.txt"
    evil = _object_npy(tmp_path / "evil_weights.npy", [np.zeros(3, np.float32), _Exploit(pwned)])
    with pytest.raises(ReferenceModelError, match=r"holds a pickled (posix|os|nt)\.system") as info:
        reference.read_reference_weights(evil)
    assert str(evil) in str(info.value) and "\n" not in str(info.value)
    assert not pwned.exists()

    assert main(["convert", str(evil), "-o", str(tmp_path / "model")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("batml: error:") and str(evil) in err and len(err.splitlines()) == 1
    assert not pwned.exists() and not (tmp_path / "model").exists()


def test_codecs_encode_is_allowed_for_latin1_bytes_only(tmp_path):
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.linspace(-1, 1, 4, dtype=np.float32)]
    old = _object_npy(tmp_path / "protocol2.npy", arrays, protocol=2)  # bytes as _codecs.encode(str, latin1)
    assert b"_codecs" in old.read_bytes()
    read = reference.read_reference_weights(old)
    assert len(read) == 2 and all(a.dtype == np.float32 for a in read)
    for got, want in zip(read, arrays):
        np.testing.assert_array_equal(got, want)

    other = _object_npy(tmp_path / "zlib.npy", [_Codec()])
    with pytest.raises(ReferenceModelError, match="latin-1") as info:
        reference.read_reference_weights(other)
    assert str(other) in str(info.value) and "\n" not in str(info.value)


def test_the_seed_npz_reader_shares_the_allow_list(tmp_path):
    """The .npz reader now uses the same unpickler: a protocol-2 pickle of plain arrays reads."""
    from pipeline.io.annotations import read_reference_npz

    import zipfile

    fields = {
        "train_files": np.array(["a"]), "train_durations": np.array([1.0]),
        "train_pos": [np.array([0.25, 0.5])], "test_files": np.array([], dtype=str),
        "test_durations": np.array([]), "test_pos": [],
    }  # fmt: skip
    path = tmp_path / "old.npz"
    with zipfile.ZipFile(path, "w") as archive:
        for name, value in fields.items():
            member = _object_npy(tmp_path / f"{name}.npy", value, protocol=2) if isinstance(value, list) else None
            if member is None:
                buffer = io.BytesIO()
                npy_format.write_array(buffer, value)
                archive.writestr(f"{name}.npy", buffer.getvalue())
            else:
                archive.writestr(f"{name}.npy", member.read_bytes())
    assert b"_codecs" in zipfile.ZipFile(path).read("train_pos.npy")
    dataset = read_reference_npz(path)
    np.testing.assert_array_equal(dataset.train[0].positions, [0.25, 0.5])


@pytest.mark.realdata
def test_published_shapes_match_batml_builders(reference_models):
    assert sum(int(np.prod(s)) for s in reference.weight_shapes("cnn8")) == 569_048
    assert sum(int(np.prod(s)) for s in reference.weight_shapes("detector")) == 211_442
    for name, kind in [(f"{CNN8}_weights.npy", "cnn8"), (f"{HYBRID}_features_hybrid_cnn_xgboost_hnm2_weights.npy", "cnn8"),
                       (DETECTOR, "detector")]:  # fmt: skip
        weights = reference.read_reference_weights(reference_models / name)
        assert all(w.dtype == np.float32 for w in weights)
        assert reference.identify_kind(weights) == kind
    with pytest.raises(ValueError, match="match neither"):
        reference.identify_kind(weights[:-2])


def test_thresholds_convert_from_percent(tmp_path):
    percent = np.array([0, 99, 62, 60, 71, 31, 92, 56])
    converted = reference.thresholds_from_percent(percent)
    assert converted == {
        "detection": 0.5, "Barbarg": 0.99, "Envsp": 0.62, "Myosp": 0.60, "Pip35": 0.71, "Pip50": 0.31,
        "Plesp": 0.92, "Rhisp": 0.56,
    }  # fmt: skip
    np.save(tmp_path / "t.npy", percent)
    np.testing.assert_array_equal(reference.read_reference_thresholds(tmp_path / "t.npy"), percent)
    for bad, reason in [(percent[:7], "expected 8 thresholds"), (percent * 2, "0..100")]:
        np.save(tmp_path / "bad.npy", bad)
        with pytest.raises(ReferenceModelError, match=reason) as info:
            reference.read_reference_thresholds(tmp_path / "bad.npy")
        assert str(tmp_path / "bad.npy") in str(info.value) and "\n" not in str(info.value)


# --- the features these weights need ---------------------------------------------------------


def test_log_scale_expansion_multiplies_the_power_inside_the_log():
    from pipeline.spectrogram import log_scale

    power = np.random.default_rng(1).gamma(1.0, 1e9, (50, 260)).astype(np.float32)
    plain, expanded = SpectrogramSettings(), SpectrogramSettings(log_scale_expansion=10.0)
    rate = 384_000.0
    window = np.hanning(plain.nfft(rate))
    k = 2.0 / (rate * np.sum(window**2))
    np.testing.assert_allclose(log_scale(power, rate, plain), np.log1p(k * power), rtol=1e-5)
    np.testing.assert_allclose(log_scale(power, rate, expanded), np.log1p(10 * k * power), rtol=1e-5)


def test_the_new_setting_keeps_every_existing_fingerprint(tmp_path):
    default_manifest = json.loads((Path(reference.__file__).with_name("default") / "manifest.json").read_text())
    assert SpectrogramSettings().fingerprint() == default_manifest["spectrogram"]["fingerprint"]
    assert "log_scale_expansion" not in SpectrogramSettings().to_dict()
    ten = SpectrogramSettings(log_scale_expansion=10)
    assert ten.fingerprint() != SpectrogramSettings().fingerprint()
    assert ten.fingerprint() == SpectrogramSettings.from_dict(ten.to_dict()).fingerprint()
    toml = tmp_path / "settings.toml"
    toml.write_text("[spectrogram]\nlog_scale_expansion = 10\n")
    assert Settings.load(toml).spectrogram == reference.REFERENCE_SPECTROGRAM


# --- conversion round trip ------------------------------------------------------------------


@pytest.mark.realdata
@pytest.mark.parametrize(
    ("weights_name", "thresholds_name", "shape"),
    [
        (f"{CNN8}_weights.npy", f"{CNN8}_thresholds.npy", dict(blocks=3, kernel=4, units=320, outputs=8, head="sigmoid")),
        (f"{HYBRID}_features_hybrid_cnn_xgboost_hnm2_weights.npy", None,
         dict(blocks=3, kernel=4, units=320, outputs=8, head="sigmoid")),
        (DETECTOR, None, dict(blocks=4, kernel=3, units=384, outputs=2, head="softmax")),
    ],
)  # fmt: skip
def test_converted_bundle_equals_the_reference_network(reference_models, real_data, tmp_path, weights_name, thresholds_name, shape):
    weights_path = reference_models / weights_name
    thresholds_path = reference_models / thresholds_name if thresholds_name else None
    out = reference.network_bundle(weights_path, tmp_path / "model", thresholds_path=thresholds_path)

    bundle = load_bundle(out)
    assert bundle.architecture == "cnn8"
    assert bundle.spectrogram == reference.REFERENCE_SPECTROGRAM
    assert bundle.licence == "research use only, non-commercial"
    source = bundle.manifest["source"]
    assert source["repository"] == "luciledierckx/batML"
    assert source["commit"] == "7e6709e1971e45c3cf4f85a3045d68a1b030d32b"
    assert source["weights"]["file"] == weights_name
    assert source["weights"]["published_as"] == f"data/models/{weights_name}"
    assert source["weights"]["sha256"] == reference.file_source(weights_path)["sha256"]

    windows = real_windows(real_data, bundle.spectrogram)
    assert windows[:, :65].mean() != pytest.approx(windows[:, 65:].mean(), rel=0.05)  # not symmetric in frequency
    theirs = reference_sequential(reference.read_reference_weights(weights_path), **shape)
    ours = bundle.network("cnn_8")(windows, training=False).numpy()
    np.testing.assert_allclose(ours, theirs(windows[:, ::-1], training=False).numpy(), rtol=1e-5, atol=1e-6)
    # The reversal is what makes them agree: fed batml's windows as they are, the reference differs.
    assert np.abs(ours - theirs(windows, training=False).numpy()).max() > 1e-2

    if shape["head"] == "softmax":
        assert bundle.classes == ["bat"] and bundle.thresholds == {"detection": 0.5, "bat": 0.5}
    else:
        assert bundle.classes == list(REFERENCE_GROUPS)
        expected = np.load(thresholds_path)[1:] / 100 if thresholds_path else np.full(7, 0.5)
        np.testing.assert_allclose([bundle.thresholds[c] for c in REFERENCE_GROUPS], expected)
        assert bundle.thresholds["detection"] == 0.5


@pytest.mark.realdata
def test_cli_converts_the_published_cnn8(reference_models, tmp_path, capsys):
    out = tmp_path / "reference-cnn8"
    code = main(["convert", str(reference_models / f"{CNN8}_weights.npy"), "--thresholds",
                 str(reference_models / f"{CNN8}_thresholds.npy"), "-o", str(out)])  # fmt: skip
    assert code == 0
    assert "research use only, non-commercial" in capsys.readouterr().out
    bundle = load_bundle(out)
    assert bundle.thresholds["Barbarg"] == 0.99 and bundle.manifest["source"]["thresholds"]["sha256"]

    wrong = main(["convert", str(reference_models / DETECTOR), "--model-type", "cnn8", "-o", str(tmp_path / "x")])
    assert wrong == 1 and "cnn2 detector" in capsys.readouterr().err
    missing = main(["convert", str(reference_models / f"{CNN8}_weights.npy"), "--model-type", "hybrid_cnn_xgboost",
                    "-o", str(tmp_path / "x")])  # fmt: skip
    assert missing == 1 and "--dataset" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.realdata
def test_converted_cnn8_finds_the_real_annotated_calls(reference_models, real_data, tmp_path):
    """With the reference's features (log_scale_expansion 10), the converted network detects the
    calls of the three real recordings and names the group of most of them."""
    from pipeline.detection.recording import detect_recording
    from pipeline.evaluation.metrics import detection_average_precision
    from pipeline.annotations import read_batdetect2
    from pipeline.spectrogram import column_times, spectrogram
    from pipeline.model.predictor import Predictor

    bundle = load_bundle(reference.network_bundle(reference_models / f"{CNN8}_weights.npy", tmp_path / "m"))
    predictor = Predictor.from_bundle(bundle)
    # Detection is class-agnostic: the echolocation calls of an unnamed "Bat" count too.
    calls = read_batdetect2(real_data / "annotated" / "anns").calls
    calls = calls[calls["event"] == "echolocation"]
    assert len(calls) == 27
    tables = []
    for name in calls["file"].unique():
        samples, rate = soundfile.read(real_data / "annotated" / "audio" / f"{Path(name).stem}.wav", dtype="float32")
        spec = spectrogram(samples, rate, bundle.spectrogram)
        times = column_times(len(spec), rate, bundle.spectrogram)
        events = detect_recording(predictor, spec, times, bundle.classes, {"detection": 0.0})
        tables.append(events.assign(recording=name))
    import pandas as pd

    detections = pd.concat(tables, ignore_index=True)
    table = calls.rename(columns={"file": "recording"})[["recording", "position"]]
    assert detection_average_precision(table, detections).average_precision > 0.4


@pytest.mark.slow
@pytest.mark.realdata
def test_hybrid_bundle_trains_boosters_on_the_reference_embedding(reference_models, client, tmp_path):
    from pipeline.simulation.archive import simulate_archive
    from pipeline.model.predictor import Predictor, embedding_model

    archive = simulate_archive(tmp_path / "audio", minutes=0.5, seed=12, empty_fraction=0.2, test_fraction=0.4)
    xgb = tmp_path / "xgboost.csv"
    xgb.write_text(TINY_XGBOOST)
    weights_path = reference_models / f"{HYBRID}_features_hybrid_cnn_xgboost_hnm2_weights.npy"
    thresholds_path = reference_models / f"{HYBRID}_classif_hybrid_cnn_xgboost_hnm2_thresholds.npy"
    report = reference.hybrid_bundle(
        weights_path, archive.annotations_npz, archive.root, tmp_path / "hybrid", thresholds_path=thresholds_path,
        xgboost_csv=str(xgb), cube=tmp_path / "cube.zarr", client=client, progress=False,
    )  # fmt: skip
    assert report.n_windows > 100
    bundle = load_bundle(tmp_path / "hybrid")
    assert bundle.architecture == "hybrid_cnn_xgboost" and len(bundle.boosters()) == 8
    assert bundle.licence == reference.REFERENCE_LICENCE and bundle.manifest["training"]["pretrained_networks"]
    assert bundle.manifest["source"]["thresholds"]["used"] is False  # tuned for the reference's own boosters
    # The network is the reference's, untouched by training: same embedding as the published arrays.
    windows = np.random.default_rng(3).gamma(1.0, 0.5, (16, 130, 20, 1)).astype(np.float32)
    published = reference.reference_network(reference.read_reference_weights(weights_path))
    np.testing.assert_allclose(
        embedding_model(bundle.network("cnn_8"))(windows).numpy(), embedding_model(published)(windows).numpy(), rtol=1e-6
    )
    probs = Predictor.from_bundle(bundle)(windows)
    assert probs.shape == (16, 8) and np.all((probs >= 0) & (probs <= 1))
    assert 0 <= json.loads((tmp_path / "hybrid" / "evaluation.json").read_text())["detection"]["ap"] <= 1


@pytest.mark.slow
@pytest.mark.realdata
def test_fine_tuning_from_a_converted_network_keeps_its_frequency_flip(reference_models, client, tmp_path):
    """``--from`` a converted reference network (which reads batml's windows through a constant
    frequency flip that batml's own builder does not make): the new model is that network with a
    new output layer; the flip stays the constant reversal while the other layers train."""
    import pandas as pd

    from pipeline.simulation.archive import simulate_archive
    from pipeline.training.job import TrainSettings, train

    parent_path = reference.network_bundle(reference_models / f"{CNN8}_weights.npy", tmp_path / "parent")
    archive = simulate_archive(tmp_path / "audio", minutes=0.5, seed=12, empty_fraction=0.2, test_fraction=0.4)
    calls = pd.read_csv(archive.annotations_csv)
    calls["class"] = np.where(calls["class"] == 1, "Barbastella", "other bat")
    calls.to_csv(tmp_path / "two.csv", index=False)
    settings = TrainSettings(model_type="cnn8", epochs=1, parent=str(parent_path), head_epochs=1, fine_tune_rate=1.0)
    train(tmp_path / "two.csv", archive.root, tmp_path / "child", settings=settings, cube=tmp_path / "cube.zarr",
          client=client, progress=False)  # fmt: skip

    child, parent = load_bundle(tmp_path / "child"), load_bundle(parent_path)
    assert child.classes == ["Barbastella", "other bat"] and child.fingerprint == parent.fingerprint
    new, old = child.network("cnn_8"), parent.network("cnn_8")
    np.testing.assert_array_equal(new.get_layer(reference.FLIP_LAYER).get_weights()[0], reference.reversal(130))
    assert new.get_layer("output").get_weights()[0].shape == (320, 3)
    assert not np.array_equal(new.get_layer("conv_1").get_weights()[0], old.get_layer("conv_1").get_weights()[0])
    assert child.licence == reference.REFERENCE_LICENCE


@pytest.mark.parametrize("n_classes", [3, 7])
def test_transfer_weights_copies_a_converted_network_with_the_new_head(n_classes):
    """A parent with a constant layer batml's builder does not make (the converted networks'
    frequency flip) is copied whole: the flip and the trunk keep their weights; the head is the
    parent's when it fits the new class list, else the new network's own (units, activation)."""
    import types
    import warnings

    from pipeline.model.registry import build_networks
    from pipeline.training.fine_tuning import fixed_layers, transfer_weights

    rng = np.random.default_rng(0)
    shapes = reference.weight_shapes("cnn8")
    published = reference.reference_network([rng.normal(0, 0.05, s).astype(np.float32) for s in shapes], "cnn8")
    parent = types.SimpleNamespace(path=Path("reference-cnn8"), network=lambda row: published)
    networks = build_networks("cnn8", n_classes)
    built_head = networks["cnn_8"].get_layer("output").get_config()
    assert transfer_weights(parent, networks) == {"cnn_8": ["output"]}

    child = networks["cnn_8"]
    assert fixed_layers(child) == {reference.FLIP_LAYER}
    np.testing.assert_array_equal(child.get_layer(reference.FLIP_LAYER).get_weights()[0], reference.reversal(130))
    for name in ("conv_1", "conv_3", "embedding"):
        for a, b in zip(child.get_layer(name).get_weights(), published.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    head = child.get_layer("output")
    assert head.get_config()["activation"] == built_head["activation"] and head.get_config()["units"] == n_classes + 1
    kept = np.array_equal(head.get_weights()[0], published.get_layer("output").get_weights()[0])
    assert kept == (n_classes == 7)
    windows = rng.gamma(1.0, 0.5, (4, 130, 20, 1)).astype(np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = child(windows).numpy()
    assert out.shape == (4, n_classes + 1) and not [w for w in caught if "structure" in str(w.message)]
    embedding = published.get_layer("embedding").output
    import keras

    np.testing.assert_allclose(  # the same features as the parent's
        keras.Model(child.input, child.get_layer("embedding").output)(windows).numpy(),
        keras.Model(published.input, embedding)(windows).numpy(), rtol=1e-6,
    )


def test_the_onnx_graph_of_a_converted_network_reverses_its_frequencies():
    """The graphs detection and ``batml export`` run rebuild a converted network's frequency flip:
    the graph equals the Keras network; a flip that is not exactly a reversal is refused rather
    than left out."""
    import keras

    from pipeline.model.export import export_refusal, window_graph
    from pipeline.model.runtime import NetworkRuntime

    shapes = reference.weight_shapes("cnn8")
    rng = np.random.default_rng(1)
    published = reference.reference_network([rng.normal(0, 0.05, s).astype(np.float32) for s in shapes], "cnn8")
    assert export_refusal(published) is None
    windows = rng.gamma(1.0, 0.5, (6, 130, 20, 1)).astype(np.float32)
    windows[:, :40] *= 4  # low frequencies loud: reading them upside down changes the scores
    head, embedding = NetworkRuntime(window_graph(published)).embed(windows)
    keras_embedding = keras.Model(published.input, published.get_layer("embedding").output)(windows).numpy()
    np.testing.assert_allclose(head, published(windows).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(embedding, keras_embedding, rtol=1e-4, atol=1e-4)
    unflipped, _ = NetworkRuntime(window_graph(published)).embed(windows[:, ::-1].copy())
    assert np.abs(unflipped - head).max() > 1e-3  # the flip matters for these windows

    published.get_layer(reference.FLIP_LAYER).set_weights([np.eye(130, dtype=np.float32)])
    assert "is not a reversal" in export_refusal(published)
    with pytest.raises(ValueError, match="is not a reversal"):
        window_graph(published)


def test_transfer_weights_refuses_a_converted_detector_for_a_cnn8(tmp_path):
    import types

    from pipeline.model.registry import build_networks
    from pipeline.training import TrainingError
    from pipeline.training.fine_tuning import transfer_weights

    rng = np.random.default_rng(1)
    detector = reference.reference_network(
        [rng.normal(0, 0.05, s).astype(np.float32) for s in reference.weight_shapes("detector")], "detector"
    )
    parent = types.SimpleNamespace(path=Path("reference-detector"), network=lambda row: detector)
    with pytest.raises(TrainingError, match="--from reference-detector: .*give the same hyperparameters"):
        transfer_weights(parent, build_networks("cnn8", 3))
