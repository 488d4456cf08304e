"""Latent-variable models (MFM, MVAE, MMVAE), their shared math, and the "vae" task."""

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmjax import models, tasks
from mmjax.models import vae_common as vc

B = 4
MODALITIES = ("image", "audio", "text")


def fake_batch(seed=0):
  rng = np.random.default_rng(seed)
  return {
      "image": rng.random((B, 8, 8), np.float32),
      "audio": rng.standard_normal((B, 6, 40)).astype(np.float32),
      "audio_mask": np.arange(6)[None] < np.array([[6], [3], [4], [2]]),
      "text": rng.integers(0, 20, (B, 5)).astype(np.int32),
      "text_mask": np.arange(5)[None] < np.array([[5], [2], [4], [3]]),
      "label": np.array([0, 1, 2, 3], np.int32),
  }


def small(name, **kw):
  return models.build(name, {"vocab_size": 20, "width": 16, "num_heads": 2, "num_classes": 4, **kw})


def init(model, batch):
  rngs = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}
  return jax.jit(functools.partial(model.init, train=False))(rngs, batch)


RNGS = {"dropout": jax.random.PRNGKey(1), "latent": jax.random.PRNGKey(2)}


# ------------------------------------------------------------------------------------------------ math


def test_kl_matches_hand_computed_value():
  # KL(N(1, 2^2) || N(0, 1)) = 0.5 * (4 + 1 - 1 - ln 4)
  want = 0.5 * (4 + 1 - 1 - math.log(4))
  got = vc.kl_standard_normal(jnp.array([1.0]), jnp.array([math.log(4.0)]))
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # Two diagonal Gaussians: KL(N(1, 2^2) || N(-1, 3^2)) = ln(3/2) + (4 + 4) / 18 - 1/2
  got = vc.kl_diag_gaussians(jnp.array([1.0]), jnp.array([math.log(4.0)]), jnp.array([-1.0]),
                             jnp.array([math.log(9.0)]))
  np.testing.assert_allclose(got, math.log(1.5) + 8 / 18 - 0.5, rtol=1e-6)


def test_gaussian_log_prob_and_iwae_bound():
  x, mu, var = 0.3, -0.2, 2.5
  want = -0.5 * (math.log(2 * math.pi * var) + (x - mu) ** 2 / var)
  np.testing.assert_allclose(vc.gaussian_log_prob(jnp.array([x]), mu, math.log(var)), want, rtol=1e-6)
  lw = jnp.log(jnp.array([[1.0], [3.0]]))
  np.testing.assert_allclose(vc.iwae_bound(lw), [math.log(2.0)], rtol=1e-6)
  np.testing.assert_allclose(vc.iwae_bound(lw[:1]), lw[0], atol=1e-7)


def test_product_of_experts_closed_form_and_masking():
  mus = jnp.array([[[1.0]], [[3.0]]])  # [E=2, B=1, Z=1]
  var = jnp.array([[[2.0]], [[0.5]]])
  mu, logvar = vc.product_of_experts(mus, jnp.log(var))  # with the N(0, 1) prior expert
  t = 1 / 2.0 + 1 / 0.5 + 1.0
  np.testing.assert_allclose(mu, [[(1.0 / 2.0 + 3.0 / 0.5) / t]], rtol=1e-6)
  np.testing.assert_allclose(jnp.exp(logvar), [[1 / t]], rtol=1e-6)
  mu, logvar = vc.product_of_experts(mus, jnp.log(var), jnp.array([[True], [False]]), prior_expert=False)
  np.testing.assert_allclose(mu, [[1.0]], rtol=1e-5)
  np.testing.assert_allclose(jnp.exp(logvar), [[2.0]], rtol=1e-5)


def test_mixture_log_prob():
  mus = jnp.array([[[0.0]], [[2.0]]])
  logvars = jnp.zeros_like(mus)
  z = jnp.array([[0.5]])
  want = math.log(0.5 * math.exp(vc.gaussian_log_prob(z, 0.0)[0]) + 0.5 * math.exp(
      vc.gaussian_log_prob(z, 2.0)[0]))
  np.testing.assert_allclose(vc.mixture_log_prob(z, mus, logvars), [want], rtol=1e-6)
  only_first = vc.mixture_log_prob(z, mus, logvars, jnp.array([[True], [False]]))
  np.testing.assert_allclose(only_first, vc.gaussian_log_prob(z, 0.0), rtol=1e-6)
  samples = vc.stratified_mixture_samples(jax.random.PRNGKey(0), mus, logvars, 3)
  assert samples.shape == (2, 3, 1, 1)


def test_mmd_zero_for_identical_samples_and_grows_with_shift():
  x = jax.random.normal(jax.random.PRNGKey(0), (64, 4))
  assert abs(float(vc.mmd(x, x))) < 1e-6
  d = [float(vc.mmd(x, x + s)) for s in (0.5, 1.0, 2.0)]
  assert 0 < d[0] < d[1] < d[2]


# ----------------------------------------------------------------------------------------------- models


def test_mfm_factorization_shapes():
  model = small("mfm", factor_dim=8)
  batch = fake_batch()
  variables = init(model, batch)

  @jax.jit
  def run(variables):
    logits, aux = model.apply(variables, batch, train=True, rngs=RNGS)
    return logits, aux, tasks.get("vae").loss(logits, aux, batch)

  logits, aux, (loss, metrics) = run(variables)
  assert logits.shape == (B, 4) and aux["f_y"].shape == (B, 8)
  assert all(aux["f"][m].shape == (B, 8) for m in MODALITIES)
  assert aux["recon"]["image"].shape == (B, 8, 8)
  assert aux["recon"]["audio"].shape == (B, 6, 40)
  assert aux["recon"]["text"].shape == (B, 5, 20)
  assert np.isfinite(loss) and all(np.isfinite(v) for v in metrics.values())


@pytest.mark.parametrize("name", ["mfm", pytest.param("mvae", marks=pytest.mark.slow),
                                  pytest.param("mmvae", marks=pytest.mark.slow)])
def test_reconstruction_falls_on_a_tiny_batch(name):
  model = small(name)
  batch = fake_batch()
  task = tasks.get("vae")
  tx = optax.adam(3e-3)
  params = init(model, batch)["params"]
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, i):
    r = jax.random.fold_in(jax.random.PRNGKey(3), i)
    rngs = {"dropout": r, "latent": jax.random.fold_in(r, 1)}

    def loss_fn(p):
      out, aux = model.apply({"params": p}, batch, train=True, rngs=rngs)
      return task.loss(out, aux, batch)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics

  recon = []
  for i in range(30):
    params, opt_state, metrics = step(params, opt_state, i)
    assert np.isfinite(metrics["loss"])
    recon.append(sum(float(metrics[f"recon_error/{m}"]) for m in MODALITIES))
  assert recon[-1] < 0.8 * recon[0], recon


def test_mfm_predicts_from_every_subset_of_modalities():
  model = small("mfm")
  batch = fake_batch()
  variables = init(model, batch)
  apply = jax.jit(functools.partial(model.apply, train=False))
  subsets = [s for r in (1, 2, 3) for s in itertools.combinations(MODALITIES, r)]
  for observed in subsets:
    present = np.broadcast_to(np.array([m in observed for m in MODALITIES]), (B, 3))
    logits, aux = apply(variables, {**batch, "_present": present})
    assert logits.shape == (B, 4) and np.isfinite(logits).all(), observed
    assert all(np.isfinite(aux["recon"][m]).all() for m in MODALITIES)
    # An unobserved modality's contents do not matter: its factors come from the surrogate.
    scrambled = {**batch, "_present": present}
    for m in MODALITIES:
      if m not in observed:
        scrambled[m] = np.zeros_like(batch[m])
    np.testing.assert_allclose(apply(variables, scrambled)[0], logits, rtol=1e-5, atol=1e-6)
  pred, recon = model.apply(variables, batch, ("audio",), method=model.predict_missing)
  present = np.broadcast_to(np.array([False, True, False]), (B, 3))
  np.testing.assert_allclose(pred, apply(variables, {**batch, "_present": present})[0], rtol=1e-5, atol=1e-6)
  assert recon["image"].shape == (B, 8, 8)


@pytest.mark.parametrize("name", ["mvae", "mmvae"])
def test_absent_modalities_leave_the_posterior(name):
  model = small(name, num_classes=0)
  batch = fake_batch()
  variables = init(model, batch)
  present = np.broadcast_to(np.array([True, False, True]), (B, 3))

  @jax.jit
  def run(batch):
    mu, aux = model.apply(variables, batch, train=False)
    return mu, tasks.get("vae").loss(mu, aux, batch)[0]

  mu, loss = run({**batch, "_present": present})
  mu2, _ = run({**batch, "_present": present, "audio": np.zeros_like(batch["audio"])})
  assert mu.shape == (B, 32) and np.isfinite(loss)
  np.testing.assert_allclose(mu, mu2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["mvae", "mmvae"])
def test_predict_missing_generates_from_the_observed_experts_only(name):
  model = small(name, num_classes=0)
  batch = fake_batch()
  variables = init(model, batch)
  predict = jax.jit(functools.partial(model.apply, method=model.predict_missing), static_argnums=2)
  # Observing everything is the joint posterior of the forward pass.
  mu, recon = predict(variables, batch, MODALITIES)
  joint, aux = model.apply(variables, batch, train=False)
  np.testing.assert_allclose(mu, joint, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(recon["image"], aux["recon"]["image"], rtol=1e-5, atol=1e-6)
  # From speech alone: the image and text contents do not matter, and every modality is generated.
  mu_a, recon_a = predict(variables, batch, ("audio",))
  scrambled = {**batch, "image": np.zeros_like(batch["image"]), "text": np.zeros_like(batch["text"])}
  mu_b, recon_b = predict(variables, scrambled, ("audio",))
  np.testing.assert_allclose(mu_a, mu_b, rtol=1e-5, atol=1e-6)
  assert recon_a["image"].shape == (B, 8, 8) and recon_a["text"].shape == (B, 5, 20)
  np.testing.assert_allclose(recon_a["image"], recon_b["image"], rtol=1e-5, atol=1e-6)
  assert not np.allclose(mu_a, mu)
  with pytest.raises(ValueError, match="non-empty subset"):
    model.apply(variables, batch, ("depth",), method=model.predict_missing)


def test_vae_task_elbo_matches_a_hand_computed_value():
  """One example, one sample: ELBO = w * (ln p(image) + ln p(audio) + ln p(text)) - beta * log_ratio,
  with a Bernoulli image, a unit-variance Gaussian feature sequence (one padded step) and tokens."""
  image = np.array([[[0.0, 1.0], [0.25, 0.5]]], np.float32)  # [B=1, 2, 2]
  image_mean = np.array([[[0.1, 0.8], [0.5, 0.5]]], np.float32)
  audio = np.array([[[1.0, 2.0], [9.0, 9.0]]], np.float32)  # step 2 is padding
  audio_mean = np.array([[[0.5, 2.5], [0.0, 0.0]]], np.float32)
  text = np.array([[2, 0]], np.int32)
  text_logits = np.log(np.array([[[0.2, 0.3, 0.5], [0.6, 0.2, 0.2]]], np.float32))
  batch = {"image": image, "audio": audio, "audio_mask": np.array([[True, False]]), "text": text,
           "label": np.array([1], np.int32)}
  recon = {"image": image_mean[None], "audio": audio_mean[None], "text": text_logits[None]}
  aux = {"terms": {"joint": {"recon": recon, "recon_mask": {m: np.array([True]) for m in MODALITIES},
                             "log_ratio": np.array([[0.7]], np.float32), "weight": np.ones(1, np.float32)}},
         "weights": {"recon": {m: 0.5 for m in MODALITIES}, "beta": 2.0, "mmd": 0.0, "label": 0.0,
                     "regression": 0.0}}
  ll_image = sum(x * math.log(p) + (1 - x) * math.log(1 - p)
                 for x, p in zip(image.ravel(), image_mean.ravel(), strict=True))
  ll_audio = -0.5 * (0.5**2 + 0.5**2) - 2 * 0.5 * math.log(2 * math.pi)  # the padded step does not count
  ll_text = math.log(0.5) + math.log(0.6)
  elbo = 0.5 * (ll_image + ll_audio + ll_text) - 2.0 * 0.7
  loss, metrics = tasks.get("vae").loss(np.zeros((1, 4), np.float32), aux, batch)
  np.testing.assert_allclose(metrics["elbo/joint"], elbo, rtol=1e-5)
  np.testing.assert_allclose(loss, -elbo, rtol=1e-5)
  np.testing.assert_allclose(metrics["recon_error/audio"], 0.25, rtol=1e-6)  # mean over the valid elements
  np.testing.assert_allclose(metrics["recon_error/image"], np.mean((image - image_mean) ** 2), rtol=1e-6)
  # The same with a Gaussian image likelihood.
  ll_gauss = -0.5 * float(np.sum((image - image_mean) ** 2)) - 4 * 0.5 * math.log(2 * math.pi)
  _, metrics = tasks.get("vae", bernoulli=()).loss(np.zeros((1, 4), np.float32), aux, batch)
  np.testing.assert_allclose(metrics["elbo/joint"], 0.5 * (ll_gauss + ll_audio + ll_text) - 1.4, rtol=1e-5)


def test_likelihood_scales_balance_modalities_by_size():
  likes = {m: v for m, v in fake_batch().items() if m in MODALITIES}  # image 8x8, audio 6x40, text 5
  assert vc.likelihood_scales(likes, MODALITIES) == {"image": 240 / 64, "audio": 1.0, "text": 48.0}
  model = small("mvae", balance_likelihoods=True, recon_weight=0.5)
  batch = fake_batch()
  _, aux = model.apply(init(model, batch), batch, train=False)
  assert aux["weights"]["recon"] == {"image": 0.5 * 240 / 64, "audio": 0.5, "text": 24.0}
