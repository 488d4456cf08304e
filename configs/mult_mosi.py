"""MulT (Tsai et al., ACL 2019) on MOSI with the paper's Table 5 hyperparameters.

Argument: ``aligned`` or ``unaligned`` (default), optionally ``,lonly`` / ``,aonly`` / ``,vonly``.
Data: the original preprocessed pickles, prepared once with
``mmjax data build cmu_mosi/unaligned --manual_dir DIR`` (see mult_common.py for deviations).
"""

from mult_common import get_mult_config


def get_config(arg=None):
  return get_mult_config("mosi", arg)
