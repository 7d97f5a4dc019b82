// The bytes sequence parallelism sends, by formula (docs/sequence-parallel.md): what one rank sends per layer
// and micro-batch of `batch` sequences. The benchmarks check the measured counts against these, and the
// placement weighs the ring and Ulysses groups by them.

import TesseraKernels

public enum SequenceTraffic {
    /// The ring's share: per layer R − 1 key/value blocks forward, R − 1 backward and R − 1 dK|dV accumulators,
    /// each [batch, S/R, 2·kvWidth/U]. In bf16 the key/value blocks carry 2 bytes a value; the accumulators stay fp32.
    public static func ringBytes(seq: Int, ring r: Int, ulysses u: Int, layers: Int, kvWidth: Int, batch: Int = 1,
                                 precision: Precision = .fp32) -> Double {
        guard r > 1 else { return 0 }
        let block = Double(batch * (seq / r) * 2 * (kvWidth / u))
        return Double(layers * (r - 1)) * block * (2 * Double(precision.operandBytes) + 4)
    }

    /// Ring messages per layer: R − 1 hops of each of the three.
    public static func ringMessages(ring r: Int, layers: Int) -> Int { r > 1 ? 3 * (r - 1) * layers : 0 }

    /// Ulysses' share: per layer (U − 1)/U of q, k, v and out forward, of dout, dq, dk, dv backward, over the
    /// rank's S/(R·U) tokens: 4·(dModel + kvWidth) values a token (2 bytes a value in bf16).
    public static func ulyssesBytes(seq: Int, ring r: Int, ulysses u: Int, layers: Int, dModel c: Int, kvWidth: Int,
                                    batch: Int = 1, precision: Precision = .fp32) -> Double {
        guard u > 1 else { return 0 }
        // In integers before the one division, so that a whole number of bytes comes out exactly.
        let values = layers * (u - 1) * batch * (seq / (r * u)) * 4 * (c + kvWidth)
        return Double(values * precision.operandBytes) / Double(u)
    }

    /// Ulysses all-to-alls per layer: q|k|v and the output forward, their gradients backward.
    public static func ulyssesCalls(ulysses u: Int, layers: Int) -> Int { u > 1 ? 4 * layers : 0 }
}
