#!/usr/bin/env bash
# The whole GPU path in one call (scripts/gpu_check.py): the CUDA tests, `ablate bench` for resnet20/56/110
# eager and with torch.compile + CUDA graphs, 4 co-located trials, 4 fused runs, a short Fashion-MNIST run;
# one summary, printed and written to $OUT (the device tool's output folder) or reports/gpu_check/.
# Within 8 minutes; on a machine without CUDA it says so and exits 0. Options: --smoke (CPU dry run), --budget S.
# Missing pydantic/pytest are installed from .whl/ (scripts/prepare_gpu_check.sh) into a temporary folder,
# without a package index; nothing else is installed, and Ray, MLflow and Optuna are never imported.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
deps="${ABLATE_DEPS_DIR:-${TMPDIR:-/tmp}/ablate-gpu-check-deps}"
export PYTHONPATH="$deps:$root${PYTHONPATH:+:$PYTHONPATH}"

missing=()
for module in pydantic pytest; do
  "$python" -c "import $module" 2>/dev/null || missing+=("$module")
done
if ((${#missing[@]})); then
  if ! compgen -G ".whl/*.whl" >/dev/null; then
    echo "gpu_check: ${missing[*]} not installed and no wheels in .whl/ (run scripts/prepare_gpu_check.sh" \
         "where there is a package index, and carry .whl)" >&2
    "$python" -c "import pydantic" 2>/dev/null || exit 1  # pytest alone missing: the tests item says so
  elif "$python" -m pip --version >/dev/null 2>&1; then
    echo "gpu_check: installing ${missing[*]} from .whl/ into $deps"
    "$python" -m pip install --quiet --no-warn-conflicts --disable-pip-version-check --no-index --find-links .whl --target "$deps" "${missing[@]}"
  else  # no pip: a wheel is a zip archive laid out for site-packages
    echo "gpu_check: no pip; unpacking .whl/*.whl into $deps"
    mkdir -p "$deps"
    for wheel in .whl/*.whl; do "$python" -m zipfile -e "$wheel" "$deps"; done
  fi
fi
exec "$python" scripts/gpu_check.py --out "${OUT:-$root/reports/gpu_check}" "$@"
