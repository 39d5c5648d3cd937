#!/usr/bin/env bash
# GPU check of the scale-out path (issue 11), on a machine with one CUDA GPU and rlpost installed
# (pip install -e . with a CUDA build of torch):
#   bash comparisons/gpu_check.sh            # GRPO and PPO, 20 steps each, ~0.51B-parameter Qwen2 model
#   bash comparisons/gpu_check.sh --steps 5  # any option of comparisons/gpu_check.py
# bf16-mixed, FSDP2 through ModelParallelStrategy on 1 device, gradient checkpointing. Prints peak
# allocator memory, completion tokens/s and s/step per algorithm; writes comparisons/out/gpu_check/.
set -euo pipefail
cd "$(dirname "$0")/.."
python - <<'PY'
import torch
if not torch.cuda.is_available():
    raise SystemExit("gpu_check: no CUDA GPU visible to torch " + torch.__version__
                     + " (the CPU rehearsal is: python comparisons/gpu_check.py --cpu-smoke)")
print(f"gpu_check: torch {torch.__version__}, {torch.cuda.get_device_name(0)}, "
      f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
PY
export TOKENIZERS_PARALLELISM=false
exec python comparisons/gpu_check.py "$@"
