"""The model contract, for every name in ``models.names()``: init and apply on the batch its config makes,
output shapes, finite (and non-zero) gradients of the task's loss, a loss that falls on the batch when
the parameters take a small step against that gradient, determinism under a fixed seed.

Every registered model needs an entry in :data:`CONFIG_OF` (a config that trains it, shrunk with
``runlocal``), so a new model cannot be registered without a config and this test."""

import jax
import numpy as np
import optax
import pytest

from mmjax import models, tasks
from mmjax.config import get_config
from mmjax.data import pipeline
from tests.conftest import CONFIGS

CONFIG_OF = {
    "late_fusion": "late_fusion_digits.py:runlocal",
    "early_fusion": "early_fusion_digits.py:runlocal",
    "mult": "mult_digits.py:runlocal",
    "mbt": "mbt_digits.py:runlocal",
    "mfm": "mfm_digits.py:runlocal",
    "mctn": "mctn_digits.py:runlocal",
    "mvae": "mvae_digits.py:runlocal",
    "mmvae": "mmvae_digits.py:runlocal",
    "frozen": "frozen_digits.py:runlocal",
    "causal_lm": "frozen_digits.py:lm,runlocal",
    "mag": "mag_digits.py:runlocal",
    "clip": "clip_digits.py:runlocal",
    "tfn": "tfn_digits.py:runlocal",
    "lmf": "lmf_digits.py:runlocal",
    "visualbert": "visualbert_digits.py:pretrain,runlocal",
    "vilbert": "vilbert_digits.py:pretrain,runlocal",
}
B = 4


def test_every_registered_model_has_a_contract_config():
  assert sorted(CONFIG_OF) == models.names()


@pytest.mark.parametrize("name", sorted(CONFIG_OF))
def test_model_contract(name, data_dir):
  cfg = get_config(str(CONFIGS / CONFIG_OF[name]), [f"data.data_dir={data_dir}"])
  assert cfg.model.name == name
  model = models.build(name, dict(cfg.model.kwargs))
  task = tasks.get(cfg.task.name, **dict(cfg.task.kwargs))
  batch = pipeline.example_from_features(cfg.data, batch_size=B, seed=0)  # random features, full lengths
  rng = np.random.default_rng(0)
  for key, value in batch.items():  # token sequences differ between examples (ids 0-3: in every vocabulary)
    if value.ndim == 2 and np.issubdtype(value.dtype, np.integer):
      batch[key] = rng.integers(0, 4, value.shape).astype(value.dtype)

  @jax.jit
  def contract(seed):
    key = jax.random.PRNGKey(seed)
    variables = model.init({"params": key, "dropout": key}, batch, train=False)
    rngs = {"dropout": jax.random.fold_in(key, 1), "latent": jax.random.fold_in(key, 2)}

    def loss_fn(params):
      outputs, aux = model.apply({"params": params}, batch, train=True, rngs=rngs)
      return task.loss(outputs, aux, batch)[0], outputs

    (loss, outputs), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
    # One step of length 0.01 (over all parameters) against the gradient, same batch and random draws.
    norm = optax.global_norm(grads)
    stepped = jax.tree_util.tree_map(lambda p, g: p - 0.01 * g / norm, variables["params"], grads)
    return variables["params"], loss, grads, outputs, loss_fn(stepped)[0]

  params, loss, grads, outputs, stepped_loss = jax.device_get(contract(0))
  # Evaluation mode gives outputs of the same shape (checked abstractly: no second compile).
  eval_outputs, _ = jax.eval_shape(lambda p: model.apply({"params": p}, batch, train=False,
                                                         rngs={"latent": jax.random.PRNGKey(0)}), params)
  assert np.shape(outputs)[0] == B and eval_outputs.shape == np.shape(outputs)
  assert np.isfinite(outputs).all() and np.isfinite(loss)
  leaves = jax.tree_util.tree_leaves(grads)
  assert all(np.isfinite(g).all() for g in leaves)
  assert sum(float(np.abs(g).sum()) > 0 for g in leaves) > len(leaves) // 2  # most parameters learn
  again = jax.device_get(contract(0))
  assert stepped_loss < loss, f"a step against the gradient raised the loss: {loss} -> {stepped_loss}"
  jax.tree_util.tree_map(np.testing.assert_array_equal, again, (params, loss, grads, outputs, stepped_loss))
  other = jax.device_get(contract(1))
  assert not np.allclose(other[3], outputs)  # the seed matters
