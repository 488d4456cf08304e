"""Regenerate ``tests/data/lmf_original_golden.npz``: outputs of the ORIGINAL LMF and TFN PyTorch code on
fixed inputs and weights.

Usage (needs PyTorch, e.g. ``pip install torch==2.13.0 numpy``, and checkouts of the original repositories
Justin1904/Low-rank-Multimodal-Fusion and Justin1904/TensorFusionNetworks; none of them is part of mmjax)::

  python scripts/make_lmf_golden.py /path/to/Low-rank-Multimodal-Fusion /path/to/TensorFusionNetworks \
      [tests/data/lmf_original_golden.npz]

What it does, for each of the two models (``model.py`` of each checkout, classes ``LMF`` and ``TFN``):
1. Builds it with the widths of the TFN original's ``train.py`` on CMU-MOSI (audio/visual/text hidden 4,
   16, 128; text output 64) on inputs of 5 (audio), 20 (visual) and 300 (text) features; LMF with rank 4
   and 3 outputs (so the output axis of the factors is exercised), TFN with 32 post-fusion units.
2. Overwrites every parameter and the BatchNorm running statistics with deterministic pseudo-random values
   ``offset + scale * RandomState(seed).standard_normal(shape)`` in the order of the spec (the test
   rebuilds them from the stored recipe; a checksum per tensor is stored). TFN's fixed ``output_range``
   and ``output_shift`` keep their values (6 and -3).
3. Runs it in evaluation mode in float64 on 3 examples (audio ``[3, 5]``, visual ``[3, 20]``, text
   ``[3, 8, 300]``, standard normal) and stores the inputs, each subnetwork's output (``h_audio``,
   ``h_video``, ``h_text``) and the model output.
"""

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np

SEED = 20180715  # ACL 2018
INPUT_DIMS = (5, 20, 300)  # audio, video, text
HIDDEN = (4, 16, 128)
TEXT_OUT = 64
LMF = dict(rank=4, output_dim=3, dropouts=(0.3, 0.3, 0.3, 0.5))
TFN = dict(post_fusion_dim=32, dropouts=(0.3, 0.3, 0.3, 0.3))
BATCH, TEXT_LEN = 3, 8
FIXED = ("output_range", "output_shift")


def golden_parameters(spec, seed):
  """``{name: float32 array}`` from ``[[name, shape, offset, scale], ...]`` (also in tests/test_fusion.py)."""
  rng = np.random.RandomState(seed)
  return {name: (offset + scale * rng.standard_normal(shape)).astype(np.float32)
          for name, shape, offset, scale in spec}


def recipe(name, shape):
  """``(offset, scale)`` of one tensor: BatchNorm gains and variances near 1, the rest near 0."""
  if name.endswith("norm.weight") or name.endswith("running_var"):
    return 1.0, 0.1
  if name.endswith(".bias") or name.endswith("running_mean") or name.endswith("norm.bias"):
    return 0.0, 0.1
  if name.endswith("_factor"):  # [R, D + 1, O]
    return 0.0, float(1.0 / np.sqrt(shape[1]))
  if name == "fusion_weights":
    return 0.0, 0.5
  if name == "fusion_bias":
    return 0.0, 0.1
  return 0.0, float(1.0 / np.sqrt(shape[-1]))  # Linear [out, in], LSTM [4H, in]


def load(checkout: Path, module_name: str):
  spec = importlib.util.spec_from_file_location(module_name, checkout / "model.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def tensors(model):
  """Parameters and BatchNorm running statistics, by name, in a fixed order (fixed TFN constants left out)."""
  out = dict(model.named_parameters())
  out.update({n: b for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var"))})
  return {n: t for n, t in out.items() if n not in FIXED}


def run(model, seed, inputs):
  import torch

  named = tensors(model)
  spec = [[n, list(t.shape), *recipe(n, tuple(t.shape))] for n, t in named.items()]
  values = golden_parameters(spec, seed)
  with torch.no_grad():
    for n, t in named.items():
      t.copy_(torch.from_numpy(values[n]))
  model = model.double().eval()
  x_a, x_v, x_t = (torch.from_numpy(inputs[k]).double() for k in ("audio", "video", "text"))
  with torch.no_grad():
    out = {"h_audio": model.audio_subnet(x_a), "h_video": model.video_subnet(x_v),
           "h_text": model.text_subnet(x_t), "output": model(x_a, x_v, x_t)}
  sums = np.array([values[n].astype(np.float64).sum() for n, *_ in spec])
  return spec, sums, {k: v.numpy() for k, v in out.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("lmf_checkout", type=Path, help="a checkout of Justin1904/Low-rank-Multimodal-Fusion")
  parser.add_argument("tfn_checkout", type=Path, help="a checkout of Justin1904/TensorFusionNetworks")
  default_out = Path(__file__).resolve().parents[1] / "tests" / "data" / "lmf_original_golden.npz"
  parser.add_argument("out", type=Path, nargs="?", default=default_out)
  args = parser.parse_args()

  import torch

  torch.manual_seed(0)  # the original initialisation is overwritten anyway
  rng = np.random.RandomState(SEED + 1)
  inputs = {"audio": rng.standard_normal((BATCH, INPUT_DIMS[0])).astype(np.float32),
            "video": rng.standard_normal((BATCH, INPUT_DIMS[1])).astype(np.float32),
            "text": rng.standard_normal((BATCH, TEXT_LEN, INPUT_DIMS[2])).astype(np.float32)}
  lmf = load(args.lmf_checkout, "lmf_original_model").LMF(
      INPUT_DIMS, HIDDEN, TEXT_OUT, LMF["dropouts"], LMF["output_dim"], LMF["rank"])
  tfn = load(args.tfn_checkout, "tfn_original_model").TFN(
      INPUT_DIMS, HIDDEN, TEXT_OUT, TFN["dropouts"], TFN["post_fusion_dim"])
  saved = {f"input_{k}": v for k, v in inputs.items()}
  for prefix, model, seed in (("lmf", lmf, SEED), ("tfn", tfn, SEED + 2)):
    spec, sums, outputs = run(model, seed, inputs)
    print(f"{prefix}: {sum(int(np.prod(s)) for _, s, _, _ in spec):,} values in {len(spec)} tensors; output",
          outputs["output"].ravel())
    saved |= {f"{prefix}_param_spec": json.dumps(spec), f"{prefix}_param_seed": np.int64(seed),
              f"{prefix}_param_sums": sums, **{f"{prefix}_{k}": v for k, v in outputs.items()}}
  hparams = dict(input_dims=INPUT_DIMS, hidden_dims=HIDDEN, text_out=TEXT_OUT, lmf=LMF, tfn=TFN,
                 note=f"original LMF and TFN (Justin1904), eval mode, float64, torch {torch.__version__}")
  args.out.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(args.out, hparams=json.dumps(hparams), **saved)
  print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes)")


if __name__ == "__main__":
  main()
