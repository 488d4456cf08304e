"""Train-step benchmark: a thin wrapper, the code lives in :mod:`mmjax.bench.train_step`.

``python benchmarks/train_step.py [ARGS...]`` is the same as ``mmjax bench train_step [ARGS...]``.
"""

import sys

from mmjax.bench.train_step import main

if __name__ == "__main__":
  sys.exit(main())
