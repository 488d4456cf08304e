"""``train_step`` and ``eval_step`` as module-level pure functions, and their jitted, sharded forms."""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mmjax.layers import axes
from mmjax.train.mesh import BATCH_AXES, parse_rules, replicated
from mmjax.train.optim import Optimizer
from mmjax.train.state import DEFAULT_PRNG_IMPL, TrainState, wrap_key


def _micro_batches(batch: dict, k: int, mesh=None) -> dict:
  """``[B, ...]`` leaves -> ``[k, B / k, ...]``: micro-batch ``j`` holds rows ``j, j + k, j + 2k, ...``, so
  each device keeps its rows of every micro-batch (the batch is split over the data axes in contiguous
  blocks) and nothing moves between devices."""
  def split(x):
    x = x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)
    if mesh is not None:
      x = jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(None, BATCH_AXES)))
    return x

  return jax.tree_util.tree_map(split, batch)


def _activations_on(mesh, rules):
  """The context in which the model's activation constraints (``axes.constrain``) bind to ``mesh`` by
  ``rules`` (a config's ``mesh.rules``; defaults for None); none without a mesh."""
  if mesh is None:
    return contextlib.nullcontext()
  return axes.activation_sharding(mesh, parse_rules(rules))


def train_step(state: TrainState, batch: dict, *, model, optimizer: Optimizer, task, accum_steps: int = 1,
               mesh=None, prng_impl: str = DEFAULT_PRNG_IMPL, rules=None):
  """One optimizer update. Returns the new state and scalar metrics (loss, task metrics, the learning
  rate, gradient/parameter/update norms).

  The step's key is ``fold_in(state.rng, state.step)`` (``state.rng`` holds the raw data of a key of
  ``prng_impl``, see :mod:`mmjax.train.state`), so a resumed run draws the same randomness. Models
  draw from two named streams: ``dropout`` (that key) and ``latent`` (sampling in generative models,
  ``fold_in(key, 1)``). With ``accum_steps = k > 1`` the batch is split into ``k`` equal micro-batches
  (``lax.scan``; micro-batch ``j`` draws from ``fold_in(key, 2 + j)``), their gradients and metrics are
  averaged and one update is applied, so the learning-rate schedule counts updates and ``k`` micro-batches
  give the update of one batch ``k`` times larger (exactly for per-example mean losses).

  With a ``mesh``, the model's activations are constrained by the logical ``rules`` (config.mesh.rules).
  """
  with _activations_on(mesh, rules):
    return _train_step(state, batch, model=model, optimizer=optimizer, task=task, accum_steps=accum_steps,
                       mesh=mesh, prng_impl=prng_impl)


def _train_step(state, batch, *, model, optimizer, task, accum_steps, mesh, prng_impl):
  rng = jax.random.fold_in(wrap_key(state.rng, prng_impl), state.step)

  def loss_fn(params, data, key):
    rngs = {"dropout": key, "latent": jax.random.fold_in(key, 1)}
    outputs, aux = model.apply({"params": params}, data, train=True, rngs=rngs)
    return task.loss(outputs, aux, data)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if accum_steps == 1:
    (loss, metrics), grads = grad_fn(state.params, batch, rng)
  else:
    def micro_step(carry, xs):
      j, micro = xs
      (loss, metrics), grads = grad_fn(state.params, micro, jax.random.fold_in(rng, 2 + j))
      return jax.tree_util.tree_map(jnp.add, carry, (loss, metrics, grads)), None

    (_, metrics0), grads0 = jax.eval_shape(grad_fn, state.params, jax.tree_util.tree_map(
        lambda x: x[:x.shape[0] // accum_steps], batch), rng)
    zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype),
                                   (jax.ShapeDtypeStruct((), jnp.float32), metrics0, grads0))
    total, _ = jax.lax.scan(micro_step, zeros, (jnp.arange(accum_steps), _micro_batches(batch, accum_steps,
                                                                                        mesh)))
    loss, metrics, grads = jax.tree_util.tree_map(lambda x: x / accum_steps, total)
  updates, opt_state = optimizer.tx.update(grads, state.opt_state, state.params)
  lr = optimizer.schedule(state.step)
  if state.plateau is not None:  # ReduceLROnPlateau: a scale on the update, set at evaluations
    updates = jax.tree_util.tree_map(lambda u: u * state.plateau.scale.astype(u.dtype), updates)
    lr = lr * state.plateau.scale
  params = optax.apply_updates(state.params, updates)
  ema = state.ema_params
  if ema is not None:
    d = optimizer.ema_decay
    ema = jax.tree_util.tree_map(lambda e, p: d * e + (1.0 - d) * p, ema, params)
  metrics = dict(metrics, loss=loss, learning_rate=jnp.asarray(lr, jnp.float32),
                 grad_norm=optax.global_norm(grads), param_norm=optax.global_norm(params),
                 update_norm=optax.global_norm(updates))
  new = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema)
  return new, metrics


def eval_step(params, batch: dict, *, model, task, mesh=None, rules=None):
  """Sums of evaluation metrics over the valid examples of one batch, and the per-example arrays the
  task needs for metrics that are not sums (``task.eval_outputs``, plus ``_valid``; empty when the task
  has none). See :mod:`mmjax.tasks`. The ``latent`` stream has a fixed key, so evaluation is
  deterministic. With a ``mesh``, activations are constrained by ``rules`` as in :func:`train_step`."""
  with _activations_on(mesh, rules):
    outputs, aux = model.apply({"params": params}, batch, train=False,
                               rngs={"latent": jax.random.PRNGKey(0)})
  per_example = {}
  if hasattr(task, "eval_outputs"):
    per_example = dict(task.eval_outputs(outputs, aux, batch))
    if per_example:
      per_example["_valid"] = batch.get("_valid", jnp.ones(outputs.shape[:1], jnp.float32))
  return task.eval_sums(outputs, aux, batch), per_example


def jit_train_step(model, optimizer, task, state_shardings, batch_shardings, mesh, accum_steps: int = 1,
                   prng_impl: str = DEFAULT_PRNG_IMPL, rules=None):
  """``train_step`` jitted with explicit in/out shardings and the state donated; activations placed by
  the logical ``rules`` (config.mesh.rules; defaults for None)."""
  return jax.jit(
      functools.partial(train_step, model=model, optimizer=optimizer, task=task, accum_steps=accum_steps,
                        mesh=mesh, prng_impl=prng_impl, rules=rules),
      in_shardings=(state_shardings, batch_shardings),
      out_shardings=(state_shardings, replicated(mesh)),
      donate_argnums=(0,),
  )


def jit_eval_step(model, task, params_shardings, batch_shardings, mesh, rules=None):
  """``eval_step`` jitted with explicit in/out shardings (per-example outputs are gathered)."""
  return jax.jit(
      functools.partial(eval_step, model=model, task=task, mesh=mesh, rules=rules),
      in_shardings=(params_shardings, batch_shardings),
      out_shardings=replicated(mesh),
  )


def jit_plateau_update(optimizer: Optimizer, sharding):
  """``(plateau_state, value) -> plateau_state`` jitted (one evaluation of the watched metric)."""
  return jax.jit(optimizer.plateau_update, out_shardings=sharding)


def sum_metrics(a: dict | None, b: dict) -> dict:
  """Element-wise sum of two metric dicts (``a`` may be None)."""
  return b if a is None else jax.tree_util.tree_map(jnp.add, a, b)
