"""orbax-checkpoint wrapper: save every N steps, keep the newest K and the best one, restore any of them
into a sharded abstract state.

Each checkpoint holds two items: ``state`` (the :class:`~mmjax.train.state.TrainState`) and ``meta`` (JSON
naming the model, its fields and the ``prng_impl`` of the state's key; checkpoints without it hold a
threefry key). Restoring checks ``meta`` and every array shape against what the run expects, so a
checkpoint of another model, or a corrupt one, is reported in plain words instead of failing deep inside
orbax or XLA.

The best checkpoint: checkpoints saved with ``metrics`` (at evaluations) are ranked by ``best_metric`` with
orbax's own ``best_fn``/``best_mode``, and orbax's preservation policy keeps the newest ``keep`` checkpoints
*and* the best one (``AnyPreservationPolicy([LatestN, BestN])``), so ``keep_checkpoints`` never deletes it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as preservation

from mmjax import pytree
from mmjax.errors import UserError
from mmjax.train.state import DEFAULT_PRNG_IMPL


class CheckpointError(UserError, RuntimeError):
  """A checkpoint that cannot be used by this run (corrupt, incomplete, of another model, or absent)."""


def _shapes(tree) -> dict[str, tuple]:
  return {k: tuple(getattr(x, "shape", np.shape(x))) for k, x in pytree.flatten(tree).items()}


class _QuietUntrackedSaves(logging.Filter):
  """orbax warns on every save without metrics when a best metric is tracked; mmjax saves checkpoints
  between evaluations on purpose (they are kept by the LatestN policy), so that warning is noise."""

  def filter(self, record):
    return "did not provide metrics" not in record.getMessage()


logging.getLogger("absl").addFilter(_QuietUntrackedSaves())


class Checkpointer:
  """Saves and restores the training state of one run directory.

  Args:
    directory: where checkpoints live (``<workdir>/checkpoints``).
    save_every: save when ``step % save_every == 0`` (0 disables periodic saves; forced saves still work).
    keep: how many recent checkpoints to keep.
    identity: JSON-serialisable description of the model (name and fields) stored with every checkpoint
      and compared on restore.
    async_save: write checkpoints in a background thread.
    best_metric: the metric (a key of the ``metrics`` given to :meth:`save`) that ranks checkpoints;
      "" keeps no best checkpoint.
    best_mode: ``"max"`` or ``"min"``: which end of ``best_metric`` is best.
    read_only: open an existing directory without creating or deleting anything (evaluation commands).
    prng_impl: the implementation of the state's PRNG key (``config.prng_impl``), stored in ``meta`` and
      compared on restore: the key's data differ between implementations.
  """

  def __init__(self, directory, *, save_every: int, keep: int, identity: dict[str, Any],
               async_save: bool = True, best_metric: str = "", best_mode: str = "max",
               read_only: bool = False, prng_impl: str = DEFAULT_PRNG_IMPL):
    self.directory = Path(directory).absolute()
    self.identity = json.loads(json.dumps(identity))  # normalise tuples to lists
    self.prng_impl = prng_impl
    self.save_every = save_every
    self.best_metric = best_metric
    policies = [preservation.LatestN(n=keep)]
    best = {}
    if best_metric:
      # Larger ranks better; among equal values the earlier checkpoint wins (a later one is kept as best
      # only when it strictly improves on it, as the loop's early-stopping count assumes).
      sign = 1.0 if best_mode == "max" else -1.0
      rank = lambda m: (sign * float(m[best_metric]), -int(m.get("step", 0)))  # noqa: E731
      policies.append(preservation.BestN(get_metric_fn=rank, reverse=False, n=1,
                                         keep_checkpoints_without_metrics=False))
      best = dict(best_fn=rank, best_mode="max")
    if read_only:
      options = ocp.CheckpointManagerOptions(read_only=True, create=False, **best)
    else:
      options = ocp.CheckpointManagerOptions(  # the directory is created by the first save
          create=False, enable_async_checkpointing=async_save,
          preservation_policy=preservation.AnyPreservationPolicy(policies), **best)
    try:
      self._manager = ocp.CheckpointManager(
          self.directory, options=options,
          item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
      )
    except Exception as e:  # an unreadable directory, a file where the directory should be, ...
      raise CheckpointError(f"cannot open checkpoint directory {self.directory}: {e}") from e

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None."""
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    """The step of the checkpoint with the best ``best_metric`` among those saved with metrics, or None
    (also when no best metric is tracked)."""
    if not self.best_metric:
      return None
    ranked = [s for s in self._manager.all_steps() if self._manager.metrics(s)]
    return self._manager.best_step() if ranked else None

  def metrics(self, step: int) -> dict | None:
    """The metrics a checkpoint was saved with (evaluation steps when a best metric is tracked), or None."""
    return self._manager.metrics(step)

  def resolve(self, step) -> int:
    """A checkpoint step from ``step``: an int, ``None`` or ``"latest"`` (the newest), or ``"best"``.
    Raises :class:`CheckpointError` naming the steps that exist when there is no such checkpoint."""
    have = self.all_steps()
    if step in (None, "latest"):
      found = self.latest_step()
    elif step == "best":
      if not self.best_metric:
        raise CheckpointError("--step best needs the run's best_metric (the config sets none), so no "
                              "checkpoint is marked best; pass a step number instead, one of "
                              f"{have or 'none'}")
      found = self.best_step()
    else:
      try:
        found = int(step)
      except (TypeError, ValueError):
        raise CheckpointError(f"checkpoint step must be a number, 'latest' or 'best'; got {step!r}") from None
      if found not in have:
        raise CheckpointError(f"there is no checkpoint at step {found} in {self.directory}; saved steps: "
                              f"{have or 'none'}")
    if found is None:
      raise CheckpointError(f"no {'best ' if step == 'best' else ''}checkpoint in {self.directory}; "
                            "train first (mmjax train ...)")
    return found

  def all_steps(self) -> list[int]:
    """Steps of every complete checkpoint, oldest first."""
    return sorted(self._manager.all_steps())

  def save(self, step: int, state, *, metrics: dict | None = None, force: bool = False) -> bool:
    """Saves ``state`` at ``step`` if it is a save step (or ``force``, or ``metrics`` are given: the
    checkpoint of an evaluation that may be the best); returns whether it saved."""
    due = force or metrics is not None or (self.save_every > 0 and step % self.save_every == 0)
    if not due or step in self._manager.all_steps():
      return False
    if metrics is not None:
      metrics = {**metrics, "step": int(step)}
    return self._manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                meta=ocp.args.JsonSave({**self.identity, "prng_impl": self.prng_impl})),
        metrics=metrics, force=True,
    )

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()

  def restore(self, step: int, abstract_state):
    """Restores the checkpoint at ``step`` into ``abstract_state`` (a tree of ``jax.ShapeDtypeStruct``
    with shardings). Raises :class:`CheckpointError` with a readable reason when it cannot."""
    where = self.directory / str(step)
    try:
      meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    except Exception as e:
      raise CheckpointError(
          f"checkpoint {where} has no readable metadata ({type(e).__name__}: {e}). It is corrupt, "
          "incomplete or not an mmjax checkpoint: delete it to resume from an earlier one, or use a new "
          "--workdir."
      ) from e
    meta = dict(meta)
    prng_impl = meta.pop("prng_impl", "threefry")
    if meta != self.identity:
      raise CheckpointError(
          f"checkpoint {where} was written by a different model.\n  checkpoint: {meta}\n  this run:   "
          f"{self.identity}\nUse a new --workdir for a new model, or the config that wrote the checkpoint."
      )
    if prng_impl != self.prng_impl:
      raise CheckpointError(
          f"checkpoint {where} holds a {prng_impl} PRNG key, but this run uses prng_impl "
          f"{self.prng_impl!r}. Resume with --config.prng_impl={prng_impl} (the run's randomness continues "
          "only with the implementation it started with), or use a new --workdir.")
    self._check_shapes(step, abstract_state, where)
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
      )
    except Exception as e:
      raise CheckpointError(
          f"checkpoint {where} could not be read ({type(e).__name__}: {str(e)[:500]}). It is corrupt or "
          "incomplete: delete it to resume from an earlier one, or use a new --workdir."
      ) from e
    return restored.state

  def _check_shapes(self, step, abstract_state, where):
    try:
      stored = self._manager.item_metadata(step).state
    except Exception as e:
      raise CheckpointError(f"checkpoint {where} has an unreadable state tree ({e}); it is corrupt.") from e
    if stored is None:
      raise CheckpointError(f"checkpoint {where} holds no training state; it is corrupt or incomplete.")
    have, want = _shapes(stored), _shapes(abstract_state)
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    differ = sorted(k for k in set(have) & set(want) if have[k] != want[k])
    if missing or extra or differ:
      lines = [f"checkpoint {where} does not match this run's training state:"]
      lines += [f"  missing in checkpoint: {k} {want[k]}" for k in missing[:10]]
      lines += [f"  not expected: {k} {have[k]}" for k in extra[:10]]
      lines += [f"  shape differs: {k}: checkpoint {have[k]}, run {want[k]}" for k in differ[:10]]
      lines.append("Use the config that wrote it, or a new --workdir.")
      raise CheckpointError("\n".join(lines))
