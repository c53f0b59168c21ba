#!/usr/bin/env bash
# Download, on a machine with package access, what a bare GPU machine without internet needs to run
# `evalkit bench suite --preset gpu` beyond what it has (torch, transformers, pandas, matplotlib,
# typer, rich and their own requirements): lm-eval and its requirements, evalkit's non-image
# requirements (accelerate, gguf, safetensors, datasets, pyarrow, platformdirs, scipy, wonderwords), plus the
# SmolLM2 tokenizer the random-weight checkpoints are written with (a few MB; the weights stay here).
#
#   scripts/fetch_gpu_wheels.sh [DIR]          # DIR defaults to gpu-wheels/ (git-ignored)
#
# Then, on the GPU machine, from the repository root, offline:
#   pip install --no-index --no-deps --find-links gpu-wheels -r gpu-wheels/requirements.txt && \
#     PYTHONPATH=$PWD python cli.py bench suite --preset gpu --out bench-gpu --tokenizer gpu-wheels/tokenizer
#
# The wheels are resolved for this machine's Python (PYTHON_VERSION, default: this one) on
# manylinux x86_64; pure-Python packages published only as source are built into wheels here.
# SKIP leaves out requirements the GPU suite never imports that are too big for the 64 MiB the device
# tool carries (pyarrow 53 MB: datasets' storage; scipy 34 MB, scikit-learn 9 MB: lm-eval's metrics);
# hence --no-deps above. SKIP= (empty) downloads everything (123 MB), for a machine reached otherwise.
set -euo pipefail

DIR=${1:-gpu-wheels}
PYTHON=${PYTHON:-python}
PYTHON_VERSION=${PYTHON_VERSION:-$($PYTHON -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}
PLATFORM=${PLATFORM:-manylinux_2_28_x86_64}
WANT=(lm-eval accelerate gguf safetensors datasets pyarrow platformdirs scipy wonderwords)
PRESENT=(torch transformers pandas matplotlib typer rich)
SKIP=${SKIP-pyarrow scipy scikit-learn}

mkdir -p "$DIR"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Resolve both sets the same way (a dry run writes what it would install), then keep the difference:
# what the wanted packages need that the GPU machine's own packages do not bring already.
resolve() {  # resolve OUT.json PACKAGE...
  local out=$1; shift
  $PYTHON -m pip install --quiet --dry-run --ignore-installed --report "$out" "$@"
}
resolve "$work/want.json" "${WANT[@]}"
resolve "$work/present.json" "${PRESENT[@]}"
$PYTHON - "$work/want.json" "$work/present.json" "$SKIP" > "$work/needed.txt" <<'EOF'
import json, re, sys

def pins(path):
    items = json.load(open(path))["install"]
    return {re.sub(r"[-_.]+", "-", i["metadata"]["name"]).lower(): i["metadata"]["version"] for i in items}

want, present, skip = pins(sys.argv[1]), pins(sys.argv[2]), set(sys.argv[3].split())
for name, version in sorted(want.items()):
    if name not in present and name not in skip:
        print(f"{name}=={version}")
EOF

: > "$DIR/requirements.txt"
while read -r pin; do
  if ! $PYTHON -m pip download --quiet --no-deps --only-binary=:all: --platform "$PLATFORM" \
         --python-version "$PYTHON_VERSION" --implementation cp -d "$DIR" "$pin" 2>/dev/null \
     && ! $PYTHON -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
         --python-version "$PYTHON_VERSION" --implementation cp -d "$DIR" "$pin" 2>/dev/null; then
    echo "building a wheel of $pin (published as source only)"
    $PYTHON -m pip wheel --quiet --no-deps -w "$DIR" "$pin"
  fi
  echo "$pin" >> "$DIR/requirements.txt"
done < "$work/needed.txt"

# The tokenizer of the random checkpoints, with the config that makes the folder a model spec.
PYTHONPATH=${PYTHONPATH:-$PWD} $PYTHON - "$DIR/tokenizer" <<'EOF'
import sys
from transformers import AutoConfig
from evalkit.models.loading import load_tokenizer_only, resolve

source = resolve("smollm2-135m", log=lambda *a: None)
load_tokenizer_only("smollm2-135m", log=lambda *a: None).save_pretrained(sys.argv[1])
AutoConfig.from_pretrained(source.location).save_pretrained(sys.argv[1])
EOF

echo "wrote $(wc -l < "$DIR/requirements.txt") wheels and the tokenizer to $DIR ($(du -sh "$DIR" | cut -f1)):"
ls -S -s -h "$DIR" | head -n 12
