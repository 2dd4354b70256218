#!/usr/bin/env bash
# The one command for a bare GPU machine (no network, no flash-attn/DeepSpeed/datasets/evaluate):
#   bash bench/gpu/run.sh OUT_DIR        -> OUT_DIR/gpu_check.json
# Prepare on a connected machine first: bash bench/gpu/wheels.sh (fills bench/gpu/wheels, bench/gpu/data and
# bench/gpu/tokenizers), and carry the three folders with the checkout.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:?usage: bash bench/gpu/run.sh OUT_DIR}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
SITE=$(mktemp -d)
if compgen -G "bench/gpu/wheels/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-deps --no-index --target "$SITE" bench/gpu/wheels/*.whl
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -m pip install -q --no-deps --no-index --no-build-isolation -e . \
    || echo "run.sh: pip install -e . failed; check.py runs lmssl from the checkout" >&2
[ -d bench/gpu/data ] && export LMSSL_DATA="$PWD/bench/gpu/data"
[ -d bench/gpu/tokenizers ] && export LMSSL_TOKENIZERS="$PWD/bench/gpu/tokenizers"
"$PY" bench/gpu/check.py --out "$OUT/gpu_check.json"
