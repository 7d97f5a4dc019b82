// GPT-2 forward and backward over the kernels. The model holds parameters and gradients (one
// contiguous buffer each, same layout); activations of a micro-batch live in `Activations`.
// The parallel modules plug into the seams of `ParallelModel` (ModelSeams.swift), which GPT implements.

import Foundation
import TesseraKernels
import TesseraMemory

/// Causal self-attention over the whole local sequence with the blockwise kernel.
public final class LocalAttention: AttentionOp {
    public let heads: Int, headDim: Int
    public var blockQ = 64, blockK = 64
    public init(heads: Int, headDim: Int) { self.heads = heads; self.headDim = headDim }

    func layout(_ batch: Int, _ tokens: Int) -> AttentionLayout {
        var g = AttentionLayout.fused(batch: batch, t: tokens, heads: heads, headDim: headDim)
        g.blockQ = blockQ; g.blockK = blockK
        return g
    }

    public func forward(qkv: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>,
                        saved: UnsafeMutablePointer<Float>, batch: Int, tokens: Int, layer: Int, scratch: Scratch) {
        let c = heads * headDim
        Attention.forward(out: out, lse: lse, q: qkv, k: qkv + c, v: qkv + 2 * c, layout: layout(batch, tokens),
                          scratch: scratch)
    }

    public func backward(dqkv: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>, out: UnsafePointer<Float>,
                         lse: UnsafePointer<Float>, qkv: UnsafePointer<Float>, saved: UnsafeMutablePointer<Float>, batch: Int,
                         tokens: Int, layer: Int, scratch: Scratch) {
        let c = heads * headDim
        Attention.backward(dq: dqkv, dk: dqkv + c, dv: dqkv + 2 * c, dout: dout, out: out, lse: lse,
                           q: qkv, k: qkv + c, v: qkv + 2 * c, layout: layout(batch, tokens), scratch: scratch)
    }
}

public final class GPT: ParallelModel, @unchecked Sendable {
    public let config: GPTConfig
    public let params: ParameterSet
    public let grads: ParameterSet
    public var attention: AttentionOp

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
    private let pBlocks: [BlockTensors?], gBlocks: [BlockTensors?]
    /// The block tensors the matrix products read: `pBlocks` in fp32, the bf16 copy's in bf16.
    private var wBlocks: [BlockTensors?]
    /// Storage offsets of ln_f and of each held block's first tensor (gradient-readiness boundaries).
    private let lnfOffset: Int, blockOffsets: [Int]
    /// The part of the global model this rank holds.
    public let stage: ModelStage
    /// Told during `backward` when gradients become final (data parallelism starts reducing them).
    public weak var observer: BackwardObserver?
    /// The residual stream's width: what crosses a pipeline-stage boundary per token.
    public var boundaryWidth: Int { config.dModel }
    /// Number format of the matrix products (Precision.swift). In bf16 the products read `productParams`,
    /// a copy of the weights rounded to bf16, refreshed from the fp32 master weights before the first forward
    /// after `parametersChanged()`; gradients always go to the fp32 `grads`.
    public var precision: Precision = .fp32 {
        didSet {
            guard precision != oldValue else { return }
            productParams = precision == .bf16 ? params.sameLayout() : nil
            wBlocks = (0..<config.nLayer).map { stage.holds(layer: $0) ? BlockTensors(productParams ?? params, $0) : nil }
            productWeightsStale = true
        }
    }
    private var productParams: ParameterSet?
    private var productWeightsStale = true
    /// Bytes of the bf16 copy of the weights (0 in fp32).
    public var productWeightBytes: Int { productParams.map { $0.count * 4 } ?? 0 }

    /// Tells the model its master weights changed (an optimizer step, a load): the bf16 copy is refreshed
    /// before the next forward.
    public func parametersChanged() { productWeightsStale = true }

    /// Rounds the master weights into the bf16 copy if they changed since it was made.
    func refreshProductWeights() {
        guard productWeightsStale, let pp = productParams else { return }
        BF16.roundParallel(params.storage.ptr, into: pp.storage.ptr, count: params.count)
        productWeightsStale = false
    }

    /// Rounds a product operand in place (bf16; nothing in fp32).
    @inline(__always) func roundOperand(_ p: UnsafeMutablePointer<Float>, count: Int) {
        if precision == .bf16 { OpProfile.time(.rounding) { precision.roundOperand(p, count: count) } }
    }
    /// A rounded copy of a product operand (bf16).
    func operandCopy(_ src: UnsafePointer<Float>, into dst: UnsafeMutablePointer<Float>, count: Int) -> UnsafeMutablePointer<Float> {
        OpProfile.time(.rounding) { precision.operandCopy(src, into: dst, count: count) }
    }

    /// The token embedding as the LM head's product reads it (the bf16 copy in bf16: refreshed by a forward).
    public var headWeight: UnsafeMutablePointer<Float> { (productParams ?? params)["transformer.wte.weight"] }

    /// Called between the ops of every block, forward and backward: a chance to drive communication in
    /// flight (the pipeline engine's transfers; this MPI moves messages only inside MPI calls).
    public var progress: (() -> Void)?
    /// Each block's activation policy and the offload tier (keep everything by default).
    public var memory = MemoryPlan()
    /// Time spent recomputing blocks before their backward (full and selective policies), since reset.
    public var recomputeNs: UInt64 = 0
    /// Told of each recomputation (name, start, end in monotonic ns): the trainer's trace marks them.
    public var onRecompute: ((String, UInt64, UInt64) -> Void)?

    /// Between two ops: drive the attention's and the caller's communication.
    @inline(__always) func poll() {
        attention.poll()
        progress?()
    }

    /// The whole model, or (pipeline parallelism) the stage `stage` of it, initialised from the seed.
    public init(config: GPTConfig, seed: UInt64, stage: ModelStage? = nil) {
        self.config = config
        let stage = stage ?? .whole(config)
        self.stage = stage
        let p = ParameterSet(specs: GPTParameters.specs(config, stage: stage)), g = p.sameLayout()
        p.initialize(seed: seed)
        params = p; grads = g
        attention = LocalAttention(heads: config.nHead, headDim: config.headDim)
        pBlocks = (0..<config.nLayer).map { stage.holds(layer: $0) ? BlockTensors(p, $0) : nil }
        gBlocks = (0..<config.nLayer).map { stage.holds(layer: $0) ? BlockTensors(g, $0) : nil }
        wBlocks = pBlocks
        lnfOffset = stage.hasHead ? p.offset(of: "transformer.ln_f.weight") : 0
        blockOffsets = (0..<config.nLayer).map { stage.holds(layer: $0) ? p.offset(of: "transformer.h.\($0).ln_1.weight") : 0 }
    }

    /// `memory`, told whether the operands are bf16 values (then offload sends them as bf16).
    var activationMemory: MemoryPlan {
        var m = memory
        m.operandsAreBF16 = precision == .bf16
        return m
    }

    /// Activations for one micro-batch through chunk `chunk` of this stage, sharing `workspace`.
    public func activations(chunk: Int, batch: Int, tokens: Int, workspace: Workspace) -> Activations {
        Activations(config: config, batch: batch, tokens: tokens, layers: stage.chunks[chunk],
                    embeds: stage.embeds(chunk: chunk), head: stage.endsWithHead(chunk: chunk), workspace: workspace,
                    attentionSaved: attention.savedFloats(batch: batch, tokens: tokens),
                    attentionReadsQKV: attention.backwardReadsLocalQKV, memory: activationMemory)
    }

    /// Activations of the whole model with their own workspace (no pipeline parallelism).
    public func activations(batch: Int, tokens: Int, training: Bool = true) -> Activations {
        Activations(config: config, batch: batch, tokens: tokens, layers: 0..<config.nLayer, embeds: true, head: true,
                    workspace: Workspace(n: batch * tokens, c: config.dModel, training: training), ownLossGradient: false,
                    attentionSaved: attention.savedFloats(batch: batch, tokens: tokens),
                    attentionReadsQKV: attention.backwardReadsLocalQKV, memory: activationMemory)
    }

    // MARK: forward

    /// Runs the activations' chunk: the embeddings of the ids in `a` (tokenIds, positions) if it starts the
    /// model, else from the input already in `a.input(of: first layer)`; then its blocks; then ln_f if it
    /// ends the model, leaving ln_f's output in `a.lnf`. `saving`: a backward will follow (offloaded blocks
    /// are written to the tier; evaluation passes false).
    public func forwardBody(_ a: Activations, saving: Bool = true) {
        let c = config.dModel, n = a.n
        refreshProductWeights()
        if a.embeds {
            OpProfile.time(.embedding) { Embedding.forward(out: a.residual[0], tokens: a.tokenIds, positions: a.positions,
                              wte: params["transformer.wte.weight"], wpe: params["transformer.wpe.weight"], n: n, c: c) }
        }
        for l in a.layerRange {
            blockForward(l, a, a.beginForward(l), output: a.input(of: l + 1))
            a.endForward(l, save: saving)
        }
        guard a.head else { return }
        OpProfile.time(.layerNorm) { LayerNorm.forward(out: a.lnf, mean: a.lnfMean, rstd: a.lnfRstd, x: a.output,
                          weight: params["transformer.ln_f.weight"], bias: params["transformer.ln_f.bias"], n: n, c: c) }
        roundOperand(a.lnf, count: n * c)
    }

    /// Block l from its input `a.input(of: l)` into the tensors `s`, its result into `output` (nil: the
    /// recomputation before the backward, which needs the tensors only).
    func blockForward(_ l: Int, _ a: Activations, _ s: Activations.Layer, output: UnsafeMutablePointer<Float>?) {
        let c = config.dModel, n = a.n
        let p = pBlocks[l]!, w = wBlocks[l]!, x = a.input(of: l)
        OpProfile.time(.layerNorm) { LayerNorm.forward(out: s.ln1, mean: s.ln1Mean, rstd: s.ln1Rstd, x: x, weight: p.ln1w, bias: p.ln1b, n: n, c: c) }
        roundOperand(s.ln1, count: n * c)
        OpProfile.time(.matmul) { Linear.forward(out: s.qkv, inp: s.ln1, weight: w.attnW, bias: p.attnB, n: n, inDim: c, outDim: 3 * c, precision: precision) }
        roundOperand(s.qkv, count: n * 3 * c)
        progress?()
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

    /// Refills what block l's policy did not keep, with the forward's own kernels on the same inputs (so the
    /// values are bit-identical): `full` runs the whole block again (attention included); `selective` runs
    /// ln_1 and everything after the attention, from the kept attention output.
    func recompute(_ l: Int, _ a: Activations, _ s: Activations.Layer) {
        let policy = a.policy(l)
        guard policy == .full || policy == .selective else { return }
        let t0 = DispatchTime.now().uptimeNanoseconds
        defer {
            let t1 = DispatchTime.now().uptimeNanoseconds
            recomputeNs += t1 - t0
            onRecompute?("recompute L\(l) (\(policy.rawValue))", t0, t1)
        }
        if policy == .full { blockForward(l, a, s, output: nil); return }
        let c = config.dModel, n = a.n, p = pBlocks[l]!
        OpProfile.time(.layerNorm) { LayerNorm.forward(out: s.ln1, mean: s.ln1Mean, rstd: s.ln1Rstd, x: a.input(of: l), weight: p.ln1w, bias: p.ln1b, n: n, c: c) }
        roundOperand(s.ln1, count: n * c)
        mlpForward(l, a, s, output: nil)
    }

    /// Sum of the cross-entropy over the micro-batch's targets (forward only).
    public func lossSum(_ a: Activations) -> Double {
        forwardBody(a, saving: false)
        return CrossEntropy.fused(x: a.lnf, wte: headWeight, targets: a.targets, n: a.n,
                                  c: config.dModel, vocab: config.vocabSize, gradScale: 0, dx: nil, dwte: nil,
                                  precision: precision, scratch: a.scratch)
    }

    /// Logits [N, V] of the last forward (a.lnf must be current).
    public func logits(_ a: Activations, into out: UnsafeMutablePointer<Float>) {
        refreshProductWeights()
        CrossEntropy.logits(out: out, x: a.lnf, wte: headWeight, n: a.n, c: config.dModel,
                            vocab: config.vocabSize)
    }

    // MARK: forward + backward

    /// Forward, loss and backward of one micro-batch; gradients are *accumulated* into `grads`, each
    /// token's loss weighted by `gradScale` (1 / global token count: the one place the loss is normalised).
    /// Returns the unnormalised loss sum of this micro-batch.
    @discardableResult
    public func forwardBackward(_ a: Activations, gradScale: Float) -> Double {
        let loss = forwardLoss(a, gradScale: gradScale)
        backward(a)
        return loss
    }

    /// Forward and the fused LM head + cross-entropy, which also produces d(loss)/d(ln_f output) in a.dlnf
    /// and accumulates the LM head's share of the wte gradient. Returns the loss sum.
    public func forwardLoss(_ a: Activations, gradScale: Float) -> Double {
        forwardBody(a)
        let wte = headWeight, dwte = grads["transformer.wte.weight"]
        return OpProfile.time(.lmHeadLoss) {
            CrossEntropy.fused(x: a.lnf, wte: wte, targets: a.targets, n: a.n, c: config.dModel,
                               vocab: config.vocabSize, gradScale: gradScale, dx: a.dlnf, dwte: dwte,
                               precision: precision, scratch: a.scratch)
        }
    }

    /// The backward pass after `forwardLoss` (or, for a chunk without the head, after `forwardBody` with
    /// d(loss)/d(chunk output) in `a.dres`). Leaves d(loss)/d(chunk input) in `a.dres` when the chunk does not
    /// start with the embeddings. Tells `observer` which gradients are final as it goes: storage is ordered
    /// wte, wpe, h.0 … h.L-1, ln_f, so after block l everything from h.l on is final.
    public func backward(_ a: Activations) {
        let c = config.dModel, n = a.n
        if a.head {
            a.dres.update(repeating: 0, count: n * c)
            OpProfile.time(.layerNorm) { LayerNorm.backward(dx: a.dres, dweight: grads["transformer.ln_f.weight"], dbias: grads["transformer.ln_f.bias"],
                               dout: a.dlnf, x: a.output, weight: params["transformer.ln_f.weight"],
                               mean: a.lnfMean, rstd: a.lnfRstd, n: n, c: c, scratch: a.scratch) }
            observer?.gradientsFinal(from: lnfOffset)
        }
        for l in a.layerRange.reversed() {
            let s = a.beginBackward(l)
            recompute(l, a, s)
            backwardBlock(l, a, s)
            a.endBackward(l)
            observer?.gradientsFinal(from: blockOffsets[l])
        }
        guard a.embeds else { return }
        OpProfile.time(.embedding) { Embedding.backward(dwte: grads["transformer.wte.weight"], dwpe: grads["transformer.wpe.weight"],
                           dout: a.dres, tokens: a.tokenIds, positions: a.positions, n: n, c: c) }
        observer?.gradientsFinal(from: 0)
    }

    /// On entry a.dres holds d(loss)/d(block output); on exit d(loss)/d(block input).
    func backwardBlock(_ l: Int, _ a: Activations, _ s: Activations.Layer) {
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
