"""TFN (Zadeh et al., EMNLP 2017) on digits_av: image, speech and text fused by the tensor product.

Subnetworks, chosen in the spirit of the paper (static features -> MLP, sequences -> LSTM): the 8x8 image
is flattened into a three-layer ReLU MLP (``"flat"``; the paper's visual/acoustic MLPs read time-averaged
features), the 80-step log-mel spectrogram and the 20 text tokens each go through their own one-layer
LSTM (the paper's language subnetwork; a time-averaged spectrogram would lose the digit's temporal shape).
Widths are kept modest so the fused tensor, (16 + 1)(32 + 1)(16 + 1) = 9,537 features, trains in a few
minutes on a CPU. Classification: ``output_dim = 10`` logits (``output_range = None``). 1,200 steps instead
of the shared 600 and dropout 0.3 (the PyTorch original's) instead of 0.1, both chosen on the validation
split: seed 0 reached 94.4 % after 600 steps, 96.1 % after 1,200 (a wider audio LSTM, 128 units with
dropout 0.2, 95.5 % after 600); with dropout 0.3 the final validation loss fell from 0.114 to 0.043 (seed
0) and from 0.168 to 0.087 (seed 1). LMF takes the same.

``FILE:image`` / ``:audio`` / ``:text`` trains on one modality; ``:runlocal`` shrinks the run to seconds.
"""

from digits_common import MODALITIES, VOCAB_SIZE, base, shrink, with_robustness

SUBNETS = {"image": "flat", "audio": "lstm", "text": "lstm"}
HIDDEN = {"image": 64, "audio": 64, "text": 32}
OUT = {"image": 16, "audio": 32, "text": 16}
STEPS = 1200  # chosen on the validation split (see above)


def model_kwargs(modalities=MODALITIES, dropout=0.1):
  """Per-modality subnetwork fields of TFN and LMF on digits_av (shared with configs/lmf_digits.py)."""
  return {"modalities": modalities, "subnets": tuple(SUBNETS[m] for m in modalities),
          "hidden_dims": tuple(HIDDEN[m] for m in modalities), "out_dims": tuple(OUT[m] for m in modalities),
          "dropouts": (dropout,) * len(modalities), "vocab_size": VOCAB_SIZE, "embed_dim": 32,
          "output_dim": 10, "output_range": None}


def apply_fusion_arg(c, arg):
  """A modality name and/or ``runlocal``, comma-separated."""
  for part in (arg or "").split(","):
    if part in MODALITIES:
      c.model.kwargs.update(model_kwargs((part,), c.model.kwargs.dropouts[0]))
    elif part == "runlocal":
      shrink(c)
      k = c.model.kwargs
      k.hidden_dims, k.out_dims, k.embed_dim = (8,) * len(k.modalities), (4,) * len(k.modalities), 8
    elif part:
      raise ValueError(f"unknown config argument {part!r}; use one of {MODALITIES} or 'runlocal'")
  return c


def get_config(arg=None):
  c = base()
  c.model.name = "tfn"
  c.model.kwargs = {**model_kwargs(dropout=0.3), "post_fusion_dim": 64, "post_fusion_dropout": 0.3}
  c.num_steps = STEPS
  return apply_fusion_arg(with_robustness(c), arg)
