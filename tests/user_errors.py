"""Helpers of the user-error tests: run the CLI in-process and check its one-paragraph error, and compare
folders byte for byte."""

import os
from pathlib import Path


def tree(path) -> dict:
  """``{relative path: bytes}`` of every file (``None`` for folders) under ``path``; ``{}`` if absent."""
  path = Path(path)
  out = {}
  for dirpath, dirnames, filenames in os.walk(path):
    for name in dirnames:
      out[os.path.relpath(os.path.join(dirpath, name), path)] = None
    for name in filenames:
      out[os.path.relpath(os.path.join(dirpath, name), path)] = Path(dirpath, name).read_bytes()
  return out


def says(msg: str, text: str) -> bool:
  """Whether ``msg`` contains ``text``, whatever the white space: the CLI wraps its message at 110 columns,
  also inside long words such as paths."""
  return "".join(text.split()) in "".join(msg.split())


def cli_user_error(capsys, *argv) -> str:
  """Runs ``mmjax ARGV`` in-process; checks exit status 2, one ``mmjax: error:`` paragraph on stderr and no
  traceback; returns the message with its line breaks folded into spaces (compare paths with :func:`says`)."""
  from mmjax.cli import main

  capsys.readouterr()
  code = main([str(a) for a in argv])
  err = capsys.readouterr().err
  assert code == 2, err
  assert err.startswith("mmjax: error:") and "Traceback" not in err, err
  return " ".join(err.split())
