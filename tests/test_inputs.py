"""Inputs checked at a model's entry and at the attention function: a mistake raises an InputError (a
UserError, so the CLI prints it without a traceback) that names the batch key or argument, the shapes, and
the fix. Abstract evaluation only (``jax.eval_shape``): the checks run at trace time."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import models
from mmjax.errors import InputError, UserError
from mmjax.layers import KernelUnavailableError, check_modalities, dot_product_attention
from tests.conftest import CONFIGS

B = 4
RNG = np.random.default_rng(0)
BATCH = {
    "image": RNG.random((B, 8, 8), np.float32),
    "audio": RNG.standard_normal((B, 12, 40)).astype(np.float32),
    "audio_mask": np.arange(12)[None] < np.array([[12], [7], [9], [3]]),
    "text": RNG.integers(2, 30, (B, 6)).astype(np.int32),
    "text_mask": np.arange(6)[None] < np.array([[6], [2], [4], [5]]),
}
MULT_BATCH = {
    "text": RNG.standard_normal((B, 6, 5)).astype(np.float32),
    "audio": RNG.standard_normal((B, 9, 4)).astype(np.float32),
    "vision": RNG.standard_normal((B, 7, 3)).astype(np.float32),
    "vision_mask": np.ones((B, 7), bool),
}
LM = {"vocab_size": 30, "n_positions": 32, "n_embd": 16, "n_layer": 1, "n_head": 2}
CAPTIONS = {"image": BATCH["image"], "caption_tokens": BATCH["text"],
            "caption_tokens_mask": BATCH["text_mask"]}


def small(name, **kw):
  if name == "mult":
    return models.build(name, {"width": 8, "num_heads": 2, "num_layers": 1, "kernel_sizes": (1, 2, 3), **kw})
  if name in ("frozen", "causal_lm"):
    return models.build(name, {"lm": LM, **({"vision_widths": (8,)} if name == "frozen" else {}), **kw})
  return models.build(name, {"vocab_size": 32, "width": 16, "num_heads": 2, **kw})


def apply(model, good, bad):
  """``model.apply`` on ``bad`` with (abstract) variables initialised on ``good`` (or given as ``good``)."""
  variables = good if "params" in good else jax.eval_shape(
      lambda b: model.init(jax.random.PRNGKey(0), b, train=False), good)
  return jax.eval_shape(
      lambda v, b: model.apply(v, b, train=False, rngs={"latent": jax.random.PRNGKey(0)}), variables, bad)


def raises(match):
  return pytest.raises(InputError, match=match)


def test_input_error_is_a_user_error_and_a_value_error():
  assert issubclass(InputError, UserError) and issubclass(InputError, ValueError)
  assert issubclass(KernelUnavailableError, UserError) and issubclass(KernelUnavailableError, ValueError)


@pytest.mark.parametrize("name", ["late_fusion", "early_fusion", "mfm", "mvae", "mmvae"])
def test_modalities_of_different_batch_sizes(name):
  bad = dict(BATCH, image=BATCH["image"][:3])
  with raises(rf"model '{name}': the modalities of the batch disagree in batch size .*"
              r"batch\['image'\] \[3, 8, 8\], batch\['audio'\] \[4, 12, 40\].*same number of examples"):
    apply(small(name), BATCH, bad)


def test_mult_modalities_of_different_batch_sizes_and_short_sequences():
  model = small("mult")
  variables = jax.eval_shape(lambda b: model.init(jax.random.PRNGKey(0), b, train=False), MULT_BATCH)
  apply(model, variables, MULT_BATCH)  # valid inputs pass
  with raises(r"model 'mult': .*disagree in batch size.*batch\['audio'\] \[2, 9, 4\]"):
    apply(model, variables, dict(MULT_BATCH, audio=MULT_BATCH["audio"][:2]))
  short = dict(MULT_BATCH, vision=MULT_BATCH["vision"][:, :2], vision_mask=MULT_BATCH["vision_mask"][:, :2])
  with raises(r"batch\['vision'\] \[4, 2, 3\] has 2 steps, fewer than its convolution's kernel size 3; .*"
              "model.kwargs.kernel_sizes"):
    apply(model, variables, short)
  with raises(r"batch\['vision_mask'\] has shape \[4, 6\] but batch\['vision'\] is \[4, 7, 3\]; the mask "
              r"must be \[B, T\] = \[4, 7\]"):
    apply(model, variables, dict(MULT_BATCH, vision_mask=np.ones((B, 6), bool)))
  with raises(r"batch\['text'\] holds token ids \(int32 \[4, 6\]\) but the model's text_vocab_size is 0; set "
              "model.kwargs.text_vocab_size"):
    apply(model, variables, dict(MULT_BATCH, text=np.ones((B, 6), np.int32)))


def test_wrong_masks_through_a_model():
  model = small("late_fusion")
  with raises(r"model 'late_fusion': batch\['audio_mask'\] has shape \[4, 10\] but batch\['audio'\] is "
              r"\[4, 12, 40\]; the mask must be \[B, T\] = \[4, 12\]"):
    apply(model, BATCH, dict(BATCH, audio_mask=BATCH["audio_mask"][:, :10]))
  with raises(r"batch\['audio_mask'\] is float32; a mask is bool \[B, T\].*mask > 0"):
    apply(model, BATCH, dict(BATCH, audio_mask=BATCH["audio_mask"].astype(np.float32)))
  with raises(r"batch\['text_mask'\] \[3, 6\]"):  # a mask of another batch size
    apply(model, BATCH, dict(BATCH, text_mask=BATCH["text_mask"][:3]))
  apply(model, BATCH, dict(BATCH, audio_mask=BATCH["audio_mask"].astype(np.int32)))  # 0/1 integers pass


def test_dtypes_and_ranks_of_modalities():
  model = small("late_fusion")
  with raises(r"model 'late_fusion' takes batch\['image'\] as token ids \[B, T\] \(integer\) or features "
              r"\[B, T, F\] \(float\); got uint8 \[4, 8, 8\]: .*pass features and images as floats"):
    apply(model, BATCH, dict(BATCH, image=(BATCH["image"] * 255).astype(np.uint8)))
  with raises(r"got float32 \[4, 12\]: give it the shape features \[B, T, F\]"):
    apply(model, BATCH, dict(BATCH, audio=BATCH["audio"][..., 0]))
  with raises(r"batch\['text'\] holds token ids .* vocab_size is 0; set model.kwargs.vocab_size"):
    apply(small("late_fusion", vocab_size=0), BATCH, BATCH)
  vae = small("mvae")
  with raises(r"model 'mvae' takes batch\['image'\] as images \[B, H, W\] \(float\); got float32 "
              r"\[4, 1, 8, 8\]"):
    apply(vae, BATCH, dict(BATCH, image=BATCH["image"][:, None]))
  with raises(r"batch\['_present'\] has shape \[3, 3\]; it must be \[B, M\] = \[4, 3\]"):
    apply(vae, BATCH, dict(BATCH, _present=np.ones((3, 3), bool)))


def test_missing_modalities_name_the_model_field():
  batch = {k: v for k, v in BATCH.items() if k != "audio"}
  with raises(r"model 'mvae' needs modality 'audio' but the batch has keys \[.*\]; add 'audio' to the batch, "
              r"or change model.kwargs.modalities \(now \('image', 'audio', 'text'\)\).*batch\['_present'\]"):
    apply(small("mvae"), BATCH, batch)
  with raises(r"model 'frozen' needs modality 'caption_tokens' .* change model.kwargs.text_key "
              r"\(now 'caption_tokens'\)"):
    apply(small("frozen"), CAPTIONS, {"image": BATCH["image"], "caption": BATCH["text"]})


def test_language_models_take_integer_tokens():
  for name in ("frozen", "causal_lm"):
    with raises(rf"model '{name}' takes batch\['caption_tokens'\] as token ids \[B, T\] \(integer\); got "
                r"float32 \[4, 6\]: pass the token ids as integers"):
      apply(small(name), CAPTIONS, dict(CAPTIONS, caption_tokens=BATCH["text"].astype(np.float32)))
  with raises(r"model 'causal_lm': .*batch\['caption_tokens_mask'\] \[2, 6\]"):
    apply(small("causal_lm"), CAPTIONS, dict(CAPTIONS, caption_tokens_mask=BATCH["text_mask"][:2]))


def test_attention_mask_and_lengths_arguments():
  q, k = jnp.zeros((2, 5, 4, 8)), jnp.zeros((2, 7, 4, 8))
  with raises(r"dot_product_attention: mask has shape \[2, 1, 1, 5\], which does not broadcast to "
              r"\[B, H, Lq, Lk\] = \[2, 4, 5, 7\] \(query \[2, 5, 4, 8\], key \[2, 7, 4, 8\]\)"):
    dot_product_attention(q, k, k, mask=jnp.ones((2, 1, 1, 5), bool))
  with raises(r"mask has shape \[1, 2, 4, 5, 7\]"):  # too many axes
    dot_product_attention(q, k, k, mask=jnp.ones((1, 2, 4, 5, 7), bool))
  with raises(r"mask is float32 \[2, 1, 5, 7\]; it must be bool .* not an additive bias"):
    dot_product_attention(q, k, k, mask=jnp.zeros((2, 1, 5, 7)))
  with raises(r"key_lengths has shape \[2, 1\]; it must be \[B\] = \[2\]"):
    dot_product_attention(q, k, k, key_lengths=jnp.ones((2, 1), jnp.int32))
  for mask in (jnp.ones((5, 7), bool), jnp.ones((2, 1, 1, 7), bool), jnp.ones((2, 4, 5, 7), jnp.int32)):
    assert jax.eval_shape(lambda m: dot_product_attention(q, k, k, mask=m), mask).shape == q.shape


def test_unknown_or_unavailable_kernel_through_a_model():
  with pytest.raises(KernelUnavailableError, match=r"unknown attention implementation 'foo'; available: .*"
                     r"'xla'.*'chunked', 'auto'\).*model.kwargs.attention"):
    apply(models.build("late_fusion", {"width": 16, "num_heads": 2, "vocab_size": 32, "attention": "foo"}),
          BATCH, BATCH)
  if jax.default_backend() != "gpu":
    image_only = models.build("late_fusion", {"width": 16, "num_heads": 2, "modalities": ("image",),
                                              "attention": "cudnn"})
    with pytest.raises(KernelUnavailableError, match=r"'cudnn' needs a GPU \(backend is 'cpu'\); kernels "
                       r"that can serve this call: \['xla', 'jax', 'chunked'\] \(or 'auto'\)"):
      apply(image_only, BATCH, BATCH)


def test_check_modalities_returns_the_batch_size():
  assert check_modalities(BATCH, ("image", "audio", "text"), model_name="m") == B


@pytest.mark.parametrize("override, expected", [
    ("--config.model.kwargs.attention=foo", "unknown attention implementation 'foo'; available:"),
    ("--config.model.kwargs.modalities=('image','smell')", "model 'late_fusion' needs modality 'smell'"),
], ids=["kernel", "modality"])
def test_the_cli_prints_input_errors_without_a_traceback(override, expected, data_dir, tmp_path, capsys):
  from mmjax.cli import main

  workdir = tmp_path / "w"
  config = f"{CONFIGS / 'late_fusion_digits.py'}:runlocal"
  code = main(["train", "--config", config, "--workdir", str(workdir), f"--config.data.data_dir={data_dir}",
               override])
  err = capsys.readouterr().err
  assert code == 2 and err.startswith("mmjax: error:") and "Traceback" not in err, err
  assert expected in " ".join(err.split()) and not workdir.exists()
