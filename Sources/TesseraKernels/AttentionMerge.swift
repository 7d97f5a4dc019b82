import Foundation

// Merging partial attention results by log-sum-exp (ring attention). Two partial results over disjoint
// key sets, (O₁, lse₁) and (O₂, lse₂), combine exactly into the result over the union:
//   lse = log(e^lse₁ + e^lse₂),   O = e^(lse₁ − lse) · O₁ + e^(lse₂ − lse) · O₂.
// A row with lse = −∞ saw no key and contributes nothing.

extension Attention {
    /// acc ← merge(acc, part). acc: O [batch, t, heads·hd] (row stride accRow, batch stride accBatch) and
    /// lse [batch, heads, t] (contiguous); part: O [batch, t, heads·hd] contiguous and lse [batch, heads, t].
    public static func merge(accOut: UnsafeMutablePointer<Float>, accLse: UnsafeMutablePointer<Float>,
                             accRow: Int, accBatch: Int, partOut: UnsafePointer<Float>, partLse: UnsafePointer<Float>,
                             batch: Int, t: Int, heads: Int, headDim hd: Int) {
        let AO = SendPtr(accOut), AL = SendPtr(accLse), PO = SendConstPtr(partOut), PL = SendConstPtr(partLse)
        let c = heads * hd
        Threads.parallelRanges(batch * heads, grain: 1) { _, lo, hi in
            for bh in lo..<hi {
                let b = bh / heads, h = bh % heads
                let al = AL.p + bh * t, pl = PL.p + bh * t
                for i in 0..<t {
                    let l1 = al[i], l2 = pl[i]
                    if l2 == -.infinity { continue }
                    let ao = AO.p + b * accBatch + i * accRow + h * hd, po = PO.p + (b * t + i) * c + h * hd
                    if l1 == -.infinity {
                        ao.update(from: po, count: hd); al[i] = l2; continue
                    }
                    let m = Swift.max(l1, l2)
                    let w1 = Foundation.exp(l1 - m), w2 = Foundation.exp(l2 - m), s = w1 + w2
                    let a = w1 / s, bw = w2 / s
                    let va = F16(repeating: a), vb = F16(repeating: bw)
                    var j = 0
                    while j + 16 <= hd { store16(ao, j, va * load16(ao, j) + vb * load16(po, j)); j += 16 }
                    while j < hd { ao[j] = a * ao[j] + bw * po[j]; j += 1 }
                    al[i] = m + Foundation.log(s)
                }
            }
        }
    }
}
