#!/usr/bin/env bash
# Every CUDA path dlspec has, in one run and one table (bench/gpu_check.py says what it runs).
# Under 8 minutes on one H100.
#
#   bash bench/gpu_check.sh            on a machine with a GPU
#   bash bench/gpu_check.sh --dry-run  everything but CUDA, on the CPU at tiny sizes
#
# A GPU host with PyTorch's CUDA build but only the CPU build of onnxruntime gets ONNX
# Runtime's CUDA build carried along: run `bash ../shared/tools/ort-gpu-for-device.sh` here
# first (it packs the wheel into .ort/, git-ignored) and bring .ort/ to the host; this script
# unpacks it there. Without it, the inference rows run on ONNX Runtime's CPU provider and say so.
# Python: $PYTHON, else .venv/bin/python, else python3.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-}
if [[ -z $python ]]; then
    if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; else python=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [[ ${1:-} != --dry-run && -x .ort/unpack.sh ]]; then
    bash .ort/unpack.sh >&2
    export PYTHONPATH="/tmp/ortsite:$PYTHONPATH"
    export LD_LIBRARY_PATH="$(cat /tmp/ortsite/ldpath)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
exec "$python" bench/gpu_check.py "$@"
