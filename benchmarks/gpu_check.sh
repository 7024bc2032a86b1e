#!/usr/bin/env bash
# The checks that need a GPU, as one short script (under 5 minutes on one H100) for a session lent one.
# Run from the repository root: `bash benchmarks/gpu_check.sh` (PY=python to pick the interpreter; it needs
# torch with CUDA, pandas, pyarrow, scipy, matplotlib, seaborn and pytest). It runs, and goes on past failures:
#   1. every recorded quantity on CUDA against the brute-force reference (all optimizer/clip/scaler/autocast
#      set-ups), and no host synchronisation inside any recorder hook (sync-debug mode "error": plain loop,
#      GradScaler + fp16 autocast, bf16 autocast + attribution + probe, fully_shard over NCCL);
#   2. the DDP / FSDP tests on CPU (gloo) and the compile tests, with this machine's torch;
#   3. the overhead benchmark on the GPU at two input sizes.
set -uo pipefail
PY=${PY:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('torch', torch.__version__, torch.cuda.get_device_name())" || exit 1
$PY -m pytest -q -rs -p no:cacheprovider tests/test_recorder_reference.py -k cuda || status=1
$PY -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py tests/test_host_sync.py tests/test_distributed.py tests/test_compile.py || status=1
for size in 256 512; do
  $PY benchmarks/overhead.py --device cuda --size $size --batch 16 --reps 5 --steps 20 || status=1
done
exit $status
