"""A/B of MulT train-step variants compiled side by side and timed interleaved (CPU time per step).

``python benchmarks/mult_variants.py VARIANTS ROUNDS [config overrides without --config.]``, run from the
repository root. ``VARIANTS``: comma-separated ``masks[:remat[:attention[:chunk]]]``; ``masks`` is
``base`` (dropout masks from ``jax.random.bernoulli`` and ``flax.linen.Dropout``, as before
``mmjax.layers.dropout``), ``fields`` (16/8-bit fields of ``jax.random.bits`` words) or ``new``
(``mmjax.layers.dropout``: the index hash); ``remat`` a
``config.remat`` value (default none); ``attention`` the kernel (default: the config's); ``chunk`` the key
block of ``chunked`` (default: ``default_chunk_size()``). Each variant is compiled, runs one untimed step,
then ``ROUNDS`` rounds time one step of each variant in turn on one fixed synthetic batch (as ``mmjax bench
prng``). Results: ``benchmarks/results/mult_variants-<device>-<date>.json``.
"""

import re
import statistics
import sys
import tempfile
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

import mmjax.layers.attention as A
import mmjax.models.mult as MM
from mmjax.bench import machine as M
from mmjax.bench.prng import time_interleaved
from mmjax.config import get_config
from mmjax.data import pipeline
from mmjax.layers import dropout as D
from mmjax.train.run import build_run, make_global_batch
from mmjax.train.step import jit_train_step


def _per_block(draw):
  """A mask function of :func:`mmjax.layers.dropout.dropout_keep`'s signature from ``draw(rng, rate,
  shape)``; a block of a larger mask (the chunked kernel) draws from ``fold_in(rng, its offset)``."""
  def keep(rng, rate, shape, *, full_shape=None, offsets=None):
    del full_shape
    if offsets is not None:
      rng = jax.random.fold_in(rng, offsets[-1])
    return draw(rng, rate, shape)
  return keep


def bernoulli_keep(rng, rate, shape):
  """The attention dropout masks before mmjax.layers.dropout: one 32-bit draw per element."""
  return jax.random.bernoulli(rng, 1.0 - rate, shape)


def fields_keep(rng, rate, shape):
  """The masks of mmjax.layers.dropout from 2026-12-03 until the hash: one 32-bit ``jax.random.bits`` word
  per 2 elements, cut into 16-bit fields (8-bit when ``rate * 256`` is an integer)."""
  bits = 8 if float(rate * 256).is_integer() else 16
  threshold, n = round(rate * (1 << bits)), 32 // bits
  full = shape or (1,)
  axis = next((i for i, s in enumerate(full) if s % n == 0), max(range(len(full)), key=lambda i: full[i]))
  part = -(-full[axis] // n)
  words = jax.random.bits(rng, full[:axis] + (part,) + full[axis + 1:], jnp.uint32)
  fields = [(words >> (bits * i)) & ((1 << bits) - 1) for i in range(n)]
  keep = jnp.concatenate([f >= threshold for f in fields], axis=axis)
  return jax.lax.slice_in_dim(keep, 0, full[axis], axis=axis).reshape(shape)


MASKS = {"base": _per_block(bernoulli_keep), "fields": _per_block(fields_keep), "new": D.dropout_keep}


def use_masks(kind):
  """Point the attention kernels and MulT's dropouts at the masks of ``kind`` (:data:`MASKS`): ``base``
  uses ``flax.linen.Dropout`` for MulT's other dropouts, the rest ``mmjax.layers.dropout.Dropout`` with
  that mask function."""
  if kind not in MASKS:
    raise SystemExit(f"masks must be one of {sorted(MASKS)}, not {kind!r}")
  A.dropout_keep = D.dropout_keep = MASKS[kind]
  MM.Dropout = nn.Dropout if kind == "base" else D.Dropout


def main():
  variants = sys.argv[1].split(",")
  rounds = int(sys.argv[2])
  overrides = sys.argv[3:]
  config = get_config("configs/mult_mosei.py:unaligned", overrides)
  steps, states, comp = {}, {}, {}
  default_chunk = A.default_chunk_size()
  batch = None
  with tempfile.TemporaryDirectory() as wd:
    for i, v in enumerate(variants):
      kind, rm, att, chunk = (v.split(":") + ["", "", ""])[:4]
      use_masks(kind)
      A.CHUNK_SIZE = A.CHUNK_SIZE_CPU = int(chunk) if chunk else default_chunk
      cfg = config.copy_and_resolve_references()
      cfg.remat = rm or "none"
      if att:
        cfg.model.kwargs.attention = att
      run = build_run(cfg, f"{wd}/{i}")
      if batch is None:
        local = pipeline.example_from_features(cfg.data, cfg.batch_size, seed=cfg.seed)
        batch = jax.block_until_ready(make_global_batch(local, run.batch_sharding))
      states[v] = run.init()
      t = time.perf_counter()
      step = jit_train_step(run.model, run.optimizer, run.task, run.state_shardings, run.batch_sharding,
                            run.mesh, cfg.optimizer.grad_accum_steps, cfg.prng_impl)
      lowered = step.lower(states[v], batch)
      steps[v] = lowered.compile()
      comp[v] = time.perf_counter() - t
      words = re.findall(r"rng_bit_generator.*?-> \(tensor<[^>]*>, tensor<([^>]*)>", lowered.as_text())
      print(f"{v}: compile {comp[v]:.1f} s, {len(words)} rng_bit_generator, e.g. {sorted(set(words))[-3:]}",
            flush=True)
      run.checkpointer.close()
      states[v], _ = steps[v](states[v], batch)
      jax.block_until_ready(states[v])
    wall, cpu = time_interleaved(
        steps, states, batch, rounds,
        on_round=lambda r, cpu: print("round", r, {v: round(cpu[v][-1], 2) for v in variants}, flush=True))
  base = statistics.median(cpu[variants[0]])
  res = {}
  for v in variants:
    mc, mw = statistics.median(cpu[v]), statistics.median(wall[v])
    res[v] = dict(step_cpu_s=cpu[v], step_s=wall[v], step_cpu_s_median=mc, step_s_median=mw,
                  compile_s=comp[v], speedup_cpu_vs_first=base / mc)
    print(f"{v}: CPU {[round(x, 2) for x in cpu[v]]} median {mc:.2f} s, wall median {mw:.2f} s, "
          f"x{base / mc:.2f} CPU vs {variants[0]}, compile {comp[v]:.1f} s", flush=True)
  key = " ".join([sys.argv[1], *(f"--config.{o}" for o in overrides)])
  result = dict(variants=res, overrides=overrides, rounds=rounds, batch_size=config.batch_size,
                order="one untimed step each, then rounds of one timed step per variant in turn")
  print("->", M.write_result(M.DEFAULT_OUT_DIR, "mult_variants", key, M.machine(), result))


if __name__ == "__main__":
  main()
