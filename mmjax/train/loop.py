"""The training loop: data -> jitted step -> writers -> evaluators -> checkpoints, resumable.

:func:`train_and_evaluate` is the whole run; :func:`evaluate_checkpoint` evaluates a saved state. Both go
through :mod:`mmjax.train.run` (``build_run`` / ``restore_run``), so what is trained is exactly what is
evaluated. Evaluation is done by the evaluators the config names (:mod:`mmjax.evaluators`, reached only
through its registry); this module knows no model and no evaluator.

Before the first step the loop compiles the train step ahead of time and prints, one line each, the
parameter count, the device and mesh, the compiled step's FLOPs (XLA's cost analysis) and its memory per
device (arguments, temporaries, output), so a config that does not fit shows it before training starts;
then the model's analytic FLOPs (:mod:`mmjax.flops`) and their ratio to XLA's, also kept in
``metrics.json`` under ``"flops"``.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from pathlib import Path

import jax
import numpy as np
from tqdm.auto import tqdm

from mmjax import evaluators as evaluator_registry
from mmjax import flops as flops_lib
from mmjax.data import pipeline
from mmjax.errors import UserError
from mmjax.files import read_json, write_json, write_text
from mmjax.hardware import peak_tflops
from mmjax.train.lock import WorkdirLock
from mmjax.train.run import Run, build_run, count_params, restore_run
from mmjax.train.step import jit_plateau_update, jit_train_step
from mmjax.train.writers import MetricWriter


class NonFiniteLossError(UserError, FloatingPointError):
  """The training loss became NaN or infinite; the message names the steps."""


class Preemption:
  """Whether to stop and checkpoint now because the job is being preempted (SIGTERM).

  One process: SIGTERM sets a flag that the loop reads after each step. Several processes (one run over
  hosts): the hosts must agree on the step, or those not signalled would wait forever in the next
  collective. JAX's preemption sync service (started by ``jax.distributed.initialize``) spreads a notice
  that reached any host to all of them and names one step, the same everywhere, at which
  :meth:`due` becomes true (``multihost_utils.reached_preemption_sync_point``); every process checkpoints
  there together and exits. Used as a context manager around the loop.
  """

  def __init__(self, echo=print):
    self.multihost = jax.process_count() > 1
    self.raised = False
    self._previous = None
    self._echo = echo

  def __enter__(self):
    if self.multihost:
      return self
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread
      self._previous = None
    return self

  def _handle(self, signum, frame):
    self.raised = True

  def due(self, step: int) -> bool:
    """True at the step where this process (and, on several hosts, every host) should checkpoint and stop;
    call it after every step."""
    if not self.multihost:
      return self.raised
    from jax.experimental import multihost_utils

    try:
      return bool(multihost_utils.reached_preemption_sync_point(step))
    except RuntimeError as e:  # the service is off (jax_enable_preemption_service=False)
      if self._echo is not None:
        self._echo(f"mmjax: preemption is not coordinated across hosts ({e}); a SIGTERM ends this run "
                   "without a checkpoint (the latest one is resumed)")
        self._echo = None
      return False

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


def _fmt(metrics: dict) -> str:
  return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())


def _bytes(n) -> str:
  for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
    if abs(n) < 1024 or unit == "TiB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1024
  return str(n)


def compiled_stats(compiled) -> dict:
  """FLOPs and memory of a compiled step, as XLA reports them (missing entries are None)."""
  stats = {"flops": None, "argument_bytes": None, "temp_bytes": None, "output_bytes": None}
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    stats["flops"] = float(cost["flops"]) if cost and "flops" in cost else None
  except Exception:  # noqa: BLE001 - not every backend reports costs
    pass
  try:
    mem = compiled.memory_analysis()
    if mem is not None:
      stats.update(argument_bytes=mem.argument_size_in_bytes, temp_bytes=mem.temp_size_in_bytes,
                   output_bytes=mem.output_size_in_bytes, alias_bytes=mem.alias_size_in_bytes)
  except Exception:  # noqa: BLE001
    pass
  return stats


@dataclasses.dataclass
class _Best:
  """Progress of ``best_metric``: best value and step so far, evaluations since it."""

  metric: str
  mode: str
  value: float | None = None
  step: int | None = None
  since: int = 0

  def better(self, value: float) -> bool:
    if self.value is None:
      return True
    return value > self.value if self.mode == "max" else value < self.value


class _Evaluation:
  """The run's evaluators (:func:`mmjax.evaluators.build`), their schedule, logging and the state they
  feed back (plateau scale, best checkpoint, early stopping)."""

  def __init__(self, run: Run, writer: MetricWriter, echo):
    self.run, self.writer, self.echo = run, writer, echo
    cfg = run.config
    self.evaluators = evaluator_registry.build(run)
    self.best = _Best(cfg.best_metric, cfg.best_mode) if cfg.best_metric else None
    self.plateau_fn = None
    if run.optimizer.plateau is not None:
      self.plateau_fn = jit_plateau_update(run.optimizer, run.state_shardings.plateau)
    for metric in filter(None, (cfg.best_metric, run.optimizer.plateau_metric if self.plateau_fn else "")):
      key = metric.split("/")[0]
      base = key[:-4] if key.endswith("_ema") else key
      if base not in self.evaluators:
        raise UserError(f"{metric!r} names evaluator {key!r}, which this run does not have; its evaluators: "
                        f"{sorted(self.evaluators)} (add _ema for the EMA parameters' results)")

  def due(self, step: int) -> list[str]:
    return [k for k, (every, _) in self.evaluators.items() if every and step % every == 0]

  def resume(self, start: int) -> None:
    """Best value and evaluations since it, from the checkpoints' metrics (a resumed run continues the
    count where it was)."""
    if self.best is None:
      return
    ckpt = self.run.checkpointer
    step = ckpt.best_step()
    if step is None:
      return
    self.best.step = step
    self.best.value = float(ckpt.metrics(step)[self.best.metric])
    key = self.best.metric.split("/")[0].removesuffix("_ema")
    every = self.evaluators[key][0]
    self.best.since = (start // every - step // every) if every else 0

  def evaluate(self, keys, state, step: int, write=None, tag: str = "") -> dict:
    """Runs the evaluators ``keys`` on the parameters (and the EMA parameters, as ``KEY_ema``), logs every
    result, and returns ``{KEY: metrics}``. ``tag`` prefixes the names evaluators give their files."""
    write = write or self.echo
    results = {}
    sets = [("", state.params)] + ([("_ema", state.ema_params)] if state.ema_params is not None else [])
    for key in keys:
      for suffix, params in sets:
        name = key + suffix
        result = self.evaluators[key][1].evaluate(params, step=step, name=f"{tag}{name}")
        results[name] = result.metrics
        self.writer.write(step, name, result.metrics)
        self.writer.write_images(step, result.images)
        write(f"mmjax: step {step}: {name} " + _fmt(result.metrics))
        for path in result.files:
          if path.suffix == ".png":
            write(f"mmjax: wrote {path}")
    self.writer.flush()
    return results

  def feed_back(self, state, results: dict, step: int):
    """Plateau update and best tracking from ``results``; returns ``(state, checkpoint_metrics or
    None)`` — the metrics to save with this step's checkpoint when it carries the tracked metric."""
    metric = self.run.optimizer.plateau_metric
    if self.plateau_fn is not None and self._has(results, metric):
      old = float(jax.device_get(state.plateau.scale))
      state = state.replace(plateau=self.plateau_fn(state.plateau, self._value(results, metric)))
      new = float(jax.device_get(state.plateau.scale))
      if new != old:
        patience = self.run.config.optimizer.plateau.patience
        self.echo(f"mmjax: step {step}: {metric} has not improved for {patience} evaluations; "
                  f"learning-rate scale {old:g} -> {new:g}")
    if self.best is None or not self._has(results, self.best.metric):
      return state, None
    value = self._value(results, self.best.metric)
    if self.best.better(value):
      self.best.value, self.best.step, self.best.since = value, step, 0
    else:
      self.best.since += 1
    return state, {self.best.metric: value}

  def should_stop(self) -> bool:
    patience = self.run.config.early_stopping_patience
    return bool(patience and self.best is not None and self.best.since >= patience)

  @staticmethod
  def _has(results, metric) -> bool:
    key, _, name = metric.partition("/")
    return key in results and name in results[key]

  @staticmethod
  def _value(results, metric) -> float:
    key, _, name = metric.partition("/")
    return float(results[key][name])


def train_and_evaluate(config, workdir, *, devices=None, echo=print) -> dict:
  """Trains ``config`` in ``workdir`` (resuming from its latest checkpoint) and returns final metrics.

  Writes ``config.json``, ``metrics.jsonl`` (train windows and evaluations), TensorBoard event files
  (``tensorboard/``), ``metrics.json`` (the final evaluations, the last window of training metrics under
  ``"train"``, and with ``best_metric`` the ``"best"`` checkpoint's step and evaluations) and checkpoints
  under ``workdir/checkpoints``. Nothing is written before the config, the workdir, the resumed
  checkpoint, the evaluators, the data and the step's memory have been checked; one run at a time holds
  the workdir (:mod:`mmjax.train.lock`). ``devices`` restricts the mesh (default: all devices).
  """
  workdir = Path(workdir)
  check_workdir(workdir)
  lock = WorkdirLock(workdir, echo) if jax.process_index() == 0 else None
  if lock is not None:
    lock.check()
  run = build_run(config, workdir, devices)
  try:
    return _train(run, config, workdir, echo, lock)
  finally:
    run.close()  # never leave an asynchronous save half-written
    if lock is not None:
      lock.release()


def check_workdir(workdir: Path) -> None:
  """A :class:`UserError` when ``workdir`` is a file, lies below a file, or cannot be created or written."""
  for parent in [workdir, *workdir.parents]:
    if parent.exists():
      if not parent.is_dir():
        where = "is a file" if parent == workdir else f"lies below the file {parent}"
        raise UserError(f"--workdir {str(workdir)!r} {where}; choose a directory path")
      if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--workdir {str(workdir)!r} cannot be written ({parent} is not writable by this "
                        "user); choose another path or fix the permissions")
      return


def available_memory(device) -> int | None:
  """Bytes a new allocation can use on ``device``: the accelerator's free memory, or the host's available
  memory (``MemAvailable``) for CPU devices; None when unknown."""
  try:
    stats = device.memory_stats()
  except Exception:  # noqa: BLE001 - not every backend has memory stats
    stats = None
  if stats and "bytes_limit" in stats:
    return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
  if device.platform == "cpu":
    try:
      for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
    except OSError:
      return None
  return None


def state_bytes_per_device(abstract_state) -> int:
  """Bytes of one device's shard of the training state (``ShapeDtypeStruct`` leaves with shardings)."""
  total = 0
  for leaf in jax.tree_util.tree_leaves(abstract_state):
    sharding = getattr(leaf, "sharding", None)
    shape = sharding.shard_shape(leaf.shape) if sharding is not None else leaf.shape
    total += int(np.prod(shape)) * np.dtype(leaf.dtype).itemsize
  return total


def check_state_memory(abstract_state, devices, config) -> None:
  """Refuses at once (before compiling) a training state that alone exceeds the available memory."""
  check_memory({"argument_bytes": state_bytes_per_device(abstract_state), "temp_bytes": 0,
                "output_bytes": 0}, devices, config, what="the training state alone")


def check_memory(stats: dict, devices, config, what: str = "the train step") -> None:
  """Refuses a step whose compiled memory (arguments + temporaries + outputs, per device; on CPU all
  devices share the host) exceeds what is available, before anything is allocated."""
  if not config.check_memory or stats["argument_bytes"] is None:
    return
  need = stats["argument_bytes"] + stats["temp_bytes"] + stats["output_bytes"] - stats.get("alias_bytes", 0)
  per_host = devices[0].platform == "cpu"
  local = [d for d in devices if d.process_index == jax.process_index()]
  total = need * (len(local) if per_host else 1)
  have = available_memory(local[0])
  if have is not None and total > have:
    where = "the host (all CPU devices share it)" if per_host else f"each {devices[0].device_kind}"
    parts = (f"arguments {_bytes(stats['argument_bytes'])}, temporaries {_bytes(stats['temp_bytes'])}, "
             f"outputs {_bytes(stats['output_bytes'])} per device" if stats["temp_bytes"] else
             f"{_bytes(stats['argument_bytes'])} per device")
    raise UserError(
        f"{what} needs about {_bytes(total)} on {where} ({parts}), but only {_bytes(have)} is available. "
        "Shrink the model or the batch, shard it over more devices (mesh.fsdp), or pass "
        "--config.check_memory=false to try anyway.")


def _train(run: Run, config, workdir: Path, echo, lock) -> dict:
  is_main = run.is_main
  say = echo if is_main else (lambda *a, **k: None)
  start = run.checkpointer.latest_step() or 0
  evaluation = _Evaluation(run, _NullWriter(), say)
  batches = pipeline.train_batches(
      config.data, global_batch_size=config.batch_size, seed=config.seed, start_step=start,
      process_index=jax.process_index(), process_count=jax.process_count(),
  )
  devices = run.devices
  say(f"mmjax: model {config.model.name} ({count_params(run.abstract_state.params):,} parameters), data "
      f"{config.data.name}, mesh {dict(run.mesh.shape)}, {jax.process_count()} process(es), "
      f"{len(devices)} x {devices[0].device_kind} ({devices[0].platform})")
  step_fn = jit_train_step(run.model, run.optimizer, run.task, run.state_shardings, run.batch_sharding,
                           run.mesh, config.optimizer.grad_accum_steps, config.prng_impl,
                           config.mesh.rules.to_dict())
  check_state_memory(run.abstract_state, devices, config)
  batch = None
  if start < config.num_steps:
    local = next(batches)
    run.check_batch(local)  # labels in range for the model's outputs (the task's check), before compiling
    batch = run.global_batch(local)
  throughput = Throughput(None, devices[0])
  flops_info = {}
  if batch is not None:  # compiled against the abstract state: nothing is allocated before the check
    t = time.perf_counter()
    step_fn = step_fn.lower(run.abstract_state, batch).compile()
    stats = compiled_stats(step_fn)
    flops = f"{stats['flops'] / 1e9:.3g} GFLOP per step" if stats["flops"] else "FLOPs not reported"
    memory = ("memory per device: arguments " + _bytes(stats["argument_bytes"]) + ", temporaries "
              + _bytes(stats["temp_bytes"]) + ", output " + _bytes(stats["output_bytes"])
              if stats["argument_bytes"] is not None else "memory not reported")
    say(f"mmjax: train step compiled in {time.perf_counter() - t:.1f} s: {flops} (XLA cost analysis); "
        f"{memory}")
    check_memory(stats, devices, config)
    flops_info = step_flops(config.model.name, run.model, batch, stats["flops"], len(devices))
    say(f"mmjax: {flops_lib.describe(flops_info['analytic'], flops_info['xla_train_step'])}")
    analytic = flops_info["analytic_train_step"]
    throughput = Throughput(stats["flops"], devices[0], analytic / len(devices) if analytic else None)
  state = run.restore_or_init()
  evaluation.resume(start)
  # Every check has passed: from here on the workdir is written.
  if lock is not None:
    lock.acquire()
  if is_main:
    write_text(workdir / "config.json", config.to_json_best_effort(indent=2) + "\n")
  writer = MetricWriter(workdir, tensorboard=config.tensorboard)
  evaluation.writer = writer
  say(f"mmjax: resuming from checkpoint at step {start}" if start else "mmjax: starting from scratch")
  try:
    return _loop(run, config, workdir, state, start, batch, batches, step_fn, evaluation, writer, say,
                 throughput, flops_info)
  finally:
    writer.close()


def step_flops(model_name: str, model, batch: dict, xla_per_device: float | None, num_devices: int) -> dict:
  """FLOPs of one train step on the global ``batch``, all devices together: ``xla_train_step`` (XLA's cost
  analysis of the per-device program times the devices), ``analytic_train_step`` and ``analytic_forward``
  (:mod:`mmjax.flops`; None without a counter for the model) and ``analytic_over_xla``; ``analytic`` holds
  the counter's own dict."""
  analytic = flops_lib.train_step_flops(model_name, model, batch)
  xla = xla_per_device * num_devices if xla_per_device else None
  ratio = analytic["train_step"] / xla if analytic and xla else None
  return {"xla_train_step": xla, "analytic_train_step": analytic and analytic["train_step"],
          "analytic_forward": analytic and analytic["forward"], "analytic_over_xla": ratio,
          "analytic": analytic}


class Throughput:
  """FLOP/s per device and MFU (the fraction of the device's dense peak) from the compiled step's FLOPs
  (XLA's cost analysis of the partitioned program: FLOPs per device per step) and the measured steps/s.
  MFU is reported on accelerators with a known peak (:data:`mmjax.hardware.PEAKS`, at the float32 peak
  until the compute dtype is configurable); on CPU only TFLOP/s, whose peak is an estimate. With the
  model's analytic FLOPs per device (:mod:`mmjax.flops`) also ``analytic_tflops_per_device`` (and
  ``analytic_mfu``): XLA counts a scanned loop body once, so for models that scan over layers (MulT) only
  the analytic rate is the whole step's."""

  def __init__(self, flops_per_step: float | None, device, analytic_per_step: float | None = None):
    self.flops = flops_per_step
    self.analytic = analytic_per_step
    self.peak = None
    if (flops_per_step or analytic_per_step) and device.platform != "cpu":
      self.peak = peak_tflops(device.device_kind, device.platform)["float32"]

  def __call__(self, steps_per_s: float) -> dict:
    out = {}
    for prefix, flops in (("", self.flops), ("analytic_", self.analytic)):
      if flops:
        tflops = flops * steps_per_s / 1e12
        out[f"{prefix}tflops_per_device"] = tflops
        if self.peak:
          out[f"{prefix}mfu"] = tflops / self.peak
    return out


class _NullWriter:
  """Stands in for the writer until the checks before training have passed."""

  def write(self, *a, **k):
    pass

  write_images = flush = close = write


def _loop(run, config, workdir, state, start, batch, batches, step_fn, evaluation, writer, say,
          throughput, flops_info) -> dict:
  is_main = run.is_main
  window = {}
  if start >= config.num_steps:  # a finished run, evaluated again
    window = (read_json(workdir / "metrics.json", {}, warn=say) or {}).get("train", {})
  stopped = evaluation.should_stop()
  bar = tqdm(total=config.num_steps, initial=start, disable=not (config.progress and is_main) or stopped,
             desc="train", unit="step", dynamic_ncols=True, mininterval=1.0)
  pending, window_start, t0 = [], start, time.perf_counter()
  step, last_results = start, (None, {})
  with Preemption(say) as preemption:
    while step < config.num_steps and not stopped:
      if batch is None:
        batch = run.global_batch(next(batches))
      state, metrics = step_fn(state, batch)
      batch = None
      pending.append(metrics)
      bar.update(1)
      step += 1
      if step % config.log_every == 0 or step == config.num_steps:
        window = _pull(pending)
        if not np.isfinite(window["loss"]):
          raise NonFiniteLossError(
              f"loss is {window['loss']} in steps {window_start + 1}..{step}; stopping. Lower the "
              "learning rate, enable clipping (optimizer.clip_norm), or check the data."
          )
        rate = len(pending) / max(time.perf_counter() - t0, 1e-9)
        rates = {"steps_per_s": rate, "examples_per_s": rate * config.batch_size, **throughput(rate)}
        writer.write(step, "train", {**window, **rates})
        shown = ("loss", "accuracy", "token_accuracy")
        bar.set_postfix({k: f"{window[k]:.4f}" for k in shown if k in window})
        pending, window_start, t0 = [], step, time.perf_counter()
      best_metrics = None
      due = evaluation.due(step) if step != config.num_steps else []
      if due:
        results = evaluation.evaluate(due, state, step, bar.write if is_main else None)
        last_results = (step, results)
        state, best_metrics = evaluation.feed_back(state, results, step)
        stopped = evaluation.should_stop()
        t0 = time.perf_counter()
      if step != config.num_steps:
        run.checkpointer.save(step, state, metrics=best_metrics, force=stopped)
      if preemption.due(step):
        run.checkpointer.save(step, state, force=True)
        run.checkpointer.wait()
        bar.close()
        say(f"mmjax: SIGTERM (preemption) at step {step}; checkpoint saved. Re-run the same command to "
            "resume.")
        raise Interrupted(step)
  bar.close()
  final_step = int(jax.device_get(state.step))
  if stopped:
    best = evaluation.best
    say(f"mmjax: early stopping at step {final_step}: {best.metric} has not improved for {best.since} "
        f"evaluations (best {best.value:.4f} at step {best.step})")
  final = {"step": final_step, "model": config.model.name, "num_params": count_params(state.params),
           "train": window}
  if flops_info:
    final["flops"] = {k: v for k, v in flops_info.items() if k != "analytic"}
  # Every evaluator at the final step; those that already ran at this step (an early stop) are not rerun.
  done = last_results[1] if last_results[0] == final_step else {}
  todo = [k for k in evaluation.evaluators if k not in done]
  results = {**done, **evaluation.evaluate(todo, state, final_step)}
  final.update(results)
  if todo:
    state, best_metrics = evaluation.feed_back(state, {k: results[k] for k in results if k not in done},
                                               final_step)
  else:
    best_metrics = None
  run.checkpointer.save(final_step, state, metrics=best_metrics, force=True)
  run.checkpointer.wait()
  if evaluation.best is not None:
    final["best"] = _best_block(run, evaluation, final_step, results, say)
  if stopped:
    final["stopped_early"] = True
  if is_main:
    write_json(workdir / "metrics.json", final)
  return final


def _best_block(run, evaluation, final_step, final_results, say) -> dict:
  """The best checkpoint's step, metric value and every evaluator's results on it."""
  step = run.checkpointer.best_step()
  block = {"step": step, "metric": evaluation.best.metric, "value": evaluation.best.value}
  if step is None:
    return block
  if step == final_step:
    return {**block, **final_results}
  best_state = run.restore(step)
  say(f"mmjax: evaluating the best checkpoint (step {step}, {evaluation.best.metric} "
      f"{evaluation.best.value:.4f})")
  evaluation.writer = _NullWriter()  # the best checkpoint's results go to metrics.json, not the curves
  return {**block, **evaluation.evaluate(list(evaluation.evaluators), best_state, step, tag="best-")}


def evaluate_checkpoint(config, workdir, split: str, step=None) -> dict:
  """Evaluates the checkpoint at ``step`` (a number, ``None``/``"latest"`` or ``"best"``) of ``workdir``
  with the task's metrics on ``split``; returns ``{"step": s, split: metrics}``. Writes nothing."""
  run, state = restore_run(workdir, step, config=config)
  evaluator = evaluator_registry.get("split_metrics")(run, split=split, confusion=False)
  result = evaluator.evaluate(state.params, step=int(jax.device_get(state.step)), name=split)
  return {"step": int(jax.device_get(state.step)), split: result.metrics}
