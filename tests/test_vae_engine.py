"""The generative models train through the whole engine (latent rng stream, vae task, evaluation)."""

import jax
import numpy as np

from mmjax.train import train_and_evaluate


def test_mfm_trains_and_evaluates_through_the_engine(tiny_config, tmp_path):
  config = tiny_config("mfm_digits", overrides=["checkpoint_every=0", "eval_every=0",
                                                "async_checkpoints=false"])
  final = train_and_evaluate(config, tmp_path, devices=jax.devices()[:1], echo=lambda *a: None)
  assert final["step"] == 6 and np.isfinite(final["train"]["loss"])
  for split in ("validation", "test"):
    assert np.isfinite(final[split]["loss"]) and 0.0 <= final[split]["accuracy"] <= 1.0
    assert any(k.startswith("mmd") for k in final[split])
