"""MVAE — Multimodal Generative Models for Scalable Weakly-Supervised Learning (Wu & Goodman, NeurIPS 2018).

Joint posterior as a product of Gaussian experts with a prior expert (sec. 2):
``q(z | X) ∝ p(z) prod_{m observed} q_m(z | x_m)``, closed form in
:func:`~mmjax.models.vae_common.product_of_experts`. Training sub-samples ELBO terms (sec. 3):
``ELBO(X) + sum_m ELBO(x_m) + sum_{j=1..k} ELBO(X_j)`` with ``X_j`` random subsets, each
``ELBO(X_S) = E_{q(z|X_S)}[sum_{m in S} lambda_m ln p(x_m | z)] - beta KL(q(z|X_S) || p(z))``.
The objective itself is computed by the ``"vae"`` task.

Inputs: ``batch[m]`` (see :mod:`mmjax.models.vae_common`), ``batch["_present"]`` optional (absent
experts drop out of every product; their reconstructions do not count). Latent noise uses the ``"latent"``
rng in training; evaluation uses posterior means. Deviation: our encoders/decoders are the shared small
modules of ``vae_common`` (the paper uses MLP/CNN ones per dataset); random subsets draw each modality with
probability 1/2 per example (an empty draw gives the prior-only posterior, whose ELBO is 0).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mmjax.models import vae_common as vc
from mmjax.models.registry import register


@register("mvae")
class MVAE(vc.MultimodalVAE):
  """Product-of-experts multimodal VAE; ``__call__`` returns ``(probe logits [B, C] or mu [B, Z], aux)``."""

  unimodal_terms: bool = True  # add one ELBO per modality (the paper's sub-sampling)
  num_random_subsets: int = 0  # k random-subset ELBO terms per step

  def posterior(self, mus, logvars, present):
    """PoE posterior ``(mu, logvar) [B, Z]`` of the experts marked in ``present [B, M]``."""
    return vc.product_of_experts(mus, logvars, present.T, prior_expert=True)

  def posterior_mean(self, mus, logvars, present):
    """Mean of the product of the present experts and the prior expert."""
    return self.posterior(mus, logvars, present)[0]

  def generate(self, z, likes: dict) -> dict:
    """Decode latents ``z [..., Z]`` (e.g. prior samples) to every modality in ``likes``."""
    return self.decode(z, likes)

  def __call__(self, batch: dict, *, train: bool):
    vc.check_inputs(self, batch, "mvae")
    present = vc.present_mask(batch, self.modalities)
    mus, logvars = self.encode(batch, train=train)
    likes = {m: batch[m] for m in self.modalities}
    subsets = {"joint": present}
    if self.unimodal_terms and len(self.modalities) > 1:
      for i, m in enumerate(self.modalities):
        subsets[m] = present & (jnp.arange(len(self.modalities)) == i)[None]
    if self.num_random_subsets and train:
      rng = self.make_rng("latent")
      for j in range(self.num_random_subsets):
        draw = jax.random.bernoulli(jax.random.fold_in(rng, 10_000 + j), 0.5, present.shape)
        subsets[f"subset_{j}"] = present & draw
    rng = self.make_rng("latent") if train else None
    terms, joint_mu = {}, None
    for k, (name, sub) in enumerate(subsets.items()):
      mu, logvar = self.posterior(mus, logvars, sub)
      joint_mu = mu if joint_mu is None else joint_mu
      z = vc.reparameterize(jax.random.fold_in(rng, k), mu, logvar, 1) if train else mu[None]
      terms[name] = {
          "recon": self.decode(z, likes),
          "recon_mask": {m: sub[:, i] for i, m in enumerate(self.modalities)},
          "log_ratio": vc.kl_standard_normal(mu, logvar)[None],
          "weight": jnp.ones(mu.shape[:1], jnp.float32),
      }
    aux = {"terms": terms, "weights": self.weights(likes), "mu": joint_mu,
           "recon": {m: r[0] for m, r in terms["joint"]["recon"].items()}}
    return self.outputs(joint_mu), aux
