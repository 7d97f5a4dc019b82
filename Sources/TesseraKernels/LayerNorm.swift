// LayerNorm over the last dimension C with weight and bias, eps 1e-5 (GPT-2).
//   forward:  mean, rstd per row; out = (x - mean) * rstd * w + b
//   backward: with xhat = (x - mean) * rstd, g = dout * w:
//             dx = rstd * (g - mean(g) - xhat * mean(g * xhat)); dw += dout * xhat; db += dout

public enum LayerNorm {
    public static let eps: Float = 1e-5

    /// x, out [N, C]; mean, rstd [N] (saved for backward).
    public static func forward(out: UnsafeMutablePointer<Float>, mean: UnsafeMutablePointer<Float>,
                               rstd: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>,
                               weight: UnsafePointer<Float>, bias: UnsafePointer<Float>, n: Int, c: Int) {
        let O = SendPtr(out), M = SendPtr(mean), R = SendPtr(rstd), X = SendConstPtr(x)
        let W = SendConstPtr(weight), B = SendConstPtr(bias)
        Threads.parallelRanges(n, grain: 4) { _, lo, hi in
            for i in lo..<hi {
                let xr = X.p + i * c, o = O.p + i * c
                let mu = vsum(xr, c) / Float(c)
                var acc = F16(), j = 0
                let muv = F16(repeating: mu)
                while j + 16 <= c { let d = load16(xr, j) - muv; acc += d * d; j += 16 }
                var v = acc.sum()
                while j < c { let d = xr[j] - mu; v += d * d; j += 1 }
                let rs = 1 / (v / Float(c) + eps).squareRoot()
                M.p[i] = mu; R.p[i] = rs
                let rsv = F16(repeating: rs)
                j = 0
                while j + 16 <= c {
                    store16(o, j, (load16(xr, j) - muv) * rsv * load16(W.p, j) + load16(B.p, j)); j += 16
                }
                while j < c { o[j] = (xr[j] - mu) * rs * W.p[j] + B.p[j]; j += 1 }
            }
        }
    }

    /// dx += ...; dweight += ...; dbias += ... . Row gradients in parallel; weight gradients reduced
    /// over rows in a fixed order (per-thread partial sums summed in thread order) for determinism.
    public static func backward(dx: UnsafeMutablePointer<Float>, dweight: UnsafeMutablePointer<Float>,
                                dbias: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>,
                                x: UnsafePointer<Float>, weight: UnsafePointer<Float>,
                                mean: UnsafePointer<Float>, rstd: UnsafePointer<Float>,
                                n: Int, c: Int, scratch: Scratch) {
        let DX = SendPtr(dx), D = SendConstPtr(dout), X = SendConstPtr(x), W = SendConstPtr(weight)
        let M = SendConstPtr(mean), R = SendConstPtr(rstd)
        let chunks = min(Threads.count, max(1, n))
        let partial = scratch.floats(2 * c * chunks)
        let PW = SendPtr(partial)
        partial.update(repeating: 0, count: 2 * c * chunks)
        Threads.parallelRanges(n, grain: (n + chunks - 1) / chunks) { chunk, lo, hi in
            let pw = PW.p + chunk * 2 * c, pb = pw + c
            for i in lo..<hi {
                let xr = X.p + i * c, d = D.p + i * c, o = DX.p + i * c
                let mu = M.p[i], rs = R.p[i]
                let muv = F16(repeating: mu), rsv = F16(repeating: rs)
                var sg = F16(), sgx = F16(), j = 0
                while j + 16 <= c {
                    let xh = (load16(xr, j) - muv) * rsv, dv = load16(d, j), g = dv * load16(W.p, j)
                    sg += g; sgx += g * xh
                    store16(pw, j, load16(pw, j) + dv * xh)
                    store16(pb, j, load16(pb, j) + dv)
                    j += 16
                }
                var sumg = sg.sum(), sumgx = sgx.sum()
                while j < c {
                    let xh = (xr[j] - mu) * rs, g = d[j] * W.p[j]
                    sumg += g; sumgx += g * xh
                    pw[j] += d[j] * xh; pb[j] += d[j]
                    j += 1
                }
                let mg = sumg / Float(c), mgx = sumgx / Float(c)
                let mgv = F16(repeating: mg), mgxv = F16(repeating: mgx)
                j = 0
                while j + 16 <= c {
                    let xh = (load16(xr, j) - muv) * rsv, g = load16(d, j) * load16(W.p, j)
                    store16(o, j, load16(o, j) + rsv * (g - mgv - xh * mgxv)); j += 16
                }
                while j < c {
                    let xh = (xr[j] - mu) * rs, g = d[j] * W.p[j]
                    o[j] += rs * (g - mg - xh * mgx); j += 1
                }
            }
        }
        for t in 0..<chunks {
            vaxpy(1, partial + t * 2 * c, dweight, c)
            vaxpy(1, partial + t * 2 * c + c, dbias, c)
        }
    }
}
