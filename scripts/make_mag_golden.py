"""Regenerate ``tests/data/mag_original_golden.npz``: outputs of the ORIGINAL MAG module on fixed inputs.

Usage (needs PyTorch and a checkout of WasifurRahman/BERT_multimodal_transformer; neither is part of mmjax)::

  python scripts/make_mag_golden.py /path/to/BERT_multimodal_transformer [tests/data/mag_original_golden.npz]

What it does:
1. Imports the original ``modeling.MAG`` from the checkout. Its ``global_configs`` (which selects a CUDA
   device and the MOSI feature widths) is replaced, before the import, by a stand-in module with
   ``DEVICE = cpu`` and small widths (text 16, visual 5, acoustic 7); no value of the computation changes.
2. Builds ``MAG(hidden_size=16, beta_shift, dropout_prob=0.5)`` for two values of ``beta_shift`` (1.0, the
   driver's default, and 0.05, small enough that ``alpha < 1`` for most words), with every parameter drawn
   from a seeded normal distribution (LayerNorm gains near 1), and runs it in evaluation mode on random
   ``[2, 6, .]`` inputs (text scaled so that both branches of ``min(., 1)`` occur).
3. Stores the inputs, the parameters (PyTorch layout: Linear weights ``[out, in]``) and the outputs per beta.
"""

import argparse
import sys
import types
from pathlib import Path

import numpy as np

TEXT, VISUAL, ACOUSTIC = 16, 5, 7
BETAS = (1.0, 0.05)
SEED = 2020  # ACL 2020


def load_original_mag(checkout: Path):
  import torch

  stand_in = types.ModuleType("global_configs")
  stand_in.DEVICE = torch.device("cpu")
  stand_in.TEXT_DIM, stand_in.VISUAL_DIM, stand_in.ACOUSTIC_DIM = TEXT, VISUAL, ACOUSTIC
  stand_in.__all__ = ["DEVICE", "TEXT_DIM", "VISUAL_DIM", "ACOUSTIC_DIM"]
  sys.modules["global_configs"] = stand_in
  sys.path.insert(0, str(checkout))
  import modeling  # noqa: PLC0415 (the original's module)

  return modeling.MAG


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("checkout", type=Path)
  p.add_argument("out", nargs="?", default="tests/data/mag_original_golden.npz")
  args = p.parse_args(argv)

  import torch

  mag_cls = load_original_mag(args.checkout)
  rng = np.random.default_rng(SEED)
  text = (rng.normal(size=(2, 6, TEXT)) * np.array([0.2, 1, 3, 0.5, 2, 1])[None, :, None]).astype(np.float32)
  visual = rng.normal(size=(2, 6, VISUAL)).astype(np.float32)
  acoustic = rng.normal(size=(2, 6, ACOUSTIC)).astype(np.float32)
  out = {"text": text, "visual": visual, "acoustic": acoustic, "betas": np.array(BETAS, np.float32)}
  torch.manual_seed(SEED)
  model = mag_cls(TEXT, 1.0, 0.5).eval()
  with torch.no_grad():
    for name, param in model.named_parameters():
      value = rng.normal(size=tuple(param.shape)) * (0.1 if name.startswith("LayerNorm") else 0.3)
      if name == "LayerNorm.weight":
        value += 1.0
      param.copy_(torch.tensor(value, dtype=torch.float32))
      out[f"param/{name}"] = param.numpy().copy()
    for beta in BETAS:
      model.beta_shift = beta
      res = model(torch.tensor(text), torch.tensor(visual), torch.tensor(acoustic))
      out[f"output/{beta}"] = res.numpy().astype(np.float32)
  Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  np.savez(args.out, **out)
  print(f"wrote {args.out}: {sorted(out)}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
