// Which part of the global model one rank holds. Without pipeline parallelism that is everything. With it,
// a rank holds one or more contiguous chunks of blocks (one chunk per virtual stage it runs), the embeddings
// if it runs the first virtual stage, and the final norm with the LM head if it runs the last. When the LM
// head is tied to the token embedding (GPT-2 always, Llama if configured), the first and last stages each
// hold a copy of the token embedding; the trainer keeps the copies identical by summing their gradients
// every step.
//
// A stage's parameters are the global tensors it needs, under their global names, initialised from the
// seed and the name alone: every layout starts from the same model.

public struct ModelStage: Sendable, Equatable, CustomStringConvertible {
    /// Layer ranges of this rank's model chunks, in chunk order (ascending layers).
    public let chunks: [Range<Int>]
    /// Runs the token and position embeddings (the first virtual stage).
    public let hasEmbedding: Bool
    /// Runs ln_f, the tied LM head and the loss (the last virtual stage).
    public let hasHead: Bool

    public init(chunks: [Range<Int>], hasEmbedding: Bool, hasHead: Bool) {
        precondition(!chunks.isEmpty && chunks.allSatisfy { !$0.isEmpty }, "a model stage needs at least one layer per chunk")
        precondition(zip(chunks, chunks.dropFirst()).allSatisfy { $0.upperBound <= $1.lowerBound }, "chunks must ascend")
        self.chunks = chunks; self.hasEmbedding = hasEmbedding; self.hasHead = hasHead
    }

    /// The whole model (one rank, or pipeline parallelism off).
    public static func whole(_ c: TransformerConfig) -> ModelStage {
        ModelStage(chunks: [0..<c.nLayer], hasEmbedding: true, hasHead: true)
    }

    /// Every layer this stage holds.
    public var layers: [Int] { chunks.flatMap { Array($0) } }
    public func holds(layer l: Int) -> Bool { chunks.contains { $0.contains(l) } }
    /// The chunk runs the embeddings (its first layer is layer 0 of a stage that has them).
    public func embeds(chunk: Int) -> Bool { hasEmbedding && chunk == 0 }
    /// The chunk ends with ln_f, the LM head and the loss.
    public func endsWithHead(chunk: Int) -> Bool { hasHead && chunk == chunks.count - 1 }
    /// Holds the token embedding if the head is tied to it (as the embedding, as the LM head, or both).
    public var holdsTokenEmbedding: Bool { hasEmbedding || hasHead }

    public var description: String {
        var parts = chunks.map { $0.count == 1 ? "layer \($0.lowerBound)" : "layers \($0.lowerBound)–\($0.upperBound - 1)" }
        if hasEmbedding { parts.insert("embeddings", at: 0) }
        if hasHead { parts.append("ln_f + LM head") }
        return parts.joined(separator: ", ")
    }
}

extension ModelParameters {
    /// The global tensors a stage holds, in global storage order (embeddings, blocks, final norm, head).
    public static func specs(_ c: TransformerConfig, stage: ModelStage) -> [ParameterSpec] {
        specs(c).filter { spec in
            if let l = layerIndex(of: spec.name) { return stage.holds(layer: l) }
            switch spec.name {
            case c.tokenEmbeddingName: return c.tied ? stage.holdsTokenEmbedding : stage.hasEmbedding
            case "transformer.wpe.weight": return stage.hasEmbedding
            default: return stage.hasHead  // the final norm, an untied lm_head
            }
        }
    }
}
