"""MCTN: prediction from the source alone, translation / cycle losses that train the encoder (``-m slow``),
padding, field checks, and the tasks' generic auxiliary losses (``aux["losses"]``). The default contract
test (tests/test_contract.py) checks finite gradients reaching most parameters, the decoders included."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmjax import models, tasks
from mmjax.errors import InputError

B, VOCAB = 4, 11
LENGTHS = {"audio": 9, "image": 5, "text": 6}


def tiny(**kw):
  cfg = {"source": "audio", "targets": ("image", "text"), "num_classes": 3, "vocab_size": VOCAB,
         "hidden_dim": 8, "head_dim": 8, "output_activation": "linear", **kw}
  return models.build("mctn", cfg)


def fake_batch(seed=0):
  rng = np.random.default_rng(seed)
  audio_len = np.array([9, 4, 7, 2])
  text_len = np.array([6, 3, 5, 1])
  return {
      "audio": rng.standard_normal((B, LENGTHS["audio"], 5)).astype(np.float32),
      "audio_mask": np.arange(LENGTHS["audio"])[None] < audio_len[:, None],
      "image": rng.uniform(size=(B, LENGTHS["image"], 4)).astype(np.float32),
      "text": rng.integers(2, VOCAB, (B, LENGTHS["text"])).astype(np.int32),
      "text_mask": np.arange(LENGTHS["text"])[None] < text_len[:, None],
      "label": np.array([0, 1, 2, 1]),
  }


def init(model, batch, seed=0):
  return nn.unbox(jax.jit(lambda k: model.init(k, batch, train=False))(jax.random.PRNGKey(seed)))["params"]


def source_only(batch):
  return {k: v for k, v in batch.items() if k.split("_")[0] not in ("image", "text")}


def test_predicts_from_the_source_alone():
  model, batch = tiny(), fake_batch()
  params = init(model, batch)
  apply = jax.jit(lambda p, b: model.apply({"params": p}, b, train=False))
  full, aux_full = apply(params, batch)
  alone, aux_alone = apply(params, source_only(batch))
  other = dict(batch, image=batch["image"] + 1.0, text=(batch["text"] + 1) % VOCAB)
  changed, _ = apply(params, other)
  assert full.shape == (B, 3)
  np.testing.assert_array_equal(np.asarray(full), np.asarray(alone))
  np.testing.assert_array_equal(np.asarray(full), np.asarray(changed))
  assert set(aux_full["losses"]) == {"translation/image", "cycle/audio", "translation/text", "head_l2"}
  assert set(aux_alone["losses"]) == {"head_l2"}  # no target, no translation loss
  assert aux_full["translations"]["image"].shape == (B, 5, 4)
  assert aux_full["translations"]["text"].shape == (B, 6, VOCAB)
  # the task's evaluation works on the source alone; its loss then is the prediction loss (+ the L2 term)
  task = tasks.get("classification")
  sums = task.eval_sums(alone, aux_alone, batch)
  assert set(sums) == {"loss", "accuracy", "count", "head_l2"}
  with pytest.raises(InputError, match="needs modality 'image'.*in training MCTN translates"):
    model.apply({"params": params}, source_only(batch), train=True)


def test_padding_changes_neither_prediction_nor_losses():
  model, batch = tiny(), fake_batch()
  params = init(model, batch)
  apply = jax.jit(lambda p, b: model.apply({"params": p}, b, train=False))
  out, aux = apply(params, batch)
  noisy = dict(batch)
  noisy["audio"] = np.where(batch["audio_mask"][..., None], batch["audio"], 50.0).astype(np.float32)
  noisy["text"] = np.where(batch["text_mask"], batch["text"], 1).astype(np.int32)
  out2, aux2 = apply(params, noisy)
  np.testing.assert_allclose(np.asarray(out), np.asarray(out2), rtol=1e-5, atol=1e-6)
  for name in ("translation/image", "translation/text"):
    np.testing.assert_allclose(aux["losses"][name][0], aux2["losses"][name][0], rtol=1e-5, atol=1e-6)
  # the cycle's target is the source, so its padded steps do not count either
  np.testing.assert_allclose(aux["losses"]["cycle/audio"][0], aux2["losses"]["cycle/audio"][0], rtol=1e-5)


# ~12 s of CPU (the gradient of 20 LSTM scans compiles); the contract test covers the default
@pytest.mark.slow
def test_translation_and_cycle_losses_train_the_encoder_and_fall_on_a_tiny_batch():
  model, batch = tiny(), fake_batch()
  params = init(model, batch)
  names = ("translation/image", "cycle/audio", "translation/text")

  def aux_only(p, rng):  # the weighted translation + cycle losses alone (no prediction loss, no L2)
    _, aux = model.apply({"params": p}, batch, train=True, rngs={"dropout": rng})
    means = {n: aux["losses"][n][0].mean() for n in names}
    return sum(aux["losses"][n][1] * means[n] for n in names), means

  grad_fn = jax.jit(jax.value_and_grad(aux_only, has_aux=True))
  (_, means), grads = grad_fn(params, jax.random.PRNGKey(0))
  norm = lambda tree: float(optax.global_norm(tree))  # noqa: E731
  assert norm(grads["encoder"]) > 0 and norm(grads["audio_in"]) > 0  # the translations train the encoder
  assert norm(grads["encoder2"]) > 0 and norm(grads["decoder2"]) > 0
  assert norm(grads["head"]) == 0  # ... and not the prediction head
  opt = optax.adam(2e-2)
  update = jax.jit(lambda g, s, p: opt.update(g, s, p))
  state, history = opt.init(params), [means]
  for i in range(40):
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
    (_, means), grads = grad_fn(params, jax.random.PRNGKey(i + 1))
    history.append(means)
  for name in names:
    values = np.array([float(h[name]) for h in history])
    assert np.isfinite(values).all(), name
    assert values[-1] < 0.8 * values[0], (name, values[0], values[-1])


def test_task_adds_weighted_auxiliary_losses_over_valid_examples():
  task = tasks.get("classification")
  logits = jnp.zeros((3, 2))
  batch = {"label": np.array([0, 1, 0]), "_valid": np.array([1.0, 1.0, 0.0])}
  aux = {"losses": {"a": (jnp.array([1.0, 3.0, 100.0]), 0.5), "b": (jnp.array([2.0, 2.0, 2.0]), 0.1)}}
  loss, metrics = task.loss(logits, aux, batch)
  ce = np.log(2.0)
  np.testing.assert_allclose(metrics["a"], 2.0)  # mean over the two valid examples
  np.testing.assert_allclose(loss, ce + 0.5 * 2.0 + 0.1 * 2.0, rtol=1e-6)
  sums = task.eval_sums(logits, aux, batch)
  np.testing.assert_allclose(sums["loss"] / sums["count"], loss, rtol=1e-6)
  np.testing.assert_allclose(sums["a"], 4.0)
  reg = tasks.get("regression")
  loss_r, metrics_r = reg.loss(jnp.ones((3, 1)), aux, {"label": np.zeros(3), "_valid": batch["_valid"]})
  np.testing.assert_allclose(loss_r, 1.0 + 1.0 + 0.2, rtol=1e-6)
  assert set(metrics_r) == {"loss", "a", "b"}
  no_aux, _ = task.loss(logits, {}, batch)
  np.testing.assert_allclose(no_aux, ce, rtol=1e-6)


@pytest.mark.parametrize("fields, message", [
    ({"targets": ("audio", "text")}, "must be distinct"),
    ({"targets": ()}, "one or two target"),
    ({"targets": ("image", "text", "vision")}, "one or two target"),
    ({"output_activation": "relu"}, "output_activation"),
    ({"num_classes": 0}, "num_classes"),
])
def test_bad_fields_say_what_to_fix(fields, message):
  with pytest.raises(ValueError, match=message):
    jax.eval_shape(lambda: tiny(**fields).init(jax.random.PRNGKey(0), fake_batch(), train=False))
