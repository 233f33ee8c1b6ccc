#!/usr/bin/env bash
# Fill the ignored folders that the GPU real-host tier carries to the GPU machine.
# Run HERE (a machine that reaches PyPI), from anywhere:
#
#   bash tests/realhost_gpu/prepare.sh [COMFYUI_DIR]      # default $LIPAR_COMFYUI or /work/comfy
#
#   .gpu/comfyui/        ComfyUI 0.8's Python tree (no venv, models, git, tests, tokenizer data, API nodes)
#   .gpu/wheels/         cp312 manylinux wheels of what ComfyUI 0.8 imports and the GPU machine lacks:
#                        comfy-kitchen (its ROCm library removed: 158 MB that an NVIDIA machine never loads),
#                        torchsde, trampoline
#   .gpu/comfy_overlay/  newer ComfyUI files for case 4 (checked here, not fetched: see its SOURCE.md)
#
# Then prints the size of what one GPU call carries (the limit is 64 MiB for the working tree and the
# carried paths together). Re-runnable; every folder is rebuilt from scratch.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
COMFY_SRC=${1:-${LIPAR_COMFYUI:-/work/comfy}}
G="$ROOT/.gpu"
PY=${PYTHON:-python3}
CK_VERSION=${CK_VERSION:-0.2.40}          # the version ComfyUI 0.8's CPU venv here runs with
TORCHSDE_VERSION=${TORCHSDE_VERSION:-0.2.6}
TRAMPOLINE_VERSION=${TRAMPOLINE_VERSION:-0.1.2}

if [ ! -f "$COMFY_SRC/main.py" ] || [ ! -d "$COMFY_SRC/comfy" ]; then
  echo "prepare.sh: $COMFY_SRC is not a ComfyUI checkout (no main.py / comfy/)" >&2
  exit 2
fi
git -C "$ROOT" check-ignore -q .gpu/ || { echo "prepare.sh: .gpu/ is not ignored by git; add it to .gitignore" >&2; exit 2; }
mkdir -p "$G"

echo "== ComfyUI tree: $COMFY_SRC -> .gpu/comfyui"
rm -rf "$G/comfyui"
mkdir -p "$G/comfyui"
# Only what importing ComfyUI's nodes.py, comfy.sd and the model code needs.
tar -C "$COMFY_SRC" -cf - \
  --exclude=./.venv --exclude=./.git --exclude=./.github --exclude=./.ci \
  --exclude=./models --exclude=./output --exclude=./user --exclude=./temp --exclude=./input \
  --exclude=./tests --exclude=./tests-unit --exclude=./custom_nodes --exclude=./script_examples \
  --exclude=./comfy_api_nodes --exclude=./alembic_db --exclude=./alembic.ini \
  --exclude=./comfy/sd1_tokenizer --exclude='./comfy/text_encoders/*_tokenizer' \
  --exclude='__pycache__' --exclude='*.pyc' \
  . | tar -C "$G/comfyui" -xf -
mkdir -p "$G/comfyui/custom_nodes" "$G/comfyui/models"
grep -o '"[0-9.]*"' "$G/comfyui/comfyui_version.py" | head -1 | sed 's/^/   ComfyUI version /'

echo "== wheels -> .gpu/wheels"
rm -rf "$G/wheels"
mkdir -p "$G/wheels"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  -d "$G/wheels" "comfy-kitchen==$CK_VERSION" "torchsde==$TORCHSDE_VERSION" "trampoline==$TRAMPOLINE_VERSION"
# comfy-kitchen ships a ROCm (HIP) library of 158 MB next to its CUDA one; drop it (its backend then
# reports itself unavailable, as on any machine without ROCm) and fix the wheel's RECORD.
"$PY" - "$G/wheels" <<'EOF'
import os, sys, zipfile
d = sys.argv[1]
for name in os.listdir(d):
    if not name.startswith("comfy_kitchen-"):
        continue
    src = os.path.join(d, name)
    tmp = src + ".tmp"
    drop = lambda n: n.startswith("comfy_kitchen/backends/hip/_C")
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            if drop(info.filename):
                print(f"   removed {info.filename} ({info.file_size / 2**20:.0f} MiB)")
                continue
            data = zin.read(info.filename)
            if info.filename.endswith(".dist-info/RECORD"):
                data = b"".join(l for l in data.splitlines(True) if not drop(l.decode().split(",")[0]))
            zout.writestr(info, data)
    os.replace(tmp, src)
EOF
ls -la "$G/wheels" | sed 1d

echo "== overlay .gpu/comfy_overlay (case 4)"
if [ -f "$G/comfy_overlay/comfy/ldm/wan/ar_model.py" ]; then
  echo "   present: $(cd "$G/comfy_overlay" && find . -name '*.py' | tr '\n' ' ')"
else
  mkdir -p "$G/comfy_overlay"
  echo "   MISSING comfy/ldm/wan/ar_model.py: case 4 reports 'skipped'. This machine reaches no GitHub;"
  echo "   write the file of a newer ComfyUI (repository comfyanonymous/ComfyUI, path comfy/ldm/wan/ar_model.py)"
  echo "   verbatim into .gpu/comfy_overlay/comfy/ldm/wan/ (never into the repository)."
fi

echo "== what one GPU call carries"
tree_bytes=$(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null | awk '{s+=$1} END {print s+0}')
carry_bytes=$(du -sb "$G/comfyui" "$G/wheels" "$G/comfy_overlay" | awk '{s+=$1} END {print s}')
du -sh "$G/comfyui" "$G/wheels" "$G/comfy_overlay" | sed 's/^/   /'
awk -v t="$tree_bytes" -v c="$carry_bytes" 'BEGIN {
  printf "   working tree %.1f MiB + carried %.1f MiB = %.1f MiB of 64 MiB\n", t/2^20, c/2^20, (t+c)/2^20 }'
echo
echo "GPU command (carry: .gpu/comfyui .gpu/wheels .gpu/comfy_overlay):"
echo "   bash tests/realhost_gpu/run.sh"
