#!/usr/bin/env python3
"""Llama training-step throughput in plain PyTorch on the CPU: the baseline Tessera's Llama sizes are compared with.

    python bench/pytorch_llama.py --config all --threads 2 [--steps 5] [--warmup 2] [--precision fp32|bf16]
                                  [--max-seconds S] [--json]

The twin of bench/pytorch_gpt2.py (same CLI, step, timing, precision and JSON keys) for the Llama sizes of
`tessera bench`. The model is written out plainly (no transformers, no torch.compile), with the parameter names
of Hugging Face's LlamaForCausalLM (its state dict loads into one): a token embedding (no position embedding),
pre-norm blocks with RMSNorm (eps 1e-5, weight only), q/k/v projections without bias (q: d -> H*hd, k and v:
d -> KV*hd), rotary position embeddings in Hugging Face's rotate-half convention (theta 10000) on q and k,
causal attention through F.scaled_dot_product_attention(is_causal=True) with enable_gqa=True when the
installed torch has it (>= 2.5; else k and v are expanded to H heads with repeat_interleave first; the info
line and the JSON "attention" key say which), an output projection o_proj (d -> d, no bias), a SwiGLU MLP
down(silu(gate(x)) * up(x)) of width F without biases, a final RMSNorm and an untied LM head (lm_head,
d -> vocab, no bias). RMSNorm is torch's nn.RMSNorm when it exists (torch >= 2.4), else written out as
Hugging Face's LlamaRMSNorm (in fp32, cast back). Init N(0, 0.02) for every matrix, ones for the norms.
No dropout, eager mode.

--precision fp32 (default): everything in fp32. --precision bf16: PyTorch's CPU mixed precision, i.e. the
forward and the loss run under torch.autocast("cpu", dtype=torch.bfloat16) (autocast runs matmuls/linear
and attention in bf16 and keeps the ops on its fp32 list in fp32; the RoPE tables are cast to q's dtype, as
Hugging Face does); the parameters, their gradients, AdamW and its state stay fp32, and backward runs outside
the autocast block, as PyTorch recommends.

One step = forward, cross-entropy loss, backward, AdamW step (lr 3e-4, betas 0.9/0.95, weight decay 0.1 on
the matrices, none on the norms), zero_grad. Data are random tokens from a fixed seed. Reported per config:
parameter count (every parameter: embed_tokens and lm_head both counted), median step time over the timed
steps, and tokens/s = batch * seq / median step time.

Sizes (the Llama twins of GPT-2's S/M/L/G: same vocab, width, depth, heads, seq and batch; half the key/value
heads, a third for G; F = 8d/3 rounded up to 256) and their parameter counts,
N = 2*vocab*d + layers*(2d^2 + 2*d*KV*hd + 3*d*F + 2d) + d, the same count as Tessera's bench JSON "params";
FLOPs/token as Tessera's flops_per_token = 6*(N - vocab*d) + 12*layers*d*seq (the embedding is a lookup):

    config    vocab    d  layers  H  KV     F   seq  batch       params   FLOPs/token
    llama-S     256  128       4  4   2   512   256      8    1,049,728     7,674,624
    llama-M     256  256       6  8   4   768   512      8    4,852,992    38,161,920
    llama-L    8192  512       8  8   4  1536  1024      4   33,563,136   226,544,640
    llama-G   50257  768      12 12   4  2048    64      4  152,711,424   691,762,176

--max-seconds S: once the steps done so far (warm-up included) have taken more than S seconds in all, stop
after the current step and report the median of the timed steps done ("steps_done" < "steps",
"stopped_early": true), or of the warm-up steps done when no timed step was reached ("median_of":
"warmup"). A step is never interrupted. Without bf16 hardware (AVX512_BF16/AMX), PyTorch's bf16 matmul on
the CPU runs at about 1 GFLOP/s, so an autocast step of size llama-L takes many minutes.
"""
import sys

sys.dont_write_bytecode = True  # no __pycache__ next to the scripts
import pytorch_common as common  # noqa: E402  (the harness both scripts share)
import torch
import torch.nn as nn
import torch.nn.functional as F


CONFIGS = {
    # name: vocab, d_model, layers, heads, kv_heads, intermediate (F), seq, batch
    "llama-S": dict(vocab=256, d=128, layers=4, heads=4, kv_heads=2, intermediate=512, seq=256, batch=8),
    "llama-M": dict(vocab=256, d=256, layers=6, heads=8, kv_heads=4, intermediate=768, seq=512, batch=8),
    "llama-L": dict(vocab=8192, d=512, layers=8, heads=8, kv_heads=4, intermediate=1536, seq=1024, batch=4),
    # GPT-2 124M's width and depth on a short sequence, as GPT-2's size G.
    "llama-G": dict(vocab=50257, d=768, layers=12, heads=12, kv_heads=4, intermediate=2048, seq=64, batch=4),
}
RMS_EPS = 1e-5
ROPE_THETA = 10000.0


def sdpa_has_gqa():
    """Does F.scaled_dot_product_attention take enable_gqa (torch >= 2.5)? Tried on a tiny input."""
    q, kv = torch.zeros(1, 2, 4, 8), torch.zeros(1, 1, 4, 8)
    try:
        F.scaled_dot_product_attention(q, kv, kv, is_causal=True, enable_gqa=True)
        return True
    except (TypeError, RuntimeError):
        return False


class RMSNorm(nn.Module):
    """Hugging Face's LlamaRMSNorm (for a torch without nn.RMSNorm): normalise in fp32, cast back, scale."""

    def __init__(self, d, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


def rms_norm(d):
    return nn.RMSNorm(d, eps=RMS_EPS) if hasattr(nn, "RMSNorm") else RMSNorm(d, RMS_EPS)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope_tables(seq, hd, theta=ROPE_THETA):
    """cos and sin [seq, hd] of Hugging Face's rotate-half RoPE: frequency i of the first half repeated in the second."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
    freqs = torch.outer(torch.arange(seq, dtype=torch.int64).float(), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x, cos, sin):
    """x [B, heads, T, hd]; cos, sin [T, hd], cast to x's dtype first (as Hugging Face does)."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + rotate_half(x) * sin


def causal_attention(q, k, v, gqa):
    """q [B, H, T, hd], k and v [B, KV, T, hd]: softmax(q k^T / sqrt(hd), causal) v, [B, H, T, hd]. Query head h
    reads key/value head h // (H / KV). gqa: SDPA's enable_gqa, else k and v repeated to H heads first."""
    if k.shape[1] == q.shape[1]:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if gqa:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


class Attention(nn.Module):
    def __init__(self, d, heads, kv_heads, gqa):
        super().__init__()
        self.heads, self.kv_heads, self.hd, self.gqa = heads, kv_heads, d // heads, gqa
        self.q_proj = nn.Linear(d, heads * self.hd, bias=False)
        self.k_proj = nn.Linear(d, kv_heads * self.hd, bias=False)
        self.v_proj = nn.Linear(d, kv_heads * self.hd, bias=False)
        self.o_proj = nn.Linear(heads * self.hd, d, bias=False)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        q = self.q_proj(x).view(B, T, self.heads, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.kv_heads, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.kv_heads, self.hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = causal_attention(q, k, v, self.gqa)
        return self.o_proj(y.transpose(1, 2).contiguous().view(B, T, self.heads * self.hd))


class MLP(nn.Module):
    def __init__(self, d, intermediate):
        super().__init__()
        self.gate_proj = nn.Linear(d, intermediate, bias=False)
        self.up_proj = nn.Linear(d, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, d, heads, kv_heads, intermediate, gqa):
        super().__init__()
        self.input_layernorm = rms_norm(d)
        self.self_attn = Attention(d, heads, kv_heads, gqa)
        self.post_attention_layernorm = rms_norm(d)
        self.mlp = MLP(d, intermediate)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nn.Module):
    def __init__(self, vocab, d, layers, heads, kv_heads, intermediate, seq, gqa=True):
        super().__init__()
        # Hugging Face's names: model.embed_tokens, model.layers.<l>.…, model.norm, lm_head.
        self.model = nn.ModuleDict(dict(
            embed_tokens=nn.Embedding(vocab, d),
            layers=nn.ModuleList(Block(d, heads, kv_heads, intermediate, gqa) for _ in range(layers)),
            norm=rms_norm(d),
        ))
        self.lm_head = nn.Linear(d, vocab, bias=False)  # untied
        cos, sin = rope_tables(seq, d // heads)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, mean=0.0, std=0.02)
            else:
                nn.init.ones_(p)  # the norms' weights

    def forward(self, idx):
        T = idx.shape[1]
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        x = self.model.embed_tokens(idx)
        for block in self.model.layers:
            x = block(x, cos, sin)
        return self.lm_head(self.model.norm(x))


def main():
    args = common.parse_args(__doc__, CONFIGS, "llama-S, llama-M, llama-L, llama-G")
    gqa = sdpa_has_gqa()
    attention = "sdpa-enable_gqa" if gqa else "sdpa-repeat_interleave"
    norm = "nn.RMSNorm" if hasattr(nn, "RMSNorm") else "RMSNorm written out (no nn.RMSNorm)"
    bf16_hw = common.announce(args, ", attention "
                              + ("F.scaled_dot_product_attention(enable_gqa=True)" if gqa else
                                 "k/v repeat_interleave to H heads + F.scaled_dot_product_attention (no enable_gqa: torch < 2.5)")
                              + f", {norm}", large="llama-L or llama-G")
    results = []
    for name in (list(CONFIGS) if args.config == "all" else [args.config]):
        cfg = CONFIGS[name]
        torch.manual_seed(1234)
        model = Llama(cfg["vocab"], cfg["d"], cfg["layers"], cfg["heads"], cfg["kv_heads"], cfg["intermediate"],
                      cfg["seq"], gqa)
        r = common.train(name, cfg, model, args.steps, args.warmup, args.precision, args.max_seconds)
        r.update(bf16_hw=bf16_hw, family="llama", attention=attention)
        results.append(r)
        common.emit(args, r)
    common.report(args, results, [("vocab", "vocab", 6), ("d", "d", 4), ("layers", "L", 2), ("heads", "H", 2),
                                  ("kv_heads", "KV", 2), ("intermediate", "F", 5), ("seq", "seq", 5), ("batch", "batch", 5)])


if __name__ == "__main__":
    main()
