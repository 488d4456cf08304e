"""Checks of a model's batch at its entry, so a mistake in the inputs names the batch key at fault.

Models call :func:`check_modalities` first thing in ``__call__``. It runs at trace time (shapes and dtypes
are static under ``jit``), so it costs nothing per step and changes no output; it raises
:class:`mmjax.errors.InputError` (a ``UserError``: the command line prints the message without a traceback).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from mmjax.errors import InputError

# What each kind of modality accepts (the batch dimension B first).
KINDS = {
    "sequence": "token ids [B, T] (integer) or features [B, T, F] (float)",
    "tokens": "token ids [B, T] (integer)",
    "features": "features [B, T, F] (float)",
    "image": "images [B, H, W] (float)",
    "image_or_rgb": "images [B, H, W] or [B, H, W, C] (float)",
}


def shape_str(shape) -> str:
  """``(4, 12)`` -> ``"[4, 12]"``, the notation of the docstrings."""
  return "[" + ", ".join(str(d) for d in shape) + "]"


def _dtype(x):
  return x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype


def _accepts(kind: str, is_int: bool, is_float: bool, ndim: int) -> bool:
  if kind == "sequence":
    return (is_int and ndim == 2) or (is_float and ndim == 3)
  if kind == "tokens":
    return is_int and ndim == 2
  if kind in ("features", "image"):
    return is_float and ndim == 3
  if kind == "image_or_rgb":
    return is_float and ndim in (3, 4)
  raise ValueError(f"unknown modality kind {kind!r}; kinds: {sorted(KINDS)}")


def _fix_for(kind: str, is_int: bool, is_float: bool) -> str:
  """How to turn an array the kind rejects into one it accepts."""
  if is_int and "integer" in KINDS[kind]:
    return ("integer arrays are read as token ids, one per step [B, T]; pass features and images as floats "
            "(e.g. images scaled to [0, 1])")
  if is_int:
    return "pass floats (e.g. float32; images scaled to [0, 1])"
  if is_float and "float" not in KINDS[kind]:
    return "pass the token ids as integers (e.g. int32)"
  if is_float:
    return "give it the shape " + ("features [B, T, F]" if kind == "sequence" else KINDS[kind].split(" (")[0])
  return f"pass {KINDS[kind]}"


def check_modalities(
    batch: Mapping, modalities: Sequence[str], *, model_name: str,
    kinds: str | Mapping[str, str] = "sequence", field: str | Mapping[str, str] = "modalities",
    vocab_size: int | None = None, vocab_field: str = "vocab_size", missing_hint: str = "",
) -> int:
  """Checks ``batch[m]`` and the optional ``batch[m + "_mask"]`` of every modality ``m``; returns ``B``.

  Every modality must be present, of its kind (:data:`KINDS`; one kind for all, or ``{m: kind}``), and
  share one batch size ``B``; a mask must be ``[B, T]`` (bool or 0/1 integers) for a sequence
  ``[B, T, ...]``. With ``vocab_size`` given, a modality of token ids needs ``vocab_size > 0``. ``field``
  (or ``{m: field}``) and ``vocab_field`` name the model fields the messages tell the user to change;
  ``missing_hint`` is added to the message of a missing modality.
  """
  modalities = tuple(modalities)
  kind_of = (lambda m: kinds) if isinstance(kinds, str) else (lambda m: kinds.get(m, "sequence"))
  field_of = (lambda m: field) if isinstance(field, str) else (lambda m: field[m])
  who = f"model {model_name!r}"
  for m in modalities:
    if m not in batch:
      now, to = (modalities, "name the batch's modalities") if isinstance(field, str) else (m, "its key")
      raise InputError(
          f"{who} needs modality {m!r} but the batch has keys {sorted(batch)}; add {m!r} to the batch, or "
          f"change model.kwargs.{field_of(m)} (now {now!r}) to {to}{missing_hint}"
      )
  sizes = {}
  for m in modalities:
    x = batch[m]
    shape, dtype, kind = np.shape(x), _dtype(x), kind_of(m)
    is_int, is_float = jnp.issubdtype(dtype, jnp.integer), jnp.issubdtype(dtype, jnp.floating)
    if not _accepts(kind, is_int, is_float, len(shape)):
      raise InputError(
          f"{who} takes batch[{m!r}] as {KINDS[kind]}; got {dtype} {shape_str(shape)}: "
          f"{_fix_for(kind, is_int, is_float)}"
      )
    if is_int and vocab_size is not None and vocab_size <= 0:
      raise InputError(
          f"{who}: batch[{m!r}] holds token ids ({dtype} {shape_str(shape)}) but the model's {vocab_field} "
          f"is {vocab_size}; set model.kwargs.{vocab_field} to the size of the token vocabulary (more than "
          "the largest id)"
      )
    sizes[m] = shape
    mask = batch.get(f"{m}_mask")
    if mask is not None:
      mshape, mdtype = np.shape(mask), _dtype(mask)
      if not (mdtype == jnp.bool_ or jnp.issubdtype(mdtype, jnp.integer)):
        raise InputError(
            f"{who}: batch[{m + '_mask'!r}] is {mdtype}; a mask is bool [B, T] (True = a valid step of "
            f"batch[{m!r}]) or 0/1 integers: convert it (e.g. mask > 0)"
        )
      if len(mshape) != 2 or mshape[1] != shape[1]:
        raise InputError(
            f"{who}: batch[{m + '_mask'!r}] has shape {shape_str(mshape)} but batch[{m!r}] is "
            f"{shape_str(shape)}; the mask must be [B, T] = {shape_str(shape[:2])}, True at the valid steps "
            "of the sequence: give it one entry per step (pad or cut it to the sequence's length)"
        )
      sizes[m + "_mask"] = mshape
  batch_sizes = {k: s[0] for k, s in sizes.items()}
  if len(set(batch_sizes.values())) > 1:
    listed = ", ".join(f"batch[{k!r}] {shape_str(s)}" for k, s in sizes.items())
    raise InputError(
        f"{who}: the modalities of the batch disagree in batch size (the first axis, B): {listed}; every "
        "modality and mask needs the same number of examples: pass arrays of one batch"
    )
  return next(iter(batch_sizes.values())) if batch_sizes else 0
