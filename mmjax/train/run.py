"""A run: what one experiment is built from, and the one way to restore it.

* :func:`build_run` turns a validated config into a :class:`Run`: mesh, model, task, optimizer, the abstract
  sharded training state, its sharded initialiser and the checkpointer. Nothing is computed or read: the
  model is initialised from the dataset's feature description (``eval_shape``).
* :func:`restore_run` is how every command (``mmjax eval``, ``sample``, ``fewshot``, grafting from
  another run, loading a classifier) gets a trained state: ``restore_run(workdir, step)`` with ``step`` a
  number, ``None``/``"latest"`` or ``"best"``; the config comes from ``<workdir>/config.json`` unless given.
  It never writes to the workdir.

A :class:`Run` is also what evaluators (:mod:`mmjax.evaluators`) receive: they read the model, the task and
the config from it, iterate global batches of a split with :meth:`Run.eval_batches`, and open other runs
(e.g. the classifiers that score cross-modal coherence) with :meth:`Run.open_run`, so they never import the
engine.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmjax import models, tasks
from mmjax.config import validate
from mmjax.data import pipeline
from mmjax.errors import UserError
from mmjax.train import mesh as mesh_lib
from mmjax.train import pretrained
from mmjax.train.checkpoint import Checkpointer, CheckpointError
from mmjax.train.optim import Optimizer, make_optimizer
from mmjax.train.state import DEFAULT_PRNG_IMPL, TrainState, make_key
from mmjax.train.step import jit_eval_step


class BatchError(UserError, ValueError):
  """A batch whose arrays cannot form one global batch (sizes disagree, or do not divide the mesh)."""


def make_global_batch(local_batch: dict, sharding) -> dict:
  """Builds global ``jax.Array`` s from this process's part of the batch (the same call on one device
  and on many hosts). Every array must share the leading (batch) size."""
  sizes = {k: np.shape(v)[0] if np.ndim(v) else None for k, v in local_batch.items()}
  if len(set(sizes.values())) != 1 or None in sizes.values():
    raise BatchError(f"the modalities of a batch disagree in batch size: {sizes}")
  n = next(iter(sizes.values()))
  shards = mesh_lib.data_parallel_size(sharding.mesh) // jax.process_count()
  if n % max(shards, 1):
    raise BatchError(f"this process's batch of {n} does not split over its {shards} data-parallel devices")
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}


def init_state(model, optimizer: Optimizer, example_batch: dict, seed: int,
               prng_impl: str = DEFAULT_PRNG_IMPL) -> TrainState:
  """Fresh state: parameters from ``model.init`` on an example batch, optimizer state, base PRNG key (the
  raw data of a ``prng_impl`` key, :mod:`mmjax.train.state`), and the EMA and plateau states when the
  optimizer has them. The parameters are drawn with threefry whatever ``prng_impl`` is (a one-off cost),
  so runs that differ only in ``prng_impl`` start from the same parameters; with threefry every key is
  that of ``jax.random.PRNGKey(seed)``, as before ``prng_impl`` existed."""
  init_root = make_key(seed, "threefry")
  variables = model.init(
      {"params": jax.random.fold_in(init_root, 0), "dropout": jax.random.fold_in(init_root, 1)},
      example_batch, train=False,
  )
  params = variables["params"]
  ema = params if optimizer.ema_decay > 0 else None
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.tx.init(params),
                    rng=jax.random.key_data(jax.random.fold_in(make_key(seed, prng_impl), 2)), ema_params=ema,
                    plateau=optimizer.plateau_init())


def model_kwargs(config) -> dict:
  """``config.model.kwargs`` plus the engine-wide model settings the model has fields for: ``dtype`` from
  ``config.precision`` (the compute dtype; parameters stay float32) and ``remat`` from ``config.remat``.
  They are not part of the checkpoint's identity: a run trained in float32 restores in bfloat16, with or
  without rematerialisation."""
  kwargs = dict(config.model.kwargs)
  fields = models.fields(config.model.name)
  if "dtype" in fields:
    kwargs["dtype"] = jnp.dtype(config.precision)
  if "remat" in fields:
    kwargs["remat"] = config.remat
  return kwargs


def count_params(params) -> int:
  """Number of scalar parameters."""
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))


@dataclasses.dataclass
class Run:
  """Everything a run is built from; see :func:`build_run`."""

  config: Any
  workdir: Path
  mesh: Any
  model: Any
  task: Any
  optimizer: Optimizer
  batch_sharding: Any
  state_shardings: Any
  abstract_state: Any
  init: Any  # () -> sharded TrainState
  checkpointer: Checkpointer
  _eval_step: Any = dataclasses.field(default=None, repr=False)
  _checked_splits: set = dataclasses.field(default_factory=set, repr=False)

  @property
  def is_main(self) -> bool:
    """Whether this process writes files and prints (process 0)."""
    return jax.process_index() == 0

  @property
  def devices(self) -> list:
    """The devices of this run's mesh."""
    return list(self.mesh.devices.flat)

  def global_batch(self, local_batch: dict) -> dict:
    """This process's numpy batch as a global batch sharded over the mesh (:func:`make_global_batch`)."""
    return make_global_batch(local_batch, self.batch_sharding)

  def eval_batches(self, split: str, batch_size: int | None = None) -> Iterator[dict]:
    """Global batches holding every example of ``split`` once (padding rows have ``_valid = 0``). The
    first batch of each split is checked by the task (:meth:`check_batch`) the first time it is read."""
    size = batch_size or self.config.eval_batch_size
    for i, local in enumerate(pipeline.eval_batches(self.config.data, split, global_batch_size=size,
                                                    process_index=jax.process_index(),
                                                    process_count=jax.process_count())):
      if i == 0 and split not in self._checked_splits:
        self.check_batch(local)
        self._checked_splits.add(split)
      yield self.global_batch(local)

  @property
  def eval_step(self):
    """The jitted ``(params, batch) -> (sums, per_example)`` of :func:`mmjax.train.step.eval_step`."""
    if self._eval_step is None:
      self._eval_step = jit_eval_step(self.model, self.task, self.state_shardings.params,
                                      self.batch_sharding, self.mesh, self.config.mesh.rules.to_dict())
    return self._eval_step

  def check_batch(self, local_batch: dict) -> None:
    """The task's checks of one (this process's, numpy) batch against the model's output shape: labels in
    range, token ids inside the vocabulary (``task.check_batch``). Costs a trace of the model, no compute:
    call it on the first batch of a split."""
    if not hasattr(self.task, "check_batch"):
      return
    batch = {k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype) for k, v in local_batch.items()}
    outputs, _ = jax.eval_shape(
        lambda params, b: self.model.apply({"params": params}, b, train=False,
                                           rngs={"latent": jax.random.PRNGKey(0)}),
        self.abstract_state.params, batch)
    self.task.check_batch(local_batch, tuple(outputs.shape))

  def restore(self, step=None) -> TrainState:
    """The checkpoint at ``step`` (a number, ``None``/``"latest"`` or ``"best"``); a
    :class:`~mmjax.train.checkpoint.CheckpointError` when there is none."""
    return self.checkpointer.restore(self.checkpointer.resolve(step), self.abstract_state)

  def restore_or_init(self) -> TrainState:
    """The latest checkpoint if there is one, else a fresh state."""
    if self.checkpointer.latest_step() is None:
      return self.init()
    return self.restore()

  def open_run(self, workdir, step=None) -> tuple[Run, TrainState]:
    """Another trained run (``restore_run``) on this run's devices, e.g. a classifier an evaluator uses."""
    return restore_run(workdir, step, devices=self.devices)

  def close(self) -> None:
    """Waits for pending checkpoint writes and releases the checkpointer."""
    self.checkpointer.close()


def build_run(config, workdir, devices=None, *, read_only: bool = False) -> Run:
  """Builds mesh (over ``devices``, default all), model, task, optimizer, the abstract sharded state and
  the checkpointer of ``workdir/checkpoints``. ``read_only`` opens the checkpoints without creating or
  deleting anything (for commands that only read a run)."""
  workdir = Path(workdir)
  try:
    mesh = mesh_lib.make_mesh({"data": config.mesh.data, "fsdp": config.mesh.fsdp,
                               "tensor": config.mesh.tensor}, devices)
  except ValueError as e:
    raise BatchError(f"{e}. Set --config.mesh.data/fsdp/tensor so their product is the device count "
                     f"({len(devices) if devices is not None else jax.device_count()}), or -1 for one "
                     "axis to take the remaining devices.") from None
  dp = mesh_lib.data_parallel_size(mesh)
  for name, size in (("batch_size", config.batch_size), ("eval_batch_size", config.eval_batch_size)):
    if size % dp:
      raise BatchError(f"{name} {size} is not divisible by the {dp} data-parallel devices of the mesh; "
                       f"use a multiple of {dp}")
  accum = config.optimizer.grad_accum_steps
  if (config.batch_size // accum) % dp:
    raise BatchError(f"batch_size {config.batch_size} / grad_accum_steps {accum} gives micro-batches that "
                     f"do not split over the {dp} data-parallel devices")
  try:
    model = models.build(config.model.name, model_kwargs(config))
  except (KeyError, ValueError) as e:
    raise UserError(str(e.args[0] if e.args else e)) from None
  task = tasks.get(config.task.name, **dict(config.task.kwargs))
  optimizer = make_optimizer(config.optimizer, config.num_steps)
  example = pipeline.example_from_features(config.data)  # shapes only: no data are read here

  def init():
    return init_state(model, optimizer, example, config.seed, config.prng_impl)

  # The state is never built on one device: its shapes and logical axes come from eval_shape, the rules
  # give every leaf a sharding, and the jitted init writes each shard straight onto its device.
  boxed = jax.eval_shape(init)
  state_shardings = mesh_lib.tree_shardings(boxed, mesh, config.mesh.rules.to_dict())
  abstract = jax.tree_util.tree_map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), nn.unbox(boxed), state_shardings)
  init_sharded = jax.jit(lambda: nn.unbox(init()), out_shardings=state_shardings)
  if config.init.format:
    init_sharded = _with_pretrained(init, config.init, optimizer, state_shardings, model)
  identity = {"model": config.model.name, "kwargs": config.model.kwargs.to_dict()}
  checkpointer = Checkpointer(workdir / "checkpoints", save_every=config.checkpoint_every,
                              keep=config.keep_checkpoints, identity=identity,
                              async_save=config.async_checkpoints, best_metric=config.best_metric,
                              best_mode=config.best_mode, read_only=read_only, prng_impl=config.prng_impl)
  return Run(config, workdir, mesh, model, task, optimizer, mesh_lib.batch_sharding(mesh), state_shardings,
             abstract, init_sharded, checkpointer)


def _with_pretrained(init_fn, init_cfg, optimizer: Optimizer, shardings, model):
  """A sharded init that grafts the parameters ``config.init`` names into ``init_fn()``'s (see
  :mod:`mmjax.train.pretrained`) and builds the optimizer (and EMA) state for the result, in one jitted
  call (the pretrained arrays are its arguments, not constants)."""

  def grafted(weights):
    state = nn.unbox(init_fn())
    params = pretrained.graft(state.params, weights, init_cfg.target)
    ema = params if state.ema_params is not None else None
    return state.replace(params=params, opt_state=optimizer.tx.init(params), ema_params=ema)

  def init():
    weights = pretrained.load_pretrained(init_cfg, model, load_run=run_params)
    return jax.jit(grafted, out_shardings=shardings)(weights)

  return init


def run_params(workdir, step=None):
  """Parameters (host numpy) of the checkpoint at ``step`` (default: latest) of the run in ``workdir``
  (``init.format = "mmjax"``)."""
  _, state = restore_run(workdir, step, devices=jax.local_devices()[:1])
  return jax.device_get(state.params)


def read_config(workdir) -> ml_collections.ConfigDict:
  """The validated config a run was trained with (``<workdir>/config.json``)."""
  path = Path(workdir) / "config.json"
  if not path.is_file():
    raise CheckpointError(f"{str(workdir)!r} holds no mmjax run (no config.json); pass the --workdir of a "
                          "run trained with `mmjax train`")
  try:
    cfg = json.loads(path.read_text())
  except ValueError as e:
    raise CheckpointError(f"{path} is damaged ({e}); pass --config with the config the run was trained "
                          "with") from None
  cfg.pop("init", None)  # the run's own pretrained source is not needed to restore it
  cfg.setdefault("prng_impl", "threefry")  # runs from before config.prng_impl used threefry keys
  return validate(ml_collections.ConfigDict(cfg))


def restore_run(workdir, step=None, *, config=None, devices=None) -> tuple[Run, TrainState]:
  """``(run, state)`` of the checkpoint at ``step`` (a number, ``None``/``"latest"``, or ``"best"``) of the
  run in ``workdir``, built from ``config`` (default: the run's own ``config.json``) on ``devices``
  (default: all; when the run's mesh does not fit them, data parallelism over them). Reads only: the run's
  checkpoints are opened read-only and its own pretrained source is not loaded (the checkpoint holds the
  trained parameters). The run's checkpointer is closed; the :class:`Run` stays usable for evaluation. The
  PRNG key is restored with the run's own ``prng_impl`` (from its ``config.json``) whatever ``config``
  says: evaluation draws no training keys."""
  own = read_config(workdir) if config is None or (Path(workdir) / "config.json").is_file() else None
  config = own if config is None else config
  config = ml_collections.ConfigDict(config.to_dict())
  config.init.format = config.init.path = ""  # a pretrained source is not needed to restore
  if own is not None:
    config.prng_impl = own.prng_impl
  count = len(devices) if devices is not None else jax.device_count()
  sizes = [config.mesh.data, config.mesh.fsdp, config.mesh.tensor]
  fixed = math.prod(s for s in sizes if s != -1)
  if count % fixed or (-1 not in sizes and fixed != count):
    # The run's mesh does not fit these devices (e.g. one device for grafting): a checkpoint restores onto
    # any mesh, so use data parallelism over them.
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = -1, 1, 1
  run = build_run(config, workdir, devices, read_only=True)
  if not run.checkpointer.directory.is_dir():
    raise CheckpointError(f"no checkpoints in {run.checkpointer.directory}; train first (mmjax train ...)")
  try:
    state = run.restore(step)
  finally:
    run.close()
  return run, state
