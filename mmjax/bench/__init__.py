"""Benchmarks of mmjax: ``mmjax bench attention`` and ``mmjax bench train_step``.

* :mod:`mmjax.bench.machine`: the description of the machine a result was measured on (devices, library
  versions, CPU, ``XLA_FLAGS``, load average) and the peak FLOP/s table by device kind.
* :mod:`mmjax.bench.attention`: every attention kernel (and PyTorch SDPA as a peer) over a grid of shapes.
* :mod:`mmjax.bench.train_step`: one config's jitted, sharded train step (XLA's and the analytic FLOPs).
* :mod:`mmjax.bench.prng`: that step with each PRNG implementation (``config.prng_impl``), interleaved.
* :mod:`mmjax.bench.profile`: where that step's time goes (a profiler trace by XLA operation, mapped to the
  model code that made each operation).

Each benchmark module has ``main(argv=None) -> int``; ``benchmarks/attention.py`` and
``benchmarks/train_step.py`` in the repository are thin wrappers around them. Results go to
``benchmarks/results`` relative to the current working directory unless ``--out`` says otherwise.
"""
