"""Model bundles: round trip, manifest contents, refusal of altered bundles, atomic saving."""

from __future__ import annotations

import json
import os
import pickle
import signal
import zipfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import xgboost  # noqa: E402

from pipeline._version import __version__  # noqa: E402
from pipeline.config import SpectrogramSettings  # noqa: E402
from pipeline.interrupt import interruptible  # noqa: E402
from pipeline.model.bundle import FORMAT_VERSION, BundleError, ModelBundle, load_bundle, save_bundle, update_bundle  # noqa: E402
from pipeline.testing import swallow_signal  # noqa: E402

# Keras's TensorFlow backend calls np.array on tensors in a way numpy 2 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

CLASSES = ["Pip35", "Pip50", "Myosp"]
THRESHOLDS = {"detection": 0.5, "Pip35": 0.4, "Pip50": 0.6, "Myosp": 0.3}
PATCHES = np.random.default_rng(0).random((3, 130, 20, 1), dtype=np.float32)
FEATURES = np.random.default_rng(1).random((40, 6), dtype=np.float32)


@pytest.fixture(scope="module")
def network() -> keras.Model:
    """A tiny CNN shaped like the real ones: one 130x20x1 patch in, 1 + 3 sigmoids out."""
    inputs = keras.Input((130, 20, 1))
    x = keras.layers.Conv2D(4, 3)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(CLASSES) + 1, activation="sigmoid")(x)
    return keras.Model(inputs, outputs, name="cnn_8")


@pytest.fixture(scope="module")
def boosters() -> dict[str, xgboost.Booster]:
    """Two tiny boosters (binary relevance: one per output column)."""
    rng = np.random.default_rng(2)
    out = {}
    for name in ("not_call", "Pip35"):
        labels = rng.integers(0, 2, len(FEATURES))
        data = xgboost.DMatrix(FEATURES, label=labels)
        out[name] = xgboost.train(
            {"objective": "binary:logistic", "max_depth": 2, "nthread": 1}, data, num_boost_round=5
        )
    return out


@pytest.fixture
def saved(tmp_path, network, boosters):
    """A freshly saved hybrid bundle."""
    return save_bundle(
        tmp_path / "model",
        architecture="hybrid_cnn_xgboost",
        classes=CLASSES,
        networks={"cnn_8": network},
        boosters=boosters,
        thresholds=THRESHOLDS,
        spectrogram=SpectrogramSettings(),
        training={"epochs": 3, "loss": [np.float32(0.7), 0.5, float("nan")]},
        metrics={"validation": {"map": np.float64(0.42)}},
        params={
            "cnn_8": {"filters": 48, "learning_rate": 1e-3},
            "xgboost_spectrogram": {"eta": 0.3},
        },
    )


def _manifest(path):
    return json.loads((path / "manifest.json").read_text())


def _write_manifest(path, manifest):
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_round_trip_gives_the_same_predictions(saved, network, boosters):
    bundle = load_bundle(saved)
    assert isinstance(bundle, ModelBundle)
    assert bundle.architecture == "hybrid_cnn_xgboost"
    assert bundle.classes == CLASSES
    assert bundle.thresholds == THRESHOLDS
    assert bundle.spectrogram == SpectrogramSettings()
    assert bundle.fingerprint == SpectrogramSettings().fingerprint()
    loaded = bundle.network("cnn_8")
    assert bundle.network("cnn_8") is loaded  # loaded once
    np.testing.assert_array_equal(np.asarray(loaded(PATCHES)), np.asarray(network(PATCHES)))
    loaded_boosters = bundle.boosters()
    assert list(loaded_boosters) == ["not_call", "Pip35"]
    assert bundle.boosters()["Pip35"] is loaded_boosters["Pip35"]
    matrix = xgboost.DMatrix(FEATURES)
    for name, booster in boosters.items():
        expected = booster.predict(matrix)
        np.testing.assert_array_equal(loaded_boosters[name].predict(matrix), expected)
    with pytest.raises(KeyError, match="no network 'cnn_2'"):
        bundle.network("cnn_2")


def test_manifest_records_what_the_model_is_and_how_it_was_made(saved):
    manifest = _manifest(saved)
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["architecture"] == "hybrid_cnn_xgboost"
    assert manifest["classes"] == CLASSES
    assert manifest["thresholds"] == THRESHOLDS
    assert manifest["spectrogram"]["settings"] == SpectrogramSettings().to_dict()
    assert manifest["spectrogram"]["fingerprint"] == SpectrogramSettings().fingerprint()
    assert manifest["training"] == {"epochs": 3, "loss": [pytest.approx(0.7), 0.5, None]}
    assert manifest["metrics"] == {"validation": {"map": 0.42}}
    assert manifest["hyperparameters"]["cnn_8"] == {"filters": 48, "learning_rate": 1e-3}
    assert manifest["package_version"] == __version__
    assert manifest["library_versions"]["keras"] == keras.__version__
    assert manifest["library_versions"]["xgboost"] == xgboost.__version__
    assert manifest["library_versions"]["numpy"] == np.__version__
    assert manifest["library_versions"]["tensorflow"]
    assert manifest["created"].endswith("Z")
    assert manifest["files"].keys() == {
        "networks/cnn_8.keras",
        "boosters/not_call.ubj",
        "boosters/Pip35.ubj",
    }
    assert manifest["files"]["networks/cnn_8.keras"]["role"] == "network:cnn_8"
    assert manifest["files"]["boosters/Pip35.ubj"]["role"] == "booster:Pip35"
    for entry in manifest["files"].values():
        assert len(entry["sha256"]) == 64
    assert sorted(p.name for p in saved.parent.iterdir()) == ["model"]  # no temp dir left


def test_no_pickle_anywhere(saved):
    for file in saved.rglob("*"):
        if file.is_file():
            assert not file.read_bytes().startswith(b"\x80"), file
    with zipfile.ZipFile(saved / "networks" / "cnn_8.keras") as archive:
        for member in archive.namelist():
            assert not archive.read(member).startswith(b"\x80"), member


def test_tampered_network_is_refused(saved):
    file = saved / "networks" / "cnn_8.keras"
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="tampered or corrupted: networks/cnn_8.keras"):
        load_bundle(saved)


def test_missing_booster_is_refused(saved):
    (saved / "boosters" / "Pip35.ubj").unlink()
    with pytest.raises(BundleError, match="missing file: boosters/Pip35.ubj"):
        load_bundle(saved)


@pytest.mark.parametrize("extra", ["networks/extra.keras", "boosters/old/Pip50.ubj"])
def test_unlisted_file_is_refused(saved, extra):
    (saved / extra).parent.mkdir(parents=True, exist_ok=True)
    (saved / extra).write_bytes(b"{}")
    with pytest.raises(BundleError, match=f"unlisted file.*{extra}"):
        load_bundle(saved)


def test_hand_edited_settings_are_refused(saved):
    manifest = _manifest(saved)
    manifest["spectrogram"]["settings"]["smoothing_sigma"] = 2.0
    _write_manifest(saved, manifest)
    with pytest.raises(BundleError, match="do not match their fingerprint.*edited by hand"):
        load_bundle(saved)


def test_settings_mismatch_with_the_cube_is_refused(saved):
    cube = SpectrogramSettings(smoothing_sigma=2.0).fingerprint()
    model = SpectrogramSettings().fingerprint()
    expected = (
        f"{saved}: model expects spectrogram settings {model}, the cube has {cube}; "
        "re-ingest with the model's settings or use another model"
    )
    with pytest.raises(BundleError) as info:
        load_bundle(saved, expect_fingerprint=cube)
    assert str(info.value) == expected
    assert load_bundle(saved, expect_fingerprint=model).fingerprint == model


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda m: m.update(format_version=FORMAT_VERSION + 1), "newer than this batml"),
        (lambda m: m.update(architecture="cnn9"), "unknown model 'cnn9'"),
        (lambda m: m["thresholds"].pop("Myosp"), "thresholds missing for Myosp"),
        (lambda m: m.update(format="something else"), "not a batml model manifest"),
    ],
)
def test_invalid_manifest_is_refused(saved, change, reason):
    manifest = _manifest(saved)
    change(manifest)
    _write_manifest(saved, manifest)
    with pytest.raises(BundleError, match=reason):
        load_bundle(saved)


def test_missing_or_broken_manifest_is_refused(saved, tmp_path):
    (saved / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(saved)
    (saved / "manifest.json").unlink()
    with pytest.raises(BundleError, match="no manifest.json"):
        load_bundle(saved)
    with pytest.raises(BundleError, match="no model bundle here"):
        load_bundle(tmp_path / "nowhere")


def test_errors_are_one_line_and_survive_pickling(tmp_path):
    with pytest.raises(BundleError) as info:
        load_bundle(tmp_path / "nowhere")
    error = pickle.loads(pickle.dumps(info.value))
    assert str(error) == str(info.value) and "\n" not in str(error)
    assert isinstance(error, ValueError)


def test_lambda_layer_is_refused_by_safe_mode(tmp_path):
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(2)(keras.layers.Lambda(lambda x: x * 2)(inputs))
    path = save_bundle(
        tmp_path / "unsafe",
        architecture="cnn8",
        classes=["a"],
        networks={"cnn_8": keras.Model(inputs, outputs)},
        boosters=None,
        thresholds={"detection": 0.5, "a": 0.5},
        spectrogram=SpectrogramSettings(),
        training={},
        metrics={},
        params={},
    )
    bundle = load_bundle(path)  # the files are intact: only loading the network is refused
    with pytest.raises(BundleError, match="safe mode"):
        bundle.network("cnn_8")


class _FailingNetwork:
    """Stands for a network whose file cannot be written (a full disk)."""

    def save(self, filepath):
        with open(filepath, "wb") as fh:
            fh.write(b"half a network")
        raise OSError("No space left on device")


def test_failed_save_keeps_the_old_bundle(saved, boosters):
    before = {p.relative_to(saved): p.read_bytes() for p in saved.rglob("*") if p.is_file()}
    with pytest.raises(BundleError, match="No space left on device"):
        save_bundle(
            saved,
            architecture="hybrid_cnn_xgboost",
            classes=CLASSES,
            networks={"cnn_8": _FailingNetwork()},
            boosters=boosters,
            thresholds=THRESHOLDS,
            spectrogram=SpectrogramSettings(),
            training={},
            metrics={},
            params={},
        )
    after = {p.relative_to(saved): p.read_bytes() for p in saved.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in saved.parent.iterdir()) == ["model"]
    load_bundle(saved)


def test_save_replaces_an_existing_bundle(saved, network):
    save_bundle(
        saved,
        architecture="cnn8",
        classes=["a", "b"],
        networks={"cnn_8": network},
        boosters=None,
        thresholds={"detection": 0.1, "a": 0.2, "b": 0.3},
        spectrogram=SpectrogramSettings(),
        training={},
        metrics={},
        params={},
    )
    bundle = load_bundle(saved)
    assert bundle.architecture == "cnn8" and bundle.classes == ["a", "b"]
    assert not (saved / "boosters").exists()
    assert sorted(p.name for p in saved.parent.iterdir()) == ["model"]


def test_save_refuses_to_replace_a_foreign_directory(tmp_path, network):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "precious.wav").write_bytes(b"RIFF")
    with pytest.raises(BundleError, match="not a model bundle; refusing"):
        save_bundle(
            tmp_path / "data",
            architecture="cnn8",
            classes=["a"],
            networks={"cnn_8": network},
            boosters=None,
            thresholds={"detection": 0.5, "a": 0.5},
            spectrogram=SpectrogramSettings(),
            training={},
            metrics={},
            params={},
        )
    assert (tmp_path / "data" / "precious.wav").exists()


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"architecture": "cnn9"}, "unknown model 'cnn9'"),
        ({"classes": []}, "classes is empty"),
        ({"classes": ["Pip35", "Pip35", "Myosp"]}, "not unique: Pip35"),
        ({"thresholds": {"detection": 0.5, "Pip35": 0.5, "Pip50": 0.5}}, "missing for Myosp"),
        ({"thresholds": {**THRESHOLDS, "Myosp": 1.5}}, "outside"),
        ({"networks": {}}, "has networks cnn_8"),
        ({"boosters": None}, "is a hybrid"),
        ({"boosters": {"../escape": None}}, "cannot be a file name"),
        ({"training": {"model": object()}}, "cannot be stored as JSON"),
    ],
)
def test_save_refuses_invalid_arguments(tmp_path, network, boosters, changes, reason):
    arguments = dict(
        architecture="hybrid_cnn_xgboost",
        classes=CLASSES,
        networks={"cnn_8": network},
        boosters=boosters,
        thresholds=THRESHOLDS,
        spectrogram=SpectrogramSettings(),
        training={},
        metrics={},
        params={},
    )
    arguments.update(changes)
    with pytest.raises(BundleError, match=reason):
        save_bundle(tmp_path / "model", **arguments)
    assert list(tmp_path.iterdir()) == []


def test_update_bundle_changes_thresholds_only(saved):
    before = _manifest(saved)
    update_bundle(saved, thresholds={"detection": 0.25, "Pip50": 0.75})
    after = _manifest(saved)
    assert after["thresholds"] == {**THRESHOLDS, "detection": 0.25, "Pip50": 0.75}
    assert "updated" in after
    for key in set(before) - {"thresholds"}:
        assert after[key] == before[key], key
    assert load_bundle(saved).thresholds["detection"] == 0.25
    with pytest.raises(BundleError, match="no threshold named 'Rhisp'"):
        update_bundle(saved, thresholds={"Rhisp": 0.5})
    update_bundle(saved, metrics={"test": {"map": 0.5}})
    assert _manifest(saved)["metrics"] == {"validation": {"map": 0.42}, "test": {"map": 0.5}}
    assert sorted(p.name for p in saved.iterdir()) == ["boosters", "manifest.json", "networks"]


def test_bundle_pickles_without_its_loaded_models(saved):
    bundle = load_bundle(saved)
    bundle.network("cnn_8")
    copy = pickle.loads(pickle.dumps(bundle))
    assert copy.classes == bundle.classes and copy._networks == {}
    assert copy.network("cnn_8") is not bundle.network("cnn_8")


def test_an_interruption_swallowed_while_saving_leaves_the_old_bundle(saved, boosters, network):
    """Keras's saving can swallow a KeyboardInterrupt: the bundle is not made visible anyway."""
    before = {p.relative_to(saved): p.read_bytes() for p in saved.rglob("*") if p.is_file()}
    with interruptible():
        assert swallow_signal(signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt):
            save_bundle(
                saved, architecture="cnn8", classes=CLASSES, networks={"cnn_8": network}, boosters=None,
                thresholds=THRESHOLDS, spectrogram=SpectrogramSettings(), training={}, metrics={}, params={},
            )  # fmt: skip
    after = {p.relative_to(saved): p.read_bytes() for p in saved.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in saved.parent.iterdir()) == ["model"]
