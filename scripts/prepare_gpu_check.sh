#!/usr/bin/env bash
# Prepare the working tree for scripts/gpu_check.sh on a bare GPU machine (no internet, no pydantic/pytest):
#   - .whl/: wheels of pydantic (+ pydantic_core, annotated_types, typing_extensions, typing_inspection)
#     and pytest (+ iniconfig, packaging, pluggy, pygments) for CPython $PY (default 3.12), manylinux x86_64;
#   - data/fashion-mnist/: a copy of the four Fashion-MNIST files when this machine has them.
# Both folders are git-ignored; pass them to the device tool as `carry` (docs/BENCHMARKS.md, "GPU check").
# Usage: bash scripts/prepare_gpu_check.sh [PYTHON_VERSION]      (needs a package index: run it here, not there)
set -euo pipefail
cd "$(dirname "$0")/.."
py="${1:-3.12}"
abi="cp${py/./}"

rm -rf .whl && mkdir -p .whl
python3 -m pip download --quiet --dest .whl --only-binary=:all: --python-version "$py" --implementation cp \
  --abi "$abi" --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  "pydantic>=2.7" "pytest>=8"

fashion=/usr/share/datasets/fashion-mnist
if [ -f "$fashion/train-images-idx3-ubyte.gz" ]; then
  mkdir -p data/fashion-mnist && cp "$fashion"/*-ubyte.gz data/fashion-mnist/
else
  echo "note: no Fashion-MNIST at $fashion; the real-data item of the check will use synthetic images" >&2
fi

ls .whl
du -ch .whl data/fashion-mnist 2>/dev/null | tail -1 | sed 's/total/to carry (64 MiB at most, with the tracked files)/'
echo 'device tool: run(command="bash scripts/gpu_check.sh", carry=[".whl", "data/fashion-mnist"], timeout_s=600)'
