"""Attention kernel benchmark: a thin wrapper, the code lives in :mod:`mmjax.bench.attention`.

``python benchmarks/attention.py [ARGS...]`` is the same as ``mmjax bench attention [ARGS...]``.
"""

import sys

from mmjax.bench.attention import main

if __name__ == "__main__":
  sys.exit(main())
