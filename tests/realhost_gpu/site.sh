# Sourced by the GPU machine's one-command scripts (tests/realhost_gpu/run.sh, benchmarks/whole_graph.sh):
# checks the carried folders, installs the carried wheels (comfy-kitchen, torchsde, trampoline: what
# ComfyUI 0.8 imports and the machine lacks) into .gpu/site once per set of wheels, and puts them on
# PYTHONPATH. Expects ROOT (the repository) and SCRIPT (the caller's name, for messages); sets PY.
cd "$ROOT" || exit 2
PY=${PYTHON:-python3}
SITE=.gpu/site
if [ ! -d .gpu/comfyui ] || [ ! -d .gpu/wheels ]; then
  echo "$SCRIPT: .gpu/comfyui or .gpu/wheels is missing: run tests/realhost_gpu/prepare.sh where PyPI is" \
       "reachable and carry .gpu/comfyui .gpu/wheels .gpu/comfy_overlay" >&2
  exit 2
fi
stamp="$(cd .gpu/wheels && ls -1 *.whl | sort | tr '\n' ' ')"
if [ ! -f "$SITE/.installed" ] || [ "$(cat "$SITE/.installed")" != "$stamp" ]; then
  rm -rf "$SITE"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .gpu/wheels/*.whl || exit 3
  mkdir -p "$SITE"
  echo "$stamp" > "$SITE/.installed"
fi
export PYTHONPATH="$ROOT/$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

# out_path DEFAULT ARGS...: the value of the last --out / --out=... in ARGS, else DEFAULT.
out_path() {
  local out=$1 prev="" a
  shift
  for a in "$@"; do
    case "$a" in --out=*) out="${a#--out=}";; esac
    [ "$prev" = "--out" ] && out="$a"
    prev="$a"
  done
  echo "$out"
}
