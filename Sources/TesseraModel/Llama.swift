import Foundation
import TesseraKernels

// The Llama family (Hugging Face LlamaForCausalLM): RMSNorm, rotary position embeddings, grouped-query
// attention, a SiLU-gated MLP, no biases, tied or untied embeddings. Parameters carry HF names and layouts
// (nn.Linear weights are [out, in]) and are initialised from (seed, name, index) alone, like GPT-2's.
//
// This file is the single-rank numerics core: forward, loss and backward of a whole model on plain per-layer
// buffers, matched against the float64 oracle (../shared/reference/llama-tiny). It does not plug into the
// parallel seams (`ParallelModel`, activation store, memory policies) yet; that is the next step of issue 16.
//
// One layer, x [N, C] in, with fused q|k|v rows of width (H + 2·KV)·hd and fused gate|up rows of width 2F:
//   r1 = rms1(x);  q|k|v = r1 · [Wq; Wk; Wv]ᵀ;  q, k turned by RoPE at each token's position
//   a = attention(q, k, v) (causal, grouped);  h = x + a · Woᵀ
//   r2 = rms2(h);  g|u = r2 · [Wg; Wu]ᵀ;  s = silu(g) · u;  out = h + s · Wdᵀ
// Backward in reverse, the rotation's backward being the inverse turn of dq, dk.

public struct LlamaConfig: Sendable, Equatable {
    public var vocabSize: Int, nLayer: Int, nHead: Int, nKVHead: Int, dModel: Int, intermediate: Int, blockSize: Int
    public var rmsEps: Float, ropeTheta: Double, tied: Bool
    public init(vocabSize: Int, nLayer: Int, nHead: Int, nKVHead: Int, dModel: Int, intermediate: Int, blockSize: Int,
                rmsEps: Float = 1e-5, ropeTheta: Double = 10_000, tied: Bool = false) {
        precondition(dModel % nHead == 0 && nHead % nKVHead == 0, "llama: heads must divide d_model and KV heads the heads")
        self.vocabSize = vocabSize; self.nLayer = nLayer; self.nHead = nHead; self.nKVHead = nKVHead
        self.dModel = dModel; self.intermediate = intermediate; self.blockSize = blockSize
        self.rmsEps = rmsEps; self.ropeTheta = ropeTheta; self.tied = tied
    }
    public var headDim: Int { dModel / nHead }
    /// Width of the fused q|k|v rows.
    public var qkvWidth: Int { (nHead + 2 * nKVHead) * headDim }
}

public enum LlamaParameters {
    /// Every parameter in storage order, HF names and [out, in] layouts; weights N(0, 0.02), norms ones.
    public static func specs(_ c: LlamaConfig) -> [ParameterSpec] {
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

public final class Llama: @unchecked Sendable {
    public let config: LlamaConfig
    public let params: ParameterSet, grads: ParameterSet
    let rope: RoPE

    public init(config: LlamaConfig, seed: UInt64) {
        self.config = config
        params = ParameterSet(specs: LlamaParameters.specs(config))
        grads = params.sameLayout()
        params.initialize(seed: seed)
        rope = RoPE(headDim: config.headDim, theta: config.ropeTheta, maxPosition: config.blockSize)
    }

    var headName: String { config.tied ? "model.embed_tokens.weight" : "lm_head.weight" }

    /// What one forward keeps for the backward, per layer, for `n` tokens.
    public final class State {
        public let n: Int, batch: Int, tokens: Int
        public var tokenIds: [Int32], positions: [Int32], targets: [Int32]
        var x: [FloatBuffer] = [], r1: [FloatBuffer] = [], rstd1: [FloatBuffer] = [], qkv: [FloatBuffer] = []
        var atty: [FloatBuffer] = [], lse: [FloatBuffer] = [], h: [FloatBuffer] = [], r2: [FloatBuffer] = []
        var rstd2: [FloatBuffer] = [], gu: [FloatBuffer] = [], s: [FloatBuffer] = []
        let out: FloatBuffer, normOut: FloatBuffer, rstdF: FloatBuffer, dNorm: FloatBuffer
        let scratch = Scratch()

        init(_ c: LlamaConfig, batch: Int, tokens: Int) {
            self.batch = batch; self.tokens = tokens; n = batch * tokens
            tokenIds = Array(repeating: 0, count: n); targets = tokenIds
            positions = (0..<n).map { Int32($0 % tokens) }
            let d = c.dModel, f = c.intermediate
            for _ in 0..<c.nLayer {
                x.append(FloatBuffer(n * d)); r1.append(FloatBuffer(n * d)); rstd1.append(FloatBuffer(n))
                qkv.append(FloatBuffer(n * c.qkvWidth)); atty.append(FloatBuffer(n * d))
                lse.append(FloatBuffer(batch * c.nHead * tokens)); h.append(FloatBuffer(n * d))
                r2.append(FloatBuffer(n * d)); rstd2.append(FloatBuffer(n)); gu.append(FloatBuffer(n * 2 * f))
                s.append(FloatBuffer(n * f))
            }
            out = FloatBuffer(n * d); normOut = FloatBuffer(n * d); rstdF = FloatBuffer(n); dNorm = FloatBuffer(n * d)
        }
    }

    public func state(batch: Int, tokens: Int) -> State { State(config, batch: batch, tokens: tokens) }

    // MARK: products with [out, in] weights

    /// y[n, out] (row stride ldy) = x[n, in] · Wᵀ, W [out, in].
    func project(_ x: UnsafePointer<Float>, _ w: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, ldy: Int,
                 n: Int, inDim: Int, outDim: Int) {
        BLAS.gemm(transB: true, m: n, n: outDim, k: inDim, a: x, lda: inDim, b: w, ldb: inDim, beta: 0, c: y, ldc: ldy)
    }

    /// dx[n, in] += dy[n, out] (row stride lddy) · W;  dW[out, in] += dyᵀ · x.
    func projectBackward(dy: UnsafePointer<Float>, lddy: Int, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                         dx: UnsafeMutablePointer<Float>, dw: UnsafeMutablePointer<Float>, n: Int, inDim: Int, outDim: Int) {
        BLAS.gemm(m: n, n: inDim, k: outDim, a: dy, lda: lddy, b: w, ldb: inDim, beta: 1, c: dx, ldc: inDim)
        BLAS.gemm(transA: true, m: outDim, n: inDim, k: n, a: dy, lda: lddy, b: x, ldb: inDim, beta: 1, c: dw, ldc: inDim)
    }

    var attentionLayout: (Int, Int) -> AttentionLayout {
        { [config] b, t in AttentionLayout.fused(batch: b, t: t, heads: config.nHead, headDim: config.headDim, kvHeads: config.nKVHead) }
    }

    // MARK: forward

    /// Forward of every layer and the final norm; returns the sum of the cross-entropy over the targets
    /// (target < 0: no loss) and, when `gradScale` is given, leaves d(loss·gradScale)/d(norm output) in the state
    /// and accumulates the LM head's gradient.
    public func forward(_ st: State, gradScale: Float?) -> Double {
        let c = config, d = c.dModel, n = st.n, hd = c.headDim, f = c.intermediate, w = c.qkvWidth
        let kvOff = c.nHead * hd, vOff = kvOff + c.nKVHead * hd
        let emb = params["model.embed_tokens.weight"]
        for i in 0..<n {
            let id = Int(st.tokenIds[i])
            precondition(id >= 0 && id < c.vocabSize, "llama: token id \(id) outside the vocabulary of \(c.vocabSize)")
            st.x[0].ptr.advanced(by: i * d).update(from: emb + id * d, count: d)
        }
        let layout = attentionLayout(st.batch, st.tokens)
        for l in 0..<c.nLayer {
            let p = "model.layers.\(l).", x = st.x[l].ptr, qkv = st.qkv[l].ptr
            RMSNorm.forward(out: st.r1[l].ptr, rstd: st.rstd1[l].ptr, x: x, weight: params[p + "input_layernorm.weight"],
                            n: n, c: d, eps: c.rmsEps)
            project(st.r1[l].ptr, params[p + "self_attn.q_proj.weight"], into: qkv, ldy: w, n: n, inDim: d, outDim: c.nHead * hd)
            project(st.r1[l].ptr, params[p + "self_attn.k_proj.weight"], into: qkv + kvOff, ldy: w, n: n, inDim: d, outDim: c.nKVHead * hd)
            project(st.r1[l].ptr, params[p + "self_attn.v_proj.weight"], into: qkv + vOff, ldy: w, n: n, inDim: d, outDim: c.nKVHead * hd)
            st.positions.withUnsafeBufferPointer { pos in
                rope.apply(qkv, rows: n, heads: c.nHead, ld: w, positions: pos.baseAddress!)
                rope.apply(qkv + kvOff, rows: n, heads: c.nKVHead, ld: w, positions: pos.baseAddress!)
            }
            Attention.forward(out: st.atty[l].ptr, lse: st.lse[l].ptr, q: qkv, k: qkv + kvOff, v: qkv + vOff, layout: layout,
                              scratch: st.scratch)
            project(st.atty[l].ptr, params[p + "self_attn.o_proj.weight"], into: st.h[l].ptr, ldy: d, n: n, inDim: d, outDim: d)
            vaxpy(1, x, st.h[l].ptr, n * d)
            RMSNorm.forward(out: st.r2[l].ptr, rstd: st.rstd2[l].ptr, x: st.h[l].ptr, weight: params[p + "post_attention_layernorm.weight"],
                            n: n, c: d, eps: c.rmsEps)
            project(st.r2[l].ptr, params[p + "mlp.gate_proj.weight"], into: st.gu[l].ptr, ldy: 2 * f, n: n, inDim: d, outDim: f)
            project(st.r2[l].ptr, params[p + "mlp.up_proj.weight"], into: st.gu[l].ptr + f, ldy: 2 * f, n: n, inDim: d, outDim: f)
            SwiGLU.forward(out: st.s[l].ptr, gate: st.gu[l].ptr, up: st.gu[l].ptr + f, n: n, f: f, ld: 2 * f)
            let next = l + 1 < c.nLayer ? st.x[l + 1].ptr : st.out.ptr
            project(st.s[l].ptr, params[p + "mlp.down_proj.weight"], into: next, ldy: d, n: n, inDim: f, outDim: d)
            vaxpy(1, st.h[l].ptr, next, n * d)
        }
        RMSNorm.forward(out: st.normOut.ptr, rstd: st.rstdF.ptr, x: st.out.ptr, weight: params["model.norm.weight"],
                        n: n, c: d, eps: c.rmsEps)
        return st.targets.withUnsafeBufferPointer { tg in
            CrossEntropy.fused(x: st.normOut.ptr, wte: params[headName], targets: tg.baseAddress!, n: n, c: d, vocab: c.vocabSize,
                               gradScale: gradScale ?? 0, dx: gradScale == nil ? nil : st.dNorm.ptr,
                               dwte: gradScale == nil ? nil : grads[headName], scratch: st.scratch)
        }
    }

    /// Logits [N, V] of the last forward.
    public func logits(_ st: State, into out: UnsafeMutablePointer<Float>) {
        CrossEntropy.logits(out: out, x: st.normOut.ptr, wte: params[headName], n: st.n, c: config.dModel, vocab: config.vocabSize)
    }

    // MARK: backward

    /// Accumulates every parameter's gradient after `forward(st, gradScale:)`.
    public func backward(_ st: State) {
        let c = config, d = c.dModel, n = st.n, hd = c.headDim, f = c.intermediate, w = c.qkvWidth
        let kvOff = c.nHead * hd, vOff = kvOff + c.nKVHead * hd
        let dres = FloatBuffer(n * d), dtmp = FloatBuffer(n * max(d, 2 * f)), ds = FloatBuffer(n * f)
        let dqkv = FloatBuffer(n * w), dln = FloatBuffer(n * d)
        RMSNorm.backward(dx: dres.ptr, dweight: grads["model.norm.weight"], dout: st.dNorm.ptr, x: st.out.ptr,
                         weight: params["model.norm.weight"], rstd: st.rstdF.ptr, n: n, c: d, scratch: st.scratch)
        let layout = attentionLayout(st.batch, st.tokens)
        for l in (0..<c.nLayer).reversed() {
            let p = "model.layers.\(l).", x = st.x[l].ptr, qkv = st.qkv[l].ptr
            // MLP: out = h + down(silu(gate(r2)) · up(r2)); dres holds d/d(out), and d/d(h) accumulates into it.
            ds.zero()
            projectBackward(dy: dres.ptr, lddy: d, x: st.s[l].ptr, w: params[p + "mlp.down_proj.weight"], dx: ds.ptr,
                            dw: grads[p + "mlp.down_proj.weight"], n: n, inDim: f, outDim: d)
            SwiGLU.backward(dgate: dtmp.ptr, dup: dtmp.ptr + f, dout: ds.ptr, gate: st.gu[l].ptr, up: st.gu[l].ptr + f,
                            n: n, f: f, ld: 2 * f)
            dln.zero()
            projectBackward(dy: dtmp.ptr, lddy: 2 * f, x: st.r2[l].ptr, w: params[p + "mlp.gate_proj.weight"], dx: dln.ptr,
                            dw: grads[p + "mlp.gate_proj.weight"], n: n, inDim: d, outDim: f)
            projectBackward(dy: dtmp.ptr + f, lddy: 2 * f, x: st.r2[l].ptr, w: params[p + "mlp.up_proj.weight"], dx: dln.ptr,
                            dw: grads[p + "mlp.up_proj.weight"], n: n, inDim: d, outDim: f)
            RMSNorm.backward(dx: dres.ptr, dweight: grads[p + "post_attention_layernorm.weight"], dout: dln.ptr, x: st.h[l].ptr,
                             weight: params[p + "post_attention_layernorm.weight"], rstd: st.rstd2[l].ptr, n: n, c: d, scratch: st.scratch)
            // Attention: h = x + o(attn(rope(q, k), v)); dres now holds d/d(h), and d/d(x) accumulates into it.
            dln.zero()
            projectBackward(dy: dres.ptr, lddy: d, x: st.atty[l].ptr, w: params[p + "self_attn.o_proj.weight"], dx: dln.ptr,
                            dw: grads[p + "self_attn.o_proj.weight"], n: n, inDim: d, outDim: d)
            dqkv.zero()
            Attention.backward(dq: dqkv.ptr, dk: dqkv.ptr + kvOff, dv: dqkv.ptr + vOff, dout: dln.ptr, out: st.atty[l].ptr,
                               lse: st.lse[l].ptr, q: qkv, k: qkv + kvOff, v: qkv + vOff, layout: layout, scratch: st.scratch)
            st.positions.withUnsafeBufferPointer { pos in
                rope.apply(dqkv.ptr, rows: n, heads: c.nHead, ld: w, positions: pos.baseAddress!, inverse: true)
                rope.apply(dqkv.ptr + kvOff, rows: n, heads: c.nKVHead, ld: w, positions: pos.baseAddress!, inverse: true)
            }
            dln.zero()
            projectBackward(dy: dqkv.ptr, lddy: w, x: st.r1[l].ptr, w: params[p + "self_attn.q_proj.weight"], dx: dln.ptr,
                            dw: grads[p + "self_attn.q_proj.weight"], n: n, inDim: d, outDim: c.nHead * hd)
            projectBackward(dy: dqkv.ptr + kvOff, lddy: w, x: st.r1[l].ptr, w: params[p + "self_attn.k_proj.weight"], dx: dln.ptr,
                            dw: grads[p + "self_attn.k_proj.weight"], n: n, inDim: d, outDim: c.nKVHead * hd)
            projectBackward(dy: dqkv.ptr + vOff, lddy: w, x: st.r1[l].ptr, w: params[p + "self_attn.v_proj.weight"], dx: dln.ptr,
                            dw: grads[p + "self_attn.v_proj.weight"], n: n, inDim: d, outDim: c.nKVHead * hd)
            RMSNorm.backward(dx: dres.ptr, dweight: grads[p + "input_layernorm.weight"], dout: dln.ptr, x: x,
                             weight: params[p + "input_layernorm.weight"], rstd: st.rstd1[l].ptr, n: n, c: d, scratch: st.scratch)
        }
        let demb = grads["model.embed_tokens.weight"]
        for i in 0..<n { vaxpy(1, dres.ptr + i * d, demb + Int(st.tokenIds[i]) * d, d) }
    }
}
