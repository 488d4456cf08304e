"""The layering of DESIGN.md, checked on the source: no import cycles (imports inside functions count), and
the engine (``mmjax/train``) names no model and no evaluator module: it reaches both through registries."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mmjax"


def module_name(path: Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
  return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(path: Path, known: set[str]) -> set[str]:
  """mmjax modules imported anywhere in ``path`` (module level and inside functions). ``from pkg import
  name`` counts as an import of ``pkg.name`` when that is a module, else of ``pkg``."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names if a.name.split(".")[0] == "mmjax")
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mmjax":
      for alias in node.names:
        sub = f"{node.module}.{alias.name}"
        out.add(sub if sub in known else node.module)
  return out & known


def test_no_import_cycles():
  mods = modules()
  graph = {m: imports(p, set(mods)) - {m} for m, p in mods.items()}
  state, stack, cycles = {}, [], []

  def visit(m):
    state[m] = "open"
    stack.append(m)
    for n in sorted(graph[m]):
      if state.get(n) == "open":
        cycles.append(stack[stack.index(n):] + [n])
      elif n not in state:
        visit(n)
    stack.pop()
    state[m] = "done"

  for m in sorted(graph):
    if m not in state:
      visit(m)
  assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_engine_names_no_model_and_no_evaluator():
  mods = modules()
  for name, path in mods.items():
    if not name.startswith("mmjax.train"):
      continue
    for imported in imports(path, set(mods)):
      assert not imported.startswith("mmjax.models."), (
          f"{name} imports {imported}; use mmjax.models' registry")
      assert not imported.startswith("mmjax.evaluators."), (
          f"{name} imports {imported}; use mmjax.evaluators' registry")
      assert imported not in ("mmjax.fewshot", "mmjax.sampling"), f"{name} imports {imported}"


def test_models_know_no_training_data_or_config():
  mods = modules()
  for name, path in mods.items():
    if name.startswith("mmjax.models") or name.startswith("mmjax.layers"):
      for imported in imports(path, set(mods)):
        assert not imported.startswith(("mmjax.train", "mmjax.data", "mmjax.config", "mmjax.evaluators",
                                        "mmjax.tasks")), f"{name} imports {imported}"
