import Foundation

// GELU, tanh approximation (GPT-2 "gelu_new"):
//   y = 0.5 x (1 + tanh(u)),  u = s (x + 0.044715 x^3),  s = sqrt(2/pi)
//   dy/dx = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) s (1 + 3 * 0.044715 x^2)

public enum GELU {
    static let s: Float = 0.7978845608028654

    public static func forward(out: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, n: Int) {
        let O = SendPtr(out), X = SendConstPtr(x)
        Threads.parallelRanges(n, grain: 4096) { _, lo, hi in
            var i = lo
            while i + 16 <= hi {
                let v = load16(X.p, i)
                let u: F16 = s * (v + 0.044715 * v * v * v)
                let t = vtanh(u)
                let y: F16 = 0.5 * v * (1 + t)
                store16(O.p, i, y); i += 16
            }
            while i < hi { O.p[i] = scalarForward(X.p[i]); i += 1 }
        }
    }

    /// dx = dout * gelu'(x) (overwrites dx; dx may alias dout).
    public static func backward(dx: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>,
                                x: UnsafePointer<Float>, n: Int) {
        let DX = SendPtr(dx), D = SendConstPtr(dout), X = SendConstPtr(x)
        Threads.parallelRanges(n, grain: 4096) { _, lo, hi in
            var i = lo
            while i + 16 <= hi {
                let v = load16(X.p, i)
                let v2: F16 = v * v
                let u: F16 = s * (v + 0.044715 * v2 * v)
                let t = vtanh(u)
                let left: F16 = 0.5 * (1 + t)
                let du: F16 = s * (1 + 0.134145 * v2)
                let right: F16 = 0.5 * v * (1 - t * t) * du
                store16(DX.p, i, load16(D.p, i) * (left + right)); i += 16
            }
            while i < hi { DX.p[i] = D.p[i] * scalarDerivative(X.p[i]); i += 1 }
        }
    }

    @inlinable static func scalarForward(_ x: Float) -> Float {
        0.5 * x * (1 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))
    }
    @inlinable static func scalarDerivative(_ x: Float) -> Float {
        let t = tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))
        return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * 0.7978845608028654 * (1 + 0.134145 * x * x)
    }
}
