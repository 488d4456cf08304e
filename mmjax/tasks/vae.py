"""The objective of the latent-variable models (MFM, MVAE, MMVAE), read from their ``aux``.

The models describe their objective; this task computes it. ``aux`` holds

* ``terms``: ``{name: term}``, each term one (importance-weighted) ELBO with ``K`` samples:
  ``recon {m: [K, B, ...]}`` (decoder outputs), ``recon_mask {m: [B]}`` (which reconstructions count),
  ``log_ratio [K, B]`` (``ln q(z|X) - ln p(z)`` at the samples, or the closed-form KL), ``weight [B]``.
  The term's bound per example is ``iwae_bound_k(sum_m w_m ln p(x_m | z_k) - beta * log_ratio_k)``
  (the plain ELBO when ``K = 1``).
* ``mmd``: ``{name: (samples [N, Z], prior samples [N, Z])}`` matched by MMD (MFM).
* ``regression``: ``{name: (prediction [B, D], target [B, D], weight [B])}`` squared-error terms
  (MFM's surrogate inference).
* ``weights``: ``recon {m: w_m}``, ``beta``, ``mmd``, ``label``, ``regression`` (floats).

Likelihoods: integer modalities are categorical (decoder logits, ``-ln p`` = cross-entropy); float ones are
Gaussian with unit variance (``ln p = -1/2 (x - mu)^2 - 1/2 ln 2 pi`` per element), or Bernoulli for
the modalities named in ``bernoulli`` (default ``("image",)``: ``ln p = x ln mu + (1 - x) ln(1 - mu)``
for intensities ``x`` in [0, 1], the usual choice for MNIST-like images, e.g. Wu & Goodman 2018).
``recon_error/m`` is the squared error (cross-entropy for tokens) whatever the likelihood, of
``aux["recon"]`` (the reconstruction at the model's joint posterior; else the first term's), so models
compare. Steps outside ``batch[m + "_mask"]`` do not count. The loss is

``-mean_B sum_terms weight * bound + mmd_w * sum MMD + regression_w * sum MSE + label_w * disc``

with ``disc`` the cross-entropy of ``outputs [B, C]`` against ``batch[label_key]`` (L1 for ``outputs
[B]``), skipped when the label weight is 0 or the batch has no label. ``metrics="mosi"`` adds the
sentiment metrics of :func:`mmjax.metrics.mosi_metrics` over whole splits (for ``outputs [B]``).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import optax

from mmjax.metrics import mosi_metrics
from mmjax.models import vae_common as vc
from mmjax.tasks import checks
from mmjax.tasks.classification import example_weights

BERNOULLI_EPS = 1e-6  # means are clipped to [eps, 1 - eps] inside the Bernoulli log-likelihood


def log_likelihood(pred, target, mask=None, kind: str = "gaussian"):
  """``(ln p(x | pred) [K, B], error [K, B], count [B])``: summed log-likelihood, summed per-element error
  (squared error or cross-entropy) and number of valid elements, for ``pred [K, B, ...]``. Integer
  targets are categorical; float ones ``kind="gaussian"`` (unit variance) or ``"bernoulli"``."""
  if jnp.issubdtype(target.dtype, jnp.integer):
    nll = optax.softmax_cross_entropy_with_integer_labels(pred, target[None].astype(jnp.int32))  # [K, B, T]
    err, ll = nll, -nll
  elif kind == "bernoulli":
    x = target[None].astype(jnp.float32)
    p = jnp.clip(pred, BERNOULLI_EPS, 1.0 - BERNOULLI_EPS)
    err = (pred - x) ** 2
    ll = x * jnp.log(p) + (1.0 - x) * jnp.log1p(-p)
  elif kind == "gaussian":
    err = (pred - target[None].astype(jnp.float32)) ** 2
    ll = -0.5 * err - 0.5 * vc.LOG_2PI
  else:
    raise ValueError(f"unknown likelihood {kind!r}; use 'gaussian' or 'bernoulli'")
  elem = jnp.ones(target.shape, jnp.float32)
  if mask is not None:
    m = mask.astype(jnp.float32).reshape(mask.shape + (1,) * (target.ndim - mask.ndim))
    elem = elem * m
  axes = tuple(range(2, err.ndim))
  elem_k = elem[None]
  return (ll * elem_k).sum(axes), (err * elem_k).sum(axes), elem.reshape(elem.shape[0], -1).sum(-1)


@dataclasses.dataclass(frozen=True)
class VAE:
  """Loss and metrics of a latent-variable model from its ``aux`` (see the module docstring)."""

  label_key: str = "label"
  metrics: str = ""  # or "mosi": split-level sentiment metrics of the predictions [B]
  bernoulli: tuple[str, ...] = ("image",)  # float modalities with a Bernoulli likelihood (means in (0, 1))

  def __post_init__(self):
    if self.metrics not in ("", "mosi"):
      raise ValueError(f"unknown vae metrics {self.metrics!r}; available: '', 'mosi'")

  def _per_example(self, outputs, aux, batch):
    """``{name: [B]}`` per-example quantities and ``{name: scalar}`` batch-level ones."""
    wts = aux["weights"]
    per, scalars = {}, {}
    total = 0.0
    for name, term in aux["terms"].items():
      ll = 0.0
      for m, pred in term["recon"].items():
        kind = "bernoulli" if m in tuple(self.bernoulli) else "gaussian"
        ll_m, err_m, n_m = log_likelihood(pred, batch[m], batch.get(f"{m}_mask"), kind)
        use = term["recon_mask"][m].astype(jnp.float32)
        ll = ll + wts["recon"][m] * ll_m * use[None]
        if name == next(iter(aux["terms"])):
          if "recon" in aux:  # the model's reconstruction at its joint posterior (comparable across models)
            err_m = log_likelihood(aux["recon"][m][None], batch[m], batch.get(f"{m}_mask"), kind)[1]
          per[f"recon_error/{m}"] = err_m.mean(0) * use / jnp.maximum(n_m, 1.0)
          per[f"recon_count/{m}"] = use
      bound = vc.iwae_bound(ll - wts["beta"] * term["log_ratio"], axis=0)
      per[f"elbo/{name}"] = bound
      per[f"prior/{name}"] = term["log_ratio"].mean(0)
      total = total + term["weight"] * bound
    per["objective"] = total
    if wts["label"] and self.label_key in batch:
      labels = batch[self.label_key]
      if outputs.ndim == 2:
        labels = labels.astype(jnp.int32)
        per["label_loss"] = optax.softmax_cross_entropy_with_integer_labels(outputs, labels)
        per["accuracy"] = (jnp.argmax(outputs, -1) == labels).astype(jnp.float32)
      else:
        per["label_loss"] = jnp.abs(outputs - labels.astype(jnp.float32))
    mmd_total = 0.0
    for name, (x, y) in aux.get("mmd", {}).items():
      d = vc.mmd(x, y)
      scalars[f"mmd/{name}"] = d
      mmd_total = mmd_total + d
    scalars["mmd"] = jnp.asarray(mmd_total, jnp.float32)
    reg_total = 0.0
    for name, (pred, target, w) in aux.get("regression", {}).items():
      w = w.astype(jnp.float32)
      err = ((pred.astype(jnp.float32) - target.astype(jnp.float32)) ** 2).mean(-1)
      r = (err * w).sum() / jnp.maximum(w.sum(), 1.0)
      scalars[f"regression/{name}"] = r
      reg_total = reg_total + r
    scalars["regression"] = jnp.asarray(reg_total, jnp.float32)
    return per, scalars

  def _loss_from(self, per, scalars, aux, w):
    n = jnp.maximum(w.sum(), 1.0)
    wts = aux["weights"]
    loss = -(per["objective"] * w).sum() / n
    loss = loss + wts["mmd"] * scalars["mmd"] + wts["regression"] * scalars["regression"]
    if "label_loss" in per:
      loss = loss + wts["label"] * (per["label_loss"] * w).sum() / n
    return loss

  def loss(self, outputs, aux, batch):
    """Scalar loss and metrics: ELBO terms, reconstruction errors per modality, prior matching, accuracy."""
    per, scalars = self._per_example(outputs, aux, batch)
    b = per["objective"].shape[0]
    w = example_weights(batch, b)
    loss = self._loss_from(per, scalars, aux, w)
    n = jnp.maximum(w.sum(), 1.0)
    metrics = {"loss": loss, **scalars}
    for k, v in per.items():
      if k.startswith("recon_count/"):
        continue
      if k.startswith("recon_error/"):
        c = per["recon_count/" + k.split("/", 1)[1]] * w
        metrics[k] = (v * w).sum() / jnp.maximum(c.sum(), 1.0)
      else:
        metrics[k] = (v * w).sum() / n
    return loss, metrics

  def eval_sums(self, outputs, aux, batch):
    """Sums over valid examples (batch-level MMD / regression terms weighted by the batch's count)."""
    per, scalars = self._per_example(outputs, aux, batch)
    w = example_weights(batch, per["objective"].shape[0])
    n = w.sum()
    sums = {"loss": self._loss_from(per, scalars, aux, w) * n}
    for k, v in per.items():
      sums[k] = (v * w).sum()
    for k, v in scalars.items():
      sums[k] = v * n
    sums["count"] = n
    return sums

  def eval_outputs(self, outputs, aux, batch):
    """Per-example predictions and labels when split-level metrics are asked for (else nothing)."""
    del aux
    if not self.metrics:
      return {}
    if outputs.ndim != 1:
      raise ValueError(f"metrics='mosi' needs predictions [B] (num_classes=1); got {outputs.shape}")
    return {"pred": outputs.astype(jnp.float32),
            "label": batch[self.label_key].reshape(outputs.shape[0]).astype(jnp.float32)}

  def summarize(self, arrays):
    """Sentiment metrics over a whole split (``metrics="mosi"``)."""
    return mosi_metrics(arrays["pred"], arrays["label"]) if self.metrics else {}

  def check_batch(self, batch: dict, outputs_shape: tuple) -> None:
    """The label, when the batch has one, of the real examples: class ids in ``[0, C)`` for outputs
    ``[B, C]``, finite values for predictions ``[B]``. A model without a label head (``num_classes=0``)
    outputs its latent mean ``[B, Z]``; its labels are read as classes of ``Z`` too, so give it
    ``task.kwargs.label_key=''`` when they do not fit."""
    if self.label_key not in batch:
      return
    labels = checks.labels_of(batch, self.label_key, "vae")
    if len(outputs_shape) == 1:
      checks.check_finite(np.asarray(labels, np.float64), key=self.label_key, task="vae")
      return
    fix = ("set model.kwargs.num_classes to at least {n} (a model without a label head, num_classes=0, "
           "takes no label: set task.kwargs.label_key='')")
    checks.check_class_ids(labels, int(outputs_shape[-1]), key=self.label_key, task="vae", fix=fix,
                           real_valued="set model.kwargs.num_classes=1")
