"""A restricted unpickler for untrusted data files that should hold only numpy arrays and containers.

``pickle.load`` runs whatever callable a file names, so a planted pickle can execute code. ``load_pickle``
admits only the globals that numpy arrays, numpy scalars and plain containers need:

* ``numpy.ndarray``, ``numpy.dtype``, ``_reconstruct`` / ``scalar`` of ``numpy(._)core.multiarray`` and
  ``_frombuffer`` of ``numpy(._)core.numeric`` (protocol 5), under both the numpy 1 and numpy 2 module names;
* ``_codecs.encode`` (how Python 3 writes ``bytes`` at protocol <= 2), restricted to the latin-1 codec;
* ``collections.OrderedDict``, ``builtins.set`` and ``builtins.frozenset`` (containers at protocol <= 3).

Dicts, lists, tuples, sets, numbers, strings and bytes need no global. Anything else raises
:class:`UnsafePickleError` (a ``pickle.UnpicklingError`` and a user error: the command line prints it
without a traceback) naming the file and the forbidden global, before anything is called.
"""

from __future__ import annotations

import codecs
import collections
import io
import os
import pickle

import numpy as np

from mmjax.data.errors import DatasetError

try:  # numpy >= 2 (and the forward-compatible alias in late numpy 1.x)
  from numpy._core import multiarray as _multiarray
  from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - older numpy
  from numpy.core import multiarray as _multiarray
  from numpy.core import numeric as _numeric


def _latin1_encode(obj, encoding="utf-8", errors="strict"):
  """``_codecs.encode`` limited to the latin-1 codec (the only one pickle's bytes encoding uses)."""
  if codecs.lookup(encoding).name != "iso8859-1":
    raise pickle.UnpicklingError(f"forbidden codec in pickle: _codecs.encode(..., {encoding!r})")
  return codecs.encode(obj, "latin-1", errors)


_ALLOWED = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
    ("collections", "OrderedDict"): collections.OrderedDict,
}
for _builtins in ("builtins", "__builtin__"):  # sets and frozensets at protocol <= 3 (py2 module name too)
  _ALLOWED[(_builtins, "set")] = set
  _ALLOWED[(_builtins, "frozenset")] = frozenset
for _core in ("numpy.core", "numpy._core"):
  _ALLOWED[(f"{_core}.multiarray", "_reconstruct")] = _multiarray._reconstruct
  _ALLOWED[(f"{_core}.multiarray", "scalar")] = _multiarray.scalar
  _ALLOWED[(f"{_core}.numeric", "_frombuffer")] = _numeric._frombuffer


class UnsafePickleError(DatasetError, pickle.UnpicklingError):
  """A pickle that names a callable outside the allowed globals (a corrupt or planted file); nothing in it
  was run."""


class RestrictedUnpickler(pickle.Unpickler):
  """An unpickler whose ``find_class`` resolves only the globals listed in this module's docstring;
  ``source`` (a file name) goes into the error message."""

  def __init__(self, file, *, source: str = "", **kwargs):
    super().__init__(file, **kwargs)
    self.source = source

  def find_class(self, module: str, name: str):
    try:
      return _ALLOWED[(module, name)]
    except KeyError:
      where = f"{self.source}: " if self.source else ""
      raise UnsafePickleError(
          f"{where}forbidden global in pickle: {module}.{name}. Only numpy arrays and plain containers are "
          "allowed, so nothing in the file was run; it may be corrupt or malicious. Delete it and get the "
          "file again from its original source."
      ) from None


def load_pickle(path_or_file, *, encoding: str = "latin1"):
  """Loads a pickle of numpy arrays / containers from a path, bytes or binary file, refusing any code.

  ``encoding="latin1"`` reads Python 2 pickles (their ``str`` become ``str``, numpy buffers stay intact) and
  does not affect Python 3 pickles."""
  if isinstance(path_or_file, str | os.PathLike):
    with open(path_or_file, "rb") as f:
      return RestrictedUnpickler(f, source=os.fspath(path_or_file), encoding=encoding).load()
  if isinstance(path_or_file, bytes | bytearray):
    path_or_file = io.BytesIO(path_or_file)
  name = getattr(path_or_file, "name", "")  # a file's name, for the error message
  source = name if isinstance(name, str) else ""
  return RestrictedUnpickler(path_or_file, source=source, encoding=encoding).load()
