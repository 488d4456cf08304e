"""Early fusion on digits_av: the three modalities as one token sequence through one transformer.

``FILE:runlocal`` shrinks the run to a few seconds.
"""

from digits_common import MODALITIES, VOCAB_SIZE, apply_arg, base, with_robustness


def get_config(arg=None):
  c = base()
  c.model.name = "early_fusion"
  c.model.kwargs = {"num_classes": 10, "modalities": MODALITIES, "vocab_size": VOCAB_SIZE, "width": 64,
                    "num_layers": 2, "num_heads": 4, "dropout": 0.1}
  return apply_arg(with_robustness(c), arg)
