"""Tests of pipeline.io.annotations: the reference system's .npz format (safe reading) and the CSV of calls."""

import hashlib
import os
import zipfile

import numpy as np
import pytest

from pipeline.io.annotations import (
    AnnotationError,
    RecordingCalls,
    read_reference_npz,
    write_reference_npz,
)


def _ragged(arrays):
    out = np.empty(len(arrays), dtype=object)
    for i, array in enumerate(arrays):
        out[i] = array
    return out


def _recordings(with_classes=True):
    train = [
        RecordingCalls("site01/a", 2.5, np.array([0.1, 0.1, 1.7]), np.array([5, 2, 5]) if with_classes else None),
        RecordingCalls("site01/b", 1.0, np.array([]), np.array([], dtype=int) if with_classes else None),
    ]
    test = [RecordingCalls("site02/c", 3.0, np.array([2.25]), np.array([7]) if with_classes else None)]
    return train, test


def _assert_same(read, expected):
    assert [r.file for r in read] == [r.file for r in expected]
    for got, want in zip(read, expected, strict=True):
        assert got.duration == want.duration
        np.testing.assert_array_equal(got.positions, want.positions)
        assert got.positions.dtype == np.float64
        if want.classes is None:
            assert got.classes is None
        else:
            np.testing.assert_array_equal(got.classes, want.classes)


def test_seed_npz_round_trip_safe_and_with_plain_numpy(tmp_path):
    train, test = _recordings()
    path = write_reference_npz(tmp_path / "ann.npz", train, test)
    dataset = read_reference_npz(path)
    assert dataset.has_classes
    _assert_same(dataset.train, train)
    _assert_same(dataset.test, test)
    # The reference system loads it with plain numpy.
    with np.load(path, allow_pickle=True) as seed:
        assert list(seed["train_files"]) == ["site01/a", "site01/b"]
        np.testing.assert_array_equal(seed["train_pos"][0], [0.1, 0.1, 1.7])
        np.testing.assert_array_equal(seed["test_class"][0], [7])
        assert seed["train_pos"][1].shape == (0,)


def test_seed_npz_bytes_are_reproducible(tmp_path):
    train, test = _recordings()
    first = write_reference_npz(tmp_path / "one.npz", train, test).read_bytes()
    second = write_reference_npz(tmp_path / "two.npz", train, test).read_bytes()
    assert hashlib.sha256(first).digest() == hashlib.sha256(second).digest()
    with zipfile.ZipFile(tmp_path / "one.npz") as archive:
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_detection_only_npz(tmp_path):
    train, test = _recordings(with_classes=False)
    path = write_reference_npz(tmp_path / "det.npz", train, test)
    with np.load(path, allow_pickle=True) as seed:
        assert "train_class" not in seed.files
    dataset = read_reference_npz(path)
    assert not dataset.has_classes
    _assert_same(dataset.train, train)


def test_mixed_classes_are_refused_on_write(tmp_path):
    train, _ = _recordings()
    _, test = _recordings(with_classes=False)
    with pytest.raises(ValueError, match="every recording"):
        write_reference_npz(tmp_path / "x.npz", train, test)


def test_reads_byte_names_column_positions_and_plain_2d_arrays(tmp_path):
    path = tmp_path / "seedlike.npz"
    np.savez(
        path,
        train_files=np.array([b"rec1", b"rec2"]),
        train_durations=np.array([1.0, 2.0]),
        train_pos=_ragged([np.array([[0.5], [0.75]]), np.array([[1.5]])]),
        train_class=_ragged([np.array([[1], [3]]), np.array([[2]])]),
        # A non-ragged split: numpy made plain 2-D arrays of it.
        test_files=np.array(["t1", "t2"], dtype=object),
        test_durations=np.array([1.0, 1.0]),
        test_pos=np.array([[0.25, 0.5], [0.1, 0.2]]),
        test_class=np.array([[4, 5], [6, 7]]),
    )
    dataset = read_reference_npz(path)
    assert [r.file for r in dataset.train] == ["rec1", "rec2"]
    np.testing.assert_array_equal(dataset.train[0].positions, [0.5, 0.75])
    np.testing.assert_array_equal(dataset.train[0].classes, [1, 3])
    np.testing.assert_array_equal(dataset.test[1].positions, [0.1, 0.2])
    np.testing.assert_array_equal(dataset.test[1].classes, [6, 7])


class _Exploit:
    """Pickles as a call to os.system; it is only ever pickled here, never unpickled."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.target}",))


def test_restricted_unpickler_refuses_code(tmp_path):
    pwned = tmp_path / "pwned.txt"
    path = tmp_path / "evil.npz"
    np.savez(
        path,
        train_files=np.array(["a"]),
        train_durations=np.array([1.0]),
        train_pos=_ragged([_Exploit(pwned)]),
        test_files=np.array([], dtype=str),
        test_durations=np.array([]),
        test_pos=_ragged([]),
    )
    with pytest.raises(AnnotationError, match=r"holds a pickled (posix|os|nt)\.system") as info:
        read_reference_npz(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert "--trust-npz" in str(info.value) and f"batml convert {path}" in str(info.value)
    assert not pwned.exists()


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"train_files": np.array(["a"])}, "missing field"),
        (
            {
                "train_files": np.array(["a", "b"]), "train_durations": np.array([1.0]),
                "train_pos": _ragged([np.array([0.1])]), "train_class": _ragged([np.array([1])]),
                "test_files": np.array([], dtype=str), "test_durations": np.array([]),
                "test_pos": _ragged([]), "test_class": _ragged([]),
            },
            "different lengths",
        ),
        (
            {
                "train_files": np.array(["a"]), "train_durations": np.array([1.0]),
                "train_pos": _ragged([np.array([0.1])]), "train_class": _ragged([np.array([8])]),
                "test_files": np.array([], dtype=str), "test_durations": np.array([]),
                "test_pos": _ragged([]), "test_class": _ragged([]),
            },
            "outside 1..7",
        ),
    ],
)
def test_bad_npz_names_file_and_reason(tmp_path, fields, reason):
    path = tmp_path / "bad.npz"
    np.savez(path, **fields)
    with pytest.raises(AnnotationError, match=reason) as info:
        read_reference_npz(path)
    assert str(info.value).startswith(str(path))
    assert "\n" not in str(info.value)


def test_not_a_zip_and_missing_file(tmp_path):
    path = tmp_path / "plain.npz"
    path.write_text("not a zip")
    with pytest.raises(AnnotationError, match="not an .npz") as info:
        read_reference_npz(path)
    assert str(path) in str(info.value)
    with pytest.raises(AnnotationError, match="not found"):
        read_reference_npz(tmp_path / "absent.npz")


    # batml convert now goes through pipeline.annotations: tests/test_import_cli.py


