#!/usr/bin/env bash
# The virtualenv benchmarks/peers.py runs in (default .venv-peers): dynamics plus the peers it is timed
# against, pinned in benchmarks/peers-requirements.txt. Kept apart from .venv so that `make test` never
# needs them. Usage: bash benchmarks/peers_env.sh [VENV]   (PYTHON=python3.11 picks the interpreter)
set -euo pipefail
VENV=${1:-.venv-peers}
PYTHON=${PYTHON:-python3.11}
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -r benchmarks/peers-requirements.txt
"$VENV/bin/python" -m pip install --quiet --no-deps -e .
"$VENV/bin/python" -m pip install --quiet torch==2.13.0 numpy pandas scipy matplotlib seaborn pyarrow tqdm
# BackPACK pulls in a torchvision wheel built for another torch, which breaks lightning's import beside the
# CPU torch; BackPACK needs torchvision only in its examples
"$VENV/bin/python" -m pip uninstall --quiet -y torchvision || true
"$VENV/bin/python" -c "import torch, lightning, wandb, cockpit, backpack, dynamics; from torch.utils.tensorboard import SummaryWriter; print('peers env ready: torch', torch.__version__)"
