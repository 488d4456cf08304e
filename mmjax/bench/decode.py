"""GPT-2 decoding benchmark: tokens/s of greedy decoding with the KV cache vs. recomputing the sequence.

``mmjax bench decode [--preset gpt2 | --n_layer L --n_embd D --n_head H] [--batch 1] [--prompt_len 32]
[--new_tokens 32] [--reps 3] [--dtype float32] [--smoke] [--out benchmarks/results]``
(or ``python benchmarks/decode.py ...``)

A randomly initialised :class:`mmjax.models.gpt2.GPT2` (default: the 124M "gpt2" shape, vocab 50257)
decodes ``--new_tokens`` tokens greedily after a random ``--prompt_len``-token prompt through
:func:`mmjax.sampling.generate`, once with ``use_cache=True`` (prefill, then one token per step) and
once with ``use_cache=False`` (the whole ``prompt_len + new_tokens`` buffer recomputed at every step).
Per mode: the first call (compilation + one run, ``first_call_s``), then ``--reps`` timed calls, each
followed by ``block_until_ready``: median time, ``tokens_per_s = batch * new_tokens / median`` (prefill
included), ``ms_per_token``, an analytic FLOP count of the call (matmuls; see :func:`decode_flops`) and
the achieved FLOP/s and fraction of the device's peak (:mod:`mmjax.bench.machine`). Results are merged,
keyed by the settings, into ``<out>/decode-<device kind>-<YYYY-MM-DD>.json`` with the machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

from mmjax.bench import machine as M

SMOKE = dict(n_layer=1, n_embd=32, n_head=2, vocab_size=128, n_positions=64, batch=1, prompt_len=8,
             new_tokens=4, reps=1)


def decode_flops(n_layer: int, n_embd: int, vocab_size: int, n_inner: int, batch: int, prompt_len: int,
                 new_tokens: int, cached: bool) -> float:
  """Analytic FLOPs (2 per multiply-add) of one :func:`generate` call: matmuls and attention scores.

  Per token through a block: ``2 (4 D^2 + 2 D F)`` (qkv, output, MLP) plus ``4 D k`` for attention over
  ``k`` keys; the logits ``2 V D`` are computed once per step. Cached: the prefill over ``P`` tokens
  (causal, ``k = i + 1``), then ``N - 1`` single tokens over ``k = P + i + 1`` slots (as computed:
  the cache has ``P + N`` slots, all scored). Uncached: ``N`` passes over the full ``S = P + N``
  buffer with dense ``S x S`` scores.
  """
  d, f, v = n_embd, n_inner, vocab_size
  dense = 2 * (4 * d * d + 2 * d * f)
  s = prompt_len + new_tokens
  if cached:
    prefill = prompt_len * dense + 4 * d * s * prompt_len
    step = dense + 4 * d * s
    total = n_layer * (prefill + (new_tokens - 1) * step) + new_tokens * 2 * v * d
  else:
    total = new_tokens * (n_layer * (s * dense + 4 * d * s * s) + 2 * v * d)
  return float(batch * total)


def _time(fn, reps):
  import jax

  t = time.perf_counter()
  first = jax.block_until_ready(fn())
  first_s = time.perf_counter() - t
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return first, first_s, times


def benchmark(*, n_layer: int, n_embd: int, n_head: int, vocab_size: int, n_positions: int, batch: int,
              prompt_len: int, new_tokens: int, reps: int, dtype: str = "float32", seed: int = 0) -> dict:
  """Times cached and uncached greedy decoding of a random GPT-2; returns the measurements."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np

  from mmjax import sampling
  from mmjax.models import gpt2

  if prompt_len + new_tokens > n_positions:
    raise ValueError(f"prompt_len {prompt_len} + new_tokens {new_tokens} exceeds n_positions {n_positions}")
  config = gpt2.GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                           n_head=n_head).no_dropout()
  model = gpt2.GPT2(config, dtype=jnp.dtype(dtype))
  t = time.perf_counter()
  abstract = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32),
                                                        train=False)))["params"]
  rng = np.random.default_rng(seed)  # random weights from numpy: no init to compile
  params = jax.tree_util.tree_map_with_path(
      lambda path, a: np.ones(a.shape, np.float32) if path[-1].key == "scale"
      else 0.02 * rng.standard_normal(a.shape, dtype=np.float32), abstract)
  params = jax.block_until_ready(jax.device_put(params))
  init_s = time.perf_counter() - t
  num_params = int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
  prompt = jnp.asarray(np.random.default_rng(seed).integers(0, vocab_size, (batch, prompt_len)), jnp.int32)
  peak = M.device_peak()
  modes, tokens = {}, {}
  for mode, cached in (("cached", True), ("uncached", False)):
    fn = lambda cached=cached: sampling.generate(model, params, prompt, None, new_tokens, use_cache=cached)  # noqa: E731
    out, first_s, times = _time(fn, reps)
    tokens[mode] = np.asarray(out)
    median = statistics.median(times)
    flops = decode_flops(n_layer, n_embd, vocab_size, 4 * n_embd, batch, prompt_len, new_tokens, cached)
    pk = peak.get(dtype)
    modes[mode] = {
        "first_call_s": first_s,
        "median_s": median,
        "times_s": times,
        "tokens_per_s": batch * new_tokens / median,
        "ms_per_token": 1e3 * median / new_tokens,
        "flops": flops,
        "tflops": flops / median / 1e12,
        "fraction_of_peak": flops / median / 1e12 / pk if pk else None,
    }
  return {
      "model": dict(n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=vocab_size,
                    n_positions=n_positions, num_params=num_params),
      "batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens, "dtype": dtype, "reps": reps,
      "init_s": init_s,
      "modes": modes,
      "speedup_cached_over_uncached": modes["uncached"]["median_s"] / modes["cached"]["median_s"],
      "tokens_agree": bool((tokens["cached"] == tokens["uncached"]).all()),
      "peak_tflops": peak,
      "measured": "greedy generate() calls, prefill included; first_call_s includes compilation",
  }


def main(argv=None, *, prog: str | None = None) -> int:
  """Command-line entry point (``argv`` defaults to ``sys.argv[1:]``); returns the exit status."""
  from mmjax.models.gpt2 import VARIANTS

  p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
  p.add_argument("--preset", choices=sorted(VARIANTS), default="gpt2",
                 help="model shape (default %(default)s: 12 layers, width 768, 12 heads); the size flags "
                      "below override it")
  p.add_argument("--n_layer", type=int, default=None, help="number of blocks (overrides the preset)")
  p.add_argument("--n_embd", type=int, default=None, help="width (overrides the preset)")
  p.add_argument("--n_head", type=int, default=None, help="attention heads (overrides the preset)")
  p.add_argument("--vocab_size", type=int, default=50257, help="default: %(default)s")
  p.add_argument("--n_positions", type=int, default=1024, help="default: %(default)s")
  p.add_argument("--batch", type=int, default=1, help="sequences decoded together (default: %(default)s)")
  p.add_argument("--prompt_len", type=int, default=32, help="random prompt tokens (default: %(default)s)")
  p.add_argument("--new_tokens", type=int, default=32, help="tokens to decode (default: %(default)s)")
  p.add_argument("--reps", type=int, default=3, help="timed calls per mode (after the first)")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="compute dtype")
  p.add_argument("--smoke", action="store_true",
                 help="a tiny model and 4 tokens, to check that the benchmark runs (seconds on a CPU)")
  p.add_argument("--out", default=str(M.DEFAULT_OUT_DIR),
                 help="results directory, created if missing (default: %(default)s, relative to the "
                      "current working directory)")
  args = p.parse_args(argv)
  if args.smoke:
    settings = dict(SMOKE)
  else:
    preset = VARIANTS[args.preset]
    settings = dict(n_layer=preset.n_layer, n_embd=preset.n_embd, n_head=preset.n_head,
                    vocab_size=args.vocab_size, n_positions=args.n_positions, batch=args.batch,
                    prompt_len=args.prompt_len, new_tokens=args.new_tokens, reps=args.reps)
    for name in ("n_layer", "n_embd", "n_head"):
      if getattr(args, name) is not None:
        settings[name] = getattr(args, name)
  if min(settings["batch"], settings["prompt_len"], settings["new_tokens"], settings["reps"]) < 1:
    p.error("--batch, --prompt_len, --new_tokens and --reps must be at least 1")
  if settings["n_embd"] % settings["n_head"]:
    p.error(f"n_embd {settings['n_embd']} is not divisible by n_head {settings['n_head']}")
  if settings["prompt_len"] + settings["new_tokens"] > settings["n_positions"]:
    p.error("prompt_len + new_tokens must not exceed n_positions")
  result = benchmark(**settings, dtype=args.dtype)
  m = result["model"]
  key = (("smoke " if args.smoke else "")
         + f"L{m['n_layer']}-D{m['n_embd']}-H{m['n_head']}-V{m['vocab_size']} batch {result['batch']} "
           f"prompt {result['prompt_len']} new {result['new_tokens']} {args.dtype}")
  path = M.write_result(args.out, "decode", key, M.machine(), result)
  c, u = result["modes"]["cached"], result["modes"]["uncached"]
  print(f"{key} ({m['num_params'] / 1e6:.1f}M params): cached {c['tokens_per_s']:.1f} tokens/s "
        f"({c['ms_per_token']:.1f} ms/token), uncached {u['tokens_per_s']:.1f} tokens/s "
        f"({u['ms_per_token']:.1f} ms/token), speedup {result['speedup_cached_over_uncached']:.1f}x, "
        f"tokens agree: {result['tokens_agree']} -> {path}")
  return 0
