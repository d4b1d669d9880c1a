"""A bundle's network as ONNX graphs for the TensorFlow-free runtime, wherever they come from.

Detection scores windows with :class:`pipeline.model.runtime.NetworkRuntime` (ONNX Runtime), not
Keras. :func:`runtime_graphs` finds the graphs of a bundle's network:

- a bundle of format 2 lists them in its manifest (:func:`pipeline.model.bundle.save_bundle`
  wrote them, at the precision training chose: ``float``, or ``int8`` where it kept the
  detection AP), checked like every bundle file;
- for a bundle of format 1 (made before the runtime existed, such as an older bundled model), or
  when float graphs are asked of an int8 bundle, the graphs are exported from the bundle's Keras
  network once and kept in a cache folder keyed by the network file's SHA-256
  (:func:`graph_cache_dir`; in memory when the cache cannot be written). That first export
  imports TensorFlow in the process that asks (the driver of ``batml detect``); the workers
  never do.

:class:`RuntimeGraphs` is what travels to the Dask workers: file paths and checksums (or the
bytes of graphs held in memory), a few hundred bytes. A worker opens it with
:meth:`RuntimeGraphs.open`, checking every checksum, on ONNX Runtime with its own thread count.

Models whose network the export does not rebuild (two-stage models, ResNets:
:func:`pipeline.model.export.export_refusal`) have no graphs, and neither have the bundles
``batml convert`` makes: :func:`runtime_graphs` returns None and detection runs them in Keras. A
model trained ``--from`` a converted reference network has graphs: they rebuild its frequency
flip (:func:`pipeline.model.export.has_frequency_flip`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.model.bundle import RUNTIME_PRECISIONS, BundleError

#: Precisions :func:`runtime_graphs` accepts: the bundle's own choice, or one of the two.
PRECISIONS = ("auto", *RUNTIME_PRECISIONS)

#: Environment variable naming the cache folder of exported graphs.
CACHE_VARIABLE = "BATML_CACHE_DIR"

#: Bumped when the export changes, so that older cached graphs are not reused.
EXPORT_VERSION = 1


def graph_cache_dir() -> Path:
    """Where graphs exported on load are kept: ``$BATML_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/batml``, else ``~/.cache/batml``."""
    if os.environ.get(CACHE_VARIABLE):
        return Path(os.environ[CACHE_VARIABLE])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "batml"


@dataclass(frozen=True)
class GraphSource:
    """One ONNX graph: a file and its SHA-256, or its bytes (``path`` None)."""

    sha256: str
    path: str | None = None
    data: bytes | None = field(default=None, repr=False)

    def read(self) -> bytes:
        """The graph's bytes, refused in one line when they are not the ones expected.

        Raises
        ------
        pipeline.model.runtime.RuntimeModelError
            When the file is missing, unreadable or altered.
        """
        from pipeline.model.runtime import RuntimeModelError

        if self.data is not None:
            data = self.data
        else:
            try:
                data = Path(self.path).read_bytes()
            except OSError as exc:
                raise RuntimeModelError(f"{self.path}: cannot read it ({exc.strerror or exc})") from None
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise RuntimeModelError(f"{self.path or '<in memory>'}: tampered or corrupted (checksum differs)")
        return data


@dataclass(frozen=True)
class RuntimeGraphs:
    """The ONNX graphs of one network, as detection runs them.

    Parameters
    ----------
    row : str
        The network's row (``cnn_8``...).
    precision : {"float", "int8"}
    windows : GraphSource
        :func:`pipeline.model.export.window_graph` (or its int8 version).
    strips : dict of int to GraphSource
        :func:`pipeline.model.export.strip_graph` by stride; empty for a network padded along
        time (``same``), whose windows are scored one by one.
    origin : {"bundle", "cache", "memory"}
        Listed in the bundle, exported on load into the cache, or exported on load and held in
        memory (the cache could not be written).
    """

    row: str
    precision: str
    windows: GraphSource
    strips: dict = field(default_factory=dict)
    origin: str = "bundle"

    def open(self, threads: int = 1):
        """A :class:`pipeline.model.runtime.NetworkRuntime` of these graphs (no boosters), on
        ONNX Runtime with ``threads`` threads; every checksum checked first."""
        from pipeline.model.runtime import NetworkRuntime

        strips = {stride: source.read() for stride, source in self.strips.items()}
        return NetworkRuntime(self.windows.read(), strips or None, threads=threads)

    def describe(self) -> dict:
        """What a report says of the runtime: precision, graphs, where they came from."""
        return {
            "engine": "onnxruntime",
            "precision": self.precision,
            "strip_strides": sorted(self.strips),
            "graphs": self.origin,
        }


def runtime_graphs(bundle, precision: str = "auto") -> RuntimeGraphs | None:
    """The graphs of a bundle's network at a precision, or None when its model cannot run on
    the runtime (detection then runs it in Keras).

    Parameters
    ----------
    bundle : pipeline.model.bundle.ModelBundle
    precision : {"auto", "float", "int8"}
        ``auto``: the bundle's own (its manifest's ``runtime.precision``; float for a bundle
        without graphs). ``float`` of an int8 bundle exports float graphs from its network.

    Raises
    ------
    BundleError
        When ``int8`` is asked of a bundle that holds no int8 graphs, or an unknown precision.
    """
    if precision not in PRECISIONS:
        raise BundleError(bundle.path, f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    arch = bundle.spec
    if arch.two_stage or arch.family != "cnn":
        return None
    row = arch.network_rows[0]
    listed = {
        name.partition(".")[2]: source
        for name, source in bundle.graph_files().items()
        if name.partition(".")[0] == row
    }
    if not listed and bundle.manifest.get("format_version", 1) >= 2:
        return None  # saved with graphs wherever the export could rebuild the network: Keras it is
    own = bundle.runtime.get("precision", "float") if listed else None
    wanted = (own or "float") if precision == "auto" else precision
    if listed and own == wanted:
        return _from_files(row, wanted, {v: (str(p), sha) for v, (p, sha) in listed.items()}, "bundle")
    if wanted == "int8":
        raise BundleError(
            bundle.path,
            "holds no int8 graphs (training keeps them only when they keep the detection AP and mAP); "
            "detect with --precision float or auto",
        )
    return exported_graphs(bundle, row)


def _from_files(row: str, precision: str, files: dict, origin: str) -> RuntimeGraphs | None:
    from pipeline.model.export import WINDOW_VARIANT

    if WINDOW_VARIANT not in files:
        return None
    strips = {
        int(variant.removeprefix("strip")): GraphSource(sha, path)
        for variant, (path, sha) in files.items()
        if variant.startswith("strip") and variant.removeprefix("strip").isdigit()
    }
    path, sha = files[WINDOW_VARIANT]
    return RuntimeGraphs(row, precision, GraphSource(sha, path), strips, origin)


def exported_graphs(bundle, row: str) -> RuntimeGraphs | None:
    """The float graphs of a bundle's network, exported from its Keras file once and cached.

    The cache entry is the folder ``<cache>/graphs/<sha256 of the network file>-v<version>``,
    written atomically; a later call, from any process, reads it without TensorFlow. When the
    cache cannot be written, the graphs are exported again by every process that asks, and
    held in memory.
    """
    key = bundle.manifest["files"][f"networks/{row}.keras"]["sha256"]
    folder = graph_cache_dir() / "graphs" / f"{key[:32]}-v{EXPORT_VERSION}"
    index = folder / "graphs.json"
    if index.is_file():
        try:
            files = {v: (str(folder / f"{v}.onnx"), sha) for v, sha in json.loads(index.read_text()).items()}
            return _from_files(row, "float", files, "cache")
        except (OSError, ValueError, AttributeError):
            pass  # an unreadable entry: export again over it
    from pipeline.model.export import runtime_graphs as export_graphs

    try:
        graphs = export_graphs(bundle.network(row))
    except ValueError:  # not a network the export rebuilds: Keras it is
        return None
    blobs = {variant: graph.SerializeToString() for variant, graph in graphs.items()}
    digests = {variant: hashlib.sha256(blob).hexdigest() for variant, blob in blobs.items()}
    try:
        _write_cache_entry(folder, blobs, digests)
    except OSError:
        from pipeline.model.export import WINDOW_VARIANT

        strips = {
            int(v.removeprefix("strip")): GraphSource(digests[v], None, blobs[v]) for v in blobs if v != WINDOW_VARIANT
        }
        return RuntimeGraphs(row, "float", GraphSource(digests[WINDOW_VARIANT], None, blobs[WINDOW_VARIANT]), strips, "memory")
    return _from_files(row, "float", {v: (str(folder / f"{v}.onnx"), digests[v]) for v in blobs}, "cache")


def _write_cache_entry(folder: Path, blobs: dict, digests: dict) -> None:
    """Write one cache entry through a staging folder renamed into place (two processes
    exporting at once both succeed; the second rename finds the first's entry and keeps it)."""
    import shutil
    import tempfile

    from pipeline.files import write_json

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    try:
        for variant, blob in blobs.items():
            (staging / f"{variant}.onnx").write_bytes(blob)
        write_json(staging / "graphs.json", digests, sort_keys=True)
        try:
            os.rename(staging, folder)
        except OSError:
            if not (folder / "graphs.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
