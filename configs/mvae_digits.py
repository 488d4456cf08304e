"""MVAE (Wu & Goodman, NeurIPS 2018) on digits_av: product-of-experts posterior with a prior expert.

``FILE:runlocal`` shrinks the run to a few seconds. Not yet measured for the README (issue 5).
"""

from digits_common import generative


def get_config(arg=None):
  return generative("mvae", arg, latent_dim=32)
