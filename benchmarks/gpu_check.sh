#!/usr/bin/env bash
# GPU suite of issues 13-14 (benchmarks/gpu_check.py): packed/unpacked parity (log-probs + gradients, fp32 + bf16,
# sdpa + flex), lipo's sampler vs model.generate (0.48B bf16, 256 rows), MFU and peak memory of lipo's DeepSpeed step
# for a 0.48B and a 1.26B Llama next to a plain-LM ceiling, and lipo vs TRL DPO. One H200: about 6-7 minutes, hard
# stop at 450 s.
#
#   bash benchmarks/gpu_check.sh [gpu_check.py options]      # --smoke: CPU code-path check; --perturb-parity
#
# Prints the result JSON as the last line; exit 1 on a parity failure or any other error ("error" in the JSON).
# Writes benchmarks/results/gpu_check.{json,md} and the table into docs/benchmarks.md; with $OUT set, also
# $OUT/gpu_check.json, $OUT/gpu_check.md, $OUT/benchmarks.md and $OUT/gpu_check.log (the GPU machine's tree does not
# come back, $OUT does).
#
# Wheels. The lent image (python 3.12, torch 2.11, transformers 5.17, accelerate, einops, msgpack, ninja, psutil,
# py-cpuinfo, pyarrow, pandas, xxhash, ...) lacks deepspeed, trl, datasets and a few pure-Python pieces. Prepare
# them once, from the repository root, on a machine that reaches PyPI (.whl/ is git-ignored; ~6.6 MiB in all):
#   PIP=.venv/bin/pip
#   $PIP wheel --no-deps -w .whl deepspeed==0.19.8          # builds a py3-none-any wheel (no ops compiled)
#   $PIP download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#       trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
#       hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
#       typing-extensions==4.16.0    # pydantic-core needs typing_extensions.Sentinel (4.16+); the image's may be older
# and run through the device tool with carry [".whl"]. Below, only wheels whose distribution the python lacks, or
# has in an older version, are installed into /tmp/lipo_gpu_site, put first on PYTHONPATH (one by one: a wheel for
# another python is skipped, not fatal); nothing of torch/transformers/numpy is carried, so those stay the image's.
# lipo itself is imported from platform/ (no install).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
SITE=${GPU_CHECK_SITE:-/tmp/lipo_gpu_site}
if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" - "$SITE" .whl/*.whl <<'EOF'
import importlib.metadata as md, re, subprocess, sys
try:
    from packaging.version import Version
except ImportError:  # a python without packaging: numeric release parts are enough here
    def Version(v):
        return tuple(int(x) for x in re.findall(r"\d+", v.split("+")[0])[:4])
site, wheels = sys.argv[1], sys.argv[2:]
def installed(dist):
    for name in (dist, dist.replace("_", "-")):
        try:
            return Version(md.version(name))
        except md.PackageNotFoundError:
            pass
    return None
for whl in wheels:
    dist, version = whl.rsplit("/", 1)[-1].split("-")[:2]
    have = installed(dist)
    if have is not None and have >= Version(version):  # e.g. pydantic needs typing_extensions >= 4.16
        continue
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
           "--no-cache-dir", "--upgrade", "--target", site, whl]
    if subprocess.run(cmd, capture_output=True).returncode != 0:
        print(f"[gpu_check.sh] skipped {whl}: pip would not install it here", file=sys.stderr)
    else:
        print(f"[gpu_check.sh] installed {dist} into {site}", file=sys.stderr)
EOF
    export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
fi
if ! "$PY" -c "import deepspeed" >/dev/null 2>&1; then
    echo "deepspeed is not importable and .whl/ did not provide it; see the header of $0" >&2
fi
export PYTHONPATH=$PWD/platform${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
[ -n "${OUT:-}" ] && mkdir -p "$OUT"
LOG=${OUT:+$OUT/gpu_check.log}
LOG=${LOG:-$(mktemp)}
timeout -k 10 450 "$PY" benchmarks/gpu_check.py "$@" 2>&1 | tee "$LOG"
rc=${PIPESTATUS[0]}
if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && [ "$rc" -ne 137 ] && [ "$(tail -c 2 "$LOG" | head -c 1)" != "}" ]; then
    echo "{\"error\": \"gpu_check.py exited with status $rc before printing its result (see the log above)\"}"
fi
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    # The partial JSON written so far is in benchmarks/results/gpu_check.json (and $OUT); this line says why it ended.
    msg="gpu_check.py hit the 450 s hard timeout; the results before it are kept"
    files=${OUT:+$OUT/gpu_check.json}
    case " $* " in *" --smoke "*) ;; *) files="benchmarks/results/gpu_check.json $files" ;; esac  # smoke: not results/
    for f in $files; do
        [ -f "$f" ] && "$PY" -c "import json,sys; p=sys.argv[1]; d=json.load(open(p)); d['error']=sys.argv[2]; \
json.dump(d, open(p, 'w'), indent=2)" "$f" "$msg"
    done
    echo "{\"error\": \"$msg\"}"
fi
exit "$rc"
