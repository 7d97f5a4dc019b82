import Foundation

// The gated unit of Llama's MLP: h = silu(gate) · up, silu(a) = a · σ(a), σ(a) = 1 / (1 + e^−a).
//   backward: dgate = dh · up · σ(a) · (1 + a · (1 − σ(a)));  dup = dh · silu(a)
// gate and up are [N, F] each (any row strides: they may be the two halves of one fused product).

public enum SwiGLU {
    /// out [N, F] (row stride F) = silu(gate) · up; gate and up have row stride `ld`.
    public static func forward(out: UnsafeMutablePointer<Float>, gate: UnsafePointer<Float>, up: UnsafePointer<Float>,
                               n: Int, f: Int, ld: Int) {
        let O = SendPtr(out), G = SendConstPtr(gate), U = SendConstPtr(up)
        Threads.parallelRanges(n, grain: max(1, 4096 / max(f, 1))) { _, lo, hi in
            for r in lo..<hi {
                let g = G.p + r * ld, u = U.p + r * ld, o = O.p + r * f
                var j = 0
                while j + 16 <= f {
                    let a = load16(g, j)
                    store16(o, j, a / (1 + vexp(-a)) * load16(u, j)); j += 16
                }
                while j < f { let a = g[j]; o[j] = a / (1 + Foundation.exp(-a)) * u[j]; j += 1 }
            }
        }
    }

    /// Writes dgate and dup (row stride `ld`, overwritten) from dout [N, F] and the saved gate and up.
    public static func backward(dgate: UnsafeMutablePointer<Float>, dup: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>,
                                gate: UnsafePointer<Float>, up: UnsafePointer<Float>, n: Int, f: Int, ld: Int) {
        let DG = SendPtr(dgate), DU = SendPtr(dup), D = SendConstPtr(dout), G = SendConstPtr(gate), U = SendConstPtr(up)
        Threads.parallelRanges(n, grain: max(1, 4096 / max(f, 1))) { _, lo, hi in
            for r in lo..<hi {
                let g = G.p + r * ld, u = U.p + r * ld, d = D.p + r * f, dg = DG.p + r * ld, du = DU.p + r * ld
                var j = 0
                while j + 16 <= f {
                    let a = load16(g, j), s = 1 / (1 + vexp(-a)), dv = load16(d, j)
                    store16(du, j, dv * a * s)
                    store16(dg, j, dv * load16(u, j) * s * (1 + a * (1 - s)))
                    j += 16
                }
                while j < f {
                    let a = g[j], s = 1 / (1 + Foundation.exp(-a))
                    du[j] = d[j] * a * s
                    dg[j] = d[j] * u[j] * s * (1 + a * (1 - s))
                    j += 1
                }
            }
        }
    }
}
