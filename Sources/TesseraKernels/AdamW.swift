import Foundation

// AdamW (Loshchilov & Hutter), as torch.optim.AdamW computes it:
//   p ← p·(1 − lr·wd)                      (decoupled decay; wd = 0 for 1-D tensors)
//   m ← β1·m + (1−β1)·g;   v ← β2·v + (1−β2)·g²
//   p ← p − (lr / (1−β1ᵗ)) · m / (√v / √(1−β2ᵗ) + ε)

public struct AdamWHyper: Sendable {
    public var lr: Float, beta1: Float, beta2: Float, eps: Float, weightDecay: Float
    public init(lr: Float, beta1: Float = 0.9, beta2: Float = 0.95, eps: Float = 1e-8, weightDecay: Float = 0.1) {
        self.lr = lr; self.beta1 = beta1; self.beta2 = beta2; self.eps = eps; self.weightDecay = weightDecay
    }
}

public enum AdamW {
    /// Updates n elements in place. `step` is 1-based; `gradScale` multiplies g (global-norm clipping).
    public static func update(param: UnsafeMutablePointer<Float>, grad: UnsafePointer<Float>,
                              m: UnsafeMutablePointer<Float>, v: UnsafeMutablePointer<Float>, n: Int,
                              hyper h: AdamWHyper, decay: Bool, step: Int, gradScale: Float = 1) {
        let bc1 = 1 - Float(Foundation.pow(Double(h.beta1), Double(step)))
        let bc2 = 1 - Float(Foundation.pow(Double(h.beta2), Double(step)))
        let stepSize = h.lr / bc1, invSqrtBc2 = 1 / bc2.squareRoot()
        let shrink: Float = decay ? 1 - h.lr * h.weightDecay : 1
        let P = SendPtr(param), G = SendConstPtr(grad), M = SendPtr(m), V = SendPtr(v)
        Threads.parallelRanges(n, grain: 4096) { _, lo, hi in
            let b1 = F16(repeating: h.beta1), b2 = F16(repeating: h.beta2)
            let ob1 = F16(repeating: 1 - h.beta1), ob2 = F16(repeating: 1 - h.beta2)
            let gs = F16(repeating: gradScale), eps = F16(repeating: h.eps)
            var i = lo
            while i + 16 <= hi {
                let g = load16(G.p, i) * gs
                let mm = b1 * load16(M.p, i) + ob1 * g
                let vv = b2 * load16(V.p, i) + ob2 * (g * g)
                store16(M.p, i, mm); store16(V.p, i, vv)
                let denom = vv.squareRoot() * invSqrtBc2 + eps
                store16(P.p, i, load16(P.p, i) * shrink - stepSize * mm / denom)
                i += 16
            }
            while i < hi {
                let g = G.p[i] * gradScale
                M.p[i] = h.beta1 * M.p[i] + (1 - h.beta1) * g
                V.p[i] = h.beta2 * V.p[i] + (1 - h.beta2) * g * g
                P.p[i] = P.p[i] * shrink - stepSize * M.p[i] / (V.p[i].squareRoot() * invSqrtBc2 + h.eps)
                i += 1
            }
        }
    }

    /// Sum of squares of n floats, accumulated in Double per thread chunk (deterministic order).
    public static func sumOfSquares(_ x: UnsafePointer<Float>, _ n: Int) -> Double {
        var acc = 0.0, i = 0
        while i < n {
            let len = min(4096, n - i)
            acc += Double(vdot(x + i, x + i, len))
            i += len
        }
        return acc
    }

    /// Whether every value of x is finite (checked a SIMD16 vector at a time: x − x is 0 only for finite x).
    public static func allFinite(_ x: UnsafePointer<Float>, _ n: Int) -> Bool {
        var acc = SIMD16<Float>(repeating: 0), i = 0
        while i + 16 <= n {
            let v = UnsafeRawPointer(x + i).loadUnaligned(as: SIMD16<Float>.self)
            acc += v - v
            i += 16
        }
        var tail: Float = 0
        while i < n { tail += x[i] - x[i]; i += 1 }
        return acc.sum() == 0 && tail == 0
    }
}
