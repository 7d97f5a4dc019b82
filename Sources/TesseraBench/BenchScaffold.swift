// What every `tessera bench*` command shares: the model sizes, the synthetic training text, the config of a
// benchmark job, the median, table cells and the JSON report lines.

import Foundation
import TesseraModel
import TesseraTraining

/// A benchmark model size: the model's shape and the batch of one step.
public struct BenchSize: Sendable {
    public let name: String, vocab: Int, d: Int, layers: Int, heads: Int, seq: Int, batch: Int
    /// Llama sizes: key/value heads and the MLP width (untied head, RoPE θ 1e4, RMSNorm eps 1e-5).
    public var llama: (kvHeads: Int, intermediate: Int)? = nil

    public var model: TransformerConfig {
        guard let llama else { return TransformerConfig(vocabSize: vocab, nLayer: layers, nHead: heads, dModel: d, blockSize: seq) }
        return .llama(vocabSize: vocab, nLayer: layers, nHead: heads, nKVHead: llama.kvHeads, dModel: d,
                      intermediate: llama.intermediate, blockSize: seq)
    }

    /// This size with another layer count, sequence length or batch.
    public func with(layers: Int? = nil, seq: Int? = nil, batch: Int? = nil) -> BenchSize {
        BenchSize(name: name, vocab: vocab, d: d, layers: layers ?? self.layers, heads: heads, seq: seq ?? self.seq,
                  batch: batch ?? self.batch, llama: llama)
    }

    /// The Llama twin of a standard size: the same width, depth, heads, sequence and batch, half as many key/value
    /// heads (a third for G's 12), and the MLP width of Meta's rule (2/3 of 4·d rounded up to 256; the SwiGLU's
    /// three matrices then hold about the parameters of GPT-2's two).
    public static let llamaSizes: [BenchSize] = standard.map { s in
        BenchSize(name: "llama-" + s.name, vocab: s.vocab, d: s.d, layers: s.layers, heads: s.heads, seq: s.seq, batch: s.batch,
                  llama: (kvHeads: s.heads % 3 == 0 ? s.heads / 3 : s.heads / 2, intermediate: (8 * s.d / 3 + 255) / 256 * 256))
    }
    /// Every size `tessera bench` knows.
    public static var all: [BenchSize] { standard + llamaSizes }

    /// The standard sizes of `tessera bench`.
    public static let standard: [BenchSize] = [
        BenchSize(name: "S", vocab: 256, d: 128, layers: 4, heads: 4, seq: 256, batch: 8),
        BenchSize(name: "M", vocab: 256, d: 256, layers: 6, heads: 8, seq: 512, batch: 8),
        BenchSize(name: "L", vocab: 8192, d: 512, layers: 8, heads: 8, seq: 1024, batch: 4),
        // GPT-2 124M's shape on a short sequence.
        BenchSize(name: "G", vocab: 50257, d: 768, layers: 12, heads: 12, seq: 64, batch: 4),
    ]
    /// Config M with long sequences (4096 tokens, one per step).
    public static let mLong = BenchSize(name: "M-long", vocab: 256, d: 256, layers: 6, heads: 8, seq: 4096, batch: 1)
    /// A tiny size for smoke tests of the commands.
    public static let xs = BenchSize(name: "XS", vocab: 256, d: 32, layers: 2, heads: 2, seq: 64, batch: 4)

    /// The size called `name` among `sizes`, or an error naming the command and the sizes it knows.
    public static func named(_ name: String, among sizes: [BenchSize], command: String) throws -> BenchSize {
        guard let s = sizes.first(where: { $0.name == name }) else {
            throw TrainingError("\(command): unknown size '\(name)' (\(sizes.map(\.name).joined(separator: ", ")))")
        }
        return s
    }
}

public enum BenchScaffold {
    /// Writes 1 MiB of printable synthetic text to a file of this process for benchmark `bench` and returns its
    /// path; the caller removes it (`removeSyntheticText`).
    public static func syntheticText(_ bench: String, seed: UInt64) throws -> String {
        let path = NSTemporaryDirectory() + "tessera-\(bench)-\(getpid()).txt"
        var rng = SplitMix64(seed: seed)
        guard FileManager.default.createFile(atPath: path, contents: Data((0..<(1 << 20)).map { _ in UInt8(32 + rng.next() % 95) })) else {
            throw TrainingError("\(bench): cannot write its training text to \(path)")
        }
        return path
    }

    public static func removeSyntheticText(_ path: String) { try? FileManager.default.removeItem(atPath: path) }

    /// A training job of size `s` on the synthetic text at `data`: no evaluation, no sample, effectively endless
    /// steps (the benchmark calls `trainStep` itself), `threads` kernel threads per rank.
    public static func config(_ bench: String, _ s: BenchSize, threads: Int, data: String) -> TesseraConfig {
        var c = TesseraConfig()
        c.job.name = bench
        c.model = ModelConfig(vocabSize: s.vocab, nLayer: s.layers, nHead: s.heads, dModel: s.d, blockSize: s.seq)
        if let l = s.llama {
            c.model.family = "llama"; c.model.nKVHead = l.kvHeads; c.model.intermediateSize = l.intermediate
            c.model.tieWordEmbeddings = false
        }
        c.training.batchSize = s.batch; c.training.seqLen = s.seq; c.training.steps = 1_000_000
        c.training.threads = threads; c.training.evalEvery = 0
        c.data.format = "text"; c.data.train = data; c.data.valFraction = 0.01
        c.sample.tokens = 0
        return c
    }

    /// The median (the mean of the middle two for an even count); 0 for no values.
    public static func median(_ x: [Double]) -> Double {
        let s = x.sorted()
        guard !s.isEmpty else { return 0 }
        return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
    }

    /// A left-aligned table cell of `width` characters (right-aligned: `leftPad`).
    public static func cell(_ s: String, _ width: Int) -> String { s.padding(toLength: width, withPad: " ", startingAt: 0) }

    /// One line of a benchmark's JSON report: an object with sorted keys.
    public static func jsonLine(_ object: [String: Any]) -> String {
        guard let d = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else {
            return "{\"error\": \"report not representable as JSON\"}"
        }
        return String(decoding: d, as: UTF8.self)
    }
}
