"""MMVAE — Variational Mixture-of-Experts Autoencoders for Multi-Modal Deep Generative Models
(Shi, Siddharth, Paige, Torr, NeurIPS 2019).

Joint posterior as a uniform mixture of the unimodal experts: ``q(z | X) = 1/M sum_m q_m(z | x_m)``.
Stratified estimator (sec. 3): every expert contributes its own samples ``z_m^k ~ q_m(z | x_m)``
(``k = 1..K``), each decoded to *every* modality (self- and cross-reconstruction), so

``L = 1/M sum_m iwae_k[ sum_{m'} lambda_{m'} ln p(x_{m'} | z_m^k) - beta (ln q(z_m^k | X) - ln p(z_m^k)) ]``

with ``ln q(z | X)`` the mixture density (:func:`~mmjax.models.vae_common.mixture_log_prob`); ``K = 1``
gives the stratified ELBO, ``K > 1`` the stratified IWAE bound. The objective itself is computed by the
``"vae"`` task.

Inputs: ``batch[m]`` (see :mod:`mmjax.models.vae_common`) and ``batch["_present"]`` optional: absent experts
leave the mixture, their terms and reconstructions do not count, and the remaining terms are averaged over
the present experts. Latent noise uses the ``"latent"`` rng in training; evaluation decodes each expert's
mean. Deviations: Gaussian prior and posteriors (the paper uses Laplace ones for MNIST-SVHN and CUB); no
DReG gradient estimator (plain reparameterised IWAE gradients); our shared encoders/decoders.
"""

from __future__ import annotations

import jax.numpy as jnp

from mmjax.models import vae_common as vc
from mmjax.models.registry import register


@register("mmvae")
class MMVAE(vc.MultimodalVAE):
  """Mixture-of-experts multimodal VAE; ``__call__`` returns ``(probe logits [B, C] or mu [B, Z], aux)``."""

  num_samples: int = 1  # K samples per expert; > 1 gives the stratified IWAE bound

  def posterior_mean(self, mus, logvars, present):
    """Mean of the uniform mixture of the present experts: the average of their means."""
    p = present.T[..., None].astype(jnp.float32)
    return (mus * p).sum(0) / jnp.maximum(p.sum(0), 1.0)

  def generate(self, z, likes: dict) -> dict:
    """Decode latents ``z [..., Z]`` (e.g. prior samples) to every modality in ``likes``."""
    return self.decode(z, likes)

  def __call__(self, batch: dict, *, train: bool):
    vc.check_inputs(self, batch, "mmvae")
    present = vc.present_mask(batch, self.modalities)  # [B, M]
    mus, logvars = self.encode(batch, train=train)  # [M, B, Z]
    if train:
      zs = vc.stratified_mixture_samples(self.make_rng("latent"), mus, logvars, self.num_samples)
    else:
      zs = mus[:, None]  # [M, 1, B, Z]
    likes = {m: batch[m] for m in self.modalities}
    n_present = jnp.maximum(present.sum(1).astype(jnp.float32), 1.0)
    terms = {}
    for i, m in enumerate(self.modalities):
      z = zs[i]  # [K, B, Z]
      log_q = vc.mixture_log_prob(z, mus, logvars, present.T)
      log_p = vc.gaussian_log_prob(z)
      terms[m] = {
          "recon": self.decode(z, likes),
          "recon_mask": {o: present[:, j] for j, o in enumerate(self.modalities)},
          "log_ratio": log_q - log_p,
          "weight": present[:, i].astype(jnp.float32) / n_present,
      }
    mixture_mean = self.posterior_mean(mus, logvars, present)
    aux = {"terms": terms, "weights": self.weights(likes), "mu": mixture_mean,
           "recon": self.decode(mixture_mean, likes)}  # at the mixture's mean, for recon_error
    return self.outputs(mixture_mean), aux
