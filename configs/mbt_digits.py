"""MBT (Nagrani et al., NeurIPS 2021) on digits_av (image rows, speech log-mels, text tokens).

The paper's MBT-Base (ViT-Base: 12 layers of width 768; B = 4 bottlenecks; fusion from layer 8, i.e. 4
fused layers) scaled down for the CPU demo: 4 layers of width 64, 4 heads, MLP ratio 2, fusion from layer 2,
B = 4 bottleneck tokens, dropout 0.1; the optimizer and schedule are digits_common's (as for late and early
fusion). Two fused layers is the fewest that let information cross: the first fused layer only writes into
the bottleneck tokens, the next one reads them (see mmjax/models/mbt.py), so 3 layers fused from layer 2
(the paper's two-thirds) would be late fusion. ``FILE:image`` / ``:audio`` / ``:text`` gives one
modality alone; ``:attention`` fuses by full attention over all modalities' tokens from the fusion layer on
instead of through bottlenecks; ``:runlocal`` shrinks the run to a few seconds (2 layers, both fused).
"""

from digits_common import MODALITIES, VOCAB_SIZE, apply_arg, base, with_robustness


def get_config(arg=None):
  c = base()
  c.model.name = "mbt"
  c.model.kwargs = {"num_classes": 10, "modalities": MODALITIES, "vocab_size": VOCAB_SIZE, "width": 64,
                    "num_layers": 4, "num_heads": 4, "mlp_ratio": 2, "fusion": "bottleneck",
                    "fusion_layer": 2, "num_bottlenecks": 4, "dropout": 0.1}
  parts = [p for p in (arg or "").split(",") if p]
  if "attention" in parts:
    c.model.kwargs.fusion = "attention"
    parts.remove("attention")
  c = apply_arg(with_robustness(c), ",".join(parts))
  if "runlocal" in parts:
    c.model.kwargs.num_layers, c.model.kwargs.fusion_layer, c.model.kwargs.num_heads = 2, 0, 2
    c.model.kwargs.num_bottlenecks = 2
  return c
