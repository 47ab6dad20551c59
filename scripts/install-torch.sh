#!/usr/bin/env bash
# Install PyTorch into the given interpreter without ever pulling a CUDA build onto a
# machine that has no NVIDIA GPU: PyPI's Linux torch wheel is the CUDA one (several GB).
set -euo pipefail
py="$1"
version="${TORCH_VERSION:-2.13.0}"
if "$py" -c "import torch" 2>/dev/null; then
    echo "torch $("$py" -c 'import torch; print(torch.__version__)') already installed"
    exit 0
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "NVIDIA GPU found: installing torch==$version (CUDA build)"
    "$py" -m pip install -q "torch==$version"
else
    # The CPU build: a local wheel where one is offered (pip's find-links), else the
    # PyTorch CPU index. Override with TORCH_CPU_INDEX for a mirror.
    echo "No NVIDIA GPU: installing torch==$version+cpu"
    # torch alone from the CPU index, then its dependencies from the usual index (asking
    # the CPU index for each of them is slow, and where it is unreachable, retried).
    "$py" -m pip install -q --no-deps "torch==$version+cpu" \
        --extra-index-url "${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
    "$py" -m pip install -q "torch==$version"  # satisfied by +cpu: installs only its dependencies
fi
