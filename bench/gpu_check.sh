#!/usr/bin/env bash
# Every CUDA path dlspec has, in one run and one table (bench/gpu_check.py says what it runs).
# Under 8 minutes on one H100.
#
#   bash bench/gpu_check.sh            on a machine with a GPU
#   bash bench/gpu_check.sh --dry-run  everything but CUDA, on the CPU at tiny sizes
#   bash bench/gpu_check.sh --pack     here, before: download the wheels of what dlspec needs
#                                      and the GPU image lacks (lark, pydantic and theirs, at
#                                      this Python's versions, for CPython 3.12) into .whl/
#
# On the GPU host, wheels found in .whl/ (git-ignored: bring it along) are installed into
# /tmp/site first.
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
if [[ ${1:-} == --pack ]]; then
    exclude=$(git rev-parse --git-path info/exclude)
    grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
    wanted=$("$python" -c 'from importlib.metadata import version as v
print(*(f"{n}=={v(n)}" for n in ("lark", "pydantic", "pydantic_core", "annotated_types", "typing_inspection")))')
    # shellcheck disable=SC2086  # one argument per package
    "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl $wanted
    ls .whl
    exit 0
fi
gpu=$(compgen -G '/dev/nvidia[0-9]*' || true)  # the carried packages serve a GPU host only
if [[ ${1:-} != --dry-run && -n $gpu ]] && compgen -G '.whl/*.whl' >/dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl >&2
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
if [[ ${1:-} != --dry-run && -n $gpu && -x .ort/unpack.sh ]]; then
    bash .ort/unpack.sh >&2
    export PYTHONPATH="/tmp/ortsite:$PYTHONPATH"
    export LD_LIBRARY_PATH="$(cat /tmp/ortsite/ldpath)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
exec "$python" bench/gpu_check.py "$@"
