#!/usr/bin/env bash
# The checks that need a GPU, as one short script for a session that is lent one (run from the repo root):
# the CUDA tests (reference quantities on CUDA, no host synchronisation between flushes) and the overhead
# benchmark on the GPU. Expects .venv from `make test` with a CUDA build of torch, or a torch already there.
set -euo pipefail
PY=${PY:-.venv/bin/python}
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"
$PY -m pytest -q -rs tests/test_recorder_reference.py tests/test_host_sync.py -k "cuda"
$PY benchmarks/overhead.py --device cuda --size 256 --batch 16 --reps 5
