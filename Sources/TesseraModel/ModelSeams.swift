// The seams between a model family and the parallel modules. A model is free of parallelism: it exposes
// these points, and each parallel dimension plugs into one of them.
//
//   seam                          implemented by                        what it gives the parallel module
//   AttentionOp                   TesseraSequenceParallel               a block's attention over local tokens
//   BackwardObserver              TesseraDataParallel                   which gradients are final, in backward
//   ParallelModel.progress        TesseraPipeline                       a call between ops, to drive transfers
//   ParallelModel (chunk API)     driven by TesseraPipeline             forward / backward of one stage chunk
//   ParallelModel.params/grads    TesseraDataParallel, checkpoints      one flat storage in global-name order
//
// Both families (GPT-2, Llama) implement `ParallelModel` through `Transformer` and reuse every parallel module.

import TesseraKernels
import TesseraMemory

/// A model as the parallel modules see it: named global parameters (a stage's share of them), the seams
/// above, and forward / backward of one micro-batch through one chunk of its stage.
public protocol ParallelModel: AnyObject {
    /// This rank's parameters and gradients: the global tensors its stage holds, under their global names,
    /// in global storage order (so a gradient offset's finality is monotone in the backward pass).
    var params: ParameterSet { get }
    var grads: ParameterSet { get }
    /// The architecture (family and sizes).
    var config: TransformerConfig { get }
    /// The part of the global model this rank holds.
    var stage: ModelStage { get }
    /// Every block reads the tokens' positions (Llama's RoPE), not only the embeddings: a pipeline stage fills
    /// them for every chunk.
    var blocksReadPositions: Bool { get }
    /// Floats per token that cross a pipeline-stage boundary (the residual stream's width).
    var boundaryWidth: Int { get }
    /// The attention every block runs (sequence parallelism replaces it).
    var attention: AttentionOp { get set }
    /// Told during backward which gradients are final (data parallelism).
    var observer: BackwardObserver? { get set }
    /// Called between the ops of every block (the pipeline engine tests its transfers in flight).
    var progress: (() -> Void)? { get set }

    /// Activations of one micro-batch through chunk `chunk` of this stage, sharing `workspace`.
    func activations(chunk: Int, batch: Int, tokens: Int, workspace: Workspace) -> Activations
    /// Forward through the chunk, ending in the summed loss if the chunk has the head (gradient seeds scaled
    /// by `gradScale`); returns the loss sum (0 without the head).
    func forwardLoss(_ a: Activations, gradScale: Float) -> Double
    /// Forward through the chunk without a backward to follow; the loss sum if the chunk has the head.
    func lossSum(_ a: Activations) -> Double
    /// Forward through the chunk's embeddings and blocks (and ln_f), no loss.
    func forwardBody(_ a: Activations, saving: Bool)
    /// Backward through the chunk; gradients accumulate into `grads`.
    func backward(_ a: Activations)
}

/// How a block computes attention over its fused qkv. The single-rank implementation is `LocalAttention`.
/// Whatever else an implementation keeps for the backward (Ulysses: the head-sharded q, k, v and output)
/// lives in the micro-batch's activations: `savedFloats` per layer, passed back as `saved`.
public protocol AttentionOp: AnyObject {
    /// The documents of the micro-batch the next forward or backward runs on (block-causal attention over packed
    /// rows; nil: causal over whole rows). The model sets it from the activations before each call.
    var documents: DocumentStarts? { get set }
    /// Floats per layer the op saves for its backward, for a micro-batch of this shape.
    func savedFloats(batch: Int, tokens: Int) -> Int
    func forward(qkv: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>,
                 saved: UnsafeMutablePointer<Float>, batch: Int, tokens: Int, layer: Int, scratch: Scratch)
    /// Accumulates into dqkv (zeroed by the caller).
    func backward(dqkv: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>, out: UnsafePointer<Float>,
                  lse: UnsafePointer<Float>, qkv: UnsafePointer<Float>, saved: UnsafeMutablePointer<Float>, batch: Int,
                  tokens: Int, layer: Int, scratch: Scratch)
    /// Called when the backward pass reaches the block, before its MLP backward: a chance to start the
    /// communication the attention backward needs (ring attention fetches its first key/value block).
    func prepareBackward(qkv: UnsafePointer<Float>, saved: UnsafeMutablePointer<Float>, batch: Int, tokens: Int, layer: Int)
    func poll()
    /// Whether `backward` reads the local fused qkv (Ulysses reads its head-sharded copy in `saved` instead,
    /// so the selective policy need not keep the local one).
    var backwardReadsLocalQKV: Bool { get }
}

extension AttentionOp {
    public var backwardReadsLocalQKV: Bool { true }
    public func savedFloats(batch: Int, tokens: Int) -> Int { 0 }
    public func prepareBackward(qkv: UnsafePointer<Float>, saved: UnsafeMutablePointer<Float>, batch: Int, tokens: Int, layer: Int) {}
    /// Called between the block's other backward ops: drive communication started by `prepareBackward`.
    public func poll() {}
}

/// Learns, during a backward pass, which gradients are final.
public protocol BackwardObserver: AnyObject {
    /// Gradients at parameter-storage offsets ≥ `offset` will not change again in this backward pass.
    func gradientsFinal(from offset: Int)
}

