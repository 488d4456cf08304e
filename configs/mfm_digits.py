"""MFM (Tsai et al., ICLR 2019) on digits_av: a shared discriminative factor, one generative factor each.

Loss weights 0.1 and MMD prior matching as in the paper's MOSI setting. ``FILE:runlocal`` shrinks the run
to a few seconds. Not yet measured for the README (issue 5).
"""

from digits_common import generative


def get_config(arg=None):
  return generative("mfm", arg, factor_dim=32, prior_matching="mmd", recon_weight=0.1, prior_weight=0.1)
