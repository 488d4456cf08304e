#!/usr/bin/env bash
# Downloads, into .whl/ at the repository root, the wheels of the Python packages mmjax needs that the lent
# GPU machine's image lacks (Python 3.12, manylinux x86_64), so that benchmarks/run_device.sh can install
# them there without network: `run` with carry [".whl"] (benchmarks/README.md, "Running on a lent GPU").
#
#   bash scripts/fetch_device_wheels.sh          # then: python3 scripts/check_device_wheels.py
#
# The list is mmjax's runtime requirements (pyproject.toml) and their requirements, closed over, less what
# scripts/device_image_packages.txt (the image's packages) holds; versions are the ones mmjax is tested with
# here. promise has no wheel on PyPI (source only, pure Python): it is built here into a py3 wheel.
# protobuf goes to .whl/optional/: run_device.sh installs it only where the image's protobuf is older than
# the generated code of these wheels needs (check_device_wheels.py prints that minimum).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}

WHEELS=(
  tensorflow-datasets==4.9.10
  array-record==0.8.6         # tensorflow-datasets (Linux), grain
  dm-tree==0.1.10             # tensorflow-datasets
  immutabledict==4.3.1        # tensorflow-datasets
  simple-parsing==0.1.9       # tensorflow-datasets
  docstring-parser==0.18.0    # simple-parsing
  tensorflow-metadata==1.21.0 # tensorflow-datasets
  googleapis-common-protos==1.76.0  # tensorflow-metadata
  termcolor==3.3.0            # tensorflow-datasets
  toml==0.10.2                # tensorflow-datasets
  grain==0.2.18
  portpicker==1.6.0           # grain
  ml-collections==1.1.0
  tensorboardX==2.6.5
  importlib-resources==7.1.0  # imported by tensorflow-datasets, which does not declare it
)
SOURCE_ONLY=(promise==2.3)    # tensorflow-datasets
OPTIONAL=(protobuf==6.33.5)   # the newest generated code above (googleapis-common-protos) needs >= 6.33.5

PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$p")
done
download() {  # DEST SPEC...
  local dest=$1; shift
  "$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --abi cp312 --abi abi3 --abi none "${PLATFORMS[@]}" -d "$dest" "$@"
}

rm -rf .whl
mkdir -p .whl/optional
download .whl "${WHEELS[@]}"
"$PY" -m pip wheel -q --disable-pip-version-check --no-deps -w .whl "${SOURCE_ONLY[@]}"
download .whl/optional "${OPTIONAL[@]}"
for f in .whl/*.whl; do  # a wheel built here must be pure Python to run there
  case $f in *-py3-none-any.whl | *-py2.py3-none-any.whl | *cp312*manylinux*x86_64*.whl | *abi3*manylinux*x86_64*.whl) ;;
    *) echo "fetch_device_wheels: $f is not a Python 3.12 manylinux x86_64 or pure wheel" >&2; exit 1 ;;
  esac
done
ls -l .whl .whl/optional
du -sh .whl
grep -qx '/.whl/' .gitignore || echo "note: add /.whl/ to .gitignore (or .git/info/exclude) so the wheels stay out of git"
