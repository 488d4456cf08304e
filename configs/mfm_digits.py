"""MFM (Tsai et al., ICLR 2019) on digits_av: a shared discriminative factor, one generative factor each.

Loss weights 0.1 and MMD prior matching as in the paper's MOSI setting; the 8x8 image has a Bernoulli
likelihood (the ``vae`` task's default). ``FILE:runlocal`` shrinks the run to a few seconds. Results: README.
"""

from digits_common import generative


def get_config(arg=None):
  return generative("mfm", arg, factor_dim=32, prior_matching="mmd", recon_weight=0.1, prior_weight=0.1)
