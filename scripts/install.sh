#!/usr/bin/env bash
# Install ablate and everything it needs on a fresh machine (Debian/Ubuntu, Python >= 3.11).
#   - the Fashion-MNIST data set from Debian's package (real data that needs no download);
#   - torch + a matching torchvision, pinned together: an unpinned torchvision would pull a newer,
#     multi-GB CUDA torch. Set ABLATE_TORCH_SPEC to choose another pair (e.g. a CUDA build on a GPU box);
#   - the project itself with its test extra.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist
  else
    echo "note: Fashion-MNIST not found at /usr/share/datasets/fashion-mnist;" \
         "install Debian's dataset-fashion-mnist (as root) or pass --data-root" >&2
  fi
fi

if ! python3 -c "import torch" 2>/dev/null; then
  python3 -m pip install -q ${ABLATE_TORCH_SPEC:-torch==2.13.0 torchvision==0.28.0}
elif ! python3 -m pip show -q torchvision >/dev/null 2>&1; then
  torch_version=$(python3 -c "import torch; print(torch.__version__.split('+')[0])")
  if [ "$torch_version" = "2.13.0" ]; then python3 -m pip install -q torchvision==0.28.0; fi
fi
python3 -m pip install -q -e ".[dev]"
echo "ablate installed: $(python3 -c 'import ablate; print(ablate.__version__)')"
