// GPT-2's math on the shared activation slots (Activations.swift): token + position embeddings, LayerNorm,
// c_attn → attention → c_proj, LayerNorm, c_fc → GELU → c_proj, ln_f, the LM head tied to wte. Conv1D
// weights are [in, out] with biases (Linear.swift). Everything else (the order of a chunk's forward and
// backward, recomputation, bf16 weights, the seams) is Transformer.swift's.

import Foundation
import TesseraKernels
import TesseraMemory

public final class GPT: Transformer, @unchecked Sendable {
    /// Pointers of one block's parameters (or gradients).
    struct BlockTensors {
        let ln1w, ln1b, attnW, attnB, projW, projB, ln2w, ln2b, fcW, fcB, fcProjW, fcProjB: UnsafeMutablePointer<Float>
        init(_ p: ParameterSet, _ l: Int) {
            let s = "transformer.h.\(l)."
            ln1w = p[s + "ln_1.weight"]; ln1b = p[s + "ln_1.bias"]
            attnW = p[s + "attn.c_attn.weight"]; attnB = p[s + "attn.c_attn.bias"]
            projW = p[s + "attn.c_proj.weight"]; projB = p[s + "attn.c_proj.bias"]
            ln2w = p[s + "ln_2.weight"]; ln2b = p[s + "ln_2.bias"]
            fcW = p[s + "mlp.c_fc.weight"]; fcB = p[s + "mlp.c_fc.bias"]
            fcProjW = p[s + "mlp.c_proj.weight"]; fcProjB = p[s + "mlp.c_proj.bias"]
        }
    }
    /// Per global layer: the block's tensors, nil for layers another pipeline stage holds.
    private var pBlocks: [BlockTensors?] = [], gBlocks: [BlockTensors?] = []
    /// The block tensors the matrix products read: `pBlocks` in fp32, the bf16 copy's in bf16.
    private var wBlocks: [BlockTensors?] = []

    /// The whole model, or (pipeline parallelism) the stage `stage` of it, initialised from the seed.
    public init(config: TransformerConfig, seed: UInt64, stage: ModelStage? = nil) {
        precondition(config.family == .gpt2, "GPT: a \(config.familyName) config")
        super.init(config: config, seed: seed, stage: stage, finalNorm: "transformer.ln_f.weight",
                   blockFirst: { "transformer.h.\($0).ln_1.weight" })
        pBlocks = heldLayers(params, BlockTensors.init); gBlocks = heldLayers(grads, BlockTensors.init); wBlocks = pBlocks
    }

    override func productTensorsChanged() { wBlocks = heldLayers(weights, BlockTensors.init) }

    // MARK: forward

    override func embedForward(_ a: Activations) {
        Embedding.forward(out: a.residual[0], tokens: a.tokenIds, positions: a.positions, wte: params["transformer.wte.weight"],
                          wpe: params["transformer.wpe.weight"], n: a.n, c: config.dModel)
    }

    override func embedBackward(_ a: Activations) {
        Embedding.backward(dwte: grads["transformer.wte.weight"], dwpe: grads["transformer.wpe.weight"],
                           dout: a.dres, tokens: a.tokenIds, positions: a.positions, n: a.n, c: config.dModel)
    }

    override func finalNormForward(_ a: Activations) {
        let n = a.n, c = config.dModel
        OpProfile.time(.layerNorm) { LayerNorm.forward(out: a.lnf, mean: a.lnfMean, rstd: a.lnfRstd, x: a.output,
                          weight: params["transformer.ln_f.weight"], bias: params["transformer.ln_f.bias"], n: n, c: c) }
        roundOperand(a.lnf, count: n * c)
    }

    override func finalNormBackward(_ a: Activations) {
        OpProfile.time(.layerNorm) { LayerNorm.backward(dx: a.dres, dweight: grads["transformer.ln_f.weight"], dbias: grads["transformer.ln_f.bias"],
                           dout: a.dlnf, x: a.output, weight: params["transformer.ln_f.weight"],
                           mean: a.lnfMean, rstd: a.lnfRstd, n: a.n, c: config.dModel, scratch: a.scratch) }
    }

    /// Block l from its input `a.input(of: l)` into the tensors `s`, its result into `output` (nil: the
    /// recomputation before the backward, which needs the tensors only).
    override func blockForward(_ l: Int, _ a: Activations, _ s: Activations.Layer, output: UnsafeMutablePointer<Float>?) {
        let c = config.dModel, n = a.n
        let p = pBlocks[l]!, w = wBlocks[l]!, x = a.input(of: l)
        OpProfile.time(.layerNorm) { LayerNorm.forward(out: s.ln1, mean: s.ln1Mean, rstd: s.ln1Rstd, x: x, weight: p.ln1w, bias: p.ln1b, n: n, c: c) }
        roundOperand(s.ln1, count: n * c)
        OpProfile.time(.matmul) { Linear.forward(out: s.qkv, inp: s.ln1, weight: w.attnW, bias: p.attnB, n: n, inDim: c, outDim: 3 * c, precision: precision) }
        roundOperand(s.qkv, count: n * 3 * c)
        progress?()
        attention.documents = a.documents
        OpProfile.time(.attention) { attention.forward(qkv: s.qkv, out: s.atty, lse: s.lse, saved: s.attnSaved, batch: a.batch, tokens: a.tokens, layer: l,
                          scratch: a.scratch) }
        roundOperand(s.atty, count: n * c)
        progress?()
        mlpForward(l, a, s, output: output)
    }

    /// From the attention output on: projection and residual, ln_2, the MLP (and its residual into `output`).
    private func mlpForward(_ l: Int, _ a: Activations, _ s: Activations.Layer, output: UnsafeMutablePointer<Float>?) {
        let c = config.dModel, n = a.n
        let p = pBlocks[l]!, w = wBlocks[l]!, x = a.input(of: l)
        OpProfile.time(.matmul) { Linear.forward(out: a.tmp, inp: s.atty, weight: w.projW, bias: p.projB, n: n, inDim: c, outDim: c, precision: precision) }
        OpProfile.time(.residual) { Residual.forward(out: s.resid2, a: x, b: a.tmp, n: n * c) }
        OpProfile.time(.layerNorm) { LayerNorm.forward(out: s.ln2, mean: s.ln2Mean, rstd: s.ln2Rstd, x: s.resid2, weight: p.ln2w, bias: p.ln2b,
                          n: n, c: c) }
        roundOperand(s.ln2, count: n * c)
        progress?()
        OpProfile.time(.matmul) { Linear.forward(out: s.fch, inp: s.ln2, weight: w.fcW, bias: p.fcB, n: n, inDim: c, outDim: 4 * c, precision: precision) }
        progress?()
        OpProfile.time(.gelu) { GELU.forward(out: s.fchGelu, x: s.fch, n: n * 4 * c) }
        roundOperand(s.fchGelu, count: n * 4 * c)
        guard let output else { return }
        OpProfile.time(.matmul) { Linear.forward(out: a.tmp, inp: s.fchGelu, weight: w.fcProjW, bias: p.fcProjB, n: n, inDim: 4 * c, outDim: c, precision: precision) }
        OpProfile.time(.residual) { Residual.forward(out: output, a: s.resid2, b: a.tmp, n: n * c) }
        progress?()
    }

    override func recomputeSelective(_ l: Int, _ a: Activations, _ s: Activations.Layer) {
        let c = config.dModel, n = a.n, p = pBlocks[l]!
        OpProfile.time(.layerNorm) { LayerNorm.forward(out: s.ln1, mean: s.ln1Mean, rstd: s.ln1Rstd, x: a.input(of: l), weight: p.ln1w, bias: p.ln1b, n: n, c: c) }
        roundOperand(s.ln1, count: n * c)
        mlpForward(l, a, s, output: nil)
    }

    /// On entry a.dres holds d(loss)/d(block output); on exit d(loss)/d(block input).
    override func backwardBlock(_ l: Int, _ a: Activations, _ s: Activations.Layer) {
        let c = config.dModel, n = a.n
        let p = pBlocks[l]!, g = gBlocks[l]!, w = wBlocks[l]!
        // In bf16 the products read d(loss)/d(block output) rounded into a.tmp (free during the backward): a.dres
        // itself keeps accumulating in fp32. In fp32 they read a.dres.
        let lowp = precision == .bf16
        attention.prepareBackward(qkv: s.qkv, saved: s.attnSaved, batch: a.batch, tokens: a.tokens, layer: l)  // no-op if already asked
        // MLP: out = resid2 + c_proj(gelu(c_fc(ln_2(resid2))))
        let dOut = lowp ? operandCopy(a.dres, into: a.tmp, count: n * c) : a.dres
        OpProfile.time(.matmul) { Linear.backward(dinp: a.dfch, dweight: g.fcProjW, dbias: g.fcProjB, dout: dOut, inp: s.fchGelu,
                        weight: w.fcProjW, n: n, inDim: 4 * c, outDim: c, accumulateInput: false, precision: precision) }
        poll()
        OpProfile.time(.gelu) { GELU.backward(dx: a.dfch, dout: a.dfch, x: s.fch, n: n * 4 * c) }
        roundOperand(a.dfch, count: n * 4 * c)
        poll()
        OpProfile.time(.matmul) { Linear.backward(dinp: a.dln, dweight: g.fcW, dbias: g.fcB, dout: a.dfch, inp: s.ln2, weight: w.fcW,
                        n: n, inDim: c, outDim: 4 * c, accumulateInput: false, precision: precision) }
        poll()
        OpProfile.time(.layerNorm) { LayerNorm.backward(dx: a.dres, dweight: g.ln2w, dbias: g.ln2b, dout: a.dln, x: s.resid2, weight: p.ln2w,
                           mean: s.ln2Mean, rstd: s.ln2Rstd, n: n, c: c, scratch: a.scratch) }
        poll()
        // Attention: resid2 = x + c_proj(attn(c_attn(ln_1(x))))
        let dResid2 = lowp ? operandCopy(a.dres, into: a.tmp, count: n * c) : a.dres
        OpProfile.time(.matmul) { Linear.backward(dinp: a.datty, dweight: g.projW, dbias: g.projB, dout: dResid2, inp: s.atty, weight: w.projW,
                        n: n, inDim: c, outDim: c, accumulateInput: false, precision: precision) }
        roundOperand(a.datty, count: n * c)
        progress?()
        a.dqkv.update(repeating: 0, count: n * 3 * c)
        // The next block down's attention backward may fetch data while this one computes (if that block's
        // attention inputs are in memory now: not a recomputed one, nor an offloaded one still on its way).
        if l > a.layerRange.lowerBound, let below = a.residentAttentionInputs(l - 1) {
            attention.prepareBackward(qkv: below.qkv, saved: below.attnSaved, batch: a.batch, tokens: a.tokens, layer: l - 1)
        }
        attention.documents = a.documents
        OpProfile.time(.attention) { attention.backward(dqkv: a.dqkv, dout: a.datty, out: s.atty, lse: s.lse, qkv: s.qkv, saved: s.attnSaved, batch: a.batch,
                           tokens: a.tokens, layer: l, scratch: a.scratch) }
        roundOperand(a.dqkv, count: n * 3 * c)
        progress?()
        OpProfile.time(.matmul) { Linear.backward(dinp: a.dln, dweight: g.attnW, dbias: g.attnB, dout: a.dqkv, inp: s.ln1, weight: w.attnW,
                        n: n, inDim: c, outDim: 3 * c, accumulateInput: false, precision: precision) }
        progress?()
        OpProfile.time(.layerNorm) { LayerNorm.backward(dx: a.dres, dweight: g.ln1w, dbias: g.ln1b, dout: a.dln, x: a.input(of: l), weight: p.ln1w,
                           mean: s.ln1Mean, rstd: s.ln1Rstd, n: n, c: c, scratch: a.scratch) }
    }
}
