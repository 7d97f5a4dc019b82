// What each activation policy costs this rank, in the terms of the planner (TesseraMemory): the bytes the
// activation store will allocate (the same sizes `Activations` and `Workspace` allocate) and the predicted
// extra seconds per step (FLOPs at the measured sgemm rate, element-wise passes at a nominal memory rate,
// offload I/O at the measured tier bandwidth).

import TesseraMemory

public struct ActivationCosts {
    public let config: TransformerConfig
    /// Sequences per micro-batch, tokens per sequence on this rank, tokens of a whole sequence.
    public let batch: Int, tokens: Int, seqLen: Int
    /// Layers per chunk of this rank and, per chunk, activation sets alive at once.
    public let chunks: [Range<Int>], setsPerChunk: [Int]
    /// Per chunk: it ends with the head (ln_f, the LM head and the loss).
    public let heads: [Bool]
    /// The head chunk keeps its own loss gradient (pipeline schedules).
    public let ownLossGradient: Bool
    public let attentionSaved: Int, attentionReadsQKV: Bool
    /// Micro-batches per step (each recomputes every layer once).
    public let microbatches: Int
    /// bf16 training: offload moves a block's operands as bf16 (OffloadStaging's compact image).
    public var operandsAreBF16 = false

    public init(config: TransformerConfig, batch: Int, tokens: Int, seqLen: Int, stage: ModelStage, setsPerChunk: [Int],
                ownLossGradient: Bool, attentionSaved: Int, attentionReadsQKV: Bool, microbatches: Int) {
        self.config = config; self.batch = batch; self.tokens = tokens; self.seqLen = seqLen
        chunks = stage.chunks; self.setsPerChunk = setsPerChunk
        heads = stage.chunks.indices.map { stage.endsWithHead(chunk: $0) }
        self.ownLossGradient = ownLossGradient; self.attentionSaved = attentionSaved
        self.attentionReadsQKV = attentionReadsQKV; self.microbatches = microbatches
    }

    var n: Int { batch * tokens }
    var shape: Activations.LayerShape {
        Activations.LayerShape(n: n, config: config, lse: batch * config.nHead * tokens, attention: attentionSaved)
    }

    /// Bytes a block keeps per set under `keep` and `selective` (as `Activations.init` allocates them).
    public var keepBytes: Int { 4 * shape.keptFloats(.keep, readsQKV: attentionReadsQKV) }
    public var selectiveBytes: Int { 4 * shape.keptFloats(.selective, readsQKV: attentionReadsQKV) }

    /// Bytes one offloaded block moves each way through the tier.
    public var offloadBytes: Int { OffloadStaging.bytes(floats: shape.floats, compact: operandsAreBF16 ? shape.operandFloats : 0) }

    /// Bytes every plan holds: per set, the residual stream and (head chunk) ln_f and the loss gradient.
    public var fixedBytes: Int {
        chunks.indices.reduce(0) {
            $0 + setsPerChunk[$1] * 4 * shape.fixedFloats(layers: chunks[$1].count, head: heads[$1], ownLossGradient: ownLossGradient)
        }
    }

    /// Seconds of one block's forward and of a selective recomputation, per micro-batch.
    public func blockSeconds(flopRate: Double, memoryRate: Double = 10e9) -> (forward: Double, selective: Double) {
        let m = config, c = Double(m.dModel), n = Double(n)
        let attention = 2 * Double(batch * tokens) * Double(seqLen) * c  // causal: half of 4·t·S·c
        let elementwise = 4 * 20 * n * c / memoryRate                    // norms, residuals, MLP activation: ~20 passes of N·C
        // 2·N·(in·out) FLOPs per product. full: the whole block (qkv, projection, the MLP's two products, attention);
        // selective: what follows the kept attention output (projection, MLP input product; GPT-2: 2 + 8 · N·C²).
        let qkv = c * Double(m.qkvWidth), proj = c * c, mlpIn = c * Double(m.mlpInWidth), mlpOut = Double(m.mlpHiddenWidth) * c
        let full = 2 * n * (qkv + proj + mlpIn + mlpOut) + attention
        return (full / flopRate + elementwise, 2 * n * (proj + mlpIn) / flopRate + 0.75 * elementwise)
    }

    /// The planner's view of this rank. `tier`: write and read bytes/s of the offload tier (nil: offload is
    /// not considered).
    public func planner(flopRate: Double, tier: (write: Double, read: Double)?) -> ActivationPlanner {
        let t = blockSeconds(flopRate: flopRate), m = Double(microbatches)
        var offload = 1e12  // no tier: never chosen (finite, so that 0 × it stays 0)
        if let tier {
            let w = Double(offloadBytes) / tier.write, r = Double(offloadBytes) / tier.read
            offload = m * (max(0, w - t.forward) + max(0, r - 2 * t.forward) + 0.05 * (w + r))
        }
        var layers: [ActivationPlanner.Layer] = []
        for (i, range) in chunks.enumerated() {
            for _ in range {
                layers.append(.init(sets: setsPerChunk[i], keepBytes: keepBytes, selectiveBytes: selectiveBytes,
                                    fullSeconds: m * t.forward, selectiveSeconds: m * t.selective, offloadSeconds: offload))
            }
        }
        return ActivationPlanner(layers: layers, fixedBytes: fixedBytes, recomputeBufferBytes: 4 * shape.floats,
                                 stagingBytes: 2 * 4 * shape.floats)
    }
}
