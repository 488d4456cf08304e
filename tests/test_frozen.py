"""Frozen: prefix captioning, interleaved sequences, frozen LM through the engine, few-shot episodes."""

import dataclasses
import json
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import models, tasks
from mmjax.config import ConfigError, get_config
from mmjax.evaluators import fewshot
from mmjax.train import build_run, restore_run, train_and_evaluate
from mmjax.train.run import run_params as load_run_params

from .conftest import CONFIGS

QUIET = dict(echo=lambda *a: None)
TINY_LM = {"vocab_size": 45, "n_positions": 64, "n_embd": 16, "n_layer": 1, "n_head": 2}


def tiny_frozen(lm=None, **kw):
  return models.build("frozen", {"lm": {**TINY_LM, **(lm or {})}, "vision_widths": (8, 8), **kw})


def test_pack_layout():
  tokens, slots, kinds = fewshot.pack([[("image", 0), 5, 6, ("image", 1), 7], [9]], num_prefix=2)
  np.testing.assert_array_equal(kinds, [[2, 2, 1, 1, 2, 2, 1], [1, 0, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(slots[0], [0, 1, 0, 0, 2, 3, 0])
  np.testing.assert_array_equal(tokens[0], [0, 0, 5, 6, 0, 0, 7])
  with pytest.raises(ValueError, match="needs 7 positions"):
    fewshot.pack([[("image", 0), 5, 6, ("image", 1), 7]], num_prefix=2, length=5)


@pytest.mark.parametrize("bos_id", [None, 2])
def test_captioning_forward_equals_the_interleaved_sequence(bos_id):
  model = tiny_frozen(bos_id=bos_id)
  rng = np.random.default_rng(0)
  batch = {"image": rng.random((3, 8, 8), np.float32), "caption_tokens": rng.integers(3, 45, (3, 5)),
           "caption_tokens_mask": np.arange(5)[None] < np.array([[5], [3], [4]])}
  variables = model.init(jax.random.PRNGKey(0), batch, train=False)
  logits, aux = model.apply(variables, batch, train=False)
  assert logits.shape == (3, 5, 45) and aux["targets"].shape == (3, 5)
  loss, metrics = tasks.get("next_token").loss(logits, aux, batch)
  assert np.isfinite(loss) and 0 <= metrics["token_accuracy"] <= 1
  # The same example as an interleaved sequence [image ; caption]: identical next-token logits.
  seqs = [[("image", 0), *batch["caption_tokens"][b][: int(batch["caption_tokens_mask"][b].sum())]]
          for b in range(3)]
  tokens, slots, kinds = fewshot.pack(seqs, num_prefix=2)
  inter = model.apply(variables, batch["image"][:, None], tokens, slots, kinds, method="interleaved")
  for b in range(3):
    n = int(batch["caption_tokens_mask"][b].sum())
    np.testing.assert_allclose(inter[b, 1:1 + n], logits[b, :n], rtol=1e-5, atol=1e-5)
  # By hand: the LM over [<bos>?; prefix; caption] embeddings, the outputs before each caption token.
  from mmjax.models.gpt2 import GPT2

  prefix = model.apply(variables, batch["image"], method="prefix")
  wte = nn.unbox(variables)["params"]["lm"]["wte"]["embedding"]
  bos = [wte[np.full((3, 1), bos_id)]] if bos_id is not None else []
  parts = [*bos, prefix, wte[batch["caption_tokens"]]]
  emb = np.concatenate(parts, axis=1)
  real = np.concatenate([np.ones((3, emb.shape[1] - 5), bool), batch["caption_tokens_mask"]], axis=1)
  assert model.lm.n_embd == 16 and model.lm.embd_pdrop == 0.0  # TINY_LM over Frozen's dropout-free default
  by_hand, _ = GPT2(model.lm).apply({"params": variables["params"]["lm"]}, embeddings=emb,
                                    attention_mask=real, train=False)
  start = emb.shape[1] - 5 - 1
  np.testing.assert_allclose(logits, by_hand[:, start:start + 5], rtol=1e-5, atol=1e-5)


# -m slow: the vocab-mixture head is not the paper's; the contract and captioning tests cover Frozen by
# default
@pytest.mark.slow
def test_vocab_mixture_prefix_is_an_expected_token_embedding():
  """prefix_head="vocab_mixture": each prefix vector is softmax(to_vocab(h)) @ wte (inside the convex hull
  of the token embeddings), the encoder's gradient flows through it, and an unknown head is an error."""
  model = tiny_frozen(prefix_head="vocab_mixture")
  rng = np.random.default_rng(1)
  batch = {"image": rng.random((4, 8, 8), np.float32), "caption_tokens": rng.integers(3, 45, (4, 5))}
  params = nn.unbox(model.init(jax.random.PRNGKey(0), batch, train=False))["params"]
  assert "to_vocab" in params["vision"] and "to_prefix" not in params["vision"]
  wte = params["lm"]["wte"]["embedding"]
  prefix = model.apply({"params": params}, batch["image"], method="prefix")
  assert prefix.shape == (4, 2, wte.shape[1])
  # By hand from the head's logits.
  _, state = model.apply({"params": params}, batch["image"], method="prefix",
                         capture_intermediates=lambda mdl, _: mdl.name == "to_vocab")
  logits = state["intermediates"]["vision"]["to_vocab"]["__call__"][0].reshape(4, 2, -1)
  np.testing.assert_allclose(prefix, jax.nn.softmax(logits) @ wte, rtol=1e-5, atol=1e-6)
  lo, hi = wte.min(0), wte.max(0)
  assert np.all(prefix >= lo - 1e-6) and np.all(prefix <= hi + 1e-6)

  def loss(p):
    return model.apply({"params": p}, batch, train=False)[0].mean()

  grads = jax.grad(loss)(params)
  assert float(jnp.abs(grads["vision"]["to_vocab"]["kernel"]).sum()) > 0
  with pytest.raises(ValueError, match="unknown prefix head 'argmax'"):
    tiny_frozen(prefix_head="argmax").init(jax.random.PRNGKey(0), batch, train=False)


def test_snap_prefix_reads_images_as_tokens():
  """nearest_token_embeddings picks the most cosine-similar row; snap_prefix makes every prefix vector a
  row of wte, and training with it is an error (no gradient reaches the encoder)."""
  from mmjax.models.frozen import nearest_token_embeddings

  table = jnp.array([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]])
  vectors = jnp.array([[3.0, 0.1], [0.1, 0.2], [-0.5, -0.4], [0.0, -5.0]])
  np.testing.assert_array_equal(nearest_token_embeddings(vectors, table), table[np.array([0, 1, 2, 2])])
  rng = np.random.default_rng(2)
  batch = {"image": rng.random((3, 8, 8), np.float32), "caption_tokens": rng.integers(3, 45, (3, 4))}
  for head in ("linear", "vocab_mixture"):
    model = tiny_frozen(prefix_head=head)
    params = nn.unbox(model.init(jax.random.PRNGKey(0), batch, train=False))["params"]
    soft = np.asarray(model.apply({"params": params}, batch["image"], method="prefix"))
    snapped = model.clone(snap_prefix=True)
    hard = np.asarray(snapped.apply({"params": params}, batch["image"], method="prefix"))
    wte = np.asarray(params["lm"]["wte"]["embedding"])
    np.testing.assert_array_equal(hard, np.asarray(nearest_token_embeddings(soft, wte)))
    assert all(any(np.array_equal(row, w) for w in wte) for row in hard.reshape(-1, wte.shape[1]))
    with pytest.raises(ValueError, match="snap_prefix is for evaluation only"):
      snapped.apply({"params": params}, batch, train=True, rngs={"dropout": jax.random.PRNGKey(1)})


def test_open_ended_decoding_matches_the_scored_argmax():
  """Greedy decoding's first token is the argmax of the next-token logits after the prompt."""
  fs = fewshot.FewShot(encode=lambda t: [len(w) for w in t.split()], class_names=[str(i) for i in range(4)])
  pool = {c: np.full((3, 8, 8), c / 4, np.float32) for c in range(4)}
  model = tiny_frozen(lm={"vocab_size": 16})
  params = model.init(jax.random.PRNGKey(1), {"image": pool[0][:1], "caption_tokens": np.ones((1, 3), int)},
                      train=False)["params"]
  episodes = fs.episodes(pool, "classification", 1, 4, seed=0)
  tokens, slots, kinds = fewshot.pack([ep.prompt for ep in episodes], model.num_prefix)
  images = np.stack([ep.images for ep in episodes])
  logits = model.apply({"params": params}, images, tokens, slots, kinds, method="interleaved")
  last = (kinds > 0).sum(1) - 1
  first = np.argmax(np.asarray(logits)[np.arange(4), last], -1)
  want = [int(first[i] == ep.answers[ep.correct][0]) for i, ep in enumerate(episodes)]
  # One-token answers make open-ended accuracy exactly the first-token match.
  for ep in episodes:
    ep.answers = [a[:1] for a in ep.answers]
  assert fewshot.evaluate_open_ended(model, params, episodes, batch_size=4) == np.mean(want)


def test_episodes_and_scoring():
  fs = fewshot.FewShot(encode=lambda t: [len(w) for w in t.split()], class_names=[str(i) for i in range(4)])
  pool = {c: np.full((6, 8, 8), c, np.float32) for c in range(4)}
  for k in (0, 3):
    eps = fs.episodes(pool, "fast_binding", k, 5, seed=1)
    eps2 = fs.episodes(pool, "fast_binding", k, 5, seed=1)
    for e, e2 in zip(eps, eps2, strict=True):  # deterministic
      assert e.prompt == e2.prompt and e.correct == e2.correct
      assert e.images.shape == (2 * k + 1, 8, 8) and len(e.answers) == 2 and e.correct in (0, 1)
      # The query image is of the class the correct answer names (support images of that class too).
      assert sum(isinstance(x, tuple) for x in e.prompt) == 2 * k + 1
  with pytest.raises(ConfigError, match="need 2 classes with more than 6"):
    fs.episodes(pool, "classification", 6, 1, seed=0)
  with pytest.raises(ConfigError, match="unknown few-shot protocol"):
    fs.episodes(pool, "vqa", 1, 1, seed=0)
  model = tiny_frozen(lm={"vocab_size": 16})
  example = {"image": pool[0][:1], "caption_tokens": np.ones((1, 3), int)}
  variables = model.init(jax.random.PRNGKey(0), example, train=False)
  episodes = fs.episodes(pool, "classification", 1, 6, seed=0)
  acc = fs.evaluate(model, variables["params"], episodes, batch_size=4)
  assert 0.0 <= acc <= 1.0


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory, data_dir):
  workdir = tmp_path_factory.mktemp("lm")
  cfg = get_config(f"{CONFIGS / 'frozen_digits.py'}:lm,runlocal",
                   [f"data.data_dir={data_dir}", "async_checkpoints=false"])
  final = train_and_evaluate(cfg, workdir, devices=jax.devices()[:1], **QUIET)
  assert np.isfinite(final["validation"]["perplexity"])
  return workdir


def frozen_config(data_dir, lm_workdir, *extra):
  return get_config(f"{CONFIGS / 'frozen_digits.py'}:runlocal",
                    [f"data.data_dir={data_dir}", f"init.path={lm_workdir}", "async_checkpoints=false",
                     *extra])


def test_frozen_lm_stays_bit_identical_and_only_the_encoder_moves(lm_run, data_dir, tmp_path):
  lm = load_run_params(lm_run)["lm"]
  cfg = frozen_config(data_dir, lm_run, "evaluators.fewshot.name=fewshot",
                      "evaluators.fewshot.kwargs.shots=(0,2)", "evaluators.fewshot.kwargs.episodes=4",
                      "evaluators.fewshot.kwargs.open_ended=False")
  final = train_and_evaluate(cfg, tmp_path, devices=jax.devices()[:1], **QUIET)
  assert np.isfinite(final["test"]["perplexity"])
  # The fewshot evaluator at the end of training: its metrics and its JSON.
  assert set(final["fewshot"]) == {f"{p}/{k}" for p in ("fast_binding", "classification") for k in (0, 2)}
  assert (tmp_path / "fewshot" / "fewshot-step000004.json").is_file()
  trained = load_run_params(tmp_path)
  for a, b in zip(jax.tree_util.tree_leaves(trained["lm"]), jax.tree_util.tree_leaves(lm), strict=True):
    np.testing.assert_array_equal(a, b)
  # The vision encoder moved away from its initialisation (same seed -> same init as a 0-step run).
  init = jax.device_get(build_run(cfg, tmp_path / "init", jax.devices()[:1]).init().params)
  moved = [not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(trained["vision"]),
                                                    jax.tree_util.tree_leaves(init["vision"]), strict=True)]
  assert all(moved)

  # Few-shot through the CLI: accuracies per k in [0, 1], written to fewshot.json.
  from mmjax.cli import main

  assert main(["fewshot", "--config", f"{CONFIGS / 'frozen_digits.py'}:runlocal", "--workdir", str(tmp_path),
               "--shots", "0,2", "--episodes", "6", f"--config.data.data_dir={data_dir}",
               f"--config.init.path={lm_run}"]) == 0
  result = json.loads((tmp_path / "fewshot.json").read_text())
  protocols = ("fast_binding", "classification", "fast_binding_open_ended", "classification_open_ended")
  assert all(set(result[p]) == {"0", "2"} for p in protocols)
  assert all(0.0 <= v <= 1.0 for p in protocols for v in result[p].values())
  assert result["mode"] == "images" and result["snap_prefix"] is False
  run, state = restore_run(tmp_path, config=cfg, devices=jax.devices()[:1])
  snapped = fewshot.fewshot_scores(run, state.params, protocols=("fast_binding",), shots=(1,), episodes=4,
                                   open_ended=False, snap_prefix=True, echo=lambda _: None)
  assert snapped["snap_prefix"] is True and 0.0 <= snapped["fast_binding"]["1"] <= 1.0
  mixed = fewshot.fewshot_scores(run, state.params, protocols=("fast_binding",), shots=(1,), episodes=4,
                                 open_ended=False, text_support=True, echo=lambda _: None)
  assert mixed["text_support"] is True and mixed["text_repeats"] == 2 and mixed["mode"] == "images"


@pytest.mark.slow  # Frozen on a (2, 2, 2) mesh is in tests/test_sharding.py's default run
def test_frozen_sharded_step_equals_one_device(lm_run, data_dir, tmp_path):
  cfg = frozen_config(data_dir, lm_run, "checkpoint_every=0", "eval_every=0", "data.test_split=")
  one = train_and_evaluate(cfg, tmp_path / "one", devices=jax.devices()[:1], **QUIET)
  eight = train_and_evaluate(cfg, tmp_path / "eight", devices=jax.devices()[:8], **QUIET)
  np.testing.assert_allclose(eight["train"]["loss"], one["train"]["loss"], rtol=1e-5)
  np.testing.assert_allclose(eight["validation"]["loss"], one["validation"]["loss"], rtol=1e-5)


def test_frozen_with_a_hugging_face_gpt2_on_image_captions(tmp_path):
  """configs/frozen_gpt2.py end to end on the tiny HF GPT-2 fixture and a manual image_captions directory:
  captions tokenized with its BPE, its weights grafted under lm and bit-identical after training."""
  from mmjax.data import pipeline
  from mmjax.data.gpt2_tokenizer import GPT2Tokenizer
  from mmjax.models.convert.hf_gpt2 import load_hf_gpt2

  from .test_captions import build, write_images, write_jsonl

  hf = Path(__file__).parent / "fixtures" / "gpt2_tiny"
  manual = tmp_path / "manual"
  names = write_images(manual / "images")
  lines = [{"image": names[i % 4], "caption": f"a picture number {i}", "split": split}
           for i, split in enumerate(["train"] * 8 + ["validation"] * 4 + ["test"] * 4)]
  write_jsonl(manual, lines)
  build(manual, tmp_path / "tfds")
  cfg = get_config(f"{CONFIGS / 'frozen_gpt2.py'}:{hf},runlocal",
                   [f"data.data_dir={tmp_path / 'tfds'}", "async_checkpoints=false"])
  assert (cfg.init.format, cfg.init.path, cfg.init.target) == ("hf_gpt2", str(hf), "lm")
  assert cfg.model.kwargs.lm.to_dict() == dataclasses.asdict(load_hf_gpt2(hf, dropout=False)[0].config)
  batch = next(pipeline.train_batches(cfg.data, global_batch_size=4, seed=0))
  tok = GPT2Tokenizer.from_dir(hf)
  first = batch["caption_tokens"][0][batch["caption_tokens_mask"][0]]
  assert first[-1] == tok.eos_id and tok.decode(first[:-1].tolist()).startswith("a picture number")
  assert batch["image"].shape == (4, 64, 64, 3) and batch["image"].dtype == np.float32
  final = train_and_evaluate(cfg, tmp_path / "run", devices=jax.devices()[:1], **QUIET)
  assert np.isfinite(final["test"]["perplexity"])
  _, hf_params = load_hf_gpt2(hf)
  trained = load_run_params(tmp_path / "run")["lm"]
  flat_hf = jax.tree_util.tree_leaves_with_path(hf_params)
  flat_tr = dict(jax.tree_util.tree_leaves_with_path(trained))
  assert len(flat_hf) == len(flat_tr)
  for path, value in flat_hf:
    np.testing.assert_array_equal(flat_tr[path], value)


def check_document(text, kind):
  from mmjax.data.builders import digits_av_text as dt
  from mmjax.data.builders.digits_av import LABEL_NAMES
  from mmjax.data.vocab import Vocabulary

  words = text.split()
  if kind == 3:  # a word sequence, then the same again
    half = len(words) // 2
    assert len(words) % 2 == 0 and words[:half] == words[half:]
    assert dt.REPEAT_WORDS[0] <= half <= dt.REPEAT_WORDS[1]
    return
  assert text.endswith(" .")
  lines = [line.split() for line in text[:-2].split(" . ")]
  r, fillers = dt.SUBJECT_REPEATS, set(dt.filler_words(Vocabulary.digits_captions()))
  subjects = []
  for line in lines:  # every line starts with its subject: a digit word r times, or once beside a filler
    digits = [w for w in line[:r] if w in LABEL_NAMES]
    assert len(set(digits)) == 1 and len(digits) >= r - 1, line
    assert all(w in fillers for w in line[:r] if w not in LABEL_NAMES), line
    subjects.append(digits[0])
  if kind == 0:
    assert len(lines) == 1 and subjects[0] in lines[0][r:]
    return
  names = {}
  for digit, line in zip(subjects, lines, strict=True):
    assert len(line) == r + 4 and line[r:r + 3] == ["this", "is", "a"]
    assert names.setdefault(digit, line[-1]) == line[-1]  # one name per digit within a document
  assert len(names) == dt.WAYS and (kind == 2) == all(d == n for d, n in names.items())
  assert subjects[-1] in subjects[:-1]  # the query digit was named before
  assert len(lines) <= 2 * dt.MAX_SHOTS + 1 and len(words) <= dt.MAX_TOKENS


def test_digits_av_text_documents_bind_names_consistently(data_dir):
  from mmjax.data import pipeline
  from mmjax.data.builders import digits_av_text as dt
  from mmjax.data.vocab import Vocabulary

  rng = np.random.default_rng(0)
  kinds, with_filler = [], 0
  for _ in range(400):
    text, kind = dt.document(rng)
    check_document(text, kind)
    kinds.append(kind)
    with_filler += kind in (0, 1, 2) and any(w in dt.filler_words(Vocabulary.digits_captions())
                                             for w in text.split()[:dt.SUBJECT_REPEATS])
  assert set(kinds) == {0, 1, 2, 3} and with_filler > 50
  builder = pipeline.prepare("digits_av_text", data_dir)
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == dt.SIZES
  source, vocab = builder.as_data_source(split="validation"), Vocabulary.digits_captions()
  for i in range(0, len(source), 25):
    check_document(vocab.decode(source[i]["tokens"]), int(source[i]["kind"]))


def test_text_only_episodes_put_class_names_where_images_were():
  from mmjax.data.builders.digits_av import LABEL_NAMES
  from mmjax.data.builders.digits_av_captions import encode_caption
  from mmjax.data.vocab import Vocabulary

  vocab = Vocabulary.digits_captions()
  fs = fewshot.FewShot(encode=lambda t: encode_caption(t, vocab).tolist(), class_names=LABEL_NAMES)
  pool = dict.fromkeys(range(10))
  for protocol in fewshot.PROTOCOLS:
    for ep in fs.episodes(pool, protocol, 3, 20, seed=0, text_repeats=2):
      assert len(ep.images) == 0 and all(isinstance(x, int) for x in ep.prompt)
      text = vocab.decode(ep.prompt + ep.answers[ep.correct])
      lines = [line.split() for line in text[:-2].split(" . ")]
      assert len(lines) == 2 * 3 + 1
      names = {}
      for line in lines:
        assert line[0] == line[1] and line[2:5] == ["this", "is", "a"]
        assert names.setdefault(line[0], line[5]) == line[5]
      if protocol == "classification":
        assert all(d == n for d, n in names.items())
  # The same episodes as a language model reads them: the CausalLM's interleaved logits are its forward.
  lm = models.build("causal_lm", {"lm": {**TINY_LM, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "resid_pdrop": 0.0},
                                   "text_key": "tokens"})
  ep = fs.episodes(pool, "fast_binding", 2, 1, seed=3, text_repeats=2)[0]
  tokens, slots, kinds = fewshot.pack([ep.prompt], num_prefix=1)
  params = lm.init(jax.random.PRNGKey(0), {"tokens": tokens}, train=False)["params"]
  forward, _ = lm.apply({"params": params}, {"tokens": tokens}, train=False)
  inter = lm.apply({"params": params}, np.zeros((1, 1, 1, 1)), tokens, slots, kinds, method="interleaved")
  np.testing.assert_allclose(inter[:, :-1], forward[:, 1:], rtol=1e-5, atol=1e-5)
  assert 0.0 <= fs.evaluate(lm, params, [ep], batch_size=2) <= 1.0
  # A language model alone cannot see images.
  img_pool = {c: np.zeros((4, 8, 8), np.float32) for c in range(10)}
  with pytest.raises(ConfigError, match="no vision encoder"):
    fs.evaluate(lm, params, fs.episodes(img_pool, "fast_binding", 1, 2, seed=0))
  # text_support: support lines as text, the query still an image (its class's image, from the pool).
  img_pool = {c: np.full((4, 8, 8), c, np.float32) for c in range(10)}
  for ep in fs.episodes(img_pool, "fast_binding", 2, 10, seed=1, text_repeats=2, text_support=True):
    assert len(ep.images) == 1 and ep.prompt[-4] == ("image", 0)
    assert all(isinstance(x, int) for x in ep.prompt[:-4])
    lines = [line.split() for line in vocab.decode(ep.prompt[:-4])[:-2].split(" . ")]
    assert len(lines) == 2 * 2 and all(line[0] == line[1] and len(line) == 6 for line in lines)
    query_digit = LABEL_NAMES[int(ep.images[0, 0, 0])]
    named = {line[0]: line[5] for line in lines}
    assert named[query_digit] == vocab.decode(ep.answers[ep.correct]).split()[0]
  with pytest.raises(ConfigError, match="text_support needs text_repeats"):
    fs.episodes(img_pool, "fast_binding", 1, 2, seed=0, text_support=True)


def test_fewshot_scores_a_language_model_on_text_episodes(lm_run, data_dir):
  from mmjax.cli import main

  assert main(["fewshot", "--config", f"{CONFIGS / 'frozen_digits.py'}:lm,runlocal", "--workdir", str(lm_run),
               "--shots", "0,3", "--episodes", "6", f"--config.data.data_dir={data_dir}"]) == 0
  result = json.loads((lm_run / "fewshot.json").read_text())
  assert result["mode"] == "text" and result["text_repeats"] == 2 and result["split"] is None
  cfg = get_config(f"{CONFIGS / 'frozen_digits.py'}:lm,runlocal", [f"data.data_dir={data_dir}"])
  run, state = restore_run(lm_run, config=cfg, devices=jax.devices()[:1])
  for flag in ("snap_prefix", "text_support"):
    with pytest.raises(ConfigError, match="snap_prefix and text_support need a Frozen checkpoint"):
      fewshot.fewshot_scores(run, state.params, shots=(1,), episodes=2, echo=lambda _: None, **{flag: True})
  for p in ("fast_binding", "classification", "fast_binding_open_ended", "classification_open_ended"):
    assert set(result[p]) == {"0", "3"} and all(0.0 <= v <= 1.0 for v in result[p].values())
