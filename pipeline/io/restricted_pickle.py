"""Read pickled numpy object arrays without running code from the file.

numpy stores an object array (in a ``.npy`` file or an ``.npz`` member) as a pickle, and
loading a pickle can call any function the file names. :class:`ArrayUnpickler` allows only
the few globals that rebuild plain numpy arrays, dtypes and scalars, plus a ``latin-1``-only
stand-in for ``_codecs.encode``, which pickles written by Python 2 or with protocol 2 use to
store the bytes of an array. Anything else is refused before it is called: the caller decides
which exception to raise (one line naming the file), through ``refuse``.

Used by :mod:`pipeline.io.annotations` (the reference system's ``.npz``) and
:mod:`pipeline.model.reference` (the reference system's weight files).
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from typing import BinaryIO

import numpy as np
from numpy._core.multiarray import _reconstruct, scalar
from numpy._core.numeric import _frombuffer
from numpy.lib import format as npy_format

#: Encodings the ``_codecs.encode`` stand-in accepts: pickles of old numpy store array bytes
#: as text decoded with latin-1, which encodes back to the same bytes.
_LATIN1 = frozenset({"latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1"})


def _latin1_bytes(text, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """``_codecs.encode`` restricted to what array pickles use: ``str`` to latin-1 bytes."""
    if not isinstance(text, str) or str(encoding).lower() not in _LATIN1 or errors != "strict":
        raise pickle.UnpicklingError(
            f"_codecs.encode is only allowed for text to latin-1 bytes, not {type(text).__name__} "
            f"with encoding {encoding!r}"
        )
    return text.encode("latin-1")


#: The only globals an untrusted pickle may name: what numpy 1.x and 2.x use to rebuild
#: arrays, dtypes and scalars, and latin-1 encoding of text to bytes. None of them can run
#: code or touch files.
SAFE_GLOBALS: dict[tuple[str, str], Callable] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): scalar,
    ("numpy._core.multiarray", "scalar"): scalar,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("_codecs", "encode"): _latin1_bytes,
}

Refusal = Callable[[str, str], Exception]
"""``refuse(module, name)`` returns the exception to raise for a global outside the allow-list."""


class ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain numpy arrays only; any other global is refused.

    Parameters
    ----------
    file : binary file
        Positioned at the start of the pickle.
    refuse : callable ``(module, name) -> Exception``
        Builds the exception raised when the pickle names a global outside
        :data:`SAFE_GLOBALS` (it is raised before anything is called).
    """

    def __init__(self, file: BinaryIO, refuse: Refusal):
        super().__init__(file, encoding="latin1")
        self._refuse = refuse

    def find_class(self, module: str, name: str):
        try:
            return SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise self._refuse(module, name) from None


def read_npy(buffer: BinaryIO, refuse: Refusal, *, trust: bool = False) -> np.ndarray:
    """One array in the ``.npy`` format; an object array goes through :class:`ArrayUnpickler`.

    Parameters
    ----------
    buffer : binary file
        Positioned at the start of the ``.npy`` data (its magic string).
    refuse : callable ``(module, name) -> Exception``
        See :class:`ArrayUnpickler`.
    trust : bool
        Unpickle object arrays with pickle's general loader (only for files you made).

    Returns
    -------
    numpy.ndarray

    Raises
    ------
    ValueError, OSError, EOFError, pickle.UnpicklingError
        When the data is not a readable ``.npy`` array (the caller names the file), or what
        ``refuse`` returns.
    """
    start = buffer.tell()
    version = npy_format.read_magic(buffer)
    if version == (1, 0):
        shape, _, dtype = npy_format.read_array_header_1_0(buffer)
    else:
        shape, _, dtype = npy_format.read_array_header_2_0(buffer)
    if dtype.hasobject and not trust:
        array = ArrayUnpickler(buffer, refuse).load()
        if not isinstance(array, np.ndarray):
            raise ValueError(f"holds a pickled {type(array).__name__}, not an array")
        if array.shape != tuple(shape):
            raise ValueError(f"holds an array of shape {array.shape}; its header says {tuple(shape)}")
        return array
    buffer.seek(start)
    return npy_format.read_array(buffer, allow_pickle=trust, pickle_kwargs={"encoding": "latin1"})


def read_npy_bytes(data: bytes, refuse: Refusal, *, trust: bool = False) -> np.ndarray:
    """:func:`read_npy` on the bytes of a ``.npy`` file or ``.npz`` member."""
    return read_npy(io.BytesIO(data), refuse, trust=trust)
