#!/usr/bin/env bash
# The GPU check, ready to run on one GPU machine (never in tests or CI): AWQ, 100 LoRA steps and the
# export of a Phi-3.5-mini-shaped model with random weights made there (4 decoder layers, each phase
# timed with its own timeout and extrapolated to 32 layers), printed against the Olive lab's A100
# figures (AWQ 8 min, 100 LoRA steps 6 min, export 5 min). About 10 minutes at most.
#
#   bench/gpu.sh OUT [WHEELS]     # OUT: results folder (written as it goes); WHEELS: default .cache/wheels
#   bench/gpu.sh --wheels DIR     # on a machine with PyPI: put the wheels the check needs in DIR
#
# The GPU machine needs PyTorch (CUDA), transformers, peft, onnx and onnxruntime, and no network:
# what else the phases import (autoawq, accelerate, onnx-ir, onnxruntime-genai: ~12 MB of wheels,
# sizes printed by --wheels) is installed from WHEELS into OUT/site with pip --no-index, for
# packages that are not importable already. AutoAWQ imports `datasets` only to download calibration
# sets; where it is missing a stub stands in (the check passes its calibration texts itself).
# Extra arguments after WHEELS go to bench/gpu_check.py (e.g. --layers 2, --budget 400;
# --device cpu --shape tiny runs every phase's code on a CPU).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
PY=${PYTHON:-python3}
WANT="autoawq==0.2.9 accelerate onnx-ir==1.1.0 onnxruntime-genai==0.18.0"

if [ "${1:-}" = "--wheels" ]; then
  DIR=${2:?usage: bench/gpu.sh --wheels DIR}
  mkdir -p "$DIR"
  # autoawq 0.2.9 is an sdist (pure Python): built into a wheel here, so the GPU machine builds nothing
  "$PY" -m pip download --no-deps -d "$DIR" $WANT || exit 1
  for sd in "$DIR"/autoawq-*.tar.gz; do
    [ -f "$sd" ] && "$PY" -m pip wheel --no-deps --no-build-isolation -w "$DIR" "$sd" && rm -f "$sd"
  done
  du -b "$DIR"/* | awk '{printf "%8.1f MB  %s\n", $1/1e6, $2; t+=$1} END {printf "%8.1f MB  in all (limit: 64 MiB)\n", t/1e6}'
  exit 0
fi

OUT=${1:?usage: bench/gpu.sh OUT [WHEELS] [gpu_check.py options]}
shift
WHEELS=${1:-$REPO/.cache/wheels}
[ $# -gt 0 ] && shift
mkdir -p "$OUT/site" "$OUT/stub" || { echo "gpu check: cannot create $OUT"; exit 2; }
OUT=$(cd "$OUT" && pwd)
echo "gpu check: results in $OUT (started $(date -u +%FT%TZ))" | tee "$OUT/setup.log"

for mod in torch transformers peft onnx onnxruntime; do
  "$PY" -c "import $mod" 2>/dev/null || { echo "gpu check: $mod is not importable with $PY; it must be installed" | tee -a "$OUT/setup.log"; exit 2; }
done
need=()
for pair in awq:autoawq accelerate:accelerate onnx_ir:onnx_ir onnxruntime_genai:onnxruntime_genai; do
  mod=${pair%%:*}; whl=${pair##*:}
  "$PY" -c "import $mod" 2>/dev/null && continue
  found=$(ls "$WHEELS"/${whl}-*.whl 2>/dev/null | head -1)
  if [ -z "$found" ]; then
    echo "gpu check: $mod is not installed and $WHEELS has no ${whl} wheel (bench/gpu.sh --wheels DIR makes them)" | tee -a "$OUT/setup.log"
    exit 2
  fi
  need+=("$found")
done
if [ ${#need[@]} -gt 0 ]; then
  "$PY" -m pip install --no-index --no-deps --target "$OUT/site" "${need[@]}" >>"$OUT/setup.log" 2>&1 \
    || { echo "gpu check: installing ${need[*]} failed (see $OUT/setup.log)"; exit 2; }
fi
if ! "$PY" -c "import datasets" 2>/dev/null; then
  mkdir -p "$OUT/stub/datasets"
  printf 'def load_dataset(*args, **kwargs):\n    raise RuntimeError("no datasets here: the GPU check passes its own calibration texts")\n' \
    > "$OUT/stub/datasets/__init__.py"
fi
export PYTHONPATH="$OUT/site:$REPO/src:$OUT/stub${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
cd "$REPO" && timeout 590 "$PY" "$HERE/gpu_check.py" "$OUT/work" "$@"
rc=$?
cp "$OUT/work/summary.md" "$OUT/summary.md" 2>/dev/null
[ $rc -eq 124 ] && echo "gpu check: stopped at the 590 s limit; the phases finished so far are in $OUT/work/phases.jsonl"
exit $rc
