import Foundation

// Rotary position embeddings in Hugging Face's rotate-half convention (Llama): within each head of
// dimension D, element i < D/2 pairs with element i + D/2, and at position p the pair turns by
// p · θ^(−2i/D):
//   x'[i]       = x[i] cos − x[i + D/2] sin
//   x'[i + D/2] = x[i + D/2] cos + x[i] sin
// The rotation is orthogonal, so the backward is the same turn by the opposite angle. Positions are
// explicit (a token's global position), so a sequence split over ranks rotates as on one rank.

public struct RoPE: Sendable {
    public let headDim: Int, theta: Double
    /// cos and sin tables [position, D/2] for positions 0 ..< maxPosition, computed in Double.
    let cosTable: [Float], sinTable: [Float]
    public let maxPosition: Int

    public init(headDim: Int, theta: Double, maxPosition: Int) {
        precondition(headDim % 2 == 0, "RoPE: head dimension \(headDim) is odd")
        self.headDim = headDim; self.theta = theta; self.maxPosition = maxPosition
        let half = headDim / 2
        var c = [Float](repeating: 0, count: maxPosition * half), s = c
        for p in 0..<maxPosition {
            for i in 0..<half {
                let angle = Double(p) * Foundation.pow(theta, -2 * Double(i) / Double(headDim))
                c[p * half + i] = Float(Foundation.cos(angle)); s[p * half + i] = Float(Foundation.sin(angle))
            }
        }
        cosTable = c; sinTable = s
    }

    /// Rotates `heads` heads of each of n rows in place (row stride `ld`, heads consecutive from `x`); row r
    /// sits at position positions[r]. `inverse` turns the other way (the backward of the rotation).
    public func apply(_ x: UnsafeMutablePointer<Float>, rows n: Int, heads: Int, ld: Int,
                      positions: UnsafePointer<Int32>, inverse: Bool = false) {
        let X = SendPtr(x), P = SendConstPtr(positions), half = headDim / 2, d = headDim
        let sign: Float = inverse ? -1 : 1
        cosTable.withUnsafeBufferPointer { cb in sinTable.withUnsafeBufferPointer { sb in
            let C = SendConstPtr(cb.baseAddress!), S = SendConstPtr(sb.baseAddress!)
            Threads.parallelRanges(n, grain: 16) { _, lo, hi in
                for r in lo..<hi {
                    let p = Int(P.p[r])
                    precondition(p >= 0 && p < maxPosition, "RoPE: position \(p) outside 0..<\(maxPosition)")
                    let cp = C.p + p * half, sp = S.p + p * half
                    for h in 0..<heads {
                        let a = X.p + r * ld + h * d, b = a + half
                        for i in 0..<half {
                            let c = cp[i], s = sign * sp[i], x0 = a[i], x1 = b[i]
                            a[i] = x0 * c - x1 * s
                            b[i] = x1 * c + x0 * s
                        }
                    }
                }
            }
        } }
    }
}
