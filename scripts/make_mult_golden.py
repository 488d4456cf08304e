"""Regenerate ``tests/data/mult_original_golden.npz``: outputs of the ORIGINAL MulT code on fixed inputs.

Usage (needs PyTorch, e.g. ``pip install torch==2.13.0 numpy`` in a throwaway virtual environment, and a
checkout of the original repository yaohungt/Multimodal-Transformer; none of it is part of mmjax)::

  python scripts/make_mult_golden.py /path/to/Multimodal-Transformer [tests/data/mult_original_golden.npz]

What it does:
1. Builds the original ``src.models.MULTModel`` with the original ``main.py`` defaults for unaligned
   CMU-MOSEI (300/74/35 input features, d = 30, 5 levels, 5 heads, all three targets, attention mask on).
2. Overwrites EVERY parameter with deterministic pseudo-random values, biases and LayerNorm parameters
   included (the original initialisation sets most of those to 0 and 1, which would leave their import
   untested): ``offset + scale * RandomState(seed).standard_normal(shape)``, drawn in float64 in the order
   of ``named_parameters()`` and rounded to float32 (``golden_parameters`` below; the test has an identical
   copy). Only the recipe (names, shapes, offsets, scales, seed) and a checksum per tensor are stored, which
   keeps the file at a few tens of KB instead of 4.4 MB of float32 weights. ``numpy.random.RandomState``
   has a frozen bit stream (NEP 19), so the values are the same with every numpy version.
   One compatibility shim for current PyTorch (contiguous positions, see ``load_original``) changes no value.
3. Runs the model in evaluation mode in float64 (a reference free of float32 rounding) on three examples
   of unaligned lengths (text 12, audio 20, vision 15 steps; standard-normal features, no padding: the
   original code has no padding mask) and stores the inputs (float32), ``output`` and ``last_hs``.
"""

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

SEED = 20190728  # ACL 2019
HPARAMS = dict(orig_d_l=300, orig_d_a=74, orig_d_v=35, vonly=True, aonly=True, lonly=True, num_heads=5,
               layers=5, attn_dropout=0.1, attn_dropout_a=0.0, attn_dropout_v=0.0, relu_dropout=0.1,
               res_dropout=0.1, out_dropout=0.0, embed_dropout=0.25, attn_mask=True, output_dim=1, d_model=30)
LENGTHS = dict(x_l=12, x_a=20, x_v=15)
BATCH = 3


def golden_parameters(spec, seed):
  """``{name: float32 array}`` from ``[[name, shape, offset, scale], ...]`` (copied in tests/test_mult.py)."""
  rng = np.random.RandomState(seed)
  return {name: (offset + scale * rng.standard_normal(shape)).astype(np.float32)
          for name, shape, offset, scale in spec}


def recipe(name, shape):
  """``(offset, scale)`` of one parameter: LayerNorm gains near 1, everything else near 0."""
  if ".layer_norm" in name and name.endswith(".weight"):
    return 1.0, 0.1
  if name.endswith(".bias") or ".layer_norm" in name:
    return 0.0, 0.1
  fan_in = int(np.prod(shape[1:]))  # Linear [out, in], Conv1d [out, in, k], in_proj [3w, w]
  return 0.0, float(1.0 / np.sqrt(fan_in))


def load_original(checkout: Path):
  sys.path.insert(0, str(checkout))  # the original imports ``modules.transformer``
  import modules.position_embedding as pe  # noqa: PLC0415 (the original's package)

  # Compatibility with current PyTorch, values unchanged: ``Tensor.clone`` now keeps the strides of a
  # non-contiguous input, so the original's ``positions.view(-1)`` fails; hand it a contiguous copy.
  make_positions = pe.make_positions
  pe.make_positions = lambda *a, **kw: make_positions(*a, **kw).contiguous()
  spec = importlib.util.spec_from_file_location("mult_original_models", checkout / "src" / "models.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.MULTModel


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("checkout", type=Path, help="a checkout of yaohungt/Multimodal-Transformer")
  default_out = Path(__file__).resolve().parents[1] / "tests" / "data" / "mult_original_golden.npz"
  parser.add_argument("out", type=Path, nargs="?", default=default_out)
  args = parser.parse_args()

  import torch

  torch.manual_seed(0)  # the original initialisation is overwritten anyway
  hp = argparse.Namespace(**HPARAMS)
  model = load_original(args.checkout)(hp).eval()
  spec = [[n, list(p.shape), *recipe(n, tuple(p.shape))] for n, p in model.named_parameters()]
  values = golden_parameters(spec, SEED)
  with torch.no_grad():
    for n, p in model.named_parameters():
      p.copy_(torch.from_numpy(values[n]))
  model = model.double()

  rng = np.random.RandomState(SEED + 1)
  feats = dict(x_l=HPARAMS["orig_d_l"], x_a=HPARAMS["orig_d_a"], x_v=HPARAMS["orig_d_v"])
  inputs = {k: rng.standard_normal((BATCH, LENGTHS[k], feats[k])).astype(np.float32) for k in LENGTHS}
  with torch.no_grad():
    output, last_hs = model(*(torch.from_numpy(inputs[k]).double() for k in ("x_l", "x_a", "x_v")))
  count = sum(int(np.prod(shape)) for _, shape, _, _ in spec)
  print(f"torch {torch.__version__}; {count:,} parameters in {len(spec)} tensors")
  print("output", output.numpy().ravel())

  note = ("original MULTModel (yaohungt/Multimodal-Transformer), eval mode, float64; every parameter "
          "from the recipe in param_spec (see scripts/make_mult_golden.py); inputs [B,T,F]")
  args.out.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(
    args.out, hparams=json.dumps(dict(HPARAMS, note=note)), param_spec=json.dumps(spec),
    param_seed=np.int64(SEED), param_sums=np.array([values[n].astype(np.float64).sum() for n, *_ in spec]),
    output=output.numpy(), last_hs=last_hs.numpy(), **inputs)
  print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes)")


if __name__ == "__main__":
  main()
