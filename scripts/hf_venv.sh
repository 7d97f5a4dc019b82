#!/usr/bin/env bash
# A Python virtual environment with transformers, torch and safetensors, for checking Hugging Face exports
# (docs/export.md). Created on first use, reused afterwards; prints the venv's python path as its last line.
#
#   scripts/hf_venv.sh [VENV_DIR]      default: $TESSERA_HF_VENV, else ~/.cache/tessera-hf-venv
#
# torch: a CPU-only wheel (torch-*+cpu-<python tag>-*.whl) in a directory pip's find-links names (pip's
# config or PIP_FIND_LINKS) is used when there is one (~190 MB, 1.2 GB installed); otherwise torch comes
# from PyPI, whose Linux wheel is a CUDA build that needs its CUDA runtime wheels even to import on a CPU
# (several GB). Set TESSERA_HF_TORCH to install exactly that instead (a version spec or a wheel's path).
#
# Exit status: 0 ready; 3 pip cannot reach the package index (the caller may skip); 1 anything else.
set -uo pipefail

home="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
venv="${1:-${TESSERA_HF_VENV:-$home/.cache/tessera-hf-venv}}"
py="${PYTHON:-python3}"
transformers_spec="transformers==5.23.0"   # the version the reference oracle (shared/reference) was made with
log() { echo "hf_venv: $*" >&2; }

works() {
    [ -x "$venv/bin/python" ] && "$venv/bin/python" -c \
        'import torch, safetensors, transformers; from transformers import GPT2LMHeadModel; torch.ones(2) @ torch.ones(2)' \
        >/dev/null 2>&1
}

# One installer at a time (tests may run in parallel processes).
mkdir -p "$(dirname "$venv")" || exit 1
exec 9>"$venv.lock"
flock 9 || exit 1

if works && [ "$(cat "$venv/.tessera-spec" 2>/dev/null)" = "$transformers_spec" ]; then
    echo "$venv/bin/python"
    exit 0
fi

# pip's output is kept; a failure caused by the network (no route, no DNS, refused, timed out) exits 3.
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
network_error() {
    grep -Eq "Could not fetch URL|Failed to establish a new connection|Temporary failure in name resolution|Name or service not known|Network is unreachable|Connection refused|ConnectTimeout|Read timed out|No route to host" "$out"
}
pip_install() {
    log "pip install $*"
    if ! "$venv/bin/python" -m pip install --disable-pip-version-check --progress-bar off --retries 2 "$@" >"$out" 2>&1; then
        tail -n 30 "$out" >&2
        if network_error; then log "pip cannot reach the package index"; exit 3; fi
        log "pip install failed"; exit 1
    fi
}

start=$(date +%s)
rm -rf "$venv"
log "creating $venv with $("$py" --version 2>&1)"
"$py" -m venv "$venv" || { log "cannot create a virtual environment with $py"; exit 1; }

torch_spec="${TESSERA_HF_TORCH:-}"
if [ -z "$torch_spec" ]; then
    tag="$("$venv/bin/python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
    links="${PIP_FIND_LINKS:-} $("$venv/bin/python" -m pip config list 2>/dev/null | sed -n "s/.*find-links='\(.*\)'/\1/p")"
    for d in $links; do
        d="${d#file://}"
        [ -d "$d" ] || continue
        w="$(ls "$d"/torch-*+cpu-"$tag"-"$tag"-*linux*_x86_64.whl 2>/dev/null | sort -V | tail -n 1)"
        [ -n "$w" ] && torch_spec="$w"
    done
fi
if [ -n "$torch_spec" ]; then
    log "torch from $torch_spec"
    pip_install "$torch_spec" "$transformers_spec" safetensors
else
    log "no CPU-only torch wheel in pip's find-links: torch from PyPI with its CUDA runtime wheels (several GB)"
    pip_install torch "$transformers_spec" safetensors
fi
works || { log "installed, but 'import torch, transformers' fails:"; "$venv/bin/python" -c 'import torch, transformers' >&2; exit 1; }
echo "$transformers_spec" > "$venv/.tessera-spec"
log "ready in $(( $(date +%s) - start )) s: $("$venv/bin/python" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'), $(du -sh "$venv" | cut -f1) installed"
echo "$venv/bin/python"
