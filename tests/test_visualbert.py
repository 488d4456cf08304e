"""VisualBERT (mmjax.models.visualbert): BERT masking, the MLM loss on masked tokens only, image-text
matching negatives, the backbone graft from pretraining to QA, a single stream (text depends on the image),
and pretraining losses that fall on a tiny batch. Tiny widths; each test a few seconds on CPU."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmjax import models
from mmjax.models import visualbert as vb
from mmjax.train.pretrained import graft

V, CLS, SEP, MASK = 40, 37, 38, 39
TINY = {"vocab_size": V, "cls_id": CLS, "sep_id": SEP, "mask_id": MASK, "width": 16, "num_layers": 1,
        "num_heads": 2, "mlp_dim": 32, "max_positions": 32, "dropout": 0.0, "attention_dropout": 0.0,
        "init_std": 0.25}


def caption_batch(b=8, t=6, seed=0):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(3, t + 1, (b, 1))
  return {"image": rng.random((b, 8, 8)).astype(np.float32),
          "caption_tokens": rng.integers(2, 30, (b, t)).astype(np.int32),
          "caption_tokens_mask": np.arange(t)[None] < lengths,
          "label": (np.arange(b) % 3).astype(np.int32)}


def init(model, batch, seed=0):
  return jax.jit(lambda: model.init(jax.random.PRNGKey(seed), batch, train=False))()


def pretrain_model(**kw):
  return models.build("visualbert", {**TINY, "head": "pretrain", **kw})


def test_masking_statistics():
  """15 % of the caption's own tokens chosen; of those 80 % [MASK], 10 % random, 10 % kept; nothing else
  changes ([CLS], [SEP] and padding never chosen)."""
  rng = np.random.default_rng(1)
  b, t = 4000, 8
  tokens = jnp.asarray(rng.integers(2, 30, (b, t)), jnp.int32)
  mask = jnp.asarray(np.arange(t)[None] < rng.integers(1, t + 1, (b, 1)))
  ids, valid, maskable = vb.text_sequence(tokens, mask, CLS, SEP)
  assert (ids[:, 0] == CLS).all() and (ids[jnp.arange(b), mask.sum(1) + 1] == SEP).all()
  assert int(valid.sum()) == int(mask.sum()) + 2 * b and int(maskable.sum()) == int(mask.sum())
  out, chosen = vb.mask_tokens(jax.random.PRNGKey(0), ids, maskable, mask_prob=0.15, mask_id=MASK,
                               vocab_size=V)
  out, chosen, ids, maskable = map(np.asarray, (out, chosen, ids, maskable))
  assert not (chosen & ~maskable).any()
  assert (out[~chosen] == ids[~chosen]).all()
  n = chosen.sum()
  assert abs(n / maskable.sum() - 0.15) < 0.01
  to_mask = (out[chosen] == MASK).mean()
  kept = (out[chosen] == ids[chosen]).mean()  # 10 % kept, plus random draws of the same id (1 / V of 10 %)
  assert abs(to_mask - 0.8) < 0.03 and abs(kept - 0.1 - 0.1 / V) < 0.02
  assert abs(1 - to_mask - kept - 0.1 * (1 - 1 / V)) < 0.02  # random ids


def test_only_masked_tokens_contribute_to_mlm():
  """The MLM loss has zero gradient at every token that was not chosen, a nonzero one at every chosen token,
  and its batch mean is the token mean over the chosen tokens. In the model, the chosen tokens are caption
  tokens of matched examples only, and the accuracy counts exactly them."""
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.standard_normal((4, 6, V)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, V, (4, 6)), jnp.int32)
  chosen = jnp.asarray(rng.random((4, 6)) < 0.4).at[3].set(False)
  weights = jnp.ones((4,))
  per, (_, count) = vb.mlm_per_example(logits, targets, chosen, weights)
  g = jax.grad(lambda x: vb.mlm_per_example(x, targets, chosen, weights)[0].mean())(logits)
  touched = np.abs(np.asarray(g)).sum(-1) > 0
  np.testing.assert_array_equal(touched, np.asarray(chosen))
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  np.testing.assert_allclose(per.mean(), ce[chosen].mean(), rtol=1e-6)
  np.testing.assert_array_equal(count, chosen.sum(1))

  batch = caption_batch(b=16, t=6)
  model = pretrain_model(mask_prob=0.5, negative_key="label")
  aux = jax.jit(lambda: model.apply(init(model, batch), batch, train=True,
                                    rngs={"latent": jax.random.PRNGKey(3)})[1])()
  masked, matched = np.asarray(aux["masked"]), np.asarray(aux["itm_label"]) == 1
  assert matched.any() and not matched.all()
  _, _, maskable = vb.text_sequence(jnp.asarray(batch["caption_tokens"]), batch["caption_tokens_mask"], CLS,
                                    SEP)
  assert masked.any() and not (masked & ~np.asarray(maskable)).any()
  assert not masked[~matched].any()  # MLM on matched pairs only
  np.testing.assert_array_equal(aux["accuracies"]["mlm_accuracy"][1], masked.sum(1))


def test_itm_negatives_really_are_mismatched():
  """A negative takes the image of an example with another label (about half the examples); the model then
  really sees that image: its outputs equal those of an all-matched model given the swapped images."""
  labels = jnp.asarray(np.arange(2000) % 10)
  source, matched = vb.pick_negatives(jax.random.PRNGKey(0), labels, prob=0.5)
  source, matched = np.asarray(source), np.asarray(matched)
  assert abs((~matched).mean() - 0.5) < 0.04
  assert (labels[source][~matched] != labels[~matched]).all()
  assert (source[matched] == np.arange(2000)[matched]).all()
  _, same = vb.pick_negatives(jax.random.PRNGKey(0), jnp.zeros((8,), jnp.int32), prob=1.0)
  assert np.asarray(same).all()  # nothing differs: no negative possible

  batch = caption_batch(b=8)
  every = pretrain_model(negative_prob=1.0, negative_key="label")
  variables = init(every, batch)
  rngs = {"latent": jax.random.PRNGKey(5)}
  logits, aux = jax.jit(lambda v, b: every.apply(v, b, train=False, rngs=rngs))(variables, batch)
  src = np.asarray(aux["negative_of"])
  assert (np.asarray(aux["itm_label"]) == 0).all() and (batch["label"][src] != batch["label"]).all()
  swapped = {**batch, "image": batch["image"][src]}
  none = pretrain_model(negative_prob=0.0, negative_key="label")
  logits0, aux0 = jax.jit(lambda v, b: none.apply(v, b, train=False, rngs=rngs))(variables, swapped)
  assert (np.asarray(aux0["itm_label"]) == 1).all()
  np.testing.assert_allclose(logits, logits0, atol=1e-6)


def test_qa_head_grafts_the_pretrained_backbone_exactly():
  """The shared subtree ``backbone`` has the same paths and shapes in both heads (so ``config.init`` grafts
  it whole), the heads lie outside it, and the grafted QA model computes with the pretrained values."""
  batch = caption_batch(b=2)
  pre = pretrain_model()
  qa = models.build("visualbert", {**TINY, "head": "qa", "text_key": "question_tokens", "num_answers": 12})
  qa_batch = {"image": batch["image"], "question_tokens": batch["caption_tokens"][:, :5],
              "question_tokens_mask": batch["caption_tokens_mask"][:, :5]}
  p_pre = jax.tree_util.tree_map(np.asarray, init(pre, batch)["params"])
  p_qa = jax.tree_util.tree_map(np.asarray, init(qa, qa_batch, seed=1)["params"])
  shapes = lambda tree: jax.tree_util.tree_map(np.shape, tree)  # noqa: E731
  flat = lambda tree: dict(jax.tree_util.tree_flatten_with_path(shapes(tree))[0])  # noqa: E731
  assert flat(p_pre["backbone"]) == flat(p_qa["backbone"])
  assert set(p_pre) - {"backbone"} == {"mlm_transform", "mlm_norm", "mlm_bias", "itm"}
  assert set(p_qa) - {"backbone"} == {"qa_hidden", "qa_norm", "qa_out"}
  grafted = graft(p_qa, p_pre["backbone"], "backbone")
  jax.tree_util.tree_map(np.testing.assert_array_equal, grafted["backbone"], p_pre["backbone"])
  jax.tree_util.tree_map(np.testing.assert_array_equal, grafted["qa_out"], p_qa["qa_out"])
  apply = jax.jit(lambda p: qa.apply({"params": p}, qa_batch, train=False)[0])
  before, after = apply(p_qa), apply(grafted)
  assert not np.allclose(before, after)


def test_text_token_depends_on_the_image():
  """Single stream: the final state of a caption word has a nonzero Jacobian with respect to every image
  patch (a word attends to the regions in the first layer already)."""
  model = pretrain_model()
  cfg = model.bert_config()
  backbone = vb.VisualBertBackbone(cfg)
  ids = jnp.asarray([[CLS, 5, 6, 7, SEP, 0]])
  valid = ids != 0
  regions = jax.random.uniform(jax.random.PRNGKey(1), (1, 16, 4))
  params = jax.jit(lambda: backbone.init(jax.random.PRNGKey(0), ids, valid, regions, train=False))()
  hidden = jax.jit(lambda i, r: backbone.apply(params, i, valid, r, train=False)[0])
  jac = jax.jit(jax.jacobian(lambda r: hidden(ids, r)[0, 2]))(regions)  # [D, 1, N, F]
  per_patch = np.abs(np.asarray(jac)).sum(axis=(0, 1, 3))
  assert (per_patch > 1e-6).all()
  # and a padded text position's value never reaches the text (the mask works): changing it changes nothing
  h0, h1 = hidden(ids, regions), hidden(ids.at[0, 5].set(9), regions)
  np.testing.assert_allclose(h0[:, :5], h1[:, :5], atol=1e-6)


def test_pretraining_losses_fall_on_a_tiny_batch():
  """A few Adam steps on one batch of 8 (the same masks and negatives each step) lower both the MLM and the
  ITM loss."""
  batch = caption_batch(b=8)
  model = pretrain_model(mask_prob=0.3, negative_key="label")
  params = init(model, batch)["params"]
  rngs = {"latent": jax.random.PRNGKey(4)}
  opt = optax.adam(5e-3)

  def losses(p):
    _, aux = model.apply({"params": p}, batch, train=True, rngs=rngs)
    return {k: v.mean() for k, (v, _) in aux["losses"].items()}

  @jax.jit
  def step(p, s):
    g = jax.grad(lambda p: sum(losses(p).values()))(p)
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s

  first = jax.jit(losses)(params)
  assert first["mlm"] > 0 and first["itm"] > 0  # some masked tokens and some negatives
  state = opt.init(params)
  for _ in range(25):
    params, state = step(params, state)
  last = jax.jit(losses)(params)
  assert last["mlm"] < 0.5 * first["mlm"], (first, last)
  assert last["itm"] < 0.5 * first["itm"], (first, last)


@pytest.mark.parametrize("kwargs, message", [
    ({"head": "vqa"}, "head"),
    ({"mask_id": -1}, "mask_id"),
    ({"vocab_size": 0}, "vocab_size"),
])
def test_bad_fields_say_which(kwargs, message):
  with pytest.raises(ValueError, match=message):
    pretrain_model(**kwargs).init(jax.random.PRNGKey(0), caption_batch(b=2), train=False)
