#!/usr/bin/env bash
# PyTorch CPU baseline for the speed comparison with Tessera.
#
#   bench/pytorch.sh [pytorch_gpt2.py args...]      e.g. bench/pytorch.sh --config all --threads 2
#   bench/pytorch.sh --config S --precision bf16 --max-seconds 600 --json
#   bench/pytorch.sh --config llama-S --json          a Llama size: runs bench/pytorch_llama.py
#
# Creates bench/.venv on first use, installs torch from PyPI into it, then runs bench/pytorch_gpt2.py
# with the given arguments (all passed through: --config, --threads, --steps, --warmup, --precision
# fp32|bf16, --max-seconds S, --json). A --config naming a Llama size (llama-S, llama-M, llama-L,
# llama-G, or llama-all for all four) runs bench/pytorch_llama.py instead, with the same arguments
# (llama-all passed as all). See bench/README.md for how torch is installed and why.
#
# Environment:
#   PYTHON           interpreter used to create the venv (default: python3)
#   TORCH_PIP_SPEC   if set, install exactly this with a plain `pip install` (e.g. "torch==2.15.0", or
#                    the path of a CPU-only wheel) instead of the lean PyPI install below.
#   TESSERA_HF_VENV  if set, use the venv of scripts/hf_venv.sh in that directory instead of bench/.venv
#                    (created by scripts/hf_venv.sh when its torch does not work; it prefers a CPU-only wheel).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
[ -n "${TESSERA_HF_VENV:-}" ] && venv="$TESSERA_HF_VENV"
py="${PYTHON:-python3}"
pip=("$venv/bin/pip" install --disable-pip-version-check)

# The script for --config: pytorch_llama.py for a llama-* size, else pytorch_gpt2.py.
script="$here/pytorch_gpt2.py"
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
        --config) [ $((i + 1)) -lt ${#args[@]} ] && config="${args[i + 1]}" ;;
        --config=*) config="${args[i]#--config=}" ;;
        *) continue ;;
    esac
    case "${config:-}" in
        llama-all) script="$here/pytorch_llama.py"; [ "${args[i]}" = --config ] && args[i + 1]=all || args[i]=--config=all ;;
        llama-*) script="$here/pytorch_llama.py" ;;
        *) script="$here/pytorch_gpt2.py" ;;
    esac
done

torch_works() {
    "$venv/bin/python" - <<'PY' >/dev/null 2>&1
import torch
import torch.nn.functional as F
a = torch.randn(64, 64, requires_grad=True)
(a @ a).sum().backward()
q = torch.randn(1, 2, 8, 16)
F.scaled_dot_product_attention(q, q, q, is_causal=True)
assert torch.isfinite(a.grad).all().item()
PY
}

# torch's own Requires-Dist, minus what eager CPU execution never loads: triton (the GPU kernel compiler,
# ~1 GB), cuda-bindings (Python CUDA bindings), and the cusolver/nvtx CUDA libraries, which torch only
# dlopens on first GPU use. The other CUDA runtime wheels stay: the PyPI Linux wheel's libtorch_cuda.so is
# linked against them, so `import torch` fails without them even on a machine with no GPU.
lean_requirements() {
    "$venv/bin/python" - <<'PY'
import re
from importlib.metadata import requires
SKIP = {"triton", "cuda-bindings"}
SKIP_EXTRAS = {"cusolver", "nvtx"}
for r in requires("torch") or []:
    if "extra ==" in r:
        continue
    if re.split(r"[\[<>=!~;\s]", r, maxsplit=1)[0].lower() in SKIP:
        continue
    m = re.match(r"^([A-Za-z0-9_.-]+)\[([^\]]*)\](.*)$", r)
    if m:
        extras = [e for e in m.group(2).split(",") if e.strip() not in SKIP_EXTRAS]
        r = f"{m.group(1)}[{','.join(extras)}]{m.group(3)}"
    print(r)
PY
}

if [ -n "${TESSERA_HF_VENV:-}" ]; then
    if ! torch_works; then
        echo "pytorch.sh: torch does not work in $venv; running scripts/hf_venv.sh $venv" >&2
        "$here/../scripts/hf_venv.sh" "$venv" >/dev/null || { echo "pytorch.sh: scripts/hf_venv.sh failed" >&2; exit 1; }
        torch_works || { echo "pytorch.sh: torch still fails in $venv" >&2; exit 1; }
    fi
    exec "$venv/bin/python" "$script" "${args[@]}"
fi

if [ ! -x "$venv/bin/python" ]; then
    echo "pytorch.sh: creating $venv" >&2
    "$py" -m venv "$venv"
fi

if ! torch_works; then
    if [ -n "${TORCH_PIP_SPEC:-}" ]; then
        echo "pytorch.sh: installing $TORCH_PIP_SPEC" >&2
        "${pip[@]}" "$TORCH_PIP_SPEC" numpy >&2
    else
        echo "pytorch.sh: installing torch (lean: no triton/cuda-bindings; still ~4 GB of CUDA runtime wheels)" >&2
        "${pip[@]}" --no-deps torch >&2
        reqs="$(mktemp)"
        lean_requirements >"$reqs"
        "${pip[@]}" numpy -r "$reqs" >&2 || true
        rm -f "$reqs"
        if ! torch_works; then
            echo "pytorch.sh: lean install does not import; falling back to a full 'pip install torch'" >&2
            "${pip[@]}" torch numpy >&2
        fi
    fi
    if ! torch_works; then
        echo "pytorch.sh: torch was installed but 'import torch' or a CPU step fails:" >&2
        "$venv/bin/python" -c 'import torch; print(torch.randn(4, 4) @ torch.randn(4, 4))' >&2 || true
        exit 1
    fi
fi

exec "$venv/bin/python" "$script" "${args[@]}"
