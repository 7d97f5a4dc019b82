import Foundation

// Plain Double implementations of every op, written independently of the kernels (naive loops, full
// matrices). Tests compare the float kernels' forward against them and the kernels' backward against
// central finite differences of them.

enum Ref {
    static func layerNorm(_ x: [Double], _ w: [Double], _ b: [Double], n: Int, c: Int) -> [Double] {
        var out = [Double](repeating: 0, count: n * c)
        for i in 0..<n {
            let row = x[(i * c)..<(i * c + c)]
            let mean = row.reduce(0, +) / Double(c)
            let v = row.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(c)
            let rs = 1 / (v + 1e-5).squareRoot()
            for j in 0..<c { out[i * c + j] = (x[i * c + j] - mean) * rs * w[j] + b[j] }
        }
        return out
    }

    static func linear(_ x: [Double], _ w: [Double], _ b: [Double]?, n: Int, inDim: Int, outDim: Int) -> [Double] {
        var out = [Double](repeating: 0, count: n * outDim)
        for i in 0..<n {
            for o in 0..<outDim {
                var s = b?[o] ?? 0
                for k in 0..<inDim { s += x[i * inDim + k] * w[k * outDim + o] }
                out[i * outDim + o] = s
            }
        }
        return out
    }

    static func gelu(_ x: [Double]) -> [Double] {
        x.map { 0.5 * $0 * (1 + tanh((2 / Double.pi).squareRoot() * ($0 + 0.044715 * $0 * $0 * $0))) }
    }

    /// Naive attention for one call layout: q [B, tq, H*hd], k, v [B, tk, H*hd] (dense rows), positions offset.
    /// Returns (out [B, tq, H*hd], lse [B, H, tq]).
    static func attention(q: [Double], k: [Double], v: [Double], b: Int, h: Int, hd: Int, tq: Int, tk: Int,
                          qOffset: Int, kOffset: Int, causal: Bool) -> ([Double], [Double]) {
        let c = h * hd, scale = 1 / Double(hd).squareRoot()
        var out = [Double](repeating: 0, count: b * tq * c), lse = [Double](repeating: -.infinity, count: b * h * tq)
        for bi in 0..<b {
            for hi in 0..<h {
                for i in 0..<tq {
                    var s = [Double](), idx = [Int]()
                    for j in 0..<tk where !causal || kOffset + j <= qOffset + i {
                        var d = 0.0
                        for e in 0..<hd { d += q[(bi * tq + i) * c + hi * hd + e] * k[(bi * tk + j) * c + hi * hd + e] }
                        s.append(d * scale); idx.append(j)
                    }
                    if s.isEmpty { continue }
                    let m = s.max()!
                    let z = s.reduce(0) { $0 + exp($1 - m) }
                    lse[(bi * h + hi) * tq + i] = m + log(z)
                    for (t, j) in idx.enumerated() {
                        let p = exp(s[t] - m) / z
                        for e in 0..<hd { out[(bi * tq + i) * c + hi * hd + e] += p * v[(bi * tk + j) * c + hi * hd + e] }
                    }
                }
            }
        }
        return (out, lse)
    }

    /// Sum over rows of cross-entropy of logits = x · wteᵀ against targets (negative targets ignored).
    static func crossEntropy(_ x: [Double], _ wte: [Double], _ targets: [Int32], n: Int, c: Int, v: Int) -> Double {
        let logits = linear(x, transpose(wte, rows: v, cols: c), nil, n: n, inDim: c, outDim: v)
        var total = 0.0
        for i in 0..<n where targets[i] >= 0 {
            let row = logits[(i * v)..<(i * v + v)]
            let m = row.max()!
            let z = row.reduce(0) { $0 + exp($1 - m) }
            total += m + log(z) - logits[i * v + Int(targets[i])]
        }
        return total
    }

    static func transpose(_ a: [Double], rows: Int, cols: Int) -> [Double] {
        var t = [Double](repeating: 0, count: a.count)
        for i in 0..<rows { for j in 0..<cols { t[j * rows + i] = a[i * cols + j] } }
        return t
    }

    /// Central differences of f at x (Double), step h.
    static func numericGradient(_ x: [Double], h: Double = 1e-5, _ f: ([Double]) -> Double) -> [Double] {
        var g = [Double](repeating: 0, count: x.count), xp = x
        for i in 0..<x.count {
            let x0 = xp[i]
            xp[i] = x0 + h; let fp = f(xp)
            xp[i] = x0 - h; let fm = f(xp)
            xp[i] = x0
            g[i] = (fp - fm) / (2 * h)
        }
        return g
    }

    static func dot(_ a: [Double], _ b: [Double]) -> Double { zip(a, b).reduce(0) { $0 + $1.0 * $1.1 } }
}

extension Array where Element == Float { var d: [Double] { map(Double.init) } }
extension Array where Element == Double { var f: [Float] { map(Float.init) } }
