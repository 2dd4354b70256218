#!/usr/bin/env bash
# Fill a folder (default bench/gpu/wheels, git-ignored) with what the bare GPU machine lacks, for CPython 3.12 on
# x86-64: DeepSpeed built here as a wheel from its source distribution without compiled ops (its Python engine is
# what ZeRO-2 uses), the pure-Python or manylinux packages it, `datasets` and `evaluate` need and that machine
# does not have, at the versions this checkout's .venv runs. The bare image (CUDA, PyTorch, transformers,
# tokenizers, safetensors, tensorboard, numpy, scikit-learn; no network) lacks DeepSpeed, datasets, evaluate and
# of their dependencies hjson, pydantic (pydantic-core, annotated-types, typing-inspection), dill and multiprocess
# (PACKAGES below); it lacks flash-attn too, which run.sh measures only where it is importable. WikiText-2
# and SST-2 into bench/gpu/data, and the GPU configs' tokenizers into bench/gpu/tokenizers. The three folders are
# git-ignored: carry them. Prints JSON.
#   bash bench/gpu/wheels.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-bench/gpu/wheels}
PY=.venv/bin/python
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
rm -rf "$OUT" && mkdir -p "$OUT"
tmp=$(mktemp -d) && trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip download -q --no-deps --no-binary :all: "deepspeed==$(version deepspeed)" -d "$tmp"
# no build isolation: setup.py imports torch, the CPU build here is enough since no op is compiled
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation "$tmp"/deepspeed-*.tar.gz -w "$OUT"
PACKAGES=(datasets evaluate hjson pydantic pydantic-core annotated-types typing-inspection dill multiprocess)
pins=()
for p in "${PACKAGES[@]}"; do pins+=("$p==$(version "$p")"); done
"$PY" -m pip download -q --no-deps --only-binary :all: --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform any -d "$OUT" "${pins[@]}"
DATA=${LMSSL_DATA:-../shared/data}
rm -rf bench/gpu/data && mkdir -p bench/gpu/data/glue && cp -r "$DATA/wikitext-2" bench/gpu/data/
cp -r "$DATA/glue/SST-2" bench/gpu/data/glue/
# the GPU configs' tokenizers, trained here once so the GPU minutes go to the GPU (LMSSL_TOKENIZERS there)
rm -rf bench/gpu/tokenizers && cp -r tokenizers bench/gpu/tokenizers
train=bench/gpu/data/wikitext-2/train.txt
.venv/bin/lmssl tokenizer train "$train" --type bpe --vocab-size 50257 --out bench/gpu/tokenizers/wikitext2-bpe-50257 >/dev/null
.venv/bin/lmssl tokenizer train "$train" --type wordpiece --vocab-size 30522 \
    --out bench/gpu/tokenizers/wikitext2-wordpiece-30522 >/dev/null
"$PY" - "$OUT" <<'PY'
import json, sys
from pathlib import Path
files = sorted(Path(sys.argv[1]).glob("*.whl"))
total = sum(f.stat().st_size for f in files)
data = sum(f.stat().st_size for d in ("bench/gpu/data", "bench/gpu/tokenizers") for f in Path(d).rglob("*")
           if f.is_file())
print(json.dumps({"wheels": [f.name for f in files], "wheels_mib": round(total / 2**20, 2),
                  "data_mib": round(data / 2**20, 2), "fits_64_mib": total + data < 64 * 2**20}, indent=1))
PY
