"""ViLBERT / LXMERT (mmjax.models.vilbert): co-attention is the only path between the streams, masked
region regression counts only the masked regions, the backbone grafts from the pretraining model into the QA
model exactly, and the pretraining losses fall on a tiny batch. (Shapes, finite gradients, determinism and
sharding: tests/test_contract.py and tests/test_sharding.py through CONFIG_OF.)"""

import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmjax import models
from mmjax.models.vilbert import add_cls_sep, mask_tokens, masked_mean_per_example

B, T, VOCAB = 4, 6, 40
TINY = {"vocab_size": VOCAB, "cls_id": 2, "sep_id": 3, "mask_id": 4, "width": 16, "num_heads": 2,
        "intermediate_size": 32, "num_text_layers": 0, "num_image_layers": 0, "num_fusion_layers": 1,
        "max_text_length": 16, "num_answers": 12, "dropout": 0.0, "attention_dropout": 0.0}


def tiny(**kw):
  return models.build("vilbert", {**TINY, **kw})


def init_params(model, batch):
  """The model's parameters, initialised under ``jit`` (one compile instead of op-by-op dispatch)."""
  return jax.jit(lambda b: model.init(jax.random.PRNGKey(0), b, train=False)["params"])(batch)


def make_batch(seed=0, n=B):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(3, T + 1, (n, 1))
  return {"image": rng.random((n, 8, 8)).astype(np.float32),
          "caption_tokens": rng.integers(5, VOCAB, (n, T)).astype(np.int32),
          "caption_tokens_mask": np.arange(T)[None] < lengths,
          "label": rng.integers(0, 10, (n,)).astype(np.int32)}


@pytest.mark.parametrize("fusion", ["coattention", "lxmert"])
def test_co_attention_is_the_only_path_between_the_streams(fusion):
  """Without co-attention the text stream's output has an exactly zero gradient with respect to the image,
  and the image stream's with respect to the text embeddings; with it, both are nonzero."""
  batch = make_batch()
  probe = jax.random.normal(jax.random.PRNGKey(3), (B, T + 2, 16))
  for co_attention in (False, True):
    model = tiny(fusion=fusion, head="qa", co_attention=co_attention, pool="mul")
    params = init_params(model, batch)
    text_norm, image_norm = jax.jit(functools.partial(cross_gradients, model))(params, batch, probe)
    if co_attention:
      assert text_norm > 1e-6 and image_norm > 1e-6, (text_norm, image_norm)
    else:
      assert text_norm == 0.0 and image_norm == 0.0, (text_norm, image_norm)


def test_no_co_attention_with_a_text_pool_is_refused():
  """Without co-attention a text-only pooled output would leave the heads blind to the image."""
  batch = make_batch()
  for kw in ({"fusion": "lxmert"}, {"fusion": "coattention", "pool": "text"}):
    with pytest.raises(ValueError, match="would ignore the image"):
      tiny(head="qa", co_attention=False, **kw).init(jax.random.PRNGKey(0), batch, train=False)


def cross_gradients(model, params, batch, probe):
  """``(|d text_output / d image|_1, |d image_output / d text embeddings|_1)``."""

  def streams(params, image):
    _, state = model.apply({"params": params}, {**batch, "image": image}, train=False,
                           mutable=["intermediates"])
    inter = state["intermediates"]["backbone"]
    return inter["text_output"][0], inter["image_output"][0]

  text_wrt_image = jax.grad(lambda im: jnp.sum(streams(params, im)[0] * probe))(batch["image"])
  image_wrt_text = jax.grad(lambda p: jnp.sum(streams(p, batch["image"])[1]))(params)
  leaves = jax.tree_util.tree_leaves(image_wrt_text["backbone"]["text_embeddings"])
  return jnp.abs(text_wrt_image).sum(), sum(jnp.abs(g).sum() for g in leaves)


def test_masked_mean_counts_only_the_chosen_positions_of_valid_examples():
  rng = np.random.default_rng(0)
  values = jnp.asarray(rng.random((4, 5)), jnp.float32)
  chosen = jnp.asarray([[1, 0, 0, 1, 0], [0, 0, 0, 0, 0], [1, 1, 1, 0, 0], [0, 1, 0, 0, 0]], bool)
  weights = jnp.asarray([1.0, 1.0, 1.0, 0.0])  # the last example is evaluation padding
  per_example = masked_mean_per_example(values, chosen, weights)
  real = chosen & (weights[:, None] > 0)
  # the task's mean over valid examples is the mean over the chosen positions of the valid examples
  np.testing.assert_allclose((per_example * weights).sum() / weights.sum(), values[real].mean(), rtol=1e-6)
  assert float(per_example[1]) == 0.0  # nothing chosen: nothing counted
  other = jnp.where(chosen, values, 100.0)  # change every position that is not chosen
  np.testing.assert_array_equal(masked_mean_per_example(other, chosen, weights), per_example)
  changed = masked_mean_per_example(jnp.where(chosen, values + 1.0, values), chosen, weights)
  assert not np.allclose(changed[:3], per_example[:3])


@pytest.mark.parametrize("fusion", ["coattention", pytest.param("lxmert", marks=pytest.mark.slow)])
def test_region_regression_counts_only_masked_regions_and_masking_hides_them(fusion):
  batch = make_batch()
  rngs = {"latent": jax.random.PRNGKey(5)}

  def model_and_params(region_mask_prob):
    model = tiny(fusion=fusion, head="pretrain", itm_negative_prob=0.0, region_mask_prob=region_mask_prob)
    return model, init_params(model, batch)

  model, params = model_and_params(0.0)  # no region masked: no regression loss at all
  losses = jax.jit(lambda p: model.apply({"params": p}, batch, train=True, rngs=rngs)[1]["losses"])(params)
  assert float(jnp.abs(losses["mrr"][0]).sum()) == 0.0
  assert float(losses["mlm"][0].sum()) > 0 and float(losses["itm"][0].sum()) > 0
  # Every region masked: the image reaches the model only as the regression target (the masked features
  # are zeroed, the <IMG> mean too), so the matching logits do not depend on it.
  model, params = model_and_params(1.0)

  @jax.jit
  def logits_and_grad(image):
    apply = lambda im: model.apply({"params": params}, {**batch, "image": im}, train=True, rngs=rngs)  # noqa: E731
    (_, losses), grad = jax.value_and_grad(lambda im: (apply(im)[0].sum(), apply(im)[1]["losses"]),
                                           has_aux=True)(image)
    return losses["mrr"][0], grad

  mrr, grad = logits_and_grad(batch["image"])
  assert float(mrr.min()) > 0
  assert float(jnp.abs(grad).sum()) == 0.0


def test_text_layout_and_bert_masking():
  tokens = jnp.asarray([[7, 8, 9], [7, 0, 0]], jnp.int32)
  ids, valid, is_word = add_cls_sep(tokens, jnp.asarray([[1, 1, 1], [1, 0, 0]], bool), cls_id=2, sep_id=3)
  np.testing.assert_array_equal(ids, [[2, 7, 8, 9, 3], [2, 7, 3, 0, 0]])
  np.testing.assert_array_equal(valid, [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
  np.testing.assert_array_equal(is_word, [[0, 1, 1, 1, 0], [0, 1, 0, 0, 0]])
  ids = jnp.full((200, 100), 7, jnp.int32)
  is_word = jnp.arange(100)[None] < 80
  out, chosen = mask_tokens(jax.random.PRNGKey(0), ids, is_word, prob=0.15, mask_id=4, vocab_size=VOCAB)
  assert not bool(chosen[:, 80:].any())  # only words are chosen
  assert abs(float(chosen.mean()) / 0.8 - 0.15) < 0.01
  n = float(chosen.sum())
  assert abs(float((out == 4).sum()) / n - 0.8) < 0.02  # 80 % -> <mask>
  assert abs(float((chosen & (out == 7)).sum()) / n - (0.1 + 0.1 / VOCAB)) < 0.02  # 10 % kept
  np.testing.assert_array_equal(jnp.where(chosen, 7, out), ids)  # nothing else changes


def test_backbone_grafts_from_pretraining_into_qa_exactly(data_dir):
  """The configs' two stages share the ``backbone`` subtree leaf for leaf; the heads lie outside it."""
  from mmjax.config import get_config
  from mmjax.train.pretrained import graft
  from tests.conftest import CONFIGS

  def init(arg, text_key, seed):  # the configs' parameter tree, filled with random values (no compile)
    cfg = get_config(f"{CONFIGS / 'vilbert_digits.py'}:{arg}", [f"data.data_dir={data_dir}"])
    model = models.build("vilbert", dict(cfg.model.kwargs))
    batch = make_batch()
    batch[text_key] = np.minimum(batch.pop("caption_tokens"), cfg.model.kwargs.vocab_size - 1)
    batch[text_key + "_mask"] = batch.pop("caption_tokens_mask")
    shapes = jax.eval_shape(lambda: init_params(model, batch))
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda x: rng.standard_normal(x.shape).astype(x.dtype), nn.unbox(shapes))

  for variant in ("", "lxmert,"):
    pre = init(variant + "pretrain,runlocal", "caption_tokens", 0)
    qa = init(variant + "runlocal", "question_tokens", 1)
    assert set(pre) & set(qa) == {"backbone"}
    out = graft(qa, pre["backbone"], "backbone")
    jax.tree_util.tree_map(np.testing.assert_array_equal, out["backbone"], pre["backbone"])
    for head in set(qa) - {"backbone"}:
      jax.tree_util.tree_map(np.testing.assert_array_equal, out[head], qa[head])
  from mmjax.train.checkpoint import CheckpointError
  with pytest.raises(CheckpointError):  # a ViLBERT backbone does not fit an LXMERT model
    graft(qa, init("pretrain,runlocal", "caption_tokens", 0)["backbone"], "backbone")


@pytest.mark.parametrize("fusion", ["coattention", pytest.param("lxmert", marks=pytest.mark.slow)])
def test_pretraining_losses_fall_on_a_tiny_batch(fusion):
  from mmjax import tasks

  model = tiny(fusion=fusion, head="pretrain", mask_prob=0.3, region_mask_prob=0.3)
  task = tasks.get("pretraining")
  batch = make_batch(n=8)
  params = init_params(model, batch)
  opt = optax.adam(3e-3)
  latent = {"latent": jax.random.PRNGKey(1)}  # the same masks every step: the batch can be memorised

  @jax.jit
  def step(params, opt_state):
    def loss_fn(p):
      outputs, aux = model.apply({"params": p}, batch, train=True, rngs=latent)
      return task.loss(outputs, aux, batch)
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = opt.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, metrics

  opt_state, history = opt.init(params), []
  for _ in range(40):
    params, opt_state, metrics = step(params, opt_state)
    history.append(jax.device_get(metrics))
  first, last = history[0], history[-1]
  # masked words and regions are memorised fast; matching needs the two streams to agree, so it falls slower
  for name, factor in (("mlm", 0.5), ("mrr", 0.5), ("itm", 0.8)):
    assert last[name] < factor * first[name], (name, first[name], last[name])


def test_bad_fields_are_clear_errors():
  batch = make_batch()
  for kw, message in (({"fusion": "bottleneck"}, "fusion"), ({"head": "vqa"}, "head"),
                      ({"mask_id": VOCAB}, "mask_id"), ({"itm_match_key": "digit"}, "itm_match_key"),
                      ({"region_location": "grid"}, "region_location")):
    with pytest.raises(ValueError, match=message):
      tiny(**kw).init(jax.random.PRNGKey(0), batch, train=False)


def test_init_std_sets_the_normal_initialisation_of_every_bert_style_weight():
  """``init_std`` is BERT's initializer_range for the embeddings, the BERT layers and the heads alike."""
  batch = make_batch()
  for std in (0.02, 0.5):
    model = tiny(head="pretrain", width=32, intermediate_size=256, init_std=std)
    params = nn.unbox(init_params(model, batch))
    for kernel in (params["backbone"]["text_embeddings"]["word_embeddings"]["embedding"],
                   params["backbone"]["fusion_0"]["text_co_ffn"]["intermediate"]["kernel"],
                   params["itm"]["kernel"]):
      assert abs(float(np.std(kernel)) / std - 1) < 0.25, (std, float(np.std(kernel)))


@pytest.mark.parametrize("fusion", ["coattention", "lxmert"])
def test_region_location_box_or_a_learned_embedding_per_region(fusion):
  """``"box"`` maps the 5-d boxes linearly; ``"index"`` gives each of the ``1 + R`` image tokens its own
  learned location vector: an all-black image's tokens then embed to the LayerNorm of their row of W_l."""
  batch = {**make_batch(), "image": np.zeros((B, 8, 8), np.float32)}
  for where, rows in (("box", 5), ("index", 17)):
    model = tiny(fusion=fusion, head="qa", region_location=where)
    params = nn.unbox(init_params(model, batch))
    proj = params["backbone"]["image_embeddings"]["location_proj"]
    assert proj["kernel"].shape == (rows, 16)
  _, state = jax.jit(lambda p: model.apply({"params": p}, batch, train=False, capture_intermediates=True,
                                           mutable=["intermediates"]))(params)
  embedded = state["intermediates"]["backbone"]["image_embeddings"]["__call__"][0]
  loc = np.asarray(proj["kernel"] + proj["bias"])
  normed = (loc - loc.mean(-1, keepdims=True)) / loc.std(-1, keepdims=True)
  if fusion == "lxmert":  # (LN(W_f 0 + b_f) + LN(W_l loc)) / 2, and b_f = 0 at init
    normed = normed / 2
  np.testing.assert_allclose(embedded[0], normed, atol=1e-4)


def test_matching_probe_data_and_output(tmp_path):
  """scripts/matching_probe.py: the synthetic square sits where the caption's digit says, and a short run
  writes one history per seed (the committed results/probes/matching.json comes from its full run)."""
  import importlib.util

  from tests.conftest import ROOT

  spec = importlib.util.spec_from_file_location("matching_probe", ROOT / "scripts" / "matching_probe.py")
  probe = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(probe)
  batch = probe.synthetic_batch(np.random.default_rng(0), n=16)
  for image, tokens, digit in zip(batch["image"], batch["caption_tokens"], batch["label"], strict=True):
    assert tokens[1] == 10 + digit and image.sum() == 4.0
    assert image[2 * (digit // 4), 2 * (digit % 4)] == 1.0
  out = tmp_path / "probe.json"
  assert probe.main(["--out", str(out), "--only", "visualbert_init0.125", "--steps", "4", "--every", "2",
                     "--seeds", "0,1"]) == 0
  result = json.loads(out.read_text())["results"]["visualbert_init0.125"]
  assert sorted(result["seeds"]) == ["0", "1"]
  assert [h["step"] for h in result["seeds"]["1"]["history"]] == [2, 4]
