"""MFM — Learning Factorized Multimodal Representations
(Tsai, Liang, Zadeh, Morency, Salakhutdinov, ICLR 2019).

Factorisation: one multimodal *discriminative* factor ``f_y`` shared by all modalities and one
modality-specific *generative* factor ``f_m`` per modality.

* Inference: a per-modality encoder gives ``h_m [B, W]`` (:class:`~mmjax.models.vae_common.ModalityEncoder`);
  ``f_m = MLP_m(h_m)`` and ``f_y = MLP_y(Dense([h_1; ...; h_M]))``, each MLP two ReLU layers.
* Generation: ``x_m ~ Dec_m([f_y ; f_m])``; the label is predicted from ``f_y`` alone.
* Objective (computed by the ``"vae"`` task, :mod:`mmjax.tasks.vae`):
  ``L = sum_m w_m * recon_m + w_y * disc(y, y_hat) + lambda * sum_f MMD(f, N(0, I))`` (``"kl"``:
  ``lambda * sum_f KL(q(f|X) || N(0, I))``, the paper's MFM_KL variant).
* Missing modalities: a surrogate network per modality regresses the missing modality's encoding ``h_m``
  from the observed ones (``S_m([h_{m'} * o_{m'}]_{m' != m}, o)``, ``o`` the observed flags); ``f_m``,
  ``f_y``, the reconstruction of ``x_m`` and the label then follow from the completed encodings. The
  surrogate is trained by regressing ``stop_gradient(h_m)`` whenever ``x_m`` is observed, with the other
  modalities randomly hidden from it (``surrogate_drop``) so it has seen every subset.

Deviations from the original code: transformer/MLP encoders and non-autoregressive MLP decoders stand in for
the LSTMs and the Memory Fusion Network; training is one stage (the original has two); the surrogate infers
``h_m`` (hence ``f_m``) rather than ``f_m`` directly, so ``f_y`` can also use it; classification uses
cross-entropy (``num_classes >= 2``), sentiment regression L1 (``num_classes = 1``, as in the paper).
Loss weights default to 0.1 (reconstruction and prior matching, as in the MOSI configuration).

Presence: ``batch["_present"]`` (see :func:`~mmjax.models.vae_common.present_mask`) marks the observed
modalities per example; absent modalities still need an array of their shape in the batch (e.g. zeros).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.errors import ConfigError
from mmjax.layers import axes
from mmjax.models import vae_common as vc
from mmjax.models.registry import register


class _MLP(nn.Module):
  """Two ReLU layers: ``[..., D] -> [..., out]`` (the paper's factor MLPs)."""

  hidden: int
  out: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = nn.relu(axes.dense(self.hidden, ("embed", "mlp"), dtype=self.dtype, name="hidden")(x))
    return axes.dense(self.out, ("mlp", "embed"), dtype=self.dtype, name="out")(x)


@register("mfm")
class MFM(nn.Module):
  """Multimodal Factorization Model; ``__call__`` returns ``(logits [B, C] or predictions [B], aux)``."""

  modalities: Sequence[str] = ("image", "audio", "text")
  image_modalities: Sequence[str] = ("image",)  # float [B, H, W] inputs given MLP encoders/decoders
  num_classes: int = 10  # 1 = regression (L1 loss), >= 2 = classification (cross-entropy)
  vocab_size: int = 0
  width: int = 64
  factor_dim: int = 32  # width of f_y and of each f_m
  num_layers: int = 1
  num_heads: int = 4
  dropout: float = 0.0
  prior_matching: str = "mmd"  # or "kl" (MFM_KL)
  recon_weight: float = 0.1
  prior_weight: float = 0.1
  label_weight: float = 1.0
  surrogate_weight: float = 1.0
  surrogate_drop: float = 0.5  # in training, each other modality is hidden from a surrogate with this rate
  attention: str = "xla"
  dtype: Any = jnp.float32  # compute dtype (config.precision); parameters stay float32
  remat: str = "none"  # rematerialise each encoder layer (config.remat; mmjax.layers.remat)

  def setup(self):
    if not self.modalities:
      raise ConfigError("MFM needs at least one modality")
    if self.prior_matching not in ("mmd", "kl"):
      raise ConfigError(f"prior_matching must be 'mmd' or 'kl'; got {self.prior_matching!r}")
    out = self.factor_dim * (2 if self.prior_matching == "kl" else 1)
    self.encoders, self.decoders = vc.modality_codecs(self)
    self.private_heads = {m: _MLP(self.width, out, self.dtype) for m in self.modalities}
    self.surrogates = {m: _MLP(self.width, self.width, self.dtype) for m in self.modalities}
    self.fusion = axes.dense(self.width, ("embed", "mlp"), dtype=self.dtype)
    self.shared_head = _MLP(self.width, out, self.dtype)
    self.classifier = _MLP(self.width, self.num_classes, self.dtype)

  def _kind(self, m):
    return vc.modality_kind(m, self.image_modalities)

  def _factor(self, out, train):
    """Head output -> ``(f, mu, logvar)``; deterministic factors for MMD, Gaussian ones for KL."""
    if self.prior_matching == "mmd":
      return out, out, None
    mu, logvar = jnp.split(out.astype(jnp.float32), 2, axis=-1)
    logvar = jnp.clip(logvar, *vc.LOGVAR_RANGE)
    f = vc.reparameterize(self.make_rng("latent"), mu, logvar) if train else mu
    return f, mu, logvar

  def encode(self, batch: dict, present=None, *, train: bool = False):
    """Encodings and factors. Returns a dict with ``h`` (``{m: [B, W]}`` as observed or inferred),
    ``surrogate`` (``{m: [B, W]}``), ``f_y``, ``f`` (``{m: f_m}``) and their ``mu``/``logvar``."""
    present = vc.present_mask(batch, self.modalities) if present is None else present
    h_obs = {}
    for m in self.modalities:
      x, mask = vc.modality_batch(batch, m)
      h_obs[m] = self.encoders[m](x, mask, train=train)
    visible = present
    if train and self.surrogate_drop > 0.0:
      keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - self.surrogate_drop, present.shape)
      visible = present & keep
    h, surrogate = {}, {}
    for i, m in enumerate(self.modalities):
      others = [h_obs[o] * visible[:, j, None] for j, o in enumerate(self.modalities) if o != m]
      flags = jnp.delete(visible, i, axis=1, assume_unique_indices=True).astype(h_obs[m].dtype)
      surrogate[m] = self.surrogates[m](jnp.concatenate([*others, flags], axis=-1))
      h[m] = jnp.where(present[:, i, None], h_obs[m], surrogate[m])
    f, mu, logvar = {}, {}, {}
    for m in self.modalities:
      f[m], mu[m], logvar[m] = self._factor(self.private_heads[m](h[m]), train)
    fused = nn.relu(self.fusion(jnp.concatenate([h[m] for m in self.modalities], axis=-1)))
    f_y, mu_y, logvar_y = self._factor(self.shared_head(fused), train)
    return {"h": h, "h_observed": h_obs, "surrogate": surrogate, "present": present, "f_y": f_y, "f": f,
            "mu_y": mu_y, "logvar_y": logvar_y, "mu": mu, "logvar": logvar}

  def decode(self, f_y, f: dict, likes: dict) -> dict:
    """``{m: reconstruction}`` of every modality in ``f`` from ``[f_y ; f_m]``; ``likes[m]`` gives its shape
    and dtype (an array, or a ``(shape, dtype)`` pair)."""
    return {m: self.decoders[m](jnp.concatenate([f_y, f_m], axis=-1), likes[m]) for m, f_m in f.items()}

  def predict(self, f_y):
    """Label logits ``[B, C]`` (or predictions ``[B]`` when ``num_classes == 1``) from ``f_y`` alone."""
    out = self.classifier(f_y).astype(jnp.float32)
    return out[:, 0] if self.num_classes == 1 else out

  def predict_missing(self, batch: dict, observed: Sequence[str]):
    """Label prediction and reconstructions of *all* modalities from the ``observed`` ones only.

    Returns ``(prediction, {m: reconstruction})``; the unobserved modalities' factors come from the
    surrogate networks. Inference mode (no sampling, no dropout).
    """
    unknown = set(observed) - set(self.modalities)
    if unknown or not observed:
      raise ValueError(f"observed must be a non-empty subset of {tuple(self.modalities)}; got {observed}")
    b = vc.check_inputs(self, batch, "mfm")
    present = jnp.broadcast_to(jnp.array([m in observed for m in self.modalities]), (b, len(self.modalities)))
    enc = self.encode(batch, present, train=False)
    recon = self.decode(enc["f_y"], enc["f"], {m: batch[m] for m in self.modalities})
    return self.predict(enc["f_y"]), recon

  def __call__(self, batch: dict, *, train: bool):
    vc.check_inputs(self, batch, "mfm")
    enc = self.encode(batch, train=train)
    present = enc["present"]
    recon = self.decode(enc["f_y"], enc["f"], {m: batch[m] for m in self.modalities})
    pred = self.predict(enc["f_y"])
    b = pred.shape[0]
    if self.prior_matching == "kl":
      log_ratio = vc.kl_standard_normal(enc["mu_y"], enc["logvar_y"])
      for m in self.modalities:
        log_ratio = log_ratio + vc.kl_standard_normal(enc["mu"][m], enc["logvar"][m])
      mmd_pairs = {}
    else:
      log_ratio = jnp.zeros((b,), jnp.float32)
      factors = {"f_y": enc["f_y"], **{f"f_{m}": enc["f"][m] for m in self.modalities}}
      rng = self.make_rng("latent") if train else jax.random.PRNGKey(0)
      mmd_pairs = {k: (v.astype(jnp.float32), jax.random.normal(jax.random.fold_in(rng, i), v.shape))
                   for i, (k, v) in enumerate(factors.items())}
    term = {
        "recon": {m: r[None] for m, r in recon.items()},
        "recon_mask": {m: present[:, i] for i, m in enumerate(self.modalities)},
        "log_ratio": log_ratio[None],
        "weight": jnp.ones((b,), jnp.float32),
    }
    regression = {
        f"surrogate_{m}": (enc["surrogate"][m], jax.lax.stop_gradient(enc["h_observed"][m]), present[:, i])
        for i, m in enumerate(self.modalities)
    }
    weights = {
        "recon": {m: self.recon_weight for m in self.modalities},
        "beta": self.prior_weight if self.prior_matching == "kl" else 0.0,
        "mmd": self.prior_weight,
        "label": self.label_weight,
        "regression": self.surrogate_weight,
    }
    aux = {"terms": {"joint": term}, "mmd": mmd_pairs, "regression": regression, "weights": weights,
           "f_y": enc["f_y"], "f": enc["f"], "recon": recon}
    return pred, aux
