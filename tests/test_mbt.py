"""MBT (mmjax.models.mbt): information flows between modalities only where the paper lets it.

Isolation is checked by gradients: before the fusion layer (and at every layer with no bottleneck tokens) the
gradient of one modality's output with respect to another modality's input is exactly zero; from the fusion
layer on it is not, so each test can fail both ways. Tiny models (width 16, 2-3 layers), eager gradients.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import models

MODS = ("image", "audio", "text")
TWO = ("image", "audio")  # where text adds only compile time
VOCAB = 12


def make_batch(seed=0, n=2):
  rng = np.random.default_rng(seed)
  audio_mask = np.ones((n, 10), bool)
  audio_mask[0, 7:] = False  # three padded steps in the first example
  return {
      "image": jnp.asarray(rng.normal(size=(n, 8, 8)), jnp.float32),
      "audio": jnp.asarray(rng.normal(size=(n, 10, 6)), jnp.float32),
      "audio_mask": jnp.asarray(audio_mask),
      "text": jnp.asarray(rng.integers(1, VOCAB, (n, 5)), jnp.int32),
  }


def make(**kw):
  fields = dict(num_classes=3, modalities=MODS, vocab_size=VOCAB, width=16, num_layers=2, num_heads=2,
                mlp_ratio=2, fusion_layer=1, num_bottlenecks=2)
  fields.update(kw)
  return models.build("mbt", fields), make_batch()


def param_shapes(model, batch):
  """The parameters' shapes, unboxed (abstract: nothing is compiled)."""
  return nn.unbox(jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), batch, train=False))["params"])


def random_params(model, batch, seed=0):
  """Random parameters N(0, 0.5^2) of the model's shapes, drawn in numpy: the tests need some parameters,
  not the initialisers (compiling ``init`` would double each test's compile time)."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(lambda s: rng.normal(0.0, 0.5, s.shape).astype(np.float32),
                                param_shapes(model, batch))


def layer_outputs(model, variables, batch):
  """``{"<modality>_layer_<i>": [B, T, width]}`` (every layer's output), ``"<modality>_cls": [B, width]`` (the
  final CLS outputs, classifier "token") and ``"logits"``."""
  (logits, aux), state = model.apply(variables, batch, train=False, mutable=["intermediates"])
  out = {k: v[0] for k, v in state["intermediates"].items()}
  out["logits"] = logits
  if "cls" in aux:
    out.update({f"{m}_cls": aux["cls"][:, i] for i, m in enumerate(model.modalities)})
  return out


def jacobians(model, batch, wrt: str):
  """The full Jacobian ``[*output_shape, *batch[wrt].shape]`` of every output of :func:`layer_outputs` with
  respect to ``batch[wrt]``, at random parameters (forward mode: all outputs in one compiled function)."""
  @jax.jit
  def fn(params, batch):
    return jax.jacfwd(lambda x: layer_outputs(model, {"params": params}, {**batch, wrt: x}))(batch[wrt])
  return jax.device_get(fn(random_params(model, batch), batch))


def outputs_and_params(model, batch):
  """``(layer_outputs, params)`` at random parameters."""
  params = random_params(model, batch)
  return jax.device_get(jax.jit(lambda p, b: layer_outputs(model, {"params": p}, b))(params, batch)), params


def zero(j):
  return bool(np.all(j == 0.0))


def test_no_bottleneck_tokens_isolate_the_modalities():
  """Bottleneck fusion with B = 0 from layer 0: the streams never meet."""
  model, batch = make(fusion="bottleneck", fusion_layer=0, num_bottlenecks=0)
  assert "bottleneck" not in param_shapes(model, batch)
  j = jacobians(model, batch, "audio")
  for i in range(2):
    assert zero(j[f"image_layer_{i}"]) and zero(j[f"text_layer_{i}"]), i
  assert zero(j["image_cls"]) and zero(j["text_cls"])
  assert not zero(j["audio_cls"])  # the probe itself sees dependence


def test_bottlenecks_exchange_information_only_from_the_fusion_layer():
  model, batch = make(fusion="bottleneck", num_layers=3, fusion_layer=1, num_bottlenecks=2, modalities=TWO)
  assert param_shapes(model, batch)["bottleneck"].shape == (2, 16)
  j = jacobians(model, batch, "audio")
  # Layer 0 < L_f: separate streams. Layer L_f = 1: each modality reads the learned initial bottleneck
  # tokens (no input in them yet) and writes its update into them; from layer L_f + 1 on the averaged
  # bottlenecks carry audio into the image stream.
  assert zero(j["image_layer_0"]) and zero(j["image_layer_1"])
  assert not zero(j["image_layer_2"]) and not zero(j["image_cls"])
  # Padded audio steps (example 0, steps 7-9) are attended by no one: zero Jacobian, also within audio.
  for key in ("image_cls", "audio_cls", "logits"):
    assert zero(j[key][0, ..., 0, 7:, :]) and not zero(j[key][0, ..., 0, :7, :]), key


@pytest.mark.parametrize("share_weights", [False, pytest.param(True, marks=pytest.mark.slow)],
                         ids=["own_weights", "shared_weights"])
def test_attention_fusion_mixes_modalities_from_the_fusion_layer(share_weights):
  """Full attention from L_f on (classifier "gap": the mean over the valid tokens of all modalities)."""
  model, batch = make(fusion="attention", fusion_layer=1, share_weights=share_weights, classifier="gap",
                      modalities=TWO)
  params = param_shapes(model, batch)
  assert "bottleneck" not in params and "image_cls" not in params
  layers = {k for k in params if k.startswith("layer_")}
  own = {f"layer_{i}_{m}" for i in (0, 1) for m in TWO}
  assert layers == ({"layer_0", "layer_1"} if share_weights else own)
  j = jacobians(model, batch, "audio")
  assert zero(j["image_layer_0"])
  assert not zero(j["image_layer_1"])  # at once: every token attends to every modality's tokens
  # Padded audio steps are neither attended nor pooled.
  assert zero(j["logits"][0, ..., 0, 7:, :]) and not zero(j["logits"][0, ..., 0, :7, :])


def test_token_classifier_averages_the_per_modality_logits():
  """(With one set of layer weights shared by the modalities, the original's ``share_encoder``.)"""
  model, batch = make(fusion="attention", share_weights=True)
  out, params = outputs_and_params(model, batch)
  assert {k for k in params if k.startswith("layer_")} == {"layer_0", "layer_1"}
  cls = np.stack([out[f"{m}_cls"] for m in MODS], axis=1)  # [B, M, width]
  by_hand = nn.Dense(3).apply({"params": params["output_projection"]}, cls).mean(axis=1)
  assert out["logits"].shape == (2, 3)
  np.testing.assert_allclose(out["logits"], by_hand, rtol=1e-5, atol=1e-6)


def test_single_modality_runs_without_fusion():
  model = models.build("mbt", dict(num_classes=3, modalities=("audio",), width=16, num_layers=2, num_heads=2,
                                   fusion_layer=1))
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), make_batch(), train=False))
  assert "bottleneck" not in shapes["params"] and "layer_1_audio" in shapes["params"]


@pytest.mark.parametrize("fields, message", [
    ({"fusion": "concat"}, "fusion"),
    ({"classifier": "max"}, "classifier"),
    ({"fusion_layer": 3}, "fusion_layer 3"),
    ({"fusion_layer": -1}, "fusion_layer -1"),
    ({"num_bottlenecks": -2}, "num_bottlenecks"),
    ({"modalities": ()}, "at least one modality"),
])
def test_bad_fields_are_clear_errors(fields, message):
  base = dict(num_classes=3, modalities=MODS, vocab_size=VOCAB, width=16, num_layers=2, num_heads=2,
              fusion_layer=1)
  model = models.build("mbt", {**base, **fields})
  with pytest.raises(ValueError, match=message):
    jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), make_batch(), train=False))
