"""Reliability and security (issue 6): bad inputs through ``batml train``; a killed worker,
SIGINT and SIGTERM during training; full disks and read-only folders for ingest, detect and
train; untrusted ``.npz`` files and bundles; annotation names that would leave the audio folder.

Full disks and read-only folders are real: small tmpfs mounts (``mount -t tmpfs``), which
needs root (file modes do not stop root, so ``chmod`` would prove nothing); those tests skip,
saying why, where mounting is not permitted.
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.annotations.dataset import read_dataset
from pipeline.annotations.matching import unsafe_name, usable_annotations
from pipeline.cli import main
from pipeline.io.annotations import AnnotationError, read_reference_npz
from pipeline.io.cube import open_cube
from pipeline.model.bundle import BundleError, load_bundle
from pipeline.model.predictor import Predictor
from pipeline.simulation import simulate_archive
from pipeline.testing import OK, write_bad_corpus, write_tone
from pipeline.training.job import TrainSettings, train

pytestmark = pytest.mark.slow

#: Small boosters, but enough rounds that a worker can be killed while one trains.
XGBOOST = "name,max_depth,eta,n_estimators,gamma,subsample,scale_pos_weight,min_child_weight\n" \
    "xgboost_spectrogram,4,0.3,100,0.001,0.9,1.5,1\n"  # fmt: skip
SEED = 1


@pytest.fixture(scope="module")
def lab(tmp_path_factory, client):
    """A tiny annotated archive with the bad-file corpus in ``odd/`` and a link to a recording
    outside it; its cube; and a hybrid model trained on it without incident (the reference)."""
    from pipeline.ingestion import ingest

    root = tmp_path_factory.mktemp("reliability")
    archive = simulate_archive(root / "audio", minutes=0.5, seed=12, empty_fraction=0.2, test_fraction=0.4)
    corpus = write_bad_corpus(archive.root / "odd")
    outside = write_tone(root / "outside" / "elsewhere.wav", 384_000, 0.1, 40_000.0)
    (archive.root / "odd" / "link_out.wav").symlink_to(outside)
    xgb = root / "xgboost.csv"
    xgb.write_text(XGBOOST)
    cube = root / "cube.zarr"
    assert ingest(archive.root, cube, client=client, progress=False).complete
    settings = TrainSettings(model_type="hybrid_cnn_xgboost", epochs=1, xgboost_csv=str(xgb), seed=SEED)
    reference = root / "reference"
    train(archive.annotations_npz, archive.root, reference, settings=settings, cube=cube, client=client, progress=False)
    return SimpleNamespace(
        root=root, archive=archive, corpus=corpus, outside=outside, xgb=xgb, cube=cube,
        settings=settings, reference=reference,
    )  # fmt: skip


def _outputs(bundle_dir: Path) -> np.ndarray:
    """The model's probabilities on fixed windows: what 'equal in its outputs' compares."""
    windows = np.random.default_rng(0).random((64, 130, 20, 1), dtype=np.float32)
    return Predictor.from_bundle(load_bundle(bundle_dir))(windows)


def _train_argv(lab, out: Path, cube: Path, *extra: str) -> list[str]:
    return [
        "train", str(lab.archive.annotations_npz), "--audio", str(lab.archive.root), "--out", str(out),
        "--cube", str(cube), "--model-type", "hybrid_cnn_xgboost", "--epochs", "1",
        "--xgboost-params", str(lab.xgb), "--seed", str(SEED), "--workers", "2", "-q", *extra,
    ]  # fmt: skip


def _error_line(err: str) -> str:
    """The one line an error gives (TensorFlow's start-up chatter on stderr left out)."""
    lines = [line for line in err.splitlines() if line.startswith("batml:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _leftovers(folder: Path, name: str) -> list[Path]:
    """Partial bundles (``.NAME.partial-*``), set-aside ones and embedding scratch folders."""
    return [p for p in folder.iterdir() if p.name.startswith((f".{name}.", "batml-embedding-", ".batml-write-test-"))]


# --- 1. bad inputs through train --------------------------------------------------------------


def test_corpus_covers_every_kind_of_bad_input(lab):
    names = set(lab.corpus)
    expected = {
        "empty.wav", "header_only.wav", "truncated_header.wav", "truncated_data.wav", "text.wav",
        "random_bytes.wav", "claims_gigabytes.wav", "zero_rate.wav", "zero_channels.wav", "pcm8.wav",
        "pcm24.wav", "pcm32.wav", "float32.wav", "float_nan.wav", "float_inf.wav", "stereo.wav",
        "rate_8khz.wav", "ten_samples.wav", "silence.wav", "clipping.wav", "guano_te10_50khz.wav",
        "guano_malformed.wav", "x.wav", "with spaces in the name.wav", "Chauve-souris été.wav",
        "-leading dash.wav",
    }  # fmt: skip
    assert expected <= names
    assert (lab.archive.root / "odd" / "x.wav").is_dir()
    assert max(len(n.encode()) for n in names) >= 250  # a very long name


def test_train_reports_every_bad_recording_and_trains_on_the_good_ones(lab, tmp_path, capsys):
    """A CSV of calls naming the good recordings, every file of the corpus, names that leave the
    audio folder and a link to a file outside it: training completes on the usable ones, and
    each other one gets one line with its name and reason; exit status 3; no traceback."""
    import pandas as pd

    good = pd.read_csv(lab.archive.annotations_csv)
    rows = [{"file": f"odd/{Path(name).stem}", "position": 0.01, "class": 1, "duration": 0.1, "split": "train"}
            for name in lab.corpus]  # fmt: skip
    escapes = {
        "../../etc/passwd": "refused: '..'",
        "/etc/passwd": "refused: an absolute path",
        "odd/../../outside/elsewhere": "refused: '..'",
        "odd/link_out": f"refused: a link to {lab.outside.resolve()}, outside the audio folder",
        "site99/missing": "not in the cube",
    }
    rows += [{"file": name, "position": 0.01, "class": 1, "duration": 0.1, "split": "train"} for name in escapes]
    dataset = tmp_path / "calls.csv"
    pd.concat([good, pd.DataFrame(rows)]).to_csv(dataset, index=False)
    model = tmp_path / "cnn8"
    code = main([
        "train", str(dataset), "--audio", str(lab.archive.root), "--out", str(model), "--cube", str(lab.cube),
        "--model-type", "cnn8", "--epochs", "1", "--workers", "1", "-q",
    ])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 3, out + err
    assert "Traceback" not in out + err
    skipped = [line for line in out.splitlines() if line.startswith("skipped: ")]
    expected = {f"odd/{Path(n).stem}": reason for n, reason in lab.corpus.items() if reason != OK}
    expected["odd/x"] = "not in the cube"  # a directory named x.wav: no recording
    expected.update(escapes)
    for name, reason in expected.items():
        lines = [line for line in skipped if line.startswith(f"skipped: {name}: ")]
        assert len(lines) == 1 and reason in lines[0], (name, reason, skipped)
    assert len(skipped) == len(expected), skipped
    manifest = load_bundle(model).manifest
    n_good = len(read_dataset(dataset).train) - len(expected)
    assert manifest["training"]["recordings"]["fit"] + manifest["training"]["recordings"]["validation"] == n_good


def test_annotation_names_cannot_leave_the_audio_folder(lab, tmp_path):
    """Names are matched against the recordings found under the audio folder, never opened:
    '..', absolute names (POSIX or Windows) and links to files outside are refused."""
    from pipeline.annotations.dataset import Annotations
    from pipeline.io.annotations import RecordingCalls

    for name in ("../x", "a/../../x", "..\\..\\x", "/etc/passwd", "C:\\data\\x", "C:/data/x", "\\\\server\\share\\x"):
        assert unsafe_name(name) is not None, name
    for name in ("site01/20260618_213107", "odd/-leading dash", "odd/..hidden..name", "x..y"):
        assert unsafe_name(name) is None, name
    cube = open_cube(lab.cube)
    names = ["odd/link_out", "odd/pcm16", "odd/../odd/pcm16", str(lab.archive.root / "odd" / "pcm16")]
    recs = [RecordingCalls(n, 0.1, np.array([0.01]), np.array([1])) for n in names]
    kept, problems = usable_annotations(Annotations(recs[:2], recs[2:], ["a"], True), cube, lab.archive.root)
    assert [r.file for r in kept.train] == ["odd/pcm16"] and kept.test == []
    assert len(problems) == 3 and all(": refused: " in p for p in problems), problems
    # Without the audio folder (a URL), the link cannot be checked but names still cannot escape.
    kept, problems = usable_annotations(Annotations(recs[:2], recs[2:], ["a"], True), cube, None)
    assert [r.file for r in kept.train] == ["odd/link_out", "odd/pcm16"] and len(problems) == 2


def test_evaluate_lists_the_recordings_it_leaves_out(lab, tmp_path, capsys):
    """'batml evaluate' refuses the same names as 'train' (a link outside the audio folder,
    '..', a recording not found), lists each with its reason, records them in evaluation.json
    and exits 3; the recordings it keeps are evaluated as if the others were not there."""
    import json

    import pandas as pd

    from pipeline.annotations import read_annotations

    model = tmp_path / "model"
    shutil.copytree(lab.reference, model)
    calls = read_annotations(lab.archive.annotations_npz).calls[["file", "split", "position", "class", "duration"]]
    names = ["odd/link_out", "../escape", "nowhere/missing"]
    extra = pd.DataFrame({"file": names, "split": "test", "position": 0.05, "class": "Barbarg", "duration": 0.1})
    clean, dirty = tmp_path / "clean.csv", tmp_path / "dirty.csv"
    calls.to_csv(clean, index=False)
    pd.concat([calls, extra]).to_csv(dirty, index=False)

    def evaluate(csv: Path) -> tuple[int, dict, list[str]]:
        argv = ["evaluate", str(model), str(csv), "--audio", str(lab.archive.root), "--cube", str(lab.cube)]
        status = main([*argv, "--workers", "1", "-q", "--json"])
        out, err = capsys.readouterr()
        return status, json.loads(out), [line for line in err.splitlines() if line.startswith("skipped: ")]

    status, result, skipped = evaluate(dirty)
    assert status == 3, skipped
    assert len(skipped) == 3 and [sum(f"skipped: {n}:" in line for line in skipped) for n in names] == [1, 1, 1]
    assert "outside the audio folder" in next(line for line in skipped if "odd/link_out" in line)
    assert json.loads((model / "evaluation.json").read_text())["skipped"] == result["skipped"]
    assert len(result["skipped"]) == 3
    status, reference, skipped = evaluate(clean)
    assert status == 0 and skipped == [] and reference["skipped"] == []
    assert result["detection"] == reference["detection"] and result["classification"] == reference["classification"]


# --- 3. untrusted files -------------------------------------------------------------------------


class _Exploit:
    """Unpickling it writes a file: proof that pickle ran code."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (exec, (f"open({str(self.target)!r}, 'w').write('pwned')",))


def _npz_with(path: Path, train_pos) -> Path:
    ragged = np.empty(len(train_pos), dtype=object)
    for i, item in enumerate(train_pos):
        ragged[i] = item
    np.savez(
        path, train_files=np.array(["a"]), train_durations=np.array([1.0]), train_pos=ragged,
        test_files=np.array([], dtype=str), test_durations=np.array([]), test_pos=np.empty(0, dtype=object),
    )  # fmt: skip
    return path


@pytest.mark.parametrize("command", ["train", "convert"])
def test_malicious_npz_never_runs_without_the_flag(lab, tmp_path, capsys, command):
    pwned = tmp_path / "pwned.txt"
    evil = _npz_with(tmp_path / "evil.npz", [_Exploit(pwned)])
    if command == "train":
        argv = ["train", str(evil), "--audio", str(lab.archive.root), "--out", str(tmp_path / "m"), "--workers", "1", "-q"]
    else:
        argv = ["convert", str(evil), "-o", str(tmp_path / "calls.csv")]
    assert main(argv) == 1
    line = _error_line(capsys.readouterr().err)
    assert str(evil) in line and "--trust-npz" in line and "batml convert" in line
    assert not pwned.exists() and not (tmp_path / "m").exists() and not (tmp_path / "calls.csv").exists()
    # The payload is live: trusting the file runs it (what the flag is for: your own files only).
    with pytest.raises(AnnotationError):
        read_reference_npz(evil, trust=True)
    assert pwned.read_text() == "pwned"


@pytest.mark.parametrize("item", [{"a": 1}, "abc", None, [[1.0, 2.0]]])
def test_npz_object_arrays_of_anything_but_numbers_are_one_line(tmp_path, item):
    path = _npz_with(tmp_path / "odd.npz", [item])
    with pytest.raises(AnnotationError) as caught:
        read_reference_npz(path)
    assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)


def test_seed_npz_object_arrays_of_plain_arrays_need_no_flag(tmp_path):
    path = _npz_with(tmp_path / "seed.npz", [np.array([0.1, 0.2])])
    np.testing.assert_array_equal(read_reference_npz(path).train[0].positions, [0.1, 0.2])


@pytest.mark.parametrize(
    "tamper, reason",
    [
        ("booster bytes", "tampered or corrupted: boosters/output_1.ubj"),
        ("network bytes", "tampered or corrupted: networks/cnn_8.keras"),
        ("manifest checksum", "tampered or corrupted: boosters/output_0.ubj"),
        ("manifest architecture", "needs networks"),
        ("manifest booster list", "unlisted file(s) in the bundle: boosters/output_7.ubj"),
        ("manifest graph of no network", "lists graph 'runtime/resnet_8.windows.onnx' of no network"),
        ("booster replaced by a pickle", "tampered or corrupted: boosters/output_2.ubj"),
    ],
)
def test_tampered_bundle_is_refused(lab, tmp_path, tamper, reason):
    import json

    bundle = shutil.copytree(lab.reference, tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    if tamper == "booster bytes":
        data = bytearray((bundle / "boosters/output_1.ubj").read_bytes())
        data[len(data) // 2] ^= 0x01
        (bundle / "boosters/output_1.ubj").write_bytes(bytes(data))
    elif tamper == "network bytes":
        with open(bundle / "networks/cnn_8.keras", "ab") as fh:
            fh.write(b"\0")
    elif tamper == "manifest checksum":
        manifest["files"]["boosters/output_0.ubj"]["sha256"] = "0" * 64
    elif tamper == "manifest architecture":
        manifest["architecture"] = "resnet8"
    elif tamper == "manifest booster list":
        del manifest["files"]["boosters/output_7.ubj"]
    elif tamper == "manifest graph of no network":
        entry = {"role": "graph:resnet_8.windows", "sha256": "0" * 64}
        manifest["files"]["runtime/resnet_8.windows.onnx"] = entry
    else:
        (bundle / "boosters/output_2.ubj").write_bytes(pickle.dumps(_Exploit(tmp_path / "pwned")))
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError) as caught:
        load_bundle(bundle).boosters()
    assert reason in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "pwned").exists()


# --- 2. faults during train -----------------------------------------------------------------------


class _WorkerKiller:
    """Kills (SIGKILL) the worker running a task whose key starts with each prefix, in turn."""

    def __init__(self, client, prefixes: list[str]):
        self.client, self.prefixes, self.killed = client, list(prefixes), []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        while self.prefixes and not self._stop.is_set():
            for address, keys in self.client.processing().items():
                if any(str(key).startswith(self.prefixes[0]) for key in keys):
                    pid = self.client.run(os.getpid, workers=[address])[address]
                    os.kill(pid, signal.SIGKILL)
                    self.killed.append(self.prefixes.pop(0))
                    break
            time.sleep(0.002)


def test_worker_killed_during_embeddings_and_xgboost_gives_the_same_model(lab, tmp_path):
    """SIGKILL one worker while it computes embeddings, then one while it trains a booster
    (``xgboost.dask`` cannot survive that; the booster is trained again): training completes,
    and the model gives the same outputs as the uninterrupted reference."""
    from distributed import Client, LocalCluster

    cube = shutil.copytree(lab.cube, tmp_path / "cube.zarr")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        with Client(cluster) as client, _WorkerKiller(client, ["embed_windows-", "fn-"]) as killer:
            train(lab.archive.annotations_npz, lab.archive.root, tmp_path / "model", settings=lab.settings,
                  cube=cube, client=client, progress=False)  # fmt: skip
    assert killer.killed == ["embed_windows-", "fn-"], "a worker was not killed mid-task: nothing was tested"
    np.testing.assert_array_equal(_outputs(tmp_path / "model"), _outputs(lab.reference))
    assert not _leftovers(tmp_path, "model")


@pytest.mark.parametrize("how", ["SIGINT to the process group", "SIGTERM"])
def test_interrupted_train_leaves_no_bundle_and_reruns_to_the_same_model(lab, tmp_path, how):
    """Ctrl-C (SIGINT to every process) or SIGTERM while the boosters train: exit 130, no
    bundle and no partial one; the same command again gives the reference model."""
    cube = shutil.copytree(lab.cube, tmp_path / "cube.zarr")
    model = tmp_path / "model"
    # batml as started from a terminal, where Ctrl-C raises KeyboardInterrupt: a test run
    # started in the background by a script inherits SIGINT ignored, and Python keeps it so.
    sigint = "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler)"
    cmd = [sys.executable, "-c", f"{sigint}; from pipeline.cli import main; sys.exit(main())", *_train_argv(lab, model, cube)]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None and not list(tmp_path.glob("batml-embedding-*")):
        time.sleep(0.01)
    assert proc.poll() is None, "training ended before it could be interrupted"
    if how == "SIGTERM":
        proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, out + err
    assert "run the same command again" in err and "Traceback" not in err
    assert not model.exists() and not _leftovers(tmp_path, "model")
    with pytest.raises(BundleError, match="no model bundle here"):
        load_bundle(model)
    rerun = subprocess.run(cmd, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    np.testing.assert_array_equal(_outputs(model), _outputs(lab.reference))
    assert not _leftovers(tmp_path, "model")


# --- 2. full disks and read-only folders --------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path):
    """``mount(name, options)``: a real tmpfs at ``tmp_path/name``; ``remount(path, options)``."""
    if os.geteuid() != 0:
        pytest.skip("a full disk and a read-only folder need a tmpfs mount, which needs root "
                    "(and chmod cannot make a folder read-only for root)")  # fmt: skip
    mounted = []

    def mount(name: str, options: str) -> Path:
        point = tmp_path / name
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"mount -t tmpfs is not permitted here: {done.stderr.strip()}")
        mounted.append(point)
        return point

    def remount(point: Path, options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(point)], check=True)

    yield SimpleNamespace(mount=mount, remount=remount)
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], check=False)


def _batml(argv: list[str]) -> tuple[int, str, str]:
    """Run ``batml`` as the user does, in its own process: (exit status, stdout, stderr)."""
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", *argv], capture_output=True, text=True)
    return done.returncode, done.stdout, done.stderr


def _argv(command: str, lab, target: Path) -> list[str]:
    """ingest/detect/train writing into ``target`` (cube, OUT, MODEL_DIR)."""
    if command == "ingest":
        return ["ingest", str(lab.archive.root), "--cube", str(target), "--workers", "1", "-q"]
    if command == "detect":
        return ["detect", str(lab.cube), "--out", str(target), "--workers", "1", "-q"]
    return _train_argv(lab, target, lab.cube)


@pytest.mark.parametrize("command", ["ingest", "detect", "train"])
def test_read_only_output_folder_is_one_clear_line(lab, tmpfs, command):
    folder = tmpfs.mount("ro", "ro,size=1m")
    target = folder / ("out.zarr" if command == "ingest" else "out")
    code, out, err = _batml(_argv(command, lab, target))
    assert code == 1, out + err
    line = _error_line(err)
    assert str(folder) in line and "Read-only file system" in line, line
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("command", ["ingest", "detect", "train"])
def test_full_disk_is_one_clear_error_and_the_rerun_completes(lab, tmpfs, tmp_path, command):
    """Too small a disk: exit 1 with one line saying so (ingest: the chunk that could not be
    written, in its report), nothing corrupt left; with room made, the same command completes
    and gives what a run on a roomy disk gives."""
    size = {"ingest": "300k", "detect": "100k", "train": "200k"}[command]
    folder = tmpfs.mount("full", f"size={size}")
    target = folder / ("out.zarr" if command == "ingest" else "out")
    argv = _argv(command, lab, target)
    code, out, err = _batml(argv)
    assert code == 1, out + err
    assert "Traceback" not in out + err
    if command == "ingest":
        errors = [line for line in out.splitlines() if line.startswith("error: ")]
        assert errors and all("No space left on device" in line for line in errors), out
        assert "run the same command again" in out
        assert not open_cube(target).attrs.get("complete")
    else:
        line = _error_line(err)
        assert str(target) in line and "No space left on device" in line, line
    if command == "train":
        assert not target.exists() and not _leftovers(folder, "out")
    tmpfs.remount(folder, "size=64m")
    rerun, out, err = _batml(argv)
    assert rerun == (0 if command == "train" else 3)  # ingest, detect: the corpus' bad files
    assert "Traceback" not in out + err
    if command == "ingest":
        made, reference = open_cube(target), open_cube(lab.cube)
        assert made.attrs["complete"]
        np.testing.assert_array_equal(made["spectrogram"].values, reference["spectrogram"].values)
        np.testing.assert_array_equal(made["path"].values, reference["path"].values)
    elif command == "detect":
        reference = tmp_path / "reference-detect"
        assert _batml(_argv("detect", lab, reference))[0] == rerun
        assert (target / "detections.csv").read_bytes() == (reference / "detections.csv").read_bytes()
        raven = sorted(p.name for p in (reference / "raven").iterdir())
        assert sorted(p.name for p in (target / "raven").iterdir()) == raven
        assert all((target / "raven" / n).read_bytes() == (reference / "raven" / n).read_bytes() for n in raven)
    else:
        np.testing.assert_array_equal(_outputs(target), _outputs(lab.reference))
        assert not _leftovers(folder, "out")
