import Foundation
import TesseraKernels
import TesseraModel

/// Autoregressive sampling from the in-memory model (byte-level vocabularies print as text).
public final class Sampler {
    let model: Transformer
    let acts: Activations
    var logits: [Float]

    public init(model: Transformer) {
        self.model = model
        acts = Activations(config: model.config, batch: 1, tokens: model.config.blockSize, training: false)
        logits = [Float](repeating: 0, count: model.config.vocabSize)
    }

    /// Generates `count` tokens after `prompt`, with temperature and optional top-k, from a seeded RNG. With `stop`,
    /// generation ends when that token is sampled; the result then holds the tokens before it.
    public func generate(prompt: [Int32], count: Int, temperature: Double, topK: Int, seed: UInt64,
                         stop: Int32? = nil) -> [Int32] {
        var tokens = prompt.isEmpty ? [0] : prompt
        var produced = 0
        var rng = SplitMix64(seed: seed)
        let cfg = model.config, c = cfg.dModel, v = cfg.vocabSize
        for _ in 0..<count {
            let window = Array(tokens.suffix(cfg.blockSize))
            let t = window.count
            acts.resize(tokens: t)
            for i in 0..<t { acts.tokenIds[i] = window[i]; acts.positions[i] = Int32(i) }
            model.forwardBody(acts, saving: false)
            logits.withUnsafeMutableBufferPointer { out in
                CrossEntropy.logits(out: out.baseAddress!, x: acts.lnf + (t - 1) * c, wte: model.headWeight,
                                    n: 1, c: c, vocab: v)
            }
            let next = Int32(Self.pick(logits, temperature: temperature, topK: topK, rng: &rng))
            if next == stop { break }
            tokens.append(next)
            produced += 1
        }
        return Array(tokens.suffix(produced))
    }

    static func pick(_ logits: [Float], temperature: Double, topK: Int, rng: inout SplitMix64) -> Int {
        var cut = -Double.infinity
        if topK > 0 && topK < logits.count { cut = Double(logits.sorted(by: >)[topK - 1]) }
        let mx = Double(logits.max() ?? 0)
        var p = logits.map { Double($0) >= cut ? exp((Double($0) - mx) / temperature) : 0 }
        let z = p.reduce(0, +)
        for i in p.indices { p[i] /= z }
        var u = rng.nextDouble(), i = 0
        while i < p.count - 1 && u >= p[i] { u -= p[i]; i += 1 }
        return i
    }

    /// Bytes to printable text (invalid UTF-8 replaced).
    public static func text(_ tokens: [Int32]) -> String {
        String(decoding: tokens.map { UInt8(truncatingIfNeeded: $0) }, as: UTF8.self)
    }
}

public struct SplitMix64 {
    var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        return Initializer.mix(state)
    }
    public mutating func nextDouble() -> Double { Double(next() >> 11) / 9_007_199_254_740_992.0 }
}
