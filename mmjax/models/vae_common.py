"""Shared math and building blocks of the latent-variable models (MFM, MVAE, MMVAE).

Math (pure functions; ``Z`` is the latent width, reductions run over the last axis):

* :func:`reparameterize` — ``z = mu + exp(logvar / 2) * eps``, ``eps ~ N(0, I)`` (Kingma & Welling, 2014).
* :func:`kl_diag_gaussians` — ``KL(N(mu_q, s_q^2) || N(mu_p, s_p^2)) = 1/2 sum_d [s_q^2 / s_p^2
  + (mu_q - mu_p)^2 / s_p^2 - 1 + ln s_p^2 - ln s_q^2]``; :func:`kl_standard_normal` is the case
  ``mu_p = 0, s_p = 1``: ``1/2 sum_d [s^2 + mu^2 - 1 - ln s^2]``.
* :func:`gaussian_log_prob` — ``ln N(x; mu, s^2) = -1/2 sum_d [ln 2 pi + ln s^2 + (x - mu)^2 / s^2]``.
* :func:`product_of_experts` — Wu & Goodman (2018), sec. 2: a product of Gaussian experts is Gaussian with
  precision ``T = sum_i T_i`` (``T_i = 1 / s_i^2``) and mean ``mu = sum_i mu_i T_i / T``; the prior expert
  ``N(0, I)`` adds ``T_0 = 1`` and nothing to the numerator. Absent experts get ``T_i = 0``.
* :func:`mixture_log_prob`, :func:`stratified_mixture_samples`, :func:`sample_mixture` — the uniform
  mixture of experts ``q(z|X) = 1/M sum_m q_m(z|x_m)`` of Shi et al. (2019); the stratified estimator draws
  from *every* expert (each component contributes its own term) instead of picking one at random.
* :func:`gaussian_kernel` and :func:`mmd` — ``k(x, y) = exp(-mean_d (x_d - y_d)^2 / scale)`` as in the MFM
  code (``scale = 1``; some InfoVAE-style code also divides by ``Z``: pass ``scale=Z``), and the *biased*
  (V-statistic) estimator ``MMD^2 = mean_ij k(x_i, x_j) + mean_ij k(y_i, y_j) - 2 mean_ij k(x_i, y_j)``,
  diagonal terms included; it is >= 0 and exactly 0 for identical sample sets.
* :func:`iwae_bound` — ``ln 1/K sum_k w_k`` computed as ``logsumexp_k ln w_k - ln K`` (Burda et al., 2016);
  with ``K = 1`` it is the ordinary ELBO.

Modules for our batches (``batch[m]`` is ``[B, T, F]`` floats, ``[B, T]`` token ids or ``[B, H, W]``
images): :class:`ModalityEncoder` (a mean-pooled pre-LN transformer for sequences and tokens, an MLP for
images) and :class:`ModalityDecoder` (latent ``[..., Z]`` -> ``[..., T, F]`` features, ``[..., T, V]``
token logits, or ``[..., H, W]`` image means in (0, 1)). Decoders accept any leading axes, so a stack of
``K`` latent samples ``[K, B, Z]`` decodes in one call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.errors import ConfigError, InputError
from mmjax.layers import Encoder, SequenceEmbed, axes, masked_mean, sinusoidal_positions
from mmjax.layers.inputs import check_modalities, shape_str

LOG_2PI = math.log(2.0 * math.pi)
LOGVAR_RANGE = (-8.0, 8.0)  # encoders clip log-variances to this range for numerical safety


# ----------------------------------------------------------------------------------------------- math


def reparameterize(rng: jax.Array, mu: jax.Array, logvar: jax.Array, num_samples: int | None = None):
  """A sample ``mu + exp(logvar / 2) * eps``; ``[K, *mu.shape]`` when ``num_samples=K`` is given."""
  shape = mu.shape if num_samples is None else (num_samples, *mu.shape)
  eps = jax.random.normal(rng, shape, mu.dtype)
  return mu + jnp.exp(0.5 * logvar) * eps


def kl_diag_gaussians(mu_q, logvar_q, mu_p=0.0, logvar_p=0.0) -> jax.Array:
  """``KL(q || p)`` of two diagonal Gaussians, summed over the last axis (see the module docstring)."""
  return 0.5 * jnp.sum(
      jnp.exp(logvar_q - logvar_p) + (mu_q - mu_p) ** 2 * jnp.exp(-logvar_p) - 1.0 + logvar_p - logvar_q,
      axis=-1,
  )


def kl_standard_normal(mu, logvar) -> jax.Array:
  """``KL(N(mu, exp(logvar)) || N(0, I))`` summed over the last axis."""
  return kl_diag_gaussians(mu, logvar)


def gaussian_log_prob(x, mu=0.0, logvar=0.0) -> jax.Array:
  """``ln N(x; mu, diag exp(logvar))`` summed over the last axis."""
  logvar = jnp.broadcast_to(logvar, jnp.broadcast_shapes(jnp.shape(x), jnp.shape(mu), jnp.shape(logvar)))
  return -0.5 * jnp.sum(LOG_2PI + logvar + (x - mu) ** 2 * jnp.exp(-logvar), axis=-1)


def product_of_experts(mus, logvars, present=None, *, prior_expert: bool = True, eps: float = 1e-8):
  """Product of Gaussian experts ``mus, logvars [E, ..., Z]`` -> ``(mu, logvar) [..., Z]``.

  ``present [E, ...]`` (bool, optional) removes absent experts (their precision is set to zero).
  ``prior_expert`` multiplies in ``N(0, I)``; without it, an example with no expert gets precision ``eps``.
  """
  precision = jnp.exp(-logvars)
  if present is not None:
    precision = precision * present[..., None].astype(precision.dtype)
  total = precision.sum(axis=0) + (1.0 if prior_expert else eps)
  mu = (mus * precision).sum(axis=0) / total
  return mu, -jnp.log(total)


def mixture_log_prob(z, mus, logvars, present=None) -> jax.Array:
  """``ln q(z)`` under the uniform mixture of the present experts.

  ``z [..., B, Z]`` (any leading sample axes), ``mus, logvars [E, B, Z]``, ``present [E, B]`` bool ->
  ``[..., B]``: ``logsumexp_e (ln q_e(z) + ln w_e)`` with ``w_e = present_e / sum_e present_e``.
  """
  extra = z.ndim - mus.ndim + 1  # number of leading sample axes of z
  expand = lambda t: t.reshape(t.shape[:1] + (1,) * extra + t.shape[1:])
  log_q = gaussian_log_prob(z[None], expand(mus), expand(logvars))  # [E, ..., B]
  e = mus.shape[0]
  if present is None:
    log_w = jnp.full((e, mus.shape[1]), -math.log(e))
  else:
    p = present.astype(jnp.float32)
    log_w = jnp.where(present, -jnp.log(jnp.maximum(p.sum(0, keepdims=True), 1.0)), -jnp.inf)
  return jax.nn.logsumexp(log_q + expand(log_w), axis=0)


def stratified_mixture_samples(rng: jax.Array, mus, logvars, num_samples: int = 1) -> jax.Array:
  """``K`` reparameterised samples from *every* expert: ``mus [E, B, Z]`` -> ``[E, K, B, Z]``."""
  z = reparameterize(rng, mus, logvars, num_samples)  # [K, E, B, Z]
  return jnp.moveaxis(z, 0, 1)


def sample_mixture(rng: jax.Array, mus, logvars, present=None) -> jax.Array:
  """One sample per example from the uniform mixture of present experts: ``[E, B, Z]`` -> ``[B, Z]``."""
  r_pick, r_eps = jax.random.split(rng)
  e, b = mus.shape[:2]
  logits = jnp.zeros((b, e)) if present is None else jnp.where(present.T, 0.0, -jnp.inf)
  pick = jax.random.categorical(r_pick, logits, axis=-1)  # [B]
  mu = jnp.take_along_axis(mus, pick[None, :, None], axis=0)[0]
  logvar = jnp.take_along_axis(logvars, pick[None, :, None], axis=0)[0]
  return reparameterize(r_eps, mu, logvar)


def gaussian_kernel(x, y, scale: float = 1.0) -> jax.Array:
  """``k(x_i, y_j) = exp(-mean_d (x_id - y_jd)^2 / scale)`` for ``x [N, Z]``, ``y [M, Z]`` -> ``[N, M]``."""
  d2 = jnp.mean((x[:, None, :] - y[None, :, :]) ** 2, axis=-1)
  return jnp.exp(-d2 / scale)


def mmd(x, y, scale: float = 1.0) -> jax.Array:
  """Squared MMD between samples ``x [N, Z]`` and ``y [M, Z]``, biased V-statistic (diagonals included)."""
  return (gaussian_kernel(x, x, scale).mean() + gaussian_kernel(y, y, scale).mean()
          - 2.0 * gaussian_kernel(x, y, scale).mean())


def iwae_bound(log_weights, axis: int = 0) -> jax.Array:
  """``logsumexp(log_weights, axis) - ln K``: the importance-weighted bound; the ELBO when ``K = 1``."""
  k = log_weights.shape[axis]
  return jax.nn.logsumexp(log_weights, axis=axis) - math.log(k)


# -------------------------------------------------------------------------------------------- modules


def modality_kind(modality: str, image_modalities) -> str:
  """``"image"`` for modalities named in ``image_modalities`` (MLP encoder/decoder), else ``"sequence"``
  (transformer encoder, per-step MLP decoder; token ids or ``[B, T, F]`` features)."""
  return "image" if modality in tuple(image_modalities) else "sequence"


class ModalityEncoder(nn.Module):
  """One modality -> a summary ``[B, width]``.

  Sequences and tokens: :class:`SequenceEmbed` + a pre-LN transformer, mean-pooled over valid steps.
  Images ``[B, H, W]``: flattened and passed through a two-layer ReLU MLP.
  """

  width: int = 64
  kind: str = "sequence"  # or "image"; token modalities are recognised by their integer dtype
  vocab_size: int = 0
  num_layers: int = 1
  num_heads: int = 4
  dropout: float = 0.0
  attention: str = "xla"
  dtype: Any = jnp.float32
  remat: str = "none"

  @nn.compact
  def __call__(self, x, mask=None, *, train: bool):
    if self.kind == "image":
      h = x.reshape(x.shape[0], -1).astype(self.dtype)
      h = nn.relu(axes.dense(self.width, ("features", "mlp"), dtype=self.dtype, name="hidden")(h))
      return axes.dense(self.width, ("mlp", "embed"), dtype=self.dtype, name="out")(h)
    h = SequenceEmbed(self.width, self.vocab_size, self.dtype, name="embed")(x)
    h = Encoder(self.num_layers, self.num_heads, 2, self.dropout, 0.0, self.attention, self.dtype,
                self.remat, name="encoder")(h, mask=mask, train=train)
    return masked_mean(h, mask)


class ModalityDecoder(nn.Module):
  """Latent ``z [..., Z]`` -> a reconstruction shaped like the modality.

  ``like`` is the modality's batch array or a ``(shape, dtype)`` pair: integer ``[B, T]`` token ids give
  ``[..., T, vocab_size]`` logits; float ``[B, T, F]`` gives ``[..., T, F]`` Gaussian means; with
  ``kind="image"``, ``[B, H, W]`` gives ``[..., H, W]`` means in (0, 1). Sequences are generated
  non-autoregressively: the latent, broadcast over time, plus a projection of sinusoidal positions,
  through a two-layer ReLU MLP applied at every step.
  """

  width: int = 64
  kind: str = "sequence"  # or "image"; token modalities are recognised by their integer dtype
  vocab_size: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z, like):
    shape, dtype = (like.shape, like.dtype) if hasattr(like, "shape") else like
    shape = tuple(shape)
    h = nn.relu(axes.dense(self.width, ("features", "embed"), dtype=self.dtype, name="latent")(z))
    if self.kind == "image":
      h = nn.relu(axes.dense(self.width, ("embed", "mlp"), dtype=self.dtype, name="hidden")(h))
      out = axes.dense(shape[1] * shape[2], ("mlp", "features"), dtype=self.dtype, name="out")(h)
      return jax.nn.sigmoid(out.astype(jnp.float32)).reshape(*z.shape[:-1], shape[1], shape[2])
    length = shape[1]
    pos = axes.dense(self.width, ("features", "embed"), dtype=self.dtype, name="positions")(
        sinusoidal_positions(length, self.width).astype(self.dtype))  # [T, width]
    h = nn.relu(h[..., None, :] + pos)  # [..., T, width]
    h = nn.relu(axes.dense(self.width, ("embed", "mlp"), dtype=self.dtype, name="hidden")(h))
    if jnp.issubdtype(dtype, jnp.integer):
      if self.vocab_size <= 0:
        raise ConfigError("token modalities need vocab_size > 0 (set the model's vocab_size)")
      out = axes.dense(self.vocab_size, ("mlp", "vocab"), dtype=self.dtype, name="out")(h)
    else:
      out = axes.dense(shape[2], ("mlp", "features"), dtype=self.dtype, name="out")(h)
    return out.astype(jnp.float32)


class GaussianHead(nn.Module):
  """``h [..., D]`` -> ``(mu, logvar) [..., Z]`` through a two-layer ReLU MLP; log-variance clipped."""

  latent_dim: int
  hidden: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h):
    h = nn.relu(axes.dense(self.hidden, ("embed", "mlp"), dtype=self.dtype, name="hidden")(h))
    out = axes.dense(2 * self.latent_dim, ("mlp", "features"), dtype=self.dtype, name="out")(h)
    mu, logvar = jnp.split(out.astype(jnp.float32), 2, axis=-1)
    return mu, jnp.clip(logvar, *LOGVAR_RANGE)


def present_mask(batch: dict, modalities) -> jax.Array:
  """``[B, M]`` bool: which modalities each example observes.

  From ``batch["_present"]``: a ``[B, M]`` or ``[M]`` bool array in the order of ``modalities``, or a
  dict ``modality -> [B]`` bool (missing keys = present). All present when the key is absent.
  """
  b = batch[modalities[0]].shape[0]
  p = batch.get("_present")
  if p is None:
    return jnp.ones((b, len(modalities)), bool)
  if isinstance(p, dict):
    cols = [jnp.broadcast_to(jnp.asarray(p.get(m, True), bool), (b,)) for m in modalities]
    return jnp.stack(cols, axis=1)
  p = jnp.asarray(p, bool)
  if p.ndim > 2 or p.shape[-1:] != (len(modalities),) or p.shape[:-1] not in ((), (1,), (b,)):
    want = shape_str((b, len(modalities)))
    raise InputError(
        f"batch['_present'] has shape {shape_str(p.shape)}; it must be [B, M] = {want} (or [M]), one bool "
        f"column per modality of the model, in the order {tuple(modalities)}"
    )
  return jnp.broadcast_to(p, (b, len(modalities)))


def likelihood_scales(likes: dict, modalities) -> dict:
  """``{m: D_max / D_m}`` with ``D_m`` the number of elements of one example of modality ``m`` (padded
  length x features; tokens count one per step): the likelihood scaling of Shi et al. (2019, app. C), which
  keeps a high-dimensional modality (speech frames) from drowning out a small one (an 8x8 image)."""
  def elements(like):
    shape = like.shape if hasattr(like, "shape") else like[0]
    return math.prod(shape[1:])

  dims = {m: elements(likes[m]) for m in modalities}
  top = max(dims.values())
  return {m: top / d for m, d in dims.items()}


def check_inputs(model, batch: dict, model_name: str) -> int:
  """:func:`~mmjax.layers.inputs.check_modalities` for a latent-variable model (its ``modalities``,
  ``image_modalities`` and ``vocab_size``); returns ``B``."""
  kinds = {m: "image" if modality_kind(m, model.image_modalities) == "image" else "sequence"
           for m in model.modalities}
  return check_modalities(
      batch, model.modalities, model_name=model_name, kinds=kinds, vocab_size=model.vocab_size,
      missing_hint="; an absent modality still needs an array of its shape (e.g. zeros) with "
      "batch['_present'] marking it missing",
  )


def modality_batch(batch: dict, modality: str):
  """``(inputs, mask_or_None)`` of ``modality``; a clear error when the batch lacks it."""
  if modality not in batch:
    raise KeyError(
        f"the model needs modality {modality!r} but the batch has keys {sorted(batch)}; an absent modality "
        "still needs an array of its shape (e.g. zeros) with batch['_present'] marking it missing"
    )
  return batch[modality], batch.get(f"{modality}_mask")


def modality_codecs(model) -> tuple[dict, dict]:
  """``({m: ModalityEncoder}, {m: ModalityDecoder})`` for a model's ``modalities``, built from its fields
  (``width``, ``vocab_size``, ``num_layers``, ``num_heads``, ``dropout``, ``attention``, ``dtype``,
  ``remat``, ``image_modalities``); call it inside the model's ``setup``."""
  common = dict(width=model.width, vocab_size=model.vocab_size, dtype=model.dtype)
  encoders, decoders = {}, {}
  for m in model.modalities:
    kind = modality_kind(m, model.image_modalities)
    encoders[m] = ModalityEncoder(kind=kind, num_layers=model.num_layers, num_heads=model.num_heads,
                                  dropout=model.dropout, attention=model.attention, remat=model.remat,
                                  **common)
    decoders[m] = ModalityDecoder(kind=kind, **common)
  return encoders, decoders


class MultimodalVAE(nn.Module):
  """Shared body of MVAE and MMVAE: per-modality Gaussian encoders ``q_m(z | x_m)`` and decoders
  ``p(x_m | z)``, and a linear *latent probe* predicting the label from ``stop_gradient(z)`` (the latent
  classification accuracy these toolkits report; it does not shape the latent space)."""

  modalities: Sequence[str] = ("image", "audio", "text")
  image_modalities: Sequence[str] = ("image",)
  num_classes: int = 10  # classes of the latent probe; 0 = no probe (outputs are the posterior mean)
  vocab_size: int = 0
  width: int = 64
  latent_dim: int = 32
  num_layers: int = 1
  num_heads: int = 4
  dropout: float = 0.0
  recon_weight: float = 1.0
  balance_likelihoods: bool = False  # scale ln p(x_m | z) by D_max / D_m (D: elements per example)
  beta: float = 1.0  # weight of the KL / log-ratio term
  probe_weight: float = 1.0
  attention: str = "xla"
  dtype: Any = jnp.float32  # compute dtype (config.precision); parameters stay float32
  remat: str = "none"  # rematerialise each encoder layer (config.remat; mmjax.layers.remat)

  def setup(self):
    if not self.modalities:
      raise ConfigError(f"{type(self).__name__} needs at least one modality")
    self.encoders, self.decoders = modality_codecs(self)
    self.heads = {m: GaussianHead(self.latent_dim, self.width, self.dtype) for m in self.modalities}
    if self.num_classes:
      self.probe = axes.dense(self.num_classes, (None, "features"), dtype=self.dtype)

  def encode(self, batch: dict, *, train: bool = False):
    """Unimodal posteriors: ``(mus, logvars) [M, B, Z]`` in the order of ``modalities``."""
    stats = []
    for m in self.modalities:
      x, mask = modality_batch(batch, m)
      stats.append(self.heads[m](self.encoders[m](x, mask, train=train)))
    return jnp.stack([s[0] for s in stats]), jnp.stack([s[1] for s in stats])

  def decode(self, z, likes: dict) -> dict:
    """``{m: reconstruction [..., *shape]}`` from ``z [..., Z]`` for every modality in ``likes``."""
    return {m: self.decoders[m](z, like) for m, like in likes.items()}

  def outputs(self, mu):
    """Probe logits ``[B, C]`` from ``stop_gradient(mu)``, or ``mu`` itself without a probe."""
    if not self.num_classes:
      return mu
    return self.probe(jax.lax.stop_gradient(mu)).astype(jnp.float32)

  def posterior_mean(self, mus, logvars, present):
    """Mean ``[B, Z]`` of the joint posterior of the experts marked in ``present [B, M]`` (per model)."""
    raise NotImplementedError

  def predict_missing(self, batch: dict, observed: Sequence[str]):
    """Outputs and reconstructions of *all* modalities from the ``observed`` ones only: the joint
    posterior of the observed experts, decoded at its mean (inference mode). Cross-modal generation
    (e.g. ``observed=("audio",)`` gives images generated from speech). Returns
    ``(outputs, {m: reconstruction})``."""
    unknown = set(observed) - set(self.modalities)
    if unknown or not observed:
      raise ValueError(f"observed must be a non-empty subset of {tuple(self.modalities)}; got {observed}")
    b = check_inputs(self, batch, type(self).__name__.lower())
    present = jnp.broadcast_to(jnp.array([m in observed for m in self.modalities]), (b, len(self.modalities)))
    mus, logvars = self.encode(batch, train=False)
    mu = self.posterior_mean(mus, logvars, present)
    return self.outputs(mu), self.decode(mu, {m: batch[m] for m in self.modalities})

  def weights(self, likes: dict) -> dict:
    """The objective's weights (see :mod:`mmjax.tasks.vae`); ``likes`` gives the modalities' shapes."""
    recon = {m: self.recon_weight for m in self.modalities}
    if self.balance_likelihoods:
      scales = likelihood_scales(likes, self.modalities)
      recon = {m: w * scales[m] for m, w in recon.items()}
    return {"recon": recon, "beta": self.beta, "mmd": 0.0,
            "label": self.probe_weight if self.num_classes else 0.0, "regression": 0.0}
