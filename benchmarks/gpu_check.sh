#!/usr/bin/env bash
# GPU check: one ZeRO-3 bf16 LiPO-lambda run of a ~0.48B Llama at K=8 (packed vs unpacked), < 5 minutes.
#
#   bash benchmarks/gpu_check.sh [gpu_check.py options]
#
# Prints the result JSON as the last line; writes benchmarks/results/gpu_check.json and, when $OUT is set,
# $OUT/gpu_check.json. Needs python3 with torch (CUDA), transformers 5.x and deepspeed. If deepspeed is missing
# there (the lent GPU image has none), carry wheels in .whl/ (ignored by git) -- prepare them once on this machine:
#   /work/venv/bin/pip wheel --no-deps -w .whl deepspeed==0.19.8
#   /work/venv/bin/pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#       hjson pydantic==2.14.4 pydantic-core==2.50.5 annotated-types typing-inspection
# and run it through the device tool with carry [".whl"]. lipo itself is imported from platform/ (no install).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
if ! "$PY" -c "import deepspeed" >/dev/null 2>&1; then
    if ls .whl/*.whl >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    else
        echo "deepspeed is not importable and no .whl/ wheels were carried; see the header of $0" >&2
    fi
fi
export PYTHONPATH=$PWD/platform${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
timeout 290 "$PY" benchmarks/gpu_check.py "$@"
rc=$?
[ $rc -eq 124 ] && echo '{"error": "gpu_check.py timed out after 290 s"}'
exit $rc
