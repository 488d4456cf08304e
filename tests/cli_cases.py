"""Runs many ``mmjax`` command lines in ONE process (run by ``tests/test_bad_inputs.py``, not by pytest).

``python tests/cli_cases.py CASES.json OUT.json``: ``CASES.json`` is ``{name: [arg, ...]}``; for each case
this calls :func:`mmjax.cli.main` as the console script does and records its exit status, what it printed
to stdout and stderr, and whether an exception escaped ``main`` (which would print a traceback). One
process for the whole catalogue: JAX is imported once.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import traceback


def run_case(argv: list[str]) -> dict:
  from mmjax.cli import main

  out, err = io.StringIO(), io.StringIO()
  escaped = None
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
      code = main(argv)
    except SystemExit as e:
      code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - recorded: the console script would print a traceback
      code, escaped = 1, traceback.format_exc()
  return {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue(), "escaped": escaped}


def main() -> int:
  cases = json.loads(open(sys.argv[1]).read())
  results = {name: run_case(argv) for name, argv in cases.items()}
  with open(sys.argv[2], "w") as f:
    json.dump(results, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
