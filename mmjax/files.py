"""Files a run writes, written atomically: a temporary file in the same folder, then a rename, so a kill
at any moment leaves the old file or the new one, never a truncated one. A damaged file (from before this
rule, or edited by hand) reads as absent, with a warning."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def write_text(path, text: str) -> Path:
  """Writes ``text`` to ``path`` atomically (parent folders are created)."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise
  return path


def write_json(path, data: Any) -> Path:
  """Writes ``data`` as indented JSON to ``path`` atomically."""
  return write_text(path, json.dumps(data, indent=2) + "\n")


def read_json(path, default=None, *, warn=log.warning):
  """The JSON in ``path``; ``default`` when it does not exist, or (with a warning) when it is damaged."""
  path = Path(path)
  if not path.is_file():
    return default
  try:
    return json.loads(path.read_text())
  except (ValueError, OSError) as e:
    warn(f"mmjax: {path} is damaged ({e}); treating it as absent")
    return default
