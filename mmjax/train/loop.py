"""The training loop: data -> jitted step -> metrics -> checkpoints -> evaluation, resumable.

:func:`train_and_evaluate` is the whole run; :func:`evaluate_checkpoint` evaluates a saved state. Both
build the same :class:`Run` (mesh, model, task, optimizer, abstract sharded state, checkpointer), so
what is trained is exactly what is evaluated.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import time
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from mmjax import models, tasks
from mmjax.data import pipeline
from mmjax.train import mesh as mesh_lib
from mmjax.train.checkpoint import Checkpointer
from mmjax.train.optim import make_optimizer
from mmjax.train.state import TrainState
from mmjax.train.step import jit_eval_step, jit_train_step, sum_metrics


class BatchError(ValueError):
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


def init_state(model, tx, example_batch: dict, seed: int) -> TrainState:
  """Fresh state: parameters from ``model.init`` on an example batch, optimizer state, base PRNG key."""
  root = jax.random.PRNGKey(seed)
  variables = model.init(
      {"params": jax.random.fold_in(root, 0), "dropout": jax.random.fold_in(root, 1)},
      example_batch, train=False,
  )
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=jax.random.fold_in(root, 2))


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
  tx: Any
  batch_sharding: Any
  state_shardings: Any
  abstract_state: Any
  init: Any  # () -> sharded TrainState
  checkpointer: Checkpointer
  generation: Any = None  # mmjax.generation.CrossModal when config.generation asks for coherence or grids

  def restore_or_init(self, step: int | None = None, *, require: bool = False) -> TrainState:
    """The checkpoint at ``step`` (default: latest) if there is one, else a fresh state."""
    step = self.checkpointer.latest_step() if step is None else step
    if step is None:
      if require:
        raise FileNotFoundError(f"no checkpoint in {self.checkpointer.directory}; train first")
      return self.init()
    return self.checkpointer.restore(step, self.abstract_state)

  def evaluate(self, params, split: str, eval_fn=None) -> dict:
    """Metric means over every example of ``split`` (plus ``count``)."""
    cfg = self.config
    if eval_fn is None:
      eval_fn = jit_eval_step(self.model, self.task, self.state_shardings.params, self.batch_sharding,
                              self.mesh)
    total, collected = None, []
    for local in pipeline.eval_batches(cfg.data, split, global_batch_size=cfg.eval_batch_size,
                                       process_index=jax.process_index(),
                                       process_count=jax.process_count()):
      sums, per_example = eval_fn(params, make_global_batch(local, self.batch_sharding))
      total = sum_metrics(total, sums)
      if per_example:
        collected.append(per_example)
    total = jax.device_get(total)
    count = float(total.pop("count"))
    result = {k: float(v) / max(count, 1.0) for k, v in total.items()}
    if collected:  # metrics over all predictions (correlation, F1, ...)
      arrays = {k: np.concatenate([np.asarray(c[k]) for c in jax.device_get(collected)])
                for k in collected[0]}
      valid = arrays.pop("_valid") > 0
      result.update(self.task.summarize({k: v[valid] for k, v in arrays.items()}))
    if self.generation is not None:
      result.update(self.generation.coherence(params, split))
    return {**result, "count": int(count)}


def build_run(config, workdir, devices=None) -> Run:
  """Builds mesh (over ``devices``, default all), model, task, optimizer, the abstract sharded state and
  the checkpointer."""
  workdir = Path(workdir)
  mesh = mesh_lib.make_mesh({"data": config.mesh.data, "fsdp": config.mesh.fsdp,
                             "tensor": config.mesh.tensor}, devices)
  for name, size in (("batch_size", config.batch_size), ("eval_batch_size", config.eval_batch_size)):
    if size % mesh_lib.data_parallel_size(mesh):
      raise BatchError(f"{name} {size} is not divisible by the {mesh_lib.data_parallel_size(mesh)} "
                       "data-parallel devices of the mesh")
  model = models.build(config.model.name, dict(config.model.kwargs))
  task = tasks.get(config.task.name, **dict(config.task.kwargs))
  tx = make_optimizer(config.optimizer, config.num_steps)
  example = pipeline.example_from_features(config.data)  # shapes only: no data are read here

  def init():
    return init_state(model, tx, example, config.seed)

  boxed = jax.eval_shape(init)
  state_shardings = mesh_lib.tree_shardings(boxed, mesh)
  abstract = jax.tree_util.tree_map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), nn.unbox(boxed), state_shardings)
  init_sharded = jax.jit(lambda: nn.unbox(init()), out_shardings=state_shardings)
  if config.init.format:
    init_sharded = _with_pretrained(init, config.init, tx, state_shardings, model)
  identity = {"model": config.model.name, "kwargs": config.model.kwargs.to_dict()}
  checkpointer = Checkpointer(workdir / "checkpoints", save_every=config.checkpoint_every,
                              keep=config.keep_checkpoints, identity=identity,
                              async_save=config.async_checkpoints)
  run = Run(config, workdir, mesh, model, task, tx, mesh_lib.batch_sharding(mesh), state_shardings,
            abstract, init_sharded, checkpointer)
  if config.generation.coherence or config.generation.grid:
    from mmjax.generation import CrossModal

    run.generation = CrossModal(run, label_key=getattr(task, "label_key", "label"))
  return run


def _with_pretrained(init_fn, init_cfg, tx, shardings, model=None):
  """A sharded init that grafts the parameters ``config.init`` names into ``init_fn()``'s (see
  :mod:`mmjax.train.pretrained`) and builds the optimizer state for the result, in one jitted call
  (the pretrained arrays are its arguments, not constants)."""
  from mmjax.train.pretrained import graft, load_pretrained

  def grafted(pretrained):
    state = nn.unbox(init_fn())
    params = graft(state.params, pretrained, init_cfg.target)
    return state.replace(params=params, opt_state=tx.init(params))

  def init():
    return jax.jit(grafted, out_shardings=shardings)(load_pretrained(init_cfg, model))

  return init


class _Log:
  """JSONL metrics on process 0 (``<workdir>/metrics.jsonl``)."""

  def __init__(self, path: Path):
    self.enabled = jax.process_index() == 0
    self.path = path

  def write(self, **record):
    if self.enabled:
      with self.path.open("a") as f:
        f.write(json.dumps(record) + "\n")


class _SigtermFlag:
  """Turns SIGTERM into a flag the loop checks after each step (then it checkpoints and exits)."""

  def __init__(self):
    self.raised = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread
      self._previous = None
    return self

  def _handle(self, signum, frame):
    self.raised = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class Interrupted(SystemExit):
  """Raised after SIGTERM once the state is checkpointed; exit status 143 like a terminated process."""

  def __init__(self, step: int):
    super().__init__(143)
    self.step = step


def _pull(pending: list) -> dict:
  """Means over the window of per-step device metrics (one host transfer)."""
  host = jax.device_get(pending)
  return {k: float(np.mean([m[k] for m in host])) for k in host[0]}


def train_and_evaluate(config, workdir, *, devices=None, echo=print) -> dict:
  """Trains ``config`` in ``workdir`` (resuming from its latest checkpoint) and returns final metrics.

  Writes ``config.json``, ``metrics.jsonl`` (train windows and evaluations) and ``metrics.json`` (the
  final evaluations, and the last window of training metrics under ``"train"``) to ``workdir``, and
  checkpoints under ``workdir/checkpoints``. ``devices`` restricts the mesh (default: all devices).
  """
  workdir = Path(workdir)
  is_main = jax.process_index() == 0
  if is_main:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  run = build_run(config, workdir, devices)
  try:
    return _train(run, config, workdir, echo)
  finally:
    run.checkpointer.close()  # never leave an asynchronous save half-written


def _train(run: Run, config, workdir: Path, echo) -> dict:
  is_main = jax.process_index() == 0
  log = _Log(workdir / "metrics.jsonl")
  state = run.restore_or_init()
  start = int(jax.device_get(state.step))
  say = echo if is_main else (lambda *a, **k: None)
  say(f"mmjax: model {config.model.name} ({count_params(state.params):,} parameters), data "
      f"{config.data.name}, mesh {dict(run.mesh.shape)}, {jax.process_count()} process(es), "
      f"{jax.device_count()} {jax.devices()[0].platform} device(s)")
  say(f"mmjax: resuming from checkpoint at step {start}" if start else "mmjax: starting from scratch")

  train_fn = jit_train_step(run.model, run.tx, run.task, run.state_shardings, run.batch_sharding, run.mesh)
  eval_fn = jit_eval_step(run.model, run.task, run.state_shardings.params, run.batch_sharding, run.mesh)
  batches = pipeline.train_batches(
      config.data, global_batch_size=config.batch_size, seed=config.seed, start_step=start,
      process_index=jax.process_index(), process_count=jax.process_count(),
  )
  bar = tqdm(total=config.num_steps, initial=start, disable=not (config.progress and is_main),
             desc="train", unit="step", dynamic_ncols=True, mininterval=1.0)
  pending, window_start, t0, timed_from, window = [], start, time.perf_counter(), 0, {}
  if start >= config.num_steps and (workdir / "metrics.json").exists():  # a finished run, evaluated again
    window = json.loads((workdir / "metrics.json").read_text()).get("train", {})
  with _SigtermFlag() as sigterm:
    for step in range(start, config.num_steps):
      state, metrics = train_fn(state, make_global_batch(next(batches), run.batch_sharding))
      pending.append(metrics)
      bar.update(1)
      done = step + 1
      if step == start:  # the first step includes compilation: time the window from its end
        jax.block_until_ready(metrics)
        t0, timed_from = time.perf_counter(), len(pending)
      if done % config.log_every == 0 or done == config.num_steps:
        window = _pull(pending)
        if not np.isfinite(window["loss"]):
          raise FloatingPointError(
              f"loss is {window['loss']} in steps {window_start + 1}..{done}; stopping. Lower the "
              "learning rate, enable clipping (optimizer.clip_norm), or check the data."
          )
        timed = len(pending) - timed_from
        rate = timed / max(time.perf_counter() - t0, 1e-9) if timed else None
        log.write(step=done, split="train", steps_per_s=rate,
                  examples_per_s=rate and rate * config.batch_size, **window)
        shown = ("loss", "accuracy", "token_accuracy")
        bar.set_postfix({k: f"{window[k]:.4f}" for k in shown if k in window})
        pending, window_start, t0, timed_from = [], done, time.perf_counter(), 0
      if config.eval_every and done % config.eval_every == 0 and done != config.num_steps:
        result = run.evaluate(state.params, config.data.eval_split, eval_fn)
        log.write(step=done, split=config.data.eval_split, **result)
        if is_main:
          bar.write(f"step {done}: {config.data.eval_split} " + _fmt(result))
        _write_grid(run, state.params, done, bar.write if is_main else None)
      run.checkpointer.save(done, state)
      if sigterm.raised:
        run.checkpointer.save(done, state, force=True)
        bar.close()
        say(f"mmjax: SIGTERM at step {done}; checkpoint saved. Re-run the same command to resume.")
        raise Interrupted(done)
  bar.close()
  final_step = int(jax.device_get(state.step))
  run.checkpointer.save(final_step, state, force=True)
  final = {"step": final_step, "model": config.model.name, "num_params": count_params(state.params),
           "train": window}
  for split in dict.fromkeys(s for s in (config.data.eval_split, config.data.test_split) if s):
    final[split] = run.evaluate(state.params, split, eval_fn)
    log.write(step=final_step, split=split, **final[split])
    say(f"mmjax: final {split}: " + _fmt(final[split]))
  _write_grid(run, state.params, final_step, say)
  if is_main:
    (workdir / "metrics.json").write_text(json.dumps(final, indent=2) + "\n")
  return final


def _write_grid(run: Run, params, step: int, echo) -> None:
  """The sample grid of this evaluation (``config.generation.grid``), if the config asks for one."""
  if run.generation is None or run.generation.grid_pair is None:
    return
  split = run.config.data.eval_split
  path = run.generation.write_grid(params, split, run.generation.grid_path(run.workdir, step))
  if echo is not None:
    echo(f"mmjax: samples {'->'.join(run.generation.grid_pair)} ({split}) written to {path}")


def evaluate_checkpoint(config, workdir, split: str, step: int | None = None) -> dict:
  """Evaluates the checkpoint at ``step`` (default: latest) of ``workdir`` on ``split``."""
  run = build_run(config, workdir)
  state = run.restore_or_init(step, require=True)
  result = run.evaluate(state.params, split)
  run.checkpointer.close()
  return {"step": int(jax.device_get(state.step)), split: result}


def _fmt(metrics: dict) -> str:
  return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
