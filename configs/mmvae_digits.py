"""MMVAE (Shi et al., NeurIPS 2019) on digits_av: mixture-of-experts posterior, cross-reconstruction.

Likelihoods are balanced by modality size (Shi et al., 2019, app. C), so the 80x40 speech frames do
not drown out the 8x8 image. ``FILE:runlocal`` shrinks the run to a few seconds.
"""

from digits_common import generative


def get_config(arg=None):
  return generative("mmvae", arg, latent_dim=32, balance_likelihoods=True)
