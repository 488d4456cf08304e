"""MCTN (Pham et al., AAAI 2019) on digits_av: predicts from the SOURCE modality alone; the others are
translation targets in training only.

Default: source ``audio`` (the strongest single modality, 94.1 % for the unimodal late-fusion baseline;
MCTN reads only its source at test time, so a text source would be capped near text's 35.9 %), cyclic
translation audio -> image -> audio, then the hierarchical level joint -> text. Its baseline is therefore
``late_fusion_digits.py:audio``, not late fusion of all three modalities. The readouts are linear
(``output_activation``): the standardized log-mel audio, the cycle's target, leaves tanh's range.
Loss weights (0.1 translation, 0.1 cycle, 0.01 L2 on the output kernel) are the original's; the LSTM
widths are 64, not the original's 32 (seed 0, validation accuracy at step 600: 95.5 % with 64, 91.1 % with
32; chosen on validation only, though the runs also printed their test accuracy); optimizer and schedule
are digits_common's.

Argument (comma-separated): a modality name makes it the source (the other two the targets, image before
audio before text); ``runlocal`` shrinks the run to a few seconds.
"""

from digits_common import MODALITIES, VOCAB_SIZE, base, shrink, with_robustness


def get_config(arg=None):
  c = base()
  c.model.name = "mctn"
  c.model.kwargs = {"source": "audio", "targets": ("image", "text"), "num_classes": 10,
                    "vocab_size": VOCAB_SIZE, "hidden_dim": 64, "head_dim": 64, "encoder_layers": 1,
                    "dropout": 0.0,
                    "output_activation": "linear", "translation_weight": 0.1, "cycle_weight": 0.1,
                    "translation2_weight": 0.1, "head_l2": 0.01}
  c = with_robustness(c)
  for part in (arg or "").split(","):
    if part in MODALITIES:
      c.model.kwargs.source = part
      c.model.kwargs.targets = tuple(m for m in MODALITIES if m != part)
    elif part == "runlocal":
      shrink(c)
      c.model.kwargs.hidden_dim = 8
      c.model.kwargs.head_dim = 8
    elif part:
      raise ValueError(f"unknown config argument {part!r}; use a source modality {MODALITIES} and/or "
                       "'runlocal'")
  return c
