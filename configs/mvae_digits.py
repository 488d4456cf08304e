"""MVAE (Wu & Goodman, NeurIPS 2018): product-of-experts posterior with a prior expert, on digits_av.

First increment of issue 5: trains with the ``vae`` task (reconstruction of every modality, prior matching,
the label loss) on the digits_av settings of the other digits configs. ``FILE:runlocal`` shrinks the run
to a few seconds. Not yet measured for the README (see the issue notes).
"""

from digits_common import MODALITIES, VOCAB_SIZE, apply_arg, base


def get_config(arg=None):
  c = base()
  c.model.name = "mvae"
  c.model.kwargs = {"modalities": MODALITIES, "num_classes": 10, "vocab_size": VOCAB_SIZE, "width": 64,
                    "latent_dim": 32}
  c.task.name = "vae"
  return apply_arg(c, arg)
