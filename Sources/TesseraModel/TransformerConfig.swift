// The architecture of a model: its family and its sizes. Both families are decoder-only transformers whose
// blocks fill the same activation slots (Activations.swift), so every parallel module and memory policy
// serves both; what differs is here (widths, names) and in GPT.swift / Llama.swift (the math).
//
//   family  norms        position           MLP                         attention       LM head
//   gpt2    LayerNorm    learned wpe        GELU, 4·d                   H heads         tied to wte
//   llama   RMSNorm(eps) RoPE(θ), rotate-½  SiLU(gate)·up, intermediate H q, KV k/v     tied or lm_head

import TesseraKernels

public enum ModelFamily: String, Sendable, CaseIterable {
    case gpt2, llama
}

public struct TransformerConfig: Sendable, Equatable {
    public var family: ModelFamily
    public var vocabSize: Int, nLayer: Int, nHead: Int, dModel: Int, blockSize: Int
    /// Key/value heads (grouped-query attention; = nHead for GPT-2).
    public var nKVHead: Int
    /// Hidden width of the MLP (4·d for GPT-2).
    public var intermediate: Int
    /// RMSNorm epsilon and RoPE base (Llama).
    public var rmsEps: Float, ropeTheta: Double
    /// The LM head is the token embedding (always for GPT-2).
    public var tied: Bool

    /// A GPT-2 model.
    public init(vocabSize: Int, nLayer: Int, nHead: Int, dModel: Int, blockSize: Int) {
        family = .gpt2
        self.vocabSize = vocabSize; self.nLayer = nLayer; self.nHead = nHead
        self.dModel = dModel; self.blockSize = blockSize
        nKVHead = nHead; intermediate = 4 * dModel; rmsEps = 1e-5; ropeTheta = 10_000; tied = true
    }

    /// A Llama model (`LlamaForCausalLM`).
    public static func llama(vocabSize: Int, nLayer: Int, nHead: Int, nKVHead: Int, dModel: Int, intermediate: Int,
                             blockSize: Int, rmsEps: Float = 1e-5, ropeTheta: Double = 10_000, tied: Bool = false) -> TransformerConfig {
        precondition(dModel % nHead == 0 && nHead % nKVHead == 0, "llama: heads must divide d_model and KV heads the heads")
        var c = TransformerConfig(vocabSize: vocabSize, nLayer: nLayer, nHead: nHead, dModel: dModel, blockSize: blockSize)
        c.family = .llama; c.nKVHead = nKVHead; c.intermediate = intermediate
        c.rmsEps = rmsEps; c.ropeTheta = ropeTheta; c.tied = tied
        return c
    }

    public var headDim: Int { dModel / nHead }
    /// Width of a token's fused q|k|v row: (H + 2·KV)·hd (3·d for GPT-2).
    public var qkvWidth: Int { (nHead + 2 * nKVHead) * headDim }
    /// Width of the MLP's input product (GPT-2: c_fc, 4·d; Llama: gate|up, 2·intermediate).
    public var mlpInWidth: Int { family == .llama ? 2 * intermediate : intermediate }
    /// Width of the MLP's activation output, the input of its second product (intermediate).
    public var mlpHiddenWidth: Int { intermediate }

    /// The token embedding's name (also the LM head when tied).
    public var tokenEmbeddingName: String { family == .llama ? "model.embed_tokens.weight" : "transformer.wte.weight" }
    /// The LM head's weight [vocab, d].
    public var headWeightName: String { tied ? tokenEmbeddingName : "lm_head.weight" }
    /// A human name of the architecture (banner, reports).
    public var familyName: String { family == .llama ? "Llama" : "GPT-2" }

    /// Parameter count (a tied head counted once).
    public var parameterCount: Int { ModelParameters.specs(self).reduce(0) { $0 + $1.count } }
    /// Training FLOPs per token as in the PaLM/nanoGPT MFU estimate: 6N + 12·n_layer·d·seq, N the parameters
    /// (GPT-2: all of them, as nanoGPT counts; Llama: without an untied embedding table, which is a lookup).
    public func flopsPerToken(seqLen: Int) -> Double {
        let lookup = family == .llama && !tied ? vocabSize * dModel : 0
        return 6 * Double(parameterCount - lookup) + 12 * Double(nLayer * dModel * seqLen)
    }
}

/// The global tensors of either family.
public enum ModelParameters {
    /// Every parameter in storage order, with Hugging Face names and layouts.
    public static func specs(_ c: TransformerConfig) -> [ParameterSpec] {
        c.family == .llama ? LlamaParameters.specs(c) : GPTParameters.specs(c)
    }

    /// The block index in a name "transformer.h.<l>.…" or "model.layers.<l>.…", nil for other tensors.
    public static func layerIndex(of name: String) -> Int? {
        for prefix in ["transformer.h.", "model.layers."] where name.hasPrefix(prefix) {
            return Int(name.dropFirst(prefix.count).prefix { $0 != "." })
        }
        return nil
    }
}
