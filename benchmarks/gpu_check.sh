#!/usr/bin/env bash
# The checks that need a GPU, as one short script (under 5 minutes on one H100) for a session lent one.
# Run from the repository root: `bash benchmarks/gpu_check.sh` (PY=python to pick the interpreter; it needs
# torch with CUDA, pandas, pyarrow, scipy, matplotlib, seaborn and pytest). It runs, and goes on past failures:
#   1. every recorded quantity on CUDA against the brute-force reference (all optimizer/clip/scaler/autocast
#      set-ups; gradient-less steps; the UpdateAlignment plug-in), and no host synchronisation inside any recorder hook (sync-debug mode "error": plain loop,
#      GradScaler + fp16 autocast, bf16 autocast + attribution + probe, fully_shard over NCCL);
#   2. the DDP / FSDP tests on CPU (gloo), the compile tests and the batched dot products, with this machine's
#      torch; analyses/train.py under torchrun on the GPU (NCCL, attribution, AMP, probe);
#   3. the overhead benchmark on the GPU at two input sizes (256²: the step is bound by kernel launches, the
#      worst case for a recorder that adds launches; 1024²: the GPU is busy, as in real mammography training).
set -uo pipefail
PY=${PY:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('torch', torch.__version__, torch.cuda.get_device_name())" || exit 1
$PY -m pytest -q -rs -p no:cacheprovider tests/record/test_recorder_reference.py -k cuda || status=1
# the CUDA cases of the newer tests: steps without gradients (BatchedDots' empty path), the UpdateAlignment plug-in
$PY -m pytest -q -rs -p no:cacheprovider tests/record/test_gradless.py tests/record/test_update_alignment.py -k cuda || status=1
$PY -m pytest -q -rs -p no:cacheprovider tests/record/test_cuda.py tests/record/test_host_sync.py tests/record/test_distributed.py tests/record/test_compile.py tests/record/test_kernels.py || status=1
$PY benchmarks/overhead.py --device cuda --size 256 --batch 16 --reps 5 --steps 20 || status=1
# the reproduction script under torchrun on the GPU: NCCL, DDP, shared weights with attribution, AMP, probe
rm -rf /tmp/gpu_check_run
timeout 150 $PY -m torch.distributed.run --standalone --nproc-per-node=1 analyses/train.py --dataset phantom --condition shared \
  --n-cases 120 --image-size 32 --width 0.25 --epochs 1 --batch-size 16 --amp --probe-every 2 --device cuda \
  --root /tmp/gpu_check_data --out /tmp/gpu_check_run > /tmp/gpu_check_train.log 2>&1 || { tail -20 /tmp/gpu_check_train.log; status=1; }
$PY -c "import dynamics; m = dynamics.read_meta('/tmp/gpu_check_run'); p, s = dynamics.load('/tmp/gpu_check_run');
assert not m.get('errors'), m['errors']; print('torchrun on CUDA:', len(s), 'steps,', int(p['attributed'].sum()), 'attributed rows, notes', m['notes'])" || status=1
$PY benchmarks/overhead.py --device cuda --size 1024 --batch 16 --reps 3 --steps 20 || status=1
exit $status
