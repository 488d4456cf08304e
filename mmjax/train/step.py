"""``train_step`` and ``eval_step`` as module-level pure functions, and their jitted, sharded forms."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from mmjax.train.mesh import replicated
from mmjax.train.state import TrainState


def train_step(state: TrainState, batch: dict, *, model, tx, task):
  """One optimizer step. Returns the new state and scalar metrics (loss, task metrics, norms).

  The step's key is ``fold_in(state.rng, state.step)``, so a resumed run draws the same randomness. Models
  draw from two named streams: ``dropout`` (that key) and ``latent`` (sampling in generative models,
  ``fold_in(key, 1)``).
  """
  rng = jax.random.fold_in(state.rng, state.step)
  rngs = {"dropout": rng, "latent": jax.random.fold_in(rng, 1)}

  def loss_fn(params):
    outputs, aux = model.apply({"params": params}, batch, train=True, rngs=rngs)
    return task.loss(outputs, aux, batch)

  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads),
                 param_norm=optax.global_norm(params), update_norm=optax.global_norm(updates))
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params, batch: dict, *, model, task):
  """Sums of evaluation metrics over the valid examples of one batch, and the per-example arrays the
  task needs for metrics that are not sums (``task.eval_outputs``, plus ``_valid``; empty when the task
  has none). See :mod:`mmjax.tasks`. The ``latent`` stream has a fixed key, so evaluation is
  deterministic."""
  outputs, aux = model.apply({"params": params}, batch, train=False, rngs={"latent": jax.random.PRNGKey(0)})
  per_example = {}
  if hasattr(task, "eval_outputs"):
    per_example = dict(task.eval_outputs(outputs, aux, batch))
    if per_example:
      per_example["_valid"] = batch.get("_valid", jnp.ones(outputs.shape[:1], jnp.float32))
  return task.eval_sums(outputs, aux, batch), per_example


def jit_train_step(model, tx, task, state_shardings, batch_shardings, mesh):
  """``train_step`` jitted with explicit in/out shardings and the state donated."""
  return jax.jit(
      functools.partial(train_step, model=model, tx=tx, task=task),
      in_shardings=(state_shardings, batch_shardings),
      out_shardings=(state_shardings, replicated(mesh)),
      donate_argnums=(0,),
  )


def jit_eval_step(model, task, params_shardings, batch_shardings, mesh):
  """``eval_step`` jitted with explicit in/out shardings (per-example outputs are gathered)."""
  return jax.jit(
      functools.partial(eval_step, model=model, task=task),
      in_shardings=(params_shardings, batch_shardings),
      out_shardings=replicated(mesh),
  )


def sum_metrics(a: dict | None, b: dict) -> dict:
  """Element-wise sum of two metric dicts (``a`` may be None)."""
  return b if a is None else jax.tree_util.tree_map(jnp.add, a, b)
