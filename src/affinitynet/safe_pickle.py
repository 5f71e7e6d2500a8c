"""Reading ``.npy`` files that hold pickles (a dict saved with ``np.save``) without running what they name.

``np.load(path, allow_pickle=True)`` lets a file call any function it names. Here the ``.npy`` header is read
with ``numpy.lib.format`` and an object array's payload goes through ``SafeUnpickler``, whose ``find_class``
admits only what rebuilds numpy arrays, dtypes and scalars, a few builtins, and PyTorch tensors (irn's
``make_cam`` saves two of its three entries as tensors): their storage bytes are read by
``torch.load(weights_only=True)``, PyTorch's own restricted loader, never by the function the file names.
Anything else stops the read with ``DataError`` before it runs.
"""
from __future__ import annotations

import io
import pickle

import numpy as np
from numpy.lib import format as npy_format

from .errors import DataError

_RECONSTRUCT = np.ndarray((0,)).__reduce__()[0]  # numpy's array rebuilder, whichever module holds it
_SCALAR = np.float32(0).__reduce__()[0]  # numpy's scalar rebuilder

_NUMPY = {"_reconstruct": _RECONSTRUCT, "scalar": _SCALAR}
_BUILTINS = {"dict": dict, "list": list, "tuple": tuple, "int": int, "float": float, "bool": bool,
             "complex": complex, "set": set, "frozenset": frozenset, "bytes": bytes, "str": str}


def _load_storage(data: bytes):
    """A tensor storage pickled by PyTorch (``torch.save`` bytes), read by PyTorch's weights-only loader."""
    import torch

    return torch.load(io.BytesIO(data), weights_only=True)


def _torch_allowed(module: str, name: str):
    import collections

    import torch._utils

    if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
        return torch._utils._rebuild_tensor_v2  # builds a tensor view of a storage; calls nothing else
    if (module, name) == ("torch.storage", "_load_from_bytes"):
        return _load_storage  # instead of torch's, which would unpickle the bytes without restriction
    if (module, name) == ("collections", "OrderedDict"):
        return collections.OrderedDict  # a tensor's (empty) backward hooks
    return None


class UnsafePickle(pickle.UnpicklingError):
    """The pickle names something outside the allowed set; nothing it names was called."""


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds only numpy arrays / dtypes / scalars, plain containers, numbers and tensors."""

    def find_class(self, module: str, name: str):
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in _NUMPY:
            return _NUMPY[name]
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        if module in ("builtins", "__builtin__") and name in _BUILTINS:
            return _BUILTINS[name]
        if module.split(".")[0] in ("torch", "collections"):
            found = _torch_allowed(module, name)
            if found is not None:
                return found
        raise UnsafePickle(f"refused to load {module}.{name}: only numpy arrays, numbers and plain containers "
                           f"are read from pickled .npy files")


def safe_loads(data: bytes):
    """The object pickled in ``data``, rebuilt by ``SafeUnpickler`` (UnsafePickle if it names anything else)."""
    return SafeUnpickler(io.BytesIO(data)).load()


def read_npy(path):
    """The array in a ``.npy`` file; an object array (e.g. a saved dict) is rebuilt by ``SafeUnpickler``.

    A 0-d object array comes back as its one object (``np.load(...).item()``). Every failure is a
    one-line DataError naming ``path``.
    """
    try:
        with open(path, "rb") as f:
            version = npy_format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = npy_format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = npy_format.read_array_header_2_0(f)
            else:
                raise DataError(path, f".npy format version {version[0]}.{version[1]} is not supported (1.0, 2.0)")
            payload = f.read()
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except DataError:
        raise
    except (ValueError, OSError) as e:
        raise DataError(path, f"not a .npy file ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if dtype.hasobject:
        try:
            arr = safe_loads(payload)
        except UnsafePickle as e:
            raise DataError(path, str(e)) from None
        except Exception as e:  # a truncated or corrupt pickle raises many types
            raise DataError(path, f"cannot read the pickled array ({type(e).__name__}: {e})".splitlines()[0]) from None
        if not isinstance(arr, np.ndarray):
            raise DataError(path, f"the pickle holds a {type(arr).__name__}, not an array")
        return arr.item() if arr.shape == () else arr
    count = int(np.prod(shape)) if shape else 1
    if len(payload) < count * dtype.itemsize:
        raise DataError(path, f"truncated: {len(payload)} bytes of data for a {shape} {dtype} array")
    arr = np.frombuffer(payload, dtype=dtype, count=count)
    return arr.reshape(shape[::-1]).transpose() if fortran else arr.reshape(shape)
