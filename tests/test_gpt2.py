"""GPT-2: parity with Hugging Face's PyTorch model (stored outputs and, when installed, live), the KV cache,
decoding and scoring (mmjax.sampling), GPT2Config, the Hugging Face import's errors
(mmjax.models.convert.hf_gpt2), the tokenizer and the decode benchmark."""

import json
import shutil
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from mmjax import cli, models, sampling
from mmjax.data.gpt2_tokenizer import GPT2Tokenizer
from mmjax.models import gpt2
from mmjax.models.convert import hf_gpt2
from mmjax.train import mesh as mesh_lib

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "gpt2_tiny"


@pytest.fixture(scope="module")
def hf():
  return dict(np.load(FIXTURE / "hf_outputs.npz"))


@pytest.fixture(scope="module")
def lm():
  """``(model, params, fwd)`` of the fixture; ``fwd(params, tokens, mask)`` -> logits (jitted)."""
  model, params = hf_gpt2.load_hf_gpt2(FIXTURE, dropout=False)
  fwd = jax.jit(lambda p, x, m: model.apply({"params": p}, x, attention_mask=m, train=False)[0])
  return model, params, fwd


@pytest.fixture(scope="module")
def greedy(lm, hf):
  """Greedy decoding of the fixture's left-padded prompts, cached and uncached, with step logits."""
  model, params, _ = lm
  n, eos = int(hf["max_new_tokens"]), int(hf["eos_id"])
  return {cached: sampling.generate(model, params, hf["prompt_ids"], hf["prompt_mask"], n, use_cache=cached,
                                    eos_id=eos, return_logits=True)
          for cached in (True, False)}


# --- parity with Hugging Face ------------------------------------------------------------------------------


def test_logits_match_stored_hf_outputs(lm, hf):
  model, params, fwd = lm
  c = model.config
  shape = (c.vocab_size, c.n_positions, c.n_embd, c.n_layer, c.n_head)
  assert shape == (299, 64, 32, 2, 4)
  got = np.asarray(fwd(params, hf["input_ids"], None))
  assert got.shape == hf["logits"].shape and got.dtype == np.float32
  assert np.abs(got - hf["logits"]).max() < 1e-4


def test_greedy_decoding_matches_hf_and_cached_equals_uncached(greedy, hf):
  (cached, cached_logits), (uncached, uncached_logits) = greedy[True], greedy[False]
  # HF decoded each prompt alone (no padding); we decode the left-padded batch
  np.testing.assert_array_equal(np.asarray(cached), hf["greedy_ids"])
  np.testing.assert_array_equal(np.asarray(uncached), hf["greedy_ids"])
  assert np.abs(np.asarray(cached_logits) - np.asarray(uncached_logits)).max() < 1e-4
  np.testing.assert_array_equal(np.asarray(cached_logits).argmax(-1), hf["greedy_ids"])


def test_live_parity_with_a_fresh_random_hf_model(tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(1)
  config = transformers.GPT2Config(vocab_size=97, n_positions=24, n_embd=24, n_layer=2, n_head=3, n_inner=40,
                                   initializer_range=0.3, bos_token_id=0, eos_token_id=0)
  hf_model = transformers.GPT2LMHeadModel(config).eval()
  with torch.no_grad():
    for _, p in hf_model.named_parameters():
      p.add_(0.1 * torch.randn_like(p))
  hf_model.save_pretrained(str(tmp_path))
  model, params = hf_gpt2.load_hf_gpt2(tmp_path)
  assert model.config.n_inner == 40 and model.config.n_head == 3
  rng = np.random.default_rng(0)
  ids = rng.integers(0, 97, (2, 9))
  mask = np.ones((2, 9), bool)
  mask[1, :4] = False  # left padding
  positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
  with torch.no_grad():
    want = hf_model(torch.tensor(ids), attention_mask=torch.tensor(mask, dtype=torch.long),
                    position_ids=torch.tensor(positions)).logits.numpy()
  got, _ = model.apply({"params": params}, ids, attention_mask=mask, train=False)
  diff = np.abs(np.asarray(got) - want)[mask]
  assert diff.max() < 1e-4


# --- KV cache, padding, embeddings --------------------------------------------------------------------------


def test_cache_written_in_chunks_equals_one_full_pass(lm, hf):
  model, params, fwd = lm
  ids = hf["input_ids"][:, :9]
  full = np.asarray(fwd(params, ids, None))
  step = jax.jit(lambda p, x, c, i: model.apply({"params": p}, x, cache=c, cache_index=i, train=False))
  cache = model.init_cache(2, 12)
  assert len(cache.keys) == 2 and cache.keys[0].shape == (2, 12, 4, 8) and cache.valid.shape == (2, 12)
  outs = []
  for a, b in ((0, 4), (4, 8), (8, 9)):  # chunks of 4, 4 (written after 4 cached slots) and 1
    out, cache = step(params, ids[:, a:b], cache, a)
    outs.append(np.asarray(out))
  assert np.abs(np.concatenate(outs, 1) - full).max() < 1e-5
  np.testing.assert_array_equal(np.asarray(cache.valid), np.arange(12)[None].repeat(2, 0) < 9)


def test_left_padded_batch_equals_each_example_alone(lm, hf):
  """The masked left-padded batch vs. each example at the start of its row with no mask at all (what
  follows a token cannot change its outputs under causal attention; one compiled shape for all rows).
  The greedy test above also compares the padded batch with HF runs of single unpadded prompts."""
  model, params, fwd = lm
  ids, mask = hf["prompt_ids"], hf["prompt_mask"]
  batched = np.asarray(fwd(params, ids, mask))
  shifted = np.stack([np.roll(row, -int((~m).sum())) for row, m in zip(ids, mask, strict=True)])
  alone = np.asarray(fwd(params, shifted, None))
  for i, m in enumerate(mask):
    assert np.abs(batched[i, m] - alone[i, :m.sum()]).max() < 1e-5
  # kernels without dense masks ("pallas" needs a GPU here) leave masked calls to "xla"
  pallas = model.clone(attention="pallas")
  masked = jax.jit(lambda p, x, m: pallas.apply({"params": p}, x, attention_mask=m, train=False)[0])
  np.testing.assert_array_equal(np.asarray(masked(params, ids, mask)), batched)


def test_embeddings_input_equals_token_input(lm, hf, greedy):
  model, params, fwd = lm
  ids, mask = hf["prompt_ids"], hf["prompt_mask"]
  emb = jax.jit(lambda p, x: model.apply({"params": p}, x, method=gpt2.GPT2.embed))(params, ids)
  assert emb.shape == (*ids.shape, 32)
  by_emb = jax.jit(lambda p, e, m: model.apply({"params": p}, embeddings=e, attention_mask=m, train=False)[0])
  assert np.abs(np.asarray(by_emb(params, emb, mask)) - np.asarray(fwd(params, ids, mask))).max() < 1e-5
  n, eos = int(hf["max_new_tokens"]), int(hf["eos_id"])
  # {"params": ...} is accepted too; the settings of the `greedy` fixture reuse its compiled loop
  out, logits = sampling.generate(model, {"params": params}, emb, mask, n, eos_id=eos, return_logits=True)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(greedy[True][0]))
  assert np.abs(np.asarray(logits) - np.asarray(greedy[True][1])).max() < 1e-5


# --- sampling and stopping ----------------------------------------------------------------------------------


def test_filter_logits_top_k_and_top_p():
  logits = np.log(np.array([0.1, 0.4, 0.2, 0.3], np.float32))
  filt = jax.jit(sampling.filter_logits)  # top_k and top_p are traced: one compilation
  kept = lambda top_k=0, top_p=1.0: np.isfinite(np.asarray(filt(logits, top_k, top_p)))  # noqa: E731
  np.testing.assert_array_equal(kept(), [True] * 4)
  np.testing.assert_array_equal(kept(top_k=2), [False, True, False, True])
  np.testing.assert_array_equal(kept(top_p=0.5), [False, True, False, True])  # 0.4 < 0.5 <= 0.4 + 0.3
  np.testing.assert_array_equal(kept(top_p=0.4), [False, True, False, False])
  np.testing.assert_array_equal(kept(top_p=1e-6), [False, True, False, False])
  np.testing.assert_array_equal(kept(top_k=3, top_p=0.99), [False, True, True, True])  # p after top-k


def test_sampling_top_k_1_and_tiny_top_p_are_greedy(lm, hf, greedy):
  model, params, _ = lm
  args = (model, params, hf["prompt_ids"], hf["prompt_mask"], int(hf["max_new_tokens"]))
  want = np.asarray(greedy[True][0])
  kw = dict(temperature=1.0, eos_id=int(hf["eos_id"]))
  top1 = sampling.generate(*args, rng=jax.random.PRNGKey(3), top_k=1, **kw)
  tiny_p = sampling.generate(*args, rng=jax.random.PRNGKey(4), top_p=1e-6, **kw)
  np.testing.assert_array_equal(np.asarray(top1), want)
  np.testing.assert_array_equal(np.asarray(tiny_p), want)
  a = sampling.generate(*args, rng=jax.random.PRNGKey(5), **kw)
  b = sampling.generate(*args, rng=jax.random.PRNGKey(5), **kw)
  c = sampling.generate(*args, rng=jax.random.PRNGKey(6), **kw)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.array_equal(np.asarray(a), np.asarray(c)) and not np.array_equal(np.asarray(a), want)
  assert np.asarray(a).min() >= 0 and np.asarray(a).max() < model.config.vocab_size


def test_eos_stops_a_row_and_pads_it(lm, hf):
  model, params, _ = lm
  ref = hf["greedy_ids"]
  eos = int(ref[0, 1])  # row 0 produces it at step 0 or 1
  n = int(hf["max_new_tokens"])
  out, logits = sampling.generate(model, params, hf["prompt_ids"], hf["prompt_mask"], n, eos_id=eos,
                                  pad_id=-1, return_logits=True)  # the `greedy` fixture's loop (eos traced)
  out, logits = np.asarray(out), np.asarray(logits)
  for row, got, lg in zip(ref, out, logits, strict=True):
    hits = np.flatnonzero(row == eos)
    stop = hits[0] + 1 if len(hits) else len(row)
    np.testing.assert_array_equal(got[:stop], row[:stop])
    assert (got[stop:] == -1).all() and (lg[stop:] == 0).all() and (lg[:stop] != 0).all()


def test_generate_argument_errors(lm, hf):
  model, params, _ = lm
  ids = hf["prompt_ids"]
  with pytest.raises(ValueError, match="exceeds the model's n_positions=64"):
    sampling.generate(model, params, ids, None, 64)
  with pytest.raises(ValueError, match="needs rng"):
    sampling.generate(model, params, ids, None, 4, temperature=0.7)
  with pytest.raises(ValueError, match="int token ids"):
    sampling.generate(model, params, ids.astype(np.float32), None, 4)
  with pytest.raises(ValueError, match="prompt_mask must be"):
    sampling.generate(model, params, ids, np.ones((1, 2), bool), 4)
  with pytest.raises(ValueError, match="exactly one of tokens"):
    model.apply({"params": params}, train=False)


# --- scoring ------------------------------------------------------------------------------------------------


def test_sequence_log_likelihood(lm, hf):
  model, params, fwd = lm
  prefix, pmask = hf["prompt_ids"], hf["prompt_mask"]  # left-padded prefixes
  targets = np.array([[5, 9, 11], [7, 0, 0], [3, 4, 0]], np.int32)
  tmask = targets > 0  # right-padded answers
  got = np.asarray(sampling.sequence_log_likelihood(model, params, prefix, targets, prefix_mask=pmask,
                                                    target_mask=tmask))
  per_token = np.asarray(sampling.token_log_probs(model, params, prefix, targets, prefix_mask=pmask,
                                                  target_mask=tmask))
  assert got.shape == (3,) and np.allclose(per_token.sum(1), got) and (per_token[~tmask] == 0).all()
  # reference: prefix + answer of each row at the start of its row, no mask (causal: padding after is inert)
  seqs = [np.concatenate([prefix[i, pmask[i]], targets[i, tmask[i]]]) for i in range(3)]
  packed = np.zeros((3, prefix.shape[1] + 3), np.int32)
  for i, seq in enumerate(seqs):
    packed[i, :len(seq)] = seq
  logp = np.asarray(jax.nn.log_softmax(fwd(params, packed, None), -1))
  for i, seq in enumerate(seqs):
    n = int(pmask[i].sum())
    want = sum(float(logp[i, n - 1 + t, seq[n + t]]) for t in range(int(tmask[i].sum())))
    assert got[i] == pytest.approx(want, abs=1e-4)
  # a prefix given as embeddings scores the same
  emb = jax.jit(lambda p, x: model.apply({"params": p}, x, method=gpt2.GPT2.embed))(params, prefix)
  by_emb = sampling.sequence_log_likelihood(model, params, emb, targets, prefix_mask=pmask, target_mask=tmask)
  assert np.abs(np.asarray(by_emb) - got).max() < 1e-4


# --- the module as a model of the zoo -----------------------------------------------------------------------


def test_registry_logical_axes_and_sharding_over_8_devices():
  # GPT2 takes tokens, not a batch dict: the trainable LM of the registry is causal_lm, which holds it
  assert "gpt2" not in models.names() and "causal_lm" in models.names()
  model = gpt2.GPT2(gpt2.GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2))
  tokens = np.random.default_rng(0).integers(0, 64, (4, 8)).astype(np.int32)
  abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens, train=False))
  specs = nn.get_partition_spec(abstract)["params"]
  assert tuple(specs["wte"]["embedding"]) == ("vocab", "embed")
  assert tuple(specs["h_0"]["attn"]["c_attn"]["kernel"]) == ("embed", None, "heads", "kv")
  assert tuple(specs["h_0"]["mlp"]["c_fc"]["kernel"]) == ("embed", "mlp")
  mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  shardings = mesh_lib.tree_shardings(abstract, mesh)["params"]
  assert tuple(shardings["wte"]["embedding"].spec) == ("tensor", "fsdp")
  assert tuple(shardings["h_0"]["mlp"]["c_proj"]["kernel"].spec) == ("tensor", "fsdp")
  rng = np.random.default_rng(1)
  params = jax.tree_util.tree_map(lambda a: 0.3 * rng.standard_normal(a.shape).astype(np.float32),
                                  nn.unbox(abstract)["params"])
  fwd = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False)[0])
  one = np.asarray(fwd(params, tokens))
  sharded = fwd(jax.device_put(params, shardings), jax.device_put(tokens, mesh_lib.batch_sharding(mesh)))
  assert len(sharded.sharding.device_set) == 8
  assert np.abs(np.asarray(sharded) - one).max() < 1e-5


def test_training_step_lowers_the_loss_and_dropout_uses_the_rng():
  model = gpt2.GPT2(gpt2.GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=1, n_head=2))
  tokens = np.random.default_rng(0).integers(0, 40, (2, 12)).astype(np.int32)
  abstract = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.PRNGKey(0), tokens, train=False)))
  rng = np.random.default_rng(1)  # random parameters without compiling init
  params = jax.tree_util.tree_map(lambda a: 0.3 * rng.standard_normal(a.shape).astype(np.float32),
                                  abstract["params"])

  @jax.jit
  def step(p, rng):
    def loss_fn(p):
      logits, _ = model.apply({"params": p}, tokens[:, :-1], train=True, rngs={"dropout": rng})
      return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1))

    loss, grads = jax.value_and_grad(loss_fn)(p)
    finite = jnp.all(jnp.stack([jnp.isfinite(g).all() for g in jax.tree_util.tree_leaves(grads)]))
    return loss, finite, jax.tree_util.tree_map(lambda a, g: a - 0.2 * g, p, grads)

  other_rng_loss = float(step(params, jax.random.PRNGKey(99))[0])
  losses = []
  for i in range(4):
    loss, finite, params = step(params, jax.random.PRNGKey(i))
    assert bool(finite)
    losses.append(float(loss))
  assert losses[-1] < losses[0]
  assert other_rng_loss != losses[0]  # dropout draws from the "dropout" rng


def test_gpt2_config_variants_and_checks():
  small = gpt2.GPT2Config()
  assert gpt2.VARIANTS["gpt2"] == small and small.mlp_width == 3072 and small.head_dim == 64
  assert {k: (v.n_layer, v.n_embd, v.n_head) for k, v in gpt2.VARIANTS.items()} == {
      "gpt2": (12, 768, 12), "gpt2-medium": (24, 1024, 16), "gpt2-large": (36, 1280, 20),
      "gpt2-xl": (48, 1600, 25)}
  quiet = small.no_dropout()
  assert (quiet.embd_pdrop, quiet.attn_pdrop, quiet.resid_pdrop) == (0.0, 0.0, 0.0)
  assert quiet.replace(n_inner=100).mlp_width == 100 and hash(quiet) != hash(small)  # hashable: jit-static
  with pytest.raises(ValueError, match="not divisible by n_head"):
    gpt2.GPT2Config(n_embd=10, n_head=3)
  with pytest.raises(ValueError, match="unknown GPT-2 activation_function 'swish'"):
    gpt2.GPT2Config(activation_function="swish")


# --- the checkpoint loader's errors -------------------------------------------------------------------------


def _copy_fixture(tmp_path, tensors=None, config=None):
  out = tmp_path / "ckpt"
  out.mkdir(parents=True)
  shutil.copy(FIXTURE / "config.json", out / "config.json")
  if config is not None:
    (out / "config.json").write_text(json.dumps(config))
  if tensors is None:
    shutil.copy(FIXTURE / "model.safetensors", out / "model.safetensors")
  else:
    save_file(tensors, str(out / "model.safetensors"))
  return out


def _tensors():
  return load_file(str(FIXTURE / "model.safetensors"))


def _config():
  return json.loads((FIXTURE / "config.json").read_text())


def test_loader_accepts_prefix_free_names_buffers_tied_head_and_bfloat16(tmp_path, lm):
  _, ref, _ = lm
  t = _tensors()
  assert any(k.startswith("transformer.") for k in t)  # what save_pretrained writes
  renamed = {k.removeprefix("transformer."): v for k, v in t.items()}
  renamed["lm_head.weight"] = renamed["wte.weight"].copy()
  renamed["h.0.attn.bias"] = np.tril(np.ones((1, 1, 64, 64), np.float32))
  renamed["h.1.attn.masked_bias"] = np.array(-1e4, np.float32)
  _, params = hf_gpt2.load_hf_gpt2(_copy_fixture(tmp_path, renamed))
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, ref)
  import ml_dtypes

  (tmp_path / "bf16").mkdir()
  half = {k: v.astype(ml_dtypes.bfloat16) for k, v in t.items()}
  save_file(half, str(tmp_path / "bf16" / "model.safetensors"))
  shutil.copy(FIXTURE / "config.json", tmp_path / "bf16" / "config.json")
  _, params = hf_gpt2.load_hf_gpt2(tmp_path / "bf16")
  assert params["wte"]["embedding"].dtype == jnp.float32
  assert np.abs(np.asarray(params["wte"]["embedding"]) - np.asarray(ref["wte"]["embedding"])).max() < 0.05


def test_loader_errors_name_the_missing_path_or_file(tmp_path):
  with pytest.raises(hf_gpt2.HFCheckpointError, match="does not exist"):
    hf_gpt2.load_hf_gpt2(tmp_path / "nope")
  (tmp_path / "file").write_text("x")
  with pytest.raises(hf_gpt2.HFCheckpointError, match="not a directory"):
    hf_gpt2.load_hf_gpt2(tmp_path / "file")
  only_weights = tmp_path / "w"
  only_weights.mkdir()
  shutil.copy(FIXTURE / "model.safetensors", only_weights)
  with pytest.raises(hf_gpt2.HFCheckpointError, match="has no config.json"):
    hf_gpt2.load_hf_gpt2(only_weights)
  only_config = tmp_path / "c"
  only_config.mkdir()
  shutil.copy(FIXTURE / "config.json", only_config)
  with pytest.raises(hf_gpt2.HFCheckpointError, match="has no model.safetensors") as e:
    hf_gpt2.load_hf_gpt2(only_config)
  assert "pytorch_model.bin" not in str(e.value)
  (only_config / "pytorch_model.bin").write_bytes(b"")
  with pytest.raises(hf_gpt2.HFCheckpointError, match=r"found \['pytorch_model.bin'\]"):
    hf_gpt2.load_hf_gpt2(only_config)
  bad = _copy_fixture(tmp_path)
  (bad / "model.safetensors").write_bytes(b"not a safetensors file")
  with pytest.raises(hf_gpt2.HFCheckpointError, match="could not read the safetensors file"):
    hf_gpt2.load_hf_gpt2(bad)


@pytest.mark.parametrize("change, message", [
    (dict(model_type="llama", architectures=["LlamaForCausalLM"]), "model_type is 'llama', not 'gpt2'"),
    (dict(model_type=None, architectures=["BertModel"]), "neither model_type 'gpt2' nor a GPT2"),
    (dict(n_layer=None), "missing required GPT-2 config key 'n_layer'"),
    (dict(activation_function="swish"), "activation_function 'swish' is not supported"),
    (dict(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx=true is not supported"),
])
def test_loader_rejects_configs_that_are_not_gpt2(tmp_path, change, message):
  config = {k: v for k, v in {**_config(), **change}.items() if v is not None}
  with pytest.raises(hf_gpt2.HFCheckpointError, match=message):
    hf_gpt2.load_hf_gpt2(_copy_fixture(tmp_path, config=config))


def test_loader_rejects_invalid_json(tmp_path):
  path = _copy_fixture(tmp_path)
  (path / "config.json").write_text("{not json")
  with pytest.raises(hf_gpt2.HFCheckpointError, match="config.json is not valid JSON"):
    hf_gpt2.load_hf_gpt2(path)


def test_loader_tensor_errors(tmp_path):
  t = _tensors()
  missing = {k: v for k, v in t.items() if k != "transformer.h.1.mlp.c_fc.bias"}
  with pytest.raises(hf_gpt2.HFCheckpointError, match=r"missing tensors \['h.1.mlp.c_fc.bias'\]"):
    hf_gpt2.load_hf_gpt2(_copy_fixture(tmp_path / "a", missing))
  extra = {**t, "transformer.h.2.ln_1.weight": np.ones(32, np.float32), "score.weight": np.ones((2, 32))}
  with pytest.raises(hf_gpt2.HFCheckpointError,
                     match=r"unexpected tensors \['h.2.ln_1.weight', 'score.weight'\]"):
    hf_gpt2.load_hf_gpt2(_copy_fixture(tmp_path / "b", extra))
  shape = {**t, "transformer.h.0.attn.c_attn.weight": np.zeros((96, 32), np.float32)}  # [out, in]: wrong
  with pytest.raises(hf_gpt2.HFCheckpointError,
                     match=r"tensor 'h.0.attn.c_attn.weight' has shape \(96, 32\), expected \(32, 96\)"):
    hf_gpt2.load_hf_gpt2(_copy_fixture(tmp_path / "c", shape))
  untied = {**t, "lm_head.weight": t["transformer.wte.weight"] + 1}
  with pytest.raises(hf_gpt2.HFCheckpointError, match="lm_head.weight differs from wte.weight"):
    hf_gpt2.load_hf_gpt2(_copy_fixture(tmp_path / "d", untied))
  twice = {**t, "wte.weight": t["transformer.wte.weight"]}
  with pytest.raises(hf_gpt2.HFCheckpointError, match="tensor 'wte.weight' appears twice"):
    hf_gpt2.load_hf_gpt2(_copy_fixture(tmp_path / "e", twice))
  for d in "abcde":  # each case made its own directory
    assert (tmp_path / d / "ckpt").is_dir()


def test_loader_config_and_vocab_mismatch_reported_together(tmp_path):
  config = {**_config(), "vocab_size": 300, "n_positions": 32}
  with pytest.raises(hf_gpt2.HFCheckpointError) as e:
    hf_gpt2.load_hf_gpt2(_copy_fixture(tmp_path, config=config))
  msg = str(e.value)
  assert "'wte.weight' has shape (299, 32), expected (300, 32)" in msg
  assert "'wpe.weight' has shape (64, 32), expected (32, 32)" in msg


# --- tokenizer ----------------------------------------------------------------------------------------------


def test_tokenizer_matches_stored_hf_encoding(hf):
  tok = GPT2Tokenizer.from_dir(FIXTURE)
  text = str(hf["tok_text"])
  assert tok.encode(text) == hf["tok_ids"].tolist()
  assert tok.decode(tok.encode(text)) == text
  assert tok.eos_id == int(hf["eos_id"]) and tok.vocab_size == 299
  ids, mask = tok.encode_batch(["a dog", "the cat sat on"])
  assert ids.shape == mask.shape and mask[:, -1].all() and not mask[0, 0]
  assert ids[0, mask[0]].tolist() == tok.encode("a dog") and (ids[0, ~mask[0]] == tok.eos_id).all()


def test_tokenizer_live_parity_with_transformers(hf):
  transformers = pytest.importorskip("transformers")
  ref = transformers.GPT2TokenizerFast.from_pretrained(str(FIXTURE), local_files_only=True)
  tok = GPT2Tokenizer.from_dir(FIXTURE)
  for text in (str(hf["tok_text"]), "  leading spaces\nand\ttabs", "question: what is in the image? answer:",
               "\u00fcber \U0001f600 <|endoftext|><|endoftext|>x", ""):
    assert tok.encode(text) == ref.encode(text), text
    ids = ref.encode(text)
    assert tok.decode(ids) == ref.decode(ids)


def test_tokenizer_missing_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    GPT2Tokenizer.from_dir(tmp_path / "nope")
  shutil.copy(FIXTURE / "vocab.json", tmp_path)
  with pytest.raises(FileNotFoundError, match="lacks merges.txt"):
    GPT2Tokenizer.from_dir(tmp_path)
  shutil.copy(FIXTURE / "merges.txt", tmp_path)
  with pytest.raises(ValueError, match="'<eos>' is not in"):
    GPT2Tokenizer.from_dir(tmp_path, eos_token="<eos>")
  assert GPT2Tokenizer.from_dir(tmp_path, eos_token=None).eos_id is None


# --- benchmark ----------------------------------------------------------------------------------------------


def test_mmjax_bench_decode_smoke_writes_json(tmp_path, capsys):
  assert cli.main(["bench", "decode", "--smoke", "--out", str(tmp_path)]) == 0
  (path,) = tmp_path.glob("decode-*.json")
  doc = json.loads(path.read_text())
  (key, rec), = doc["results"].items()
  assert key.startswith("smoke") and "device_kind" in doc["machine"]
  assert rec["tokens_agree"] and set(rec["modes"]) == {"cached", "uncached"}
  for mode in rec["modes"].values():
    assert mode["tokens_per_s"] > 0 and mode["flops"] > 0 and mode["median_s"] > 0
  assert "tokens/s" in capsys.readouterr().out
