"""GPT-2 decoding benchmark: a thin wrapper, the code lives in :mod:`mmjax.bench.decode`.

``python benchmarks/decode.py [ARGS...]`` is the same as ``mmjax bench decode [ARGS...]``.
"""

import sys

from mmjax.bench.decode import main

if __name__ == "__main__":
  sys.exit(main())
