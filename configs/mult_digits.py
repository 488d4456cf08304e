"""MulT on the embedded digits_av data: text tokens (L), speech log-mels (A), the image rows (V).

The model is MulT with its original code's structure; width, depth and heads are those of the original
``main.py`` defaults (d = 30, 5 levels, 5 heads) shrunk to 2 levels to keep the CPU demo short; the text
tokens are embedded first (``text_vocab_size``), and the 10-way digit is read from ``output_dim = 10``
logits. ``FILE:runlocal`` shrinks the run to a few seconds.
"""

from digits_common import VOCAB_SIZE, base, shrink, with_robustness


def get_config(arg=None):
  c = base()
  c.model.name = "mult"
  c.model.kwargs = {"width": 30, "num_layers": 2, "num_heads": 5, "output_dim": 10,
                    "modality_keys": ("text", "audio", "image"), "kernel_sizes": (1, 1, 1),
                    "text_vocab_size": VOCAB_SIZE, "text_embed_dim": 32, "attn_mask": False,
                    "embed_dropout": 0.1}
  with_robustness(c)
  if arg == "runlocal":
    shrink(c)
    c.model.kwargs.width, c.model.kwargs.num_heads, c.model.kwargs.num_layers = 16, 2, 1
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; use 'runlocal' or nothing")
  return c
