import Foundation
import TesseraKernels

// The Llama family (Hugging Face LlamaForCausalLM): RMSNorm, rotary position embeddings, grouped-query
// attention, a SiLU-gated MLP, no biases, tied or untied embeddings. Parameters carry HF names and layouts
// (nn.Linear weights are [out, in]) and are initialised from (seed, name, index) alone, like GPT-2's.
//
// Its math runs on the activation slots GPT-2 uses (Activations.swift: ln1 = r1, resid2 = h, ln2 = r2,
// fch = g|u, fchGelu = s), so every parallelism and memory policy serves it through Transformer.swift.
// Matched against the float64 oracle ../shared/reference/llama-tiny (LlamaReferenceTests).
//
// One layer, x [N, C] in, with fused q|k|v rows of width (H + 2·KV)·hd and fused gate|up rows of width 2F
// (the weights stay HF's separate tensors; lying back to back in storage they serve as one [Wq; Wk; Wv] and one
// [Wg; Wu], so each fused row is one product):
//   r1 = rms1(x);  q|k|v = r1 · [Wq; Wk; Wv]ᵀ;  q, k turned by RoPE at each token's position
//   a = attention(q, k, v) (causal, grouped);  h = x + a · Woᵀ
//   r2 = rms2(h);  g|u = r2 · [Wg; Wu]ᵀ;  s = silu(g) · u;  out = h + s · Wdᵀ
// Backward in reverse, the rotation's backward being the inverse turn of dq, dk.

public enum LlamaParameters {
    /// Every parameter in storage order, HF names and [out, in] layouts; weights N(0, 0.02), norms ones.
    public static func specs(_ c: TransformerConfig) -> [ParameterSpec] {
        let d = c.dModel, hd = c.headDim, f = c.intermediate, w = InitKind.normal(std: 0.02)
        var s: [ParameterSpec] = [.init(name: "model.embed_tokens.weight", shape: [c.vocabSize, d], initKind: w)]
        for l in 0..<c.nLayer {
            let p = "model.layers.\(l)."
            s += [
                .init(name: p + "input_layernorm.weight", shape: [d], initKind: .ones),
                .init(name: p + "self_attn.q_proj.weight", shape: [c.nHead * hd, d], initKind: w),
                .init(name: p + "self_attn.k_proj.weight", shape: [c.nKVHead * hd, d], initKind: w),
                .init(name: p + "self_attn.v_proj.weight", shape: [c.nKVHead * hd, d], initKind: w),
                .init(name: p + "self_attn.o_proj.weight", shape: [d, c.nHead * hd], initKind: w),
                .init(name: p + "post_attention_layernorm.weight", shape: [d], initKind: .ones),
                .init(name: p + "mlp.gate_proj.weight", shape: [f, d], initKind: w),
                .init(name: p + "mlp.up_proj.weight", shape: [f, d], initKind: w),
                .init(name: p + "mlp.down_proj.weight", shape: [d, f], initKind: w),
            ]
        }
        s.append(.init(name: "model.norm.weight", shape: [d], initKind: .ones))
        if !c.tied { s.append(.init(name: "lm_head.weight", shape: [c.vocabSize, d], initKind: w)) }
        return s
    }
}

public final class Llama: Transformer, @unchecked Sendable {
    /// Pointers of one block's parameters (or gradients).
    struct BlockTensors {
        let norm1, q, k, v, o, norm2, gate, up, down: UnsafeMutablePointer<Float>
        init(_ p: ParameterSet, _ l: Int) {
            let s = "model.layers.\(l)."
            norm1 = p[s + "input_layernorm.weight"]; norm2 = p[s + "post_attention_layernorm.weight"]
            q = p[s + "self_attn.q_proj.weight"]; k = p[s + "self_attn.k_proj.weight"]
            v = p[s + "self_attn.v_proj.weight"]; o = p[s + "self_attn.o_proj.weight"]
            gate = p[s + "mlp.gate_proj.weight"]; up = p[s + "mlp.up_proj.weight"]; down = p[s + "mlp.down_proj.weight"]
        }
    }
    private var pBlocks: [BlockTensors?] = [], gBlocks: [BlockTensors?] = [], wBlocks: [BlockTensors?] = []
    let rope: RoPE
    /// q, k, v (and gate, up) lie back to back in storage (each tensor is padded to 16 floats, so they do whenever
    /// their sizes are multiples of 16): one product [Wq; Wk; Wv] (and [Wg; Wu]) then serves all three (two),
    /// fewer and larger products; otherwise one product per tensor.
    var fusedQKV = false, fusedGateUp = false

    /// The whole model, or (pipeline parallelism) the stage `stage` of it, initialised from the seed.
    public init(config: TransformerConfig, seed: UInt64, stage: ModelStage? = nil) {
        precondition(config.family == .llama, "Llama: a \(config.familyName) config")
        rope = RoPE(headDim: config.headDim, theta: config.ropeTheta, maxPosition: config.blockSize)
        super.init(config: config, seed: seed, stage: stage, finalNorm: "model.norm.weight",
                   blockFirst: { "model.layers.\($0).input_layernorm.weight" })
        pBlocks = heldLayers(params, BlockTensors.init); gBlocks = heldLayers(grads, BlockTensors.init); wBlocks = pBlocks
        if let l = self.stage.layers.first {
            let d = config.dModel, hd = config.headDim, s = "model.layers.\(l)."
            func follows(_ b: String, _ a: String, _ count: Int) -> Bool { params.offset(of: s + b) == params.offset(of: s + a) + count }
            fusedQKV = follows("self_attn.k_proj.weight", "self_attn.q_proj.weight", config.nHead * hd * d)
                && follows("self_attn.v_proj.weight", "self_attn.k_proj.weight", config.nKVHead * hd * d)
            fusedGateUp = follows("mlp.up_proj.weight", "mlp.gate_proj.weight", config.intermediate * d)
        }
    }

    override func productTensorsChanged() { wBlocks = heldLayers(weights, BlockTensors.init) }

    // MARK: products with [out, in] weights

    /// y[n, out] (row stride ldy) = x[n, in] · Wᵀ, W [out, in].
    func project(_ x: UnsafePointer<Float>, _ w: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, ldy: Int,
                 n: Int, inDim: Int, outDim: Int) {
        OpProfile.time(.matmul) {
            BLAS.gemm(transB: true, m: n, n: outDim, k: inDim, a: x, lda: inDim, b: w, ldb: inDim, beta: 0, c: y, ldc: ldy,
                      precision: precision)
        }
    }

    /// dx[n, in] (+)= dy[n, out] (row stride lddy) · W;  dW[out, in] += dyᵀ · x.
    func projectBackward(dy: UnsafePointer<Float>, lddy: Int, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                         dx: UnsafeMutablePointer<Float>, dw: UnsafeMutablePointer<Float>, n: Int, inDim: Int, outDim: Int,
                         accumulate: Bool) {
        OpProfile.time(.matmul) {
            BLAS.gemm(m: n, n: inDim, k: outDim, a: dy, lda: lddy, b: w, ldb: inDim, beta: accumulate ? 1 : 0, c: dx, ldc: inDim,
                      precision: precision)
            BLAS.gemm(transA: true, m: outDim, n: inDim, k: n, a: dy, lda: lddy, b: x, ldb: inDim, beta: 1, c: dw, ldc: inDim,
                      precision: precision)
        }
    }

    /// Turns q and k of a fused qkv (or its gradient, `inverse`) at each token's position.
    func rotate(_ qkv: UnsafeMutablePointer<Float>, _ a: Activations, inverse: Bool) {
        let c = config, w = c.qkvWidth
        OpProfile.time(.rope) {
            rope.apply(qkv, rows: a.n, heads: c.nHead, ld: w, positions: a.positions, inverse: inverse)
            rope.apply(qkv + c.nHead * c.headDim, rows: a.n, heads: c.nKVHead, ld: w, positions: a.positions, inverse: inverse)
        }
    }

    // MARK: embeddings, final norm

    override func embedForward(_ a: Activations) {
        Embedding.lookup(out: a.residual[0], tokens: a.tokenIds, wte: params["model.embed_tokens.weight"], n: a.n, c: config.dModel)
    }

    override func embedBackward(_ a: Activations) {
        Embedding.lookupBackward(dwte: grads["model.embed_tokens.weight"], dout: a.dres, tokens: a.tokenIds, n: a.n, c: config.dModel)
    }

    override func finalNormForward(_ a: Activations) {
        OpProfile.time(.layerNorm) {
            RMSNorm.forward(out: a.lnf, rstd: a.lnfRstd, x: a.output, weight: params["model.norm.weight"], n: a.n, c: config.dModel,
                            eps: config.rmsEps)
        }
        roundOperand(a.lnf, count: a.n * config.dModel)
    }

    override func finalNormBackward(_ a: Activations) {
        OpProfile.time(.layerNorm) {
            RMSNorm.backward(dx: a.dres, dweight: grads["model.norm.weight"], dout: a.dlnf, x: a.output,
                             weight: params["model.norm.weight"], rstd: a.lnfRstd, n: a.n, c: config.dModel, scratch: a.scratch)
        }
    }

    // MARK: a block

    private func norm1(_ l: Int, _ a: Activations, _ s: Activations.Layer) {
        let d = config.dModel
        OpProfile.time(.layerNorm) {
            RMSNorm.forward(out: s.ln1, rstd: s.ln1Rstd, x: a.input(of: l), weight: pBlocks[l]!.norm1, n: a.n, c: d, eps: config.rmsEps)
        }
        roundOperand(s.ln1, count: a.n * d)
    }

    override func blockForward(_ l: Int, _ a: Activations, _ s: Activations.Layer, output: UnsafeMutablePointer<Float>?) {
        let c = config, d = c.dModel, n = a.n, hd = c.headDim, w = c.qkvWidth, wt = wBlocks[l]!
        norm1(l, a, s)
        if fusedQKV {
            project(s.ln1, wt.q, into: s.qkv, ldy: w, n: n, inDim: d, outDim: w)
        } else {
            project(s.ln1, wt.q, into: s.qkv, ldy: w, n: n, inDim: d, outDim: c.nHead * hd)
            project(s.ln1, wt.k, into: s.qkv + c.nHead * hd, ldy: w, n: n, inDim: d, outDim: c.nKVHead * hd)
            project(s.ln1, wt.v, into: s.qkv + (c.nHead + c.nKVHead) * hd, ldy: w, n: n, inDim: d, outDim: c.nKVHead * hd)
        }
        rotate(s.qkv, a, inverse: false)
        roundOperand(s.qkv, count: n * w)
        progress?()
        attention.documents = a.documents
        OpProfile.time(.attention) { attention.forward(qkv: s.qkv, out: s.atty, lse: s.lse, saved: s.attnSaved, batch: a.batch,
                                                      tokens: a.tokens, layer: l, scratch: a.scratch) }
        roundOperand(s.atty, count: n * d)
        progress?()
        mlpForward(l, a, s, output: output)
    }

    /// From the attention output on: o_proj and residual, the second norm, the gated MLP (and its residual into `output`).
    private func mlpForward(_ l: Int, _ a: Activations, _ s: Activations.Layer, output: UnsafeMutablePointer<Float>?) {
        let d = config.dModel, n = a.n, f = config.intermediate, wt = wBlocks[l]!
        project(s.atty, wt.o, into: a.tmp, ldy: d, n: n, inDim: d, outDim: d)
        OpProfile.time(.residual) { Residual.forward(out: s.resid2, a: a.input(of: l), b: a.tmp, n: n * d) }
        OpProfile.time(.layerNorm) {
            RMSNorm.forward(out: s.ln2, rstd: s.ln2Rstd, x: s.resid2, weight: pBlocks[l]!.norm2, n: n, c: d, eps: config.rmsEps)
        }
        roundOperand(s.ln2, count: n * d)
        progress?()
        if fusedGateUp {
            project(s.ln2, wt.gate, into: s.fch, ldy: 2 * f, n: n, inDim: d, outDim: 2 * f)
        } else {
            project(s.ln2, wt.gate, into: s.fch, ldy: 2 * f, n: n, inDim: d, outDim: f)
            project(s.ln2, wt.up, into: s.fch + f, ldy: 2 * f, n: n, inDim: d, outDim: f)
        }
        progress?()
        OpProfile.time(.gelu) { SwiGLU.forward(out: s.fchGelu, gate: s.fch, up: s.fch + f, n: n, f: f, ld: 2 * f) }
        roundOperand(s.fchGelu, count: n * f)
        guard let output else { return }
        project(s.fchGelu, wt.down, into: a.tmp, ldy: d, n: n, inDim: f, outDim: d)
        OpProfile.time(.residual) { Residual.forward(out: output, a: s.resid2, b: a.tmp, n: n * d) }
        progress?()
    }

    override func recomputeSelective(_ l: Int, _ a: Activations, _ s: Activations.Layer) {
        norm1(l, a, s)
        mlpForward(l, a, s, output: nil)
    }

    override func backwardBlock(_ l: Int, _ a: Activations, _ s: Activations.Layer) {
        let c = config, d = c.dModel, n = a.n, hd = c.headDim, f = c.intermediate, w = c.qkvWidth
        let p = pBlocks[l]!, g = gBlocks[l]!, wt = wBlocks[l]!
        let kOff = c.nHead * hd, vOff = kOff + c.nKVHead * hd
        // In bf16 the products read d(loss)/d(block output) rounded into a.tmp; a.dres keeps accumulating in fp32.
        let lowp = precision == .bf16
        attention.prepareBackward(qkv: s.qkv, saved: s.attnSaved, batch: a.batch, tokens: a.tokens, layer: l)
        // MLP: out = h + down(silu(gate(r2)) · up(r2))
        let dOut = lowp ? operandCopy(a.dres, into: a.tmp, count: n * d) : a.dres
        projectBackward(dy: dOut, lddy: d, x: s.fchGelu, w: wt.down, dx: a.dact, dw: g.down, n: n, inDim: f, outDim: d, accumulate: false)
        poll()
        OpProfile.time(.gelu) { SwiGLU.backward(dgate: a.dfch, dup: a.dfch + f, dout: a.dact, gate: s.fch, up: s.fch + f, n: n, f: f, ld: 2 * f) }
        roundOperand(a.dfch, count: n * 2 * f)
        poll()
        if fusedGateUp {
            projectBackward(dy: a.dfch, lddy: 2 * f, x: s.ln2, w: wt.gate, dx: a.dln, dw: g.gate, n: n, inDim: d, outDim: 2 * f, accumulate: false)
        } else {
            projectBackward(dy: a.dfch, lddy: 2 * f, x: s.ln2, w: wt.gate, dx: a.dln, dw: g.gate, n: n, inDim: d, outDim: f, accumulate: false)
            projectBackward(dy: a.dfch + f, lddy: 2 * f, x: s.ln2, w: wt.up, dx: a.dln, dw: g.up, n: n, inDim: d, outDim: f, accumulate: true)
        }
        poll()
        OpProfile.time(.layerNorm) {
            RMSNorm.backward(dx: a.dres, dweight: g.norm2, dout: a.dln, x: s.resid2, weight: p.norm2, rstd: s.ln2Rstd, n: n, c: d,
                             scratch: a.scratch)
        }
        poll()
        // Attention: h = x + o(attention(rope(q), rope(k), v))
        let dH = lowp ? operandCopy(a.dres, into: a.tmp, count: n * d) : a.dres
        projectBackward(dy: dH, lddy: d, x: s.atty, w: wt.o, dx: a.datty, dw: g.o, n: n, inDim: d, outDim: d, accumulate: false)
        roundOperand(a.datty, count: n * d)
        progress?()
        a.dqkv.update(repeating: 0, count: n * w)
        // The next block down's attention backward may fetch data while this one computes (see GPT.backwardBlock).
        if l > a.layerRange.lowerBound, let below = a.residentAttentionInputs(l - 1) {
            attention.prepareBackward(qkv: below.qkv, saved: below.attnSaved, batch: a.batch, tokens: a.tokens, layer: l - 1)
        }
        attention.documents = a.documents
        OpProfile.time(.attention) { attention.backward(dqkv: a.dqkv, dout: a.datty, out: s.atty, lse: s.lse, qkv: s.qkv, saved: s.attnSaved,
                                                       batch: a.batch, tokens: a.tokens, layer: l, scratch: a.scratch) }
        rotate(a.dqkv, a, inverse: true)
        roundOperand(a.dqkv, count: n * w)
        progress?()
        if fusedQKV {
            projectBackward(dy: a.dqkv, lddy: w, x: s.ln1, w: wt.q, dx: a.dln, dw: g.q, n: n, inDim: d, outDim: w, accumulate: false)
        } else {
            projectBackward(dy: a.dqkv, lddy: w, x: s.ln1, w: wt.q, dx: a.dln, dw: g.q, n: n, inDim: d, outDim: c.nHead * hd, accumulate: false)
            projectBackward(dy: a.dqkv + kOff, lddy: w, x: s.ln1, w: wt.k, dx: a.dln, dw: g.k, n: n, inDim: d, outDim: c.nKVHead * hd, accumulate: true)
            projectBackward(dy: a.dqkv + vOff, lddy: w, x: s.ln1, w: wt.v, dx: a.dln, dw: g.v, n: n, inDim: d, outDim: c.nKVHead * hd, accumulate: true)
        }
        progress?()
        OpProfile.time(.layerNorm) {
            RMSNorm.backward(dx: a.dres, dweight: g.norm1, dout: a.dln, x: a.input(of: l), weight: p.norm1, rstd: s.ln1Rstd, n: n, c: d,
                             scratch: a.scratch)
        }
    }
}
