"""MBT (Nagrani et al., NeurIPS 2021) on CMU-MOSI: sentiment regression from text, audio and vision.

MBT was not evaluated on MOSI (the paper reports AudioSet, Epic-Kitchens-100 and VGGSound), so there are
no reference numbers and no MOSI hyperparameters to take over. The architecture keeps the paper's defaults
where they are ratios or counts -- B = 4 bottleneck tokens, fusion over the last third of the layers
(layer 8 of 12 in MBT-Base), MLP ratio 4, per-modality CLS tokens with averaged outputs -- and is scaled
down from ViT-Base (width 768, 12 layers, 12 heads; pretrained on ImageNet-21k) to what 1,284 training
videos without pretraining support: width 64, 6 layers fused from layer 4 (the paper's two-thirds; 2 fused
layers, the fewest through which bottlenecks pass information, see mmjax/models/mbt.py), 4 heads,
dropout 0.1.

Training follows the original's AudioSet recipe where it carries over -- 50 epochs, batch 64, 2.5 epochs of
linear warm-up, cosine decay, gradient clipping at 1 -- but with Adam at 1e-3 (the original's SGD with
momentum at 0.5 is tuned for fine-tuning a ViT with label smoothing and mixup, neither of which applies
to regression) and MulT's L1 loss (``regression`` task, MOSI metrics: Acc2, F1, Acc7, MAE, Corr). The best
checkpoint is the one with the lowest validation loss.

Argument: ``aligned`` or ``unaligned`` (default), the MulT feature pickles prepared once with
``mmjax data build cmu_mosi/unaligned --manual_dir DIR`` (see mult_common.py); ``,attention`` fuses by
full attention instead of bottlenecks.
"""

from mosi_common import TRAIN_EXAMPLES, mosi_base

EPOCHS = 50
LENGTHS = {"aligned": (50, 50, 50), "unaligned": (50, 375, 500)}  # text, audio, vision (MulT's pickles)


def get_config(arg=None):
  parts = [p for p in (arg or "unaligned").split(",") if p]
  unknown = set(parts) - {"aligned", "unaligned", "attention"}
  if unknown:
    raise ValueError(f"unknown config argument(s) {sorted(unknown)}; use aligned|unaligned[,attention]")
  alignment = "aligned" if "aligned" in parts else "unaligned"
  lengths = dict(zip(("text", "audio", "vision"), LENGTHS[alignment], strict=True))
  c = mosi_base(alignment, batch_size=64, epochs=EPOCHS, lr=1e-3, max_lengths=lengths, truncate=False)
  c.model.name = "mbt"
  c.model.kwargs = {"num_classes": 1, "modalities": ("text", "audio", "vision"), "width": 64,
                    "num_layers": 6, "num_heads": 4, "mlp_ratio": 4,
                    "fusion": "attention" if "attention" in parts else "bottleneck",
                    "fusion_layer": 4, "num_bottlenecks": 4, "dropout": 0.1}
  steps_per_epoch = TRAIN_EXAMPLES // c.batch_size
  c.optimizer.schedule = "warmup_cosine"
  c.optimizer.warmup_steps = int(2.5 * steps_per_epoch)
  c.optimizer.clip_norm = 1.0
  return c
