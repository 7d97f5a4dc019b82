// What GPT-2 and Llama share: parameters and gradients (one contiguous buffer each, same layout), the stage
// this rank holds, the bf16 copy of the weights, the activation policies and recomputation, and the order of a
// chunk's forward and backward. A family (GPT.swift, Llama.swift) supplies the math of its embeddings, blocks
// and final norm on the activation slots of Activations.swift. The parallel modules plug into the seams of
// `ParallelModel` (ModelSeams.swift), which this class implements for both.

import Foundation
import TesseraKernels
import TesseraMemory

public class Transformer: ParallelModel, @unchecked Sendable {
    public let config: TransformerConfig
    public let params: ParameterSet
    public let grads: ParameterSet
    public var attention: AttentionOp
    /// The part of the global model this rank holds.
    public let stage: ModelStage
    /// Told during `backward` when gradients become final (data parallelism starts reducing them).
    public weak var observer: BackwardObserver?
    /// The residual stream's width: what crosses a pipeline-stage boundary per token.
    public var boundaryWidth: Int { config.dModel }
    public var blocksReadPositions: Bool { config.family == .llama }
    /// Storage offsets of the final norm and of each held block's first tensor (gradient-readiness boundaries).
    let finalNormOffset: Int, blockOffsets: [Int]

    /// Number format of the matrix products (Precision.swift). In bf16 the products read `weights`, a copy of
    /// the parameters rounded to bf16, refreshed from the fp32 master weights before the first forward after
    /// `parametersChanged()`; gradients always go to the fp32 `grads`.
    public var precision: Precision = .fp32 {
        didSet {
            guard precision != oldValue else { return }
            productTwin?.close()
            productParams = precision == .bf16 ? params.sameLayout() : nil
            productTwin = productParams.flatMap { pp in
                ProductBackend.bf16 == .onednn ? ProductBackend.Twin(of: pp.storage.ptr, count: pp.count) : nil
            }
            productWeightsStale = true
            productTensorsChanged()
        }
    }
    private var productParams: ParameterSet?
    /// The 16-bit copy of `productParams` that oneDNN's bf16 products read (ProductBackend.Twin), on that backend.
    private var productTwin: ProductBackend.Twin?
    private var productWeightsStale = true
    /// The tensors the matrix products read: `params` in fp32, the bf16 copy in bf16.
    public var weights: ParameterSet { productParams ?? params }
    /// Bytes of the bf16 copy of the weights (0 in fp32).
    public var productWeightBytes: Int { (productParams?.count ?? 0) * 4 + (productTwin?.count ?? 0) * 2 }

    /// Called between the ops of every block, forward and backward: a chance to drive communication in
    /// flight (the pipeline engine's transfers; this MPI moves messages only inside MPI calls).
    public var progress: (() -> Void)?
    /// Each block's activation policy and the offload tier (keep everything by default).
    public var memory = MemoryPlan()
    /// Time spent recomputing blocks before their backward (full and selective policies), since reset.
    public var recomputeNs: UInt64 = 0
    /// Told of each recomputation (name, start, end in monotonic ns): the trainer's trace marks them.
    public var onRecompute: ((String, UInt64, UInt64) -> Void)?

    /// The twin leaves the registry before the weights it copies are freed.
    deinit { productTwin?.close() }

    /// The whole model, or (pipeline parallelism) the stage `stage` of it, initialised from the seed.
    /// `finalNorm`: the final norm's first tensor; `blockFirst(l)`: block l's first tensor.
    init(config: TransformerConfig, seed: UInt64, stage: ModelStage?, finalNorm: String, blockFirst: (Int) -> String) {
        self.config = config
        let stage = stage ?? .whole(config)
        self.stage = stage
        let p = ParameterSet(specs: ModelParameters.specs(config, stage: stage))
        p.initialize(seed: seed)
        params = p; grads = p.sameLayout()
        attention = LocalAttention(heads: config.nHead, kvHeads: config.nKVHead, headDim: config.headDim)
        finalNormOffset = stage.hasHead ? p.offset(of: finalNorm) : 0
        blockOffsets = (0..<config.nLayer).map { stage.holds(layer: $0) ? p.offset(of: blockFirst($0)) : 0 }
    }

    /// The model of `config`'s family.
    public static func make(config: TransformerConfig, seed: UInt64, stage: ModelStage? = nil) -> Transformer {
        switch config.family {
        case .gpt2: return GPT(config: config, seed: seed, stage: stage)
        case .llama: return Llama(config: config, seed: seed, stage: stage)
        }
    }

    /// Per global layer: `make(set, l)` for the layers this stage holds, nil for the others.
    func heldLayers<T>(_ set: ParameterSet, _ make: (ParameterSet, Int) -> T) -> [T?] {
        (0..<config.nLayer).map { stage.holds(layer: $0) ? make(set, $0) : nil }
    }

    // MARK: what a family supplies

    /// The products' tensors moved (precision changed): a family re-derives its pointers into `weights`.
    func productTensorsChanged() {}
    /// The chunk's input from `a.tokenIds` (and positions) into `a.residual[0]`, and its backward from `a.dres`.
    func embedForward(_ a: Activations) { fatalError("abstract") }
    func embedBackward(_ a: Activations) { fatalError("abstract") }
    /// The final norm of `a.output` into `a.lnf` (rounded in bf16), and its backward from `a.dlnf` into `a.dres`.
    func finalNormForward(_ a: Activations) { fatalError("abstract") }
    func finalNormBackward(_ a: Activations) { fatalError("abstract") }
    /// Block l from `a.input(of: l)` into its tensors `s`, its result into `output` (nil: the recomputation
    /// before the backward, which needs the tensors only).
    func blockForward(_ l: Int, _ a: Activations, _ s: Activations.Layer, output: UnsafeMutablePointer<Float>?) { fatalError("abstract") }
    /// The selective policy's refill: the first norm and everything after the kept attention output.
    func recomputeSelective(_ l: Int, _ a: Activations, _ s: Activations.Layer) { fatalError("abstract") }
    /// On entry a.dres holds d(loss)/d(block output); on exit d(loss)/d(block input).
    func backwardBlock(_ l: Int, _ a: Activations, _ s: Activations.Layer) { fatalError("abstract") }

    // MARK: precision

    /// Tells the model its master weights changed (an optimizer step, a load): the bf16 copy is refreshed
    /// before the next forward.
    public func parametersChanged() { productWeightsStale = true }

    /// Rounds the master weights into the bf16 copy if they changed since it was made.
    func refreshProductWeights() {
        guard productWeightsStale, let pp = productParams else { return }
        BF16.roundParallel(params.storage.ptr, into: pp.storage.ptr, count: params.count)
        productTwin?.refresh()
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

    /// The LM head's weight [vocab, d] as its product reads it (the bf16 copy in bf16: refreshed by a forward).
    public var headWeight: UnsafeMutablePointer<Float> { weights[config.headWeightName] }

    /// Between two ops: drive the attention's and the caller's communication.
    @inline(__always) func poll() {
        attention.poll()
        progress?()
    }

    // MARK: activations

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
                    workspace: Workspace(n: batch * tokens, config: config, training: training), ownLossGradient: false,
                    attentionSaved: attention.savedFloats(batch: batch, tokens: tokens),
                    attentionReadsQKV: attention.backwardReadsLocalQKV, memory: activationMemory)
    }

    // MARK: forward

    /// Runs the activations' chunk: the embeddings of the ids in `a` (tokenIds, positions) if it starts the
    /// model, else from the input already in `a.input(of: first layer)`; then its blocks; then the final norm if
    /// it ends the model, leaving its output in `a.lnf`. `saving`: a backward will follow (offloaded blocks
    /// are written to the tier; evaluation passes false).
    public func forwardBody(_ a: Activations, saving: Bool = true) {
        refreshProductWeights()
        if a.embeds { OpProfile.time(.embedding) { embedForward(a) } }
        for l in a.layerRange {
            blockForward(l, a, a.beginForward(l), output: a.input(of: l + 1))
            a.endForward(l, save: saving)
        }
        guard a.head else { return }
        finalNormForward(a)
    }

    /// Refills what block l's policy did not keep, with the forward's own kernels on the same inputs (so the
    /// values are bit-identical): `full` runs the whole block again (attention included); `selective` runs
    /// the first norm and everything after the attention, from the kept attention output.
    func recompute(_ l: Int, _ a: Activations, _ s: Activations.Layer) {
        let policy = a.policy(l)
        guard policy == .full || policy == .selective else { return }
        let t0 = DispatchTime.now().uptimeNanoseconds
        defer {
            let t1 = DispatchTime.now().uptimeNanoseconds
            recomputeNs += t1 - t0
            onRecompute?("recompute L\(l) (\(policy.rawValue))", t0, t1)
        }
        if policy == .full { blockForward(l, a, s, output: nil) } else { recomputeSelective(l, a, s) }
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
        CrossEntropy.logits(out: out, x: a.lnf, wte: headWeight, n: a.n, c: config.dModel, vocab: config.vocabSize)
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

    /// Forward and the fused LM head + cross-entropy, which also produces d(loss)/d(final norm output) in
    /// a.dlnf and accumulates the LM head's gradient. Returns the loss sum.
    public func forwardLoss(_ a: Activations, gradScale: Float) -> Double {
        forwardBody(a)
        let head = headWeight, dhead = grads[config.headWeightName]
        return OpProfile.time(.lmHeadLoss) {
            CrossEntropy.fused(x: a.lnf, wte: head, targets: a.targets, n: a.n, c: config.dModel,
                               vocab: config.vocabSize, gradScale: gradScale, dx: a.dlnf, dwte: dhead,
                               precision: precision, scratch: a.scratch)
        }
    }

    /// The backward pass after `forwardLoss` (or, for a chunk without the head, after `forwardBody` with
    /// d(loss)/d(chunk output) in `a.dres`). Leaves d(loss)/d(chunk input) in `a.dres` when the chunk does not
    /// start with the embeddings. Tells `observer` which gradients are final as it goes: storage is ordered
    /// embeddings, blocks 0 … L-1, final norm (and head), so after block l everything from block l on is final.
    public func backward(_ a: Activations) {
        if a.head {
            a.dres.update(repeating: 0, count: a.n * config.dModel)
            finalNormBackward(a)
            observer?.gradientsFinal(from: finalNormOffset)
        }
        for l in a.layerRange.reversed() {
            let s = a.beginBackward(l)
            recompute(l, a, s)
            backwardBlock(l, a, s)
            a.endBackward(l)
            observer?.gradientsFinal(from: blockOffsets[l])
        }
        guard a.embeds else { return }
        OpProfile.time(.embedding) { embedBackward(a) }
        observer?.gradientsFinal(from: 0)
    }
}
