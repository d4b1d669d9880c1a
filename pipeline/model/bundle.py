"""A trained model saved as a bundle directory (Keras files, XGBoost boosters, a JSON manifest).

A bundle never holds a pickle: networks are Keras ``.keras`` files (loaded with
``safe_mode=True``, so a bundle cannot run arbitrary code), boosters are XGBoost UBJSON files,
and everything else is in ``manifest.json``::

    MODEL_DIR/
      manifest.json          # what the model is, how it was made, and the sha256 of every file
      networks/<row>.keras   # one per Keras network, named after its networks.csv row
      boosters/<name>.ubj    # XGBoost boosters (hybrid models only)
      runtime/<row>.<variant>.onnx   # the networks as ONNX graphs, run without TensorFlow

The manifest holds the format version, the architecture's name, the class names, the
thresholds (``"detection"`` and one per class), the detection score's calibration when the
model has one (``"calibration"``: the breakpoints of a monotone map, plain numbers; see
:mod:`pipeline.detection.calibration`), the spectrogram settings with their
fingerprint, the training summary, the metrics, the hyperparameters by row, the versions of
batml and of its libraries, the creation time (UTC) and, under ``"files"``, each file's sha256
and role (``"network:<row>"``, ``"booster:<name>"`` or ``"graph:<row>.<variant>"``). A model made
from weights published elsewhere also records their ``"source"``, and a model with restricted
terms of use its ``"licence"``.

**Runtime graphs** (format 2): :func:`save_bundle` also writes each network that
:func:`pipeline.model.export.export_refusal` accepts as ONNX graphs (``windows``, and for a
valid-time network ``strip<k>`` per stride), which detection runs with ONNX Runtime, without
TensorFlow; the manifest's ``"runtime"`` says their precision (``float``, or ``int8`` when
training measured that it keeps the detection AP, :mod:`pipeline.model.precision`). A bundle
of format 1 has none: :mod:`pipeline.model.inference` exports them when it is loaded.

:func:`save_bundle` builds a bundle next to its destination and renames it into place, so an
interrupted save leaves the previous model (or nothing new) behind, never half a model.
:func:`load_bundle` checks the manifest, every file's checksum and the spectrogram settings
before anything is loaded; networks and boosters are then loaded on first use, once::

    bundle = load_bundle("models/hybrid", expect_fingerprint=cube_fingerprint)
    net = bundle.network("cnn_8")
    boosters = bundle.boosters()
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline._version import __version__
from pipeline.config import FEATURE_VERSION, SettingsError, SpectrogramSettings
from pipeline.detection.calibration import IDENTITY, CalibrationError, ScoreCalibration
from pipeline.files import json_ready, staging_directory, write_json
from pipeline.interrupt import raise_if_interrupted
from pipeline.model.registry import Architecture, get_architecture

if TYPE_CHECKING:
    import keras
    import xgboost

#: Written into every manifest; :func:`load_bundle` refuses bundles of a newer format.
FORMAT_VERSION = 2

#: The manifest's ``"format"`` value, telling a bundle's manifest from any other JSON file.
FORMAT_NAME = "batml-model-bundle"

#: The manifest's file name, at the bundle's top.
MANIFEST_NAME = "manifest.json"

#: The bundled default model (a ``hybrid_cnn_xgboost``), what :func:`open_model` opens by default.
DEFAULT_BUNDLE = Path(__file__).with_name("default")

#: The threshold key of the detection ("call" vs "not call") decision.
DETECTION = "detection"

#: Sub-folders holding the model files, each checked for unlisted files on loading.
NETWORKS_DIR = "networks"
BOOSTERS_DIR = "boosters"
RUNTIME_DIR = "runtime"

#: Precisions of a bundle's runtime graphs.
RUNTIME_PRECISIONS = ("float", "int8")

#: Libraries whose versions are recorded in the manifest (distribution names to try, in order).
LIBRARIES = {
    "tensorflow": ("tensorflow", "tensorflow-cpu", "tf-nightly"),
    "keras": ("keras",),
    "xgboost": ("xgboost", "xgboost-cpu"),
    "numpy": ("numpy",),
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime",),
}


class BundleError(ValueError):
    """A model bundle that cannot be saved, loaded or used; its message is ``'<path>: <reason>'``.

    Parameters
    ----------
    path : str or os.PathLike
        The bundle directory.
    reason : str
        What is wrong, in one line for the user.
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = " ".join(str(reason).split())  # one line, whatever the cause said
        super().__init__(f"{self.path}: {self.reason}")

    def __reduce__(self):
        # Exceptions cross process boundaries (Dask) by pickling: rebuild from both arguments.
        return type(self), (self.path, self.reason)


# ---------------------------------------------------------------------------------------------
# The loaded bundle


@dataclass
class ModelBundle:
    """A checked model bundle whose networks and boosters load on first use.

    Parameters
    ----------
    path : Path
        The bundle directory.
    architecture : str
        One of the six model names (see :mod:`pipeline.model.registry`).
    classes : list of str
        The class names, in the order of the model's outputs (after "not call").
    thresholds : dict of str to float
        ``"detection"`` and one decision threshold per class.
    spectrogram : SpectrogramSettings
        The settings of the spectrograms the model was trained on.
    manifest : dict
        The whole manifest, as read.
    calibration : ScoreCalibration
        The map of the raw call score to the reported detection score (the identity when the
        manifest has none); the detection threshold is in its units.
    """

    path: Path
    architecture: str
    classes: list[str]
    thresholds: dict[str, float]
    spectrogram: SpectrogramSettings
    manifest: dict
    calibration: ScoreCalibration = IDENTITY
    _networks: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _boosters: dict | None = field(default=None, init=False, repr=False, compare=False)
    _lock: Any = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    @property
    def fingerprint(self) -> str:
        """The fingerprint of :attr:`spectrogram` (a cube must have the same one)."""
        return self.spectrogram.fingerprint()

    @property
    def licence(self) -> str | None:
        """The terms of use recorded in the manifest (``None``: none beyond batml's own)."""
        return self.manifest.get("licence")

    @property
    def spec(self) -> Architecture:
        """The :class:`~pipeline.model.registry.Architecture` named by :attr:`architecture`."""
        return get_architecture(self.architecture)

    def network(self, row: str) -> keras.Model:
        """The Keras network of one row, loaded on the first call and kept.

        Parameters
        ----------
        row : str
            One of the architecture's network rows, e.g. ``"cnn_8"``.

        Returns
        -------
        keras.Model
            The network, uncompiled (for inference).

        Raises
        ------
        KeyError
            When the bundle has no network ``row``.
        BundleError
            When the file cannot be loaded, e.g. because it holds code (a ``Lambda`` layer)
            that safe mode refuses to run.
        """
        with self._lock:
            if row not in self._networks:
                self._networks[row] = self._load_network(row)
            return self._networks[row]

    def boosters(self) -> dict[str, xgboost.Booster]:
        """The XGBoost boosters by name, loaded on the first call and kept.

        Returns
        -------
        dict of str to xgboost.Booster
            In the manifest's order; empty for a model that is not a hybrid.

        Raises
        ------
        BundleError
            When a booster file cannot be loaded.
        """
        with self._lock:
            if self._boosters is None:
                self._boosters = self._load_boosters()
            return dict(self._boosters)

    @property
    def runtime(self) -> dict:
        """The manifest's ``"runtime"`` section (empty for a bundle without runtime graphs):
        ``precision`` (``"float"`` or ``"int8"``), ``opset``, and how int8 was chosen."""
        return dict(self.manifest.get("runtime") or {})

    def graph_files(self) -> dict[str, tuple[Path, str]]:
        """The runtime graphs: ``"<row>.<variant>"`` -> (path, sha256), checked on loading."""
        return {
            name: (self.path / rel, self.manifest["files"][rel]["sha256"])
            for name, rel in self._files_with_role("graph").items()
        }

    def _files_with_role(self, kind: str) -> dict[str, str]:
        """Names of the listed files of one kind (``"network"``, ``"booster"``) to their paths."""
        found = {}
        for name, entry in self.manifest["files"].items():
            role_kind, _, role_name = entry["role"].partition(":")
            if role_kind == kind:
                found[role_name] = name
        return found

    def _load_network(self, row: str) -> keras.Model:
        files = self._files_with_role("network")
        if row not in files:
            raise KeyError(f"{self.path}: no network {row!r}; it has {', '.join(files)}")
        import keras

        try:
            return keras.models.load_model(self.path / files[row], safe_mode=True, compile=False)
        except Exception as exc:  # Keras raises many kinds; the user needs one line
            reason = _first_line(exc)
            if "safe_mode" in reason or "safe mode" in reason.lower():
                raise BundleError(
                    self.path,
                    f"{files[row]} holds code (e.g. a Lambda layer) that safe mode refuses to "
                    "load; rebuild the network without it",
                ) from None
            raise BundleError(self.path, f"cannot load {files[row]}: {reason}") from None

    def _load_boosters(self) -> dict[str, xgboost.Booster]:
        import xgboost

        boosters = {}
        for name, rel in self._files_with_role("booster").items():
            try:
                boosters[name] = xgboost.Booster(model_file=str(self.path / rel))
            except xgboost.core.XGBoostError as exc:
                raise BundleError(self.path, f"cannot load {rel}: {_first_line(exc)}") from None
        return boosters

    def __getstate__(self) -> dict:
        # Pickled (e.g. sent to a Dask worker) without the loaded models or the lock: the
        # receiver loads its own copies on first use.
        state = dict(self.__dict__)
        state.update(_networks={}, _boosters=None, _lock=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


# ---------------------------------------------------------------------------------------------
# Saving


def save_bundle(
    path: str | os.PathLike,
    *,
    architecture: str,
    classes: list[str],
    networks: Mapping[str, keras.Model],
    boosters: Mapping[str, xgboost.Booster] | None,
    thresholds: Mapping[str, float],
    spectrogram: SpectrogramSettings,
    training: Mapping[str, Any],
    metrics: Mapping[str, Any],
    params: Mapping[str, Mapping[str, Any]],
    source: Mapping[str, Any] | None = None,
    licence: str | None = None,
    calibration: ScoreCalibration | None = None,
    graphs: Mapping[str, Mapping[str, Any]] | None = None,
    runtime: Mapping[str, Any] | None = None,
) -> Path:
    """Save a trained model as a bundle directory, replacing any bundle at ``path`` atomically.

    Everything is written into a hidden sibling directory, checksummed, the manifest last; the
    directory is then renamed onto ``path``. A bundle already at ``path`` is first renamed
    aside and removed only once the new one is in place; if saving fails, the temporary
    directory is removed and the old bundle stays as it was.

    Parameters
    ----------
    path : str or os.PathLike
        The bundle directory to create or replace. An existing directory that is not a
        bundle (no ``manifest.json``) and is not empty is never replaced.
    architecture : str
        One of the six model names, e.g. ``"hybrid_cnn_xgboost"``.
    classes : list of str
        Unique, non-empty class names, in the order of the model's outputs.
    networks : Mapping of str to keras.Model
        One network per row of the architecture (``{"cnn_8": model}``, or the detector and
        the classifier of a two-stage model).
    boosters : Mapping of str to xgboost.Booster or None
        The hybrid's boosters by name (a plain file name, e.g. one per output column);
        ``None`` or empty for the other models.
    thresholds : Mapping of str to float
        ``"detection"`` and one threshold per class, each in [0, 1].
    spectrogram : SpectrogramSettings
        The settings of the spectrograms the model was trained on.
    training, metrics : Mapping
        The training summary and the metrics, JSON-compatible (numpy values are converted,
        non-finite floats become ``null``).
    params : Mapping of str to Mapping
        The hyperparameters by row (``{"cnn_8": {...}, "xgboost_spectrogram": {...}}``).
    source : Mapping, optional
        Where weights made elsewhere came from (repository, commit, file, sha256...), for a
        model converted rather than trained here; the manifest's ``"source"``.
    licence : str, optional
        The terms the model may be used under, when they restrict its use (e.g. weights or
        training data under a non-commercial licence); the manifest's ``"licence"``, which
        :attr:`ModelBundle.licence` returns.
    calibration : ScoreCalibration, optional
        The detection score's calibration (the manifest's ``"calibration"``); none (or the
        identity): the raw call score is reported, and ``thresholds["detection"]`` is on it.
    graphs : Mapping of str to Mapping, optional
        The runtime graphs by network row, ``{row: {variant: onnx.ModelProto}}``
        (:func:`pipeline.model.export.runtime_graphs`, or their int8 versions). Default: the
        float graphs of every network the export accepts (none for the others, which then run
        in Keras).
    runtime : Mapping, optional
        The manifest's ``"runtime"`` section beyond the defaults (``precision``: ``"float"``;
        how it was chosen, e.g. the AP of each precision).

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    BundleError
        When an argument cannot make a valid bundle (unknown architecture, empty or repeated
        classes, networks not matching the architecture, thresholds missing a class, ...) or
        when writing fails; the old bundle, if any, is left untouched.
    """
    path = Path(path)
    arch = _known_architecture(path, architecture)
    classes = _checked_classes(path, classes)
    thresholds = _checked_thresholds(path, thresholds, classes)
    boosters = dict(boosters or {})
    _check_models(path, arch, networks, boosters)
    if not isinstance(spectrogram, SpectrogramSettings):
        raise BundleError(
            path, f"spectrogram must be SpectrogramSettings, not {type(spectrogram).__name__}"
        )
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "architecture": arch.name,
        "classes": classes,
        "thresholds": thresholds,
        **({"calibration": calibration.to_dict()} if calibration is not None and not calibration.is_identity else {}),
        "spectrogram": {
            "settings": spectrogram.to_dict(),
            "fingerprint": spectrogram.fingerprint(),
            "feature_version": FEATURE_VERSION,
        },
        "training": _json_ready(path, "training summary", training),
        "metrics": _json_ready(path, "metrics", metrics),
        "hyperparameters": _json_ready(path, "hyperparameters", params),
        **({"source": _json_ready(path, "source", dict(source))} if source else {}),
        **({"licence": str(licence)} if licence else {}),
        "package_version": __version__,
        "library_versions": _library_versions(),
        "created": _utc_now(),
    }
    graphs = _runtime_graphs(path, arch, networks, graphs)
    if graphs:
        from pipeline.model.export import OPSET

        runtime = {"format": "onnx", "opset": OPSET, "precision": "float", **dict(runtime or {})}
        if runtime["precision"] not in RUNTIME_PRECISIONS:
            raise BundleError(path, f"runtime precision {runtime['precision']!r} is not one of {RUNTIME_PRECISIONS}")
        manifest["runtime"] = _json_ready(path, "runtime", runtime)
    _refuse_foreign_directory(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with staging_directory(path, before_replace=raise_if_interrupted) as staging:
            # raise_if_interrupted: an interruption that Keras swallowed while saving leaves no bundle
            manifest["files"] = _write_models(path, staging, networks, boosters)
            manifest["files"].update(_write_graphs(staging, graphs))
            write_json(staging / MANIFEST_NAME, manifest)
    except OSError as exc:
        raise BundleError(path, f"cannot save the bundle: {_first_line(exc)}") from exc
    return path


def update_bundle(
    path: str | os.PathLike,
    *,
    thresholds: Mapping[str, float] | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> None:
    """Change a saved bundle's thresholds and/or metrics, rewriting its manifest atomically.

    The bundle is checked as by :func:`load_bundle` first. Both arguments are merged into what
    the manifest holds, key by key: ``thresholds={"detection": 0.4}`` changes only the
    detection threshold, ``metrics={"test": {...}}`` adds or replaces only ``"test"``.

    Parameters
    ----------
    path : str or os.PathLike
        The bundle directory.
    thresholds : Mapping of str to float, optional
        New thresholds, each key ``"detection"`` or a class name, each value in [0, 1].
    metrics : Mapping, optional
        New top-level metric entries (e.g. the scores on a test set after evaluation).

    Raises
    ------
    BundleError
        When the bundle is not valid or a threshold names no class.
    """
    bundle = load_bundle(path)
    manifest = dict(bundle.manifest)
    if thresholds is not None:
        unknown = sorted(set(thresholds) - set(manifest["thresholds"]))
        if unknown:
            raise BundleError(
                bundle.path,
                f"no threshold named {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(manifest['thresholds'])}",
            )
        merged = {**manifest["thresholds"], **thresholds}
        manifest["thresholds"] = _checked_thresholds(bundle.path, merged, bundle.classes)
    if metrics is not None:
        manifest["metrics"] = {
            **manifest["metrics"],
            **_json_ready(bundle.path, "metrics", metrics),
        }
    manifest["updated"] = _utc_now()
    try:
        write_json(bundle.path / MANIFEST_NAME, manifest)
    except OSError as exc:
        raise BundleError(bundle.path, f"cannot rewrite {MANIFEST_NAME}: {_first_line(exc)}") from exc


# ---------------------------------------------------------------------------------------------
# Loading


def load_bundle(path: str | os.PathLike, *, expect_fingerprint: str | None = None) -> ModelBundle:
    """Check a bundle directory and return it, its networks and boosters still unloaded.

    Parameters
    ----------
    path : str or os.PathLike
        The bundle directory.
    expect_fingerprint : str, optional
        The spectrogram fingerprint of the data the model will read (a cube's); the bundle is
        refused when its own differs.

    Returns
    -------
    ModelBundle

    Raises
    ------
    BundleError
        With one line naming the bundle and the reason: no or unreadable ``manifest.json``,
        invalid JSON, a format newer than this code, an unknown architecture, invalid classes,
        thresholds or calibration, spectrogram settings that do not match their fingerprint (manifest
        edited by hand) or ``expect_fingerprint``, a listed file missing or whose checksum
        differs (tampered or corrupted), an unlisted file in ``networks/`` or ``boosters/``.
    """
    path = Path(path)
    manifest = _read_manifest(path)
    arch = _known_architecture(path, manifest.get("architecture"))
    classes = _checked_classes(path, manifest.get("classes"))
    thresholds = manifest.get("thresholds")
    if not isinstance(thresholds, Mapping):
        raise BundleError(path, f"{MANIFEST_NAME} has no thresholds")
    thresholds = _checked_thresholds(path, thresholds, classes)
    try:
        calibration = ScoreCalibration.from_dict(manifest.get("calibration"))
    except CalibrationError as exc:
        raise BundleError(path, f"{MANIFEST_NAME}: {exc}") from None
    spectrogram = _manifest_spectrogram(path, manifest)
    for key in ("training", "metrics", "hyperparameters"):
        if not isinstance(manifest.get(key), dict):
            raise BundleError(path, f"{MANIFEST_NAME} has no {key} object")
    _check_files(path, arch, manifest)
    if expect_fingerprint is not None and expect_fingerprint != spectrogram.fingerprint():
        raise BundleError(
            path,
            f"model expects spectrogram settings {spectrogram.fingerprint()}, the cube has "
            f"{expect_fingerprint}; re-ingest with the model's settings or use another model",
        )
    return ModelBundle(
        path=path,
        architecture=arch.name,
        classes=classes,
        thresholds=thresholds,
        spectrogram=spectrogram,
        manifest=manifest,
        calibration=calibration,
    )


def _read_manifest(path: Path) -> dict:
    """The manifest as a dict, or a BundleError saying why there is none."""
    manifest_path = path / MANIFEST_NAME
    try:
        text = manifest_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if not path.exists():
            leftovers = sorted(path.parent.glob(f".{path.name}.previous-*"))
            hint = (
                f"; an interrupted save left the previous model at {leftovers[-1]}"
                if leftovers
                else ""
            )
            raise BundleError(path, f"no model bundle here{hint}") from None
        reason = f"no {MANIFEST_NAME}: not a model bundle, or an incomplete one"
        raise BundleError(path, reason) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(path, f"cannot read {MANIFEST_NAME}: {_first_line(exc)}") from None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
        reason = f"{MANIFEST_NAME} is not valid JSON ({exc.msg} at line {exc.lineno})"
        raise BundleError(path, reason) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise BundleError(path, f"{MANIFEST_NAME} is not a batml model manifest")
    version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise BundleError(path, f"{MANIFEST_NAME} has an invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise BundleError(
            path,
            f"bundle format {version} is newer than this batml reads (up to {FORMAT_VERSION}); "
            "upgrade batml",
        )
    if not isinstance(manifest.get("files"), dict):
        raise BundleError(path, f"{MANIFEST_NAME} has no files object")
    return manifest


def _manifest_spectrogram(path: Path, manifest: dict) -> SpectrogramSettings:
    """The manifest's spectrogram settings, refused unless they match the stored fingerprint."""
    section = manifest.get("spectrogram")
    if not isinstance(section, dict) or not isinstance(section.get("settings"), dict):
        raise BundleError(path, f"{MANIFEST_NAME} has no spectrogram settings")
    try:
        settings = SpectrogramSettings.from_dict(section["settings"], source=MANIFEST_NAME)
    except (SettingsError, TypeError) as exc:
        raise BundleError(path, f"invalid spectrogram settings: {_first_line(exc)}") from None
    stored = section.get("fingerprint")
    if stored != settings.fingerprint():
        made_with = section.get("feature_version")
        if made_with != FEATURE_VERSION:
            raise BundleError(
                path,
                f"model made for feature version {made_with}, this batml computes version "
                f"{FEATURE_VERSION}; retrain the model",
            )
        raise BundleError(
            path,
            f"spectrogram settings do not match their fingerprint {stored} (they give "
            f"{settings.fingerprint()}): {MANIFEST_NAME} was edited by hand",
        )
    return settings


def _check_files(path: Path, arch: Architecture, manifest: dict) -> None:
    """Refuse badly listed, missing, altered or unlisted model files."""
    files = manifest["files"]
    rows, booster_names, graphs = [], [], []
    for name, entry in files.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("role"), str):
            raise BundleError(path, f"{MANIFEST_NAME} lists {name!r} without a role")
        kind, _, role_name = entry["role"].partition(":")
        expected = _model_file(kind, role_name) if _safe_name(role_name) else None
        if expected != name:
            reason = f"{MANIFEST_NAME} lists {name!r} with an invalid role {entry['role']!r}"
            raise BundleError(path, reason)
        {"graph": graphs, "network": rows}.get(kind, booster_names).append(role_name)
    if sorted(rows) != sorted(arch.network_rows):
        raise BundleError(
            path,
            f"{arch.name} needs networks {', '.join(arch.network_rows)}; the bundle lists "
            f"{', '.join(rows) or 'none'}",
        )
    for graph in graphs:
        if graph.partition(".")[0] not in arch.network_rows:
            name = _model_file("graph", graph)
            raise BundleError(path, f"{MANIFEST_NAME} lists graph {name!r} of no network of {arch.name}")
    if arch.hybrid and not booster_names:
        raise BundleError(path, f"{arch.name} needs XGBoost boosters; the bundle lists none")
    if not arch.hybrid and booster_names:
        reason = f"{arch.name} uses no boosters; the bundle lists {', '.join(booster_names)}"
        raise BundleError(path, reason)
    for name, entry in files.items():
        try:
            digest = _sha256(path / name)
        except FileNotFoundError:
            raise BundleError(path, f"missing file: {name}") from None
        except OSError as exc:
            raise BundleError(path, f"cannot read {name}: {_first_line(exc)}") from None
        if digest != entry.get("sha256"):
            raise BundleError(path, f"tampered or corrupted: {name}")
    unlisted = []
    for folder in (NETWORKS_DIR, BOOSTERS_DIR, RUNTIME_DIR):
        for entry in sorted((path / folder).rglob("*")):
            name = entry.relative_to(path).as_posix()
            if name not in files and not entry.is_dir():
                unlisted.append(name)
    if unlisted:
        raise BundleError(path, f"unlisted file(s) in the bundle: {', '.join(unlisted)}")


# ---------------------------------------------------------------------------------------------
# Validation shared by saving and loading


def _known_architecture(path: Path, name: Any) -> Architecture:
    try:
        return get_architecture(name)
    except KeyError as exc:
        raise BundleError(path, exc.args[0]) from None


def _checked_classes(path: Path, classes: Any) -> list[str]:
    if isinstance(classes, (str, bytes)) or not isinstance(classes, (list, tuple)):
        raise BundleError(path, f"classes must be a list of names, not {type(classes).__name__}")
    if not classes:
        raise BundleError(path, "classes is empty; a model needs at least one class")
    bad = [c for c in classes if not isinstance(c, str) or not c.strip()]
    if bad:
        raise BundleError(path, f"class names must be non-empty strings, not {bad[0]!r}")
    repeated = sorted({c for c in classes if classes.count(c) > 1})
    if repeated:
        raise BundleError(path, f"class names are not unique: {', '.join(repeated)}")
    if DETECTION in classes:
        reason = f"{DETECTION!r} is reserved for the detection threshold; rename the class"
        raise BundleError(path, reason)
    return list(classes)


def _checked_thresholds(path: Path, thresholds: Mapping, classes: list[str]) -> dict[str, float]:
    if not isinstance(thresholds, Mapping):
        raise BundleError(path, f"thresholds must be a mapping, not {type(thresholds).__name__}")
    expected = [DETECTION, *classes]
    missing = [k for k in expected if k not in thresholds]
    if missing:
        raise BundleError(path, f"thresholds missing for {', '.join(missing)}")
    unknown = sorted(set(thresholds) - set(expected))
    if unknown:
        raise BundleError(path, f"thresholds for unknown class(es) {', '.join(map(str, unknown))}")
    checked = {}
    for key in expected:
        value = thresholds[key]
        try:
            if isinstance(value, (bool, str)):
                raise TypeError
            number = float(value)
        except (TypeError, ValueError):
            raise BundleError(path, f"threshold {key} = {value!r} is not a number") from None
        if not 0.0 <= number <= 1.0:
            raise BundleError(path, f"threshold {key} = {number} is outside [0, 1]")
        checked[key] = number
    return checked


def _check_models(path: Path, arch: Architecture, networks: Any, boosters: dict) -> None:
    if not isinstance(networks, Mapping) or sorted(networks) != sorted(arch.network_rows):
        given = ", ".join(networks) if isinstance(networks, Mapping) else type(networks).__name__
        raise BundleError(
            path,
            f"{arch.name} has networks {', '.join(arch.network_rows)}; given {given or 'none'}",
        )
    if arch.hybrid and not boosters:
        raise BundleError(path, f"{arch.name} is a hybrid: give its XGBoost boosters")
    if not arch.hybrid and boosters:
        raise BundleError(path, f"{arch.name} uses no boosters; given {', '.join(boosters)}")
    bad = [name for name in boosters if not _safe_name(name)]
    if bad:
        raise BundleError(path, f"booster name {bad[0]!r} cannot be a file name")


def _safe_name(name: Any) -> bool:
    """True when ``name`` can be one file name on any platform (no folders, no hidden files)."""
    return (
        isinstance(name, str)
        and 0 < len(name) <= 100
        and not name.startswith(".")
        and not any(c in name for c in '/\\:*?"<>|')
        and all(c.isprintable() for c in name)
    )


def _model_file(kind: str, name: str) -> str | None:
    """The bundle-relative file of a network row or a booster name."""
    if kind == "network":
        return f"{NETWORKS_DIR}/{name}.keras"
    if kind == "booster":
        return f"{BOOSTERS_DIR}/{name}.ubj"
    if kind == "graph":
        return f"{RUNTIME_DIR}/{name}.onnx"
    return None


# ---------------------------------------------------------------------------------------------
# Files


def _write_models(path: Path, staging: Path, networks: Mapping, boosters: Mapping) -> dict:
    """Save the networks and boosters under ``staging``; their manifest ``"files"`` entries."""
    files = {}
    (staging / NETWORKS_DIR).mkdir()
    for row, network in networks.items():
        name = _model_file("network", row)
        network.save(str(staging / name))
        files[name] = {"sha256": _sha256(staging / name), "role": f"network:{row}"}
    if boosters:
        (staging / BOOSTERS_DIR).mkdir()
    for booster_name, booster in boosters.items():
        name = _model_file("booster", booster_name)
        booster.save_model(str(staging / name))
        files[name] = {"sha256": _sha256(staging / name), "role": f"booster:{booster_name}"}
    return files


def _runtime_graphs(path: Path, arch: Architecture, networks: Mapping, graphs: Mapping | None) -> dict:
    """``{"<row>.<variant>": graph}``: the graphs given, or the float graphs of every network the
    ONNX export accepts."""
    if graphs is None:
        from pipeline.model.export import runtime_graphs

        graphs = {}
        for row, network in networks.items():
            try:
                graphs[row] = runtime_graphs(network)
            except ValueError:  # not a CNN the export rebuilds: detection runs it in Keras
                continue
    named = {}
    for row, variants in graphs.items():
        if row not in arch.network_rows:
            raise BundleError(path, f"graphs given for {row!r}, which is not a network of {arch.name}")
        for variant, graph in variants.items():
            name = f"{row}.{variant}"
            if not _safe_name(name):
                raise BundleError(path, f"graph name {name!r} cannot be a file name")
            named[name] = graph
    return named


def _write_graphs(staging: Path, graphs: Mapping) -> dict:
    """Save the runtime graphs under ``staging``; their manifest ``"files"`` entries."""
    import onnx

    files = {}
    if graphs:
        (staging / RUNTIME_DIR).mkdir()
    for graph_name, graph in graphs.items():
        name = _model_file("graph", graph_name)
        onnx.save(graph, str(staging / name))
        files[name] = {"sha256": _sha256(staging / name), "role": f"graph:{graph_name}"}
    return files


def _refuse_foreign_directory(path: Path) -> None:
    """Refuse to replace anything but a bundle or an empty directory."""
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir():
        raise BundleError(path, "exists and is not a directory; refusing to replace it")
    if not (path / MANIFEST_NAME).exists() and any(path.iterdir()):
        raise BundleError(path, "exists and is not a model bundle; refusing to replace it")


def _sha256(file: Path) -> str:
    with open(file, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _json_ready(path: Path, what: str, value: Any) -> Any:
    """``value`` as plain JSON types (:func:`pipeline.files.json_ready`, strict), or a :class:`BundleError`."""
    try:
        return json_ready(value, strict=True)
    except TypeError as exc:
        raise BundleError(path, f"{what}: {exc}") from None


def _library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries a bundle depends on (None when not installed)."""
    versions = {}
    for library, distributions in LIBRARIES.items():
        versions[library] = None
        for distribution in distributions:
            try:
                versions[library] = metadata.version(distribution)
                break
            except metadata.PackageNotFoundError:
                continue
    return versions


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
