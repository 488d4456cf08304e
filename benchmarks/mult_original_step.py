"""Times the ORIGINAL MulT train step on this machine, for a same-machine comparison with ``mmjax bench
train_step`` (benchmarks/README.md, "MulT train step at the unaligned CMU-MOSEI shapes").

Needs PyTorch and a checkout of yaohungt/Multimodal-Transformer (neither is part of mmjax; the model is
loaded from the checkout as ``scripts/make_mult_golden.py`` does)::

  python benchmarks/mult_original_step.py /path/to/Multimodal-Transformer [--out results/FILE.json]

The step: the original ``MULTModel`` with ``main.py``'s unaligned CMU-MOSEI defaults (the ``HPARAMS`` of
make_mult_golden.py: d = 30, 5 levels, 5 heads, attention dropout 0.1 on text, embedding dropout 0.25),
train mode, batch 24, T = 50 / 500 / 500 random inputs, Adam (lr 1e-3), L1 loss, gradient clipping at 0.8.
One untimed step, then ``--steps`` timed ones: wall time and the process's CPU time (user + system).
"""

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import make_mult_golden  # noqa: E402


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("checkout", type=Path, help="a checkout of yaohungt/Multimodal-Transformer")
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--out", type=Path, default=None, help="write the result here as JSON")
  args = parser.parse_args()
  import torch

  torch.manual_seed(0)
  hparams = argparse.Namespace(**make_mult_golden.HPARAMS)
  model = make_mult_golden.load_original(args.checkout)(hparams).train()
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
  rng = np.random.RandomState(0)
  inputs = [torch.from_numpy(rng.standard_normal((24, t, f)).astype(np.float32))
            for t, f in ((50, 300), (500, 74), (500, 35))]
  target = torch.from_numpy(rng.standard_normal((24, 1)).astype(np.float32))

  def step():
    optimizer.zero_grad()
    loss = torch.nn.functional.l1_loss(model(*inputs)[0], target)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.8)
    optimizer.step()

  step()
  wall, cpu = [], []
  for i in range(args.steps):
    w, c = time.perf_counter(), _cpu_seconds()
    step()
    wall.append(time.perf_counter() - w)
    cpu.append(_cpu_seconds() - c)
    print(f"step {i + 1}/{args.steps}: {wall[-1]:.2f} s wall, {cpu[-1]:.2f} s CPU", flush=True)
  result = {"benchmark": "mult_original_step", "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": {"processor": platform.processor() or platform.machine(),
                        "python": platform.python_version()},
            "batch": 24, "lengths": [50, 500, 500], "wall_s": wall, "cpu_s": cpu,
            "wall_median_s": statistics.median(wall), "cpu_median_s": statistics.median(cpu),
            "date": time.strftime("%Y-%m-%d")}
  print(json.dumps(result))
  if args.out:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
  main()
