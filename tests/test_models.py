"""Fusion baselines beyond the contract (tests/test_contract.py): learning on a tiny batch, padding
invariance, unimodal inputs, clear errors, attention kernels."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmjax import models, tasks
from mmjax.errors import InputError
from mmjax.train.optim import Optimizer
from mmjax.train.run import init_state
from mmjax.train.step import train_step

B = 4


def fake_batch(seed=0, audio_len=12, text_len=6):
  rng = np.random.default_rng(seed)
  return {
      "image": rng.random((B, 8, 8), np.float32),
      "audio": rng.standard_normal((B, audio_len, 40)).astype(np.float32),
      "audio_mask": np.arange(audio_len)[None] < np.array([[12], [7], [9], [3]]),
      "text": rng.integers(2, 30, (B, text_len)).astype(np.int32),
      "text_mask": np.arange(text_len)[None] < np.array([[6], [2], [4], [5]]),
      "label": np.array([0, 3, 7, 9], np.int32),
  }


def init(model, batch, seed=0):
  """Jitted ``model.init`` (one compile instead of op-by-op dispatch)."""
  return jax.jit(lambda b: model.init(jax.random.PRNGKey(seed), b, train=False))(batch)


def apply(model, variables, batch):
  """Jitted evaluation-mode ``model.apply``."""
  return jax.jit(lambda v, b: model.apply(v, b, train=False))(variables, batch)


def small(name, **kw):
  return models.build(name, {"vocab_size": 32, "width": 16, "num_heads": 2, **kw})


@pytest.mark.parametrize("name", ["late_fusion", "early_fusion"])
def test_loss_decreases_on_a_tiny_batch(name):
  model = small(name, dropout=0.0)
  opt = Optimizer(tx=optax.adam(3e-3), schedule=optax.constant_schedule(3e-3))
  batch = fake_batch()
  state = init_state(model, opt, batch, seed=0)
  step = jax.jit(functools.partial(train_step, model=model, optimizer=opt, task=tasks.get("classification")))
  losses = []
  for _ in range(40):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.3 * losses[0]
  assert int(state.step) == 40


@pytest.mark.parametrize("name", ["late_fusion", "early_fusion"])
def test_padding_invariance(name):
  """Appending masked (padded) steps to every sequence leaves the output unchanged."""
  model = small(name)
  batch = fake_batch()
  variables = init(model, batch)
  out, _ = apply(model, variables, batch)
  padded = dict(batch)
  padded["audio"] = np.concatenate([batch["audio"], np.full((B, 5, 40), 7.0, np.float32)], axis=1)
  padded["audio_mask"] = np.concatenate([batch["audio_mask"], np.zeros((B, 5), bool)], axis=1)
  padded["text"] = np.concatenate([batch["text"], np.full((B, 3), 5, np.int32)], axis=1)
  padded["text_mask"] = np.concatenate([batch["text_mask"], np.zeros((B, 3), bool)], axis=1)
  out_padded, _ = apply(model, variables, padded)
  np.testing.assert_allclose(out_padded, out, atol=1e-5)


def test_unimodal_model_uses_only_its_modality():
  model = small("late_fusion", modalities=("audio",))
  batch = fake_batch()
  variables = init(model, batch)
  out, _ = apply(model, variables, batch)
  changed = dict(batch, image=batch["image"] + 1.0, text=batch["text"][:, ::-1])
  np.testing.assert_allclose(apply(model, variables, changed)[0], out, atol=1e-6)
  assert set(variables["params"]) == {"audio_embed", "audio_encoder", "head_hidden", "head_out"}


def test_missing_modality_and_bad_fields_are_clear_errors():
  model = small("late_fusion")
  batch = fake_batch()
  del batch["text"]
  with pytest.raises(InputError, match="needs modality 'text'"):  # a UserError (and a ValueError)
    model.init(jax.random.PRNGKey(0), batch, train=False)
  with pytest.raises(ValueError, match="has no field"):
    models.build("late_fusion", {"widht": 3})
  with pytest.raises(KeyError, match="unknown model"):
    models.get("late_fusoin")
  no_vocab = models.build("late_fusion", {"width": 16})
  with pytest.raises(ValueError, match="vocab_size"):
    no_vocab.init(jax.random.PRNGKey(0), fake_batch(), train=False)


def test_jax_attention_kernel_gives_the_same_model_output():
  batch = fake_batch()
  ref = small("early_fusion")
  variables = init(ref, batch)
  out_ref, _ = apply(ref, variables, batch)
  out_jax, _ = apply(small("early_fusion", attention="jax"), variables, batch)
  np.testing.assert_allclose(out_jax, out_ref, atol=1e-5)
  assert jnp.isfinite(out_ref).all()
