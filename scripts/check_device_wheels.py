"""Checks that the wheels in .whl/ plus the lent GPU machine's image cover mmjax's runtime requirements.

``python3 scripts/check_device_wheels.py [--wheels .whl] [--image scripts/device_image_packages.txt]``

Without a Python 3.12 interpreter here the set cannot be installed and imported as it will be there, so
this checks the metadata instead: starting from ``pyproject.toml``'s dependencies, every requirement (with
its extras, markers evaluated for CPython 3.12 on Linux x86_64) must be met by a wheel in ``--wheels``
(whose own requirements are followed in turn, and whose version must satisfy the specifier) or by a
package of the image (its version is checked where the image list gives one; the extras of an image package
are followed through the metadata of the same package installed here, if it is). Also: one version per
package, Python 3.12 manylinux x86_64 or pure wheels only, the total size against the device tool's
64 MiB carry limit, and the protobuf runtime that the generated ``*_pb2.py`` code in the wheels needs.
Exit status 1 when something is missing or conflicting.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import sys
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
       "implementation_name": "cpython", "platform_python_implementation": "CPython",
       "platform_release": "", "platform_version": "", "implementation_version": "3.12.3"}
CARRY_LIMIT = 64 * 2**20
GENCODE = re.compile(rb"# Protobuf Python Version: (\d+)\.(\d+)\.(\d+)")


def applies(req: Requirement, extras: set[str]) -> bool:
  """Whether ``req``'s marker holds on the device for a package installed with ``extras``."""
  if req.marker is None:
    return True
  return any(req.marker.evaluate({**ENV, "extra": e}) for e in (extras or {""}))


def read_wheel(path: Path) -> dict:
  """Name, version, requirements and the newest protobuf gencode version of one wheel."""
  with zipfile.ZipFile(path) as z:
    meta_name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    meta = Parser().parsestr(z.read(meta_name).decode())
    gencode = max((tuple(int(x) for x in m.groups()) for n in z.namelist() if n.endswith("_pb2.py")
                   for m in [GENCODE.search(z.read(n))] if m), default=None)
  return {"name": canonicalize_name(meta["Name"]), "version": Version(meta["Version"]), "file": path,
          "requires": [Requirement(r) for r in meta.get_all("Requires-Dist") or []], "gencode": gencode}


def read_image(path: Path) -> dict[str, Version | None]:
  """Package name -> version (None where the list gives none)."""
  image = {}
  for line in path.read_text().splitlines():
    line = line.split("#", 1)[0].strip()
    if line:
      name, _, version = line.partition("==")
      image[canonicalize_name(name)] = Version(version) if version else None
  return image


def local_requires(name: str) -> list[Requirement]:
  """Requirements of ``name`` as installed here (to follow an image package's extras), or []."""
  try:
    return [Requirement(r) for r in importlib.metadata.requires(name) or []]
  except importlib.metadata.PackageNotFoundError:
    return []


def check(wheel_dir: Path, image_file: Path) -> int:
  files = sorted(wheel_dir.glob("*.whl"))
  optional = sorted((wheel_dir / "optional").glob("*.whl"))
  wheels, problems, notes = {}, [], []
  for f in files:
    w = read_wheel(f)
    if w["name"] in wheels:
      problems.append(f"two versions of {w['name']}: {wheels[w['name']]['file'].name} and {f.name}")
    wheels[w["name"]] = w
    tags = f.name[:-4].split("-")[-3:]
    pure = tags[2] == "any"
    if not pure and not (("cp312" in tags[0] or tags[1] == "abi3") and "manylinux" in tags[2]
                         and tags[2].endswith("x86_64")):
      problems.append(f"{f.name} is neither pure Python nor a CPython 3.12 manylinux x86_64 wheel")
  image = read_image(image_file)
  for name in wheels:
    if name in image:
      notes.append(f"{name} is carried although the image has it (carried version wins on PYTHONPATH)")

  roots = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
  todo = [(Requirement(r), "mmjax") for r in roots]
  seen: set[tuple[str, frozenset]] = set()
  via: dict[str, str] = {}
  while todo:
    req, parent = todo.pop()
    name = canonicalize_name(req.name)
    extras = frozenset(req.extras)
    if name in wheels:
      w = wheels[name]
      if req.specifier and not req.specifier.contains(w["version"], prereleases=True):
        problems.append(f"{parent} needs {req}, the wheel is {w['version']}")
      via.setdefault(name, parent)
      if (name, extras) not in seen:
        seen.add((name, extras))
        todo += [(r, name) for r in w["requires"] if applies(r, set(extras))]
    elif name in image:
      version = image[name]
      if version is not None and req.specifier and not req.specifier.contains(version, prereleases=True):
        problems.append(f"{parent} needs {req}, the image has {version}")
      if extras and (name, extras) not in seen:
        seen.add((name, extras))
        reqs = local_requires(name)
        if not reqs:
          notes.append(f"{name}[{','.join(sorted(extras))}] ({parent}): extras not followed (not installed "
                       "here)")
        todo += [(r, name) for r in reqs if r.marker is not None and applies(r, set(extras))
                 and not Marker(str(r.marker)).evaluate({**ENV, "extra": ""})]
    else:
      problems.append(f"{parent} needs {req}: neither in {wheel_dir}/ nor in the image")
  unused = sorted(set(wheels) - set(via))
  for name in unused:
    notes.append(f"{name} is carried but nothing requires it")

  total = sum(f.stat().st_size for f in files + optional)
  print(f"{'wheel':<72} {'KiB':>7}  needed by")
  for f in files + optional:
    w = read_wheel(f)
    print(f"{f.relative_to(wheel_dir)!s:<72} {f.stat().st_size / 1024:7.0f}  "
          f"{'(installed only if the image is older)' if f in optional else via.get(w['name'], '-')}")
  print(f"total {total / 2**20:.1f} MiB in {len(files) + len(optional)} wheels "
        f"({total / CARRY_LIMIT:.0%} of the 64 MiB carry limit, before the working tree itself)")
  gencodes = [w["gencode"] for w in wheels.values() if w["gencode"]]
  if gencodes:
    need = ".".join(map(str, max(gencodes)))
    print(f"protobuf runtime needed by the carried generated code: >= {need}")
    opt = [read_wheel(f) for f in optional if f.name.startswith("protobuf-")]
    if not opt:
      notes.append(f"no optional protobuf wheel: the image's protobuf must be >= {need}")
    elif opt[0]["version"] < Version(need):
      problems.append(f"optional protobuf {opt[0]['version']} is older than the generated code's {need}")
  if total > CARRY_LIMIT // 2:
    problems.append(f"the wheels take {total / 2**20:.1f} MiB, over half the 64 MiB carry limit")
  for n in notes:
    print("note:", n)
  for p in problems:
    print("PROBLEM:", p)
  print("complete" if not problems else f"{len(problems)} problem(s)")
  return 1 if problems else 0


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--wheels", type=Path, default=ROOT / ".whl")
  p.add_argument("--image", type=Path, default=ROOT / "scripts" / "device_image_packages.txt")
  args = p.parse_args(argv)
  if not sorted(args.wheels.glob("*.whl")):
    p.error(f"no wheels in {args.wheels}: run scripts/fetch_device_wheels.sh first")
  return check(args.wheels, args.image)


if __name__ == "__main__":
  sys.exit(main())
