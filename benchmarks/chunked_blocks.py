"""Key block size of the ``chunked`` attention kernel: forward + backward time per block size and shape.

``python benchmarks/chunked_blocks.py [ROUNDS]``, run from the repository root. For each shape (batch, length,
heads, head size; self-attention, attention dropout 0.1, float32) every block size is compiled, run once
untimed, then timed in ``ROUNDS`` interleaved rounds (process CPU seconds per call, median). The CPU default
of ``mmjax.layers.attention.default_chunk_size`` comes from this table. Results:
``benchmarks/results/chunked_blocks-<device>-<date>.json``.
"""

import statistics
import sys
import time

import jax
import jax.numpy as jnp

from mmjax.bench import machine as M
from mmjax.layers import attention as A

# MulT's memory transformers at the original MOSEI shapes, then wider heads
SHAPES = ((24, 500, 5, 6), (4, 1024, 8, 64), (2, 2048, 4, 128))
BLOCKS = (32, 64, 128, 256, 512)


def grad_fn(block, rng):
  def loss(q, k, v):
    out = A.dot_product_attention(q, k, v, dropout_rate=0.1, dropout_rng=rng, implementation="chunked",
                                  chunk_size=block)
    return (out ** 2).sum()
  return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def main():
  rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
  results = {}
  for b, length, h, d in SHAPES:
    keys = jax.random.split(jax.random.key(0), 4)
    q, k, v = (jax.random.normal(key, (b, length, h, d), jnp.float32) for key in keys[:3])
    fns = {block: grad_fn(block, keys[3]) for block in BLOCKS}
    for f in fns.values():
      jax.block_until_ready(f(q, k, v))
    times = {block: [] for block in BLOCKS}
    for _ in range(rounds):
      for block, f in fns.items():
        start = time.process_time()
        jax.block_until_ready(f(q, k, v))
        times[block].append(time.process_time() - start)
    medians = {block: statistics.median(t) for block, t in times.items()}
    name = f"B{b} L{length} H{h} D{d}"
    results[name] = {"cpu_s": {str(k): v for k, v in times.items()},
                     "cpu_s_median": {str(k): v for k, v in medians.items()},
                     "fastest": min(medians, key=medians.get)}
    print(name, {block: round(m, 3) for block, m in medians.items()}, flush=True)
  result = {"shapes": results, "rounds": rounds, "dropout_rate": 0.1, "dtype": "float32",
            "what": "chunked attention forward + backward (jax.grad of a sum of squares), CPU s per call"}
  print("->", M.write_result(M.DEFAULT_OUT_DIR, "chunked_blocks", f"rounds={rounds}", M.machine(), result))


if __name__ == "__main__":
  main()
