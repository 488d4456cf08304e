"""orbax-checkpoint wrapper: save every N steps, keep K, restore the latest into a sharded abstract state.

Each checkpoint holds two items: ``state`` (the :class:`~mmjax.train.state.TrainState`) and ``meta`` (JSON
naming the model and its fields). Restoring checks ``meta`` and every array shape against what the run
expects, so a checkpoint of another model, or a corrupt one, is reported in plain words instead of failing
deep inside orbax or XLA.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be used by this run (corrupt, incomplete, or of another model)."""


def _path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def _shapes(tree) -> dict[str, tuple]:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {_path_str(p): tuple(getattr(x, "shape", np.shape(x))) for p, x in flat}


class Checkpointer:
  """Saves and restores the training state of one run directory.

  Args:
    directory: where checkpoints live (``<workdir>/checkpoints``).
    save_every: save when ``step % save_every == 0`` (0 disables periodic saves; forced saves still work).
    keep: how many recent checkpoints to keep.
    identity: JSON-serialisable description of the model (name and fields) stored with every checkpoint
      and compared on restore.
    async_save: write checkpoints in a background thread.
  """

  def __init__(self, directory, *, save_every: int, keep: int, identity: dict[str, Any],
               async_save: bool = True):
    self.directory = Path(directory).absolute()
    self.identity = json.loads(json.dumps(identity))  # normalise tuples to lists
    self.save_every = save_every
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
        save_interval_steps=save_every if save_every > 0 else 1,
    )
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

  def all_steps(self) -> list[int]:
    """Steps of every complete checkpoint, oldest first."""
    return sorted(self._manager.all_steps())

  def save(self, step: int, state, *, force: bool = False) -> bool:
    """Saves ``state`` at ``step`` if it is a save step (or ``force``); returns whether it saved."""
    if not force and (self.save_every <= 0 or step % self.save_every):
      return False
    if step in self._manager.all_steps():
      return False
    return self._manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(self.identity)),
        force=True,
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
    if meta != self.identity:
      raise CheckpointError(
          f"checkpoint {where} was written by a different model.\n  checkpoint: {meta}\n  this run:   "
          f"{self.identity}\nUse a new --workdir for a new model, or the config that wrote the checkpoint."
      )
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
