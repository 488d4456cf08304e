"""MMVAE (Shi et al., NeurIPS 2019) on digits_av: mixture-of-experts posterior, cross-reconstruction.

``FILE:runlocal`` shrinks the run to a few seconds. Not yet measured for the README (issue 5).
"""

from digits_common import generative


def get_config(arg=None):
  return generative("mmvae", arg, latent_dim=32)
