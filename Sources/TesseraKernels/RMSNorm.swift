// RMSNorm over the last dimension C with a weight and no bias (Llama), eps configurable.
//   forward:  rstd = 1 / sqrt(mean(x²) + eps) per row;  out = x · rstd · w
//   backward: with xhat = x · rstd, g = dout · w:
//             dx += rstd · (g − xhat · mean(g · xhat));  dw += dout · xhat

public enum RMSNorm {
    /// x, out [N, C]; rstd [N] (saved for the backward). out may not alias x.
    public static func forward(out: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>,
                               weight: UnsafePointer<Float>, n: Int, c: Int, eps: Float) {
        let O = SendPtr(out), R = SendPtr(rstd), X = SendConstPtr(x), W = SendConstPtr(weight)
        Threads.parallelRanges(n, grain: 4) { _, lo, hi in
            for i in lo..<hi {
                let xr = X.p + i * c, o = O.p + i * c
                var acc = F16(), j = 0
                while j + 16 <= c { let v = load16(xr, j); acc += v * v; j += 16 }
                var ss = acc.sum()
                while j < c { ss += xr[j] * xr[j]; j += 1 }
                let rs = 1 / (ss / Float(c) + eps).squareRoot()
                R.p[i] = rs
                let rsv = F16(repeating: rs)
                j = 0
                while j + 16 <= c { store16(o, j, load16(xr, j) * rsv * load16(W.p, j)); j += 16 }
                while j < c { o[j] = xr[j] * rs * W.p[j]; j += 1 }
            }
        }
    }

    /// dx += ...; dweight += ... . Rows in parallel; the weight gradient summed per thread, then over the
    /// threads in order (deterministic for a given thread count).
    public static func backward(dx: UnsafeMutablePointer<Float>, dweight: UnsafeMutablePointer<Float>,
                                dout: UnsafePointer<Float>, x: UnsafePointer<Float>, weight: UnsafePointer<Float>,
                                rstd: UnsafePointer<Float>, n: Int, c: Int, scratch: Scratch) {
        let DX = SendPtr(dx), D = SendConstPtr(dout), X = SendConstPtr(x), W = SendConstPtr(weight), R = SendConstPtr(rstd)
        let chunks = min(Threads.count, max(1, n))
        let partial = scratch.floats(c * chunks)
        let PW = SendPtr(partial)
        partial.update(repeating: 0, count: c * chunks)
        Threads.parallelRanges(n, grain: (n + chunks - 1) / chunks) { chunk, lo, hi in
            let pw = PW.p + chunk * c
            for i in lo..<hi {
                let xr = X.p + i * c, d = D.p + i * c, o = DX.p + i * c
                let rs = R.p[i], rsv = F16(repeating: rs)
                var sgx = F16(), j = 0
                while j + 16 <= c {
                    let xh = load16(xr, j) * rsv, dv = load16(d, j)
                    sgx += dv * load16(W.p, j) * xh
                    store16(pw, j, load16(pw, j) + dv * xh)
                    j += 16
                }
                var sumgx = sgx.sum()
                while j < c {
                    let xh = xr[j] * rs
                    sumgx += d[j] * W.p[j] * xh
                    pw[j] += d[j] * xh
                    j += 1
                }
                let mgx = sumgx / Float(c), mgxv = F16(repeating: mgx)
                j = 0
                while j + 16 <= c {
                    let xh = load16(xr, j) * rsv, g = load16(d, j) * load16(W.p, j)
                    store16(o, j, load16(o, j) + rsv * (g - xh * mgxv)); j += 16
                }
                while j < c { o[j] += rs * (d[j] * W.p[j] - xr[j] * rs * mgx); j += 1 }
            }
        }
        for t in 0..<chunks { vaxpy(1, partial + t * c, dweight, c) }
    }
}
