import Foundation
import XCTest
@testable import TesseraKernels

/// Grouped-query attention (key/value heads shared by groups of query heads) against the same kernel on
/// ordinary multi-head attention with each key/value head copied to every query head of its group: the
/// same output and log-sum-exp bit for bit, the same dq, and dk, dv equal to the sums over each group.
/// q, k and v live in one fused buffer, as a model with grouped heads lays them out.
final class GroupedAttentionTests: XCTestCase {
    func check(heads: Int, kvHeads: Int, t: Int = 100, qOffset: Int = 0, causal: Bool = true, threads: Int = 2,
               file: StaticString = #filePath, line: UInt = #line) {
        Threads.configure(threads)
        let (b, hd) = (2, 8), group = heads / kvHeads
        let c = heads * hd, kvc = kvHeads * hd, row = c + 2 * kvc
        let fused = randomFloats(b * t * row, seed: 31), dout = randomFloats(b * t * c, seed: 32)
        // The multi-head copy: [q | k repeated | v repeated], row 3c.
        var mha = [Float](repeating: 0, count: b * t * 3 * c)
        for r in 0..<(b * t) {
            for i in 0..<c { mha[r * 3 * c + i] = fused[r * row + i] }
            for h in 0..<heads { for d in 0..<hd {
                mha[r * 3 * c + c + h * hd + d] = fused[r * row + c + (h / group) * hd + d]
                mha[r * 3 * c + 2 * c + h * hd + d] = fused[r * row + c + kvc + (h / group) * hd + d]
            } }
        }
        let gqa = AttentionLayout(batch: b, heads: heads, headDim: hd, tq: t, tk: t, qOffset: qOffset, causal: causal,
                                  qRow: row, kRow: row, vRow: row, oRow: c, qBatch: t * row, kBatch: t * row,
                                  vBatch: t * row, oBatch: t * c, blockQ: 16, blockK: 32, kvHeads: kvHeads)
        let full = AttentionLayout(batch: b, heads: heads, headDim: hd, tq: t, tk: t, qOffset: qOffset, causal: causal,
                                   qRow: 3 * c, kRow: 3 * c, vRow: 3 * c, oRow: c, qBatch: t * 3 * c, kBatch: t * 3 * c,
                                   vBatch: t * 3 * c, oBatch: t * c, blockQ: 16, blockK: 32)
        XCTAssertEqual(gqa.group, group)
        let scratch = Scratch()
        func run(_ x: [Float], _ g: AttentionLayout, kv: Int, width: Int) -> (out: [Float], lse: [Float], grad: [Float]) {
            var out = [Float](repeating: 0, count: b * t * c), lse = [Float](repeating: 0, count: b * heads * t)
            var grad = [Float](repeating: 0, count: x.count)
            x.withUnsafeBufferPointer { xp in
                let p = xp.baseAddress!
                out.ptr { o in lse.ptr { l in
                    Attention.forward(out: o, lse: l, q: p, k: p + c, v: p + c + kv, layout: g, scratch: scratch)
                    grad.ptr { d in
                        Attention.backward(dq: d, dk: d + c, dv: d + c + kv, dout: dout, out: o, lse: l, q: p, k: p + c,
                                           v: p + c + kv, layout: g, scratch: scratch)
                    }
                } }
            }
            return (out, lse, grad)
        }
        let a = run(fused, gqa, kv: kvc, width: row), m = run(mha, full, kv: c, width: 3 * c)
        XCTAssertEqual(a.out, m.out, "output", file: file, line: line)
        XCTAssertEqual(a.lse, m.lse, "log-sum-exp", file: file, line: line)
        var dq = [Float](), dqRef = [Float](), dkv = [Float](), dkvRef = [Float]()
        for r in 0..<(b * t) {
            dq += a.grad[(r * row)..<(r * row + c)]
            dqRef += m.grad[(r * 3 * c)..<(r * 3 * c + c)]
            dkv += a.grad[(r * row + c)..<(r * row + row)]
            // The group sums of the copies' gradients, k then v.
            for part in 1...2 { for kvh in 0..<kvHeads { for d in 0..<hd {
                var s: Float = 0
                for h in kvh * group ..< (kvh + 1) * group { s += m.grad[r * 3 * c + part * c + h * hd + d] }
                dkvRef.append(s)
            } } }
        }
        XCTAssertEqual(dq, dqRef, "dq", file: file, line: line)
        XCTAssertLessThan(relErr(dkv, dkvRef), 1e-6, "dk, dv", file: file, line: line)
        XCTAssertGreaterThan(dkv.reduce(0) { $0 + abs($1) }, 0, file: file, line: line)
    }

    func testTwoQueryHeadsPerKeyValueHead() { check(heads: 4, kvHeads: 2) }
    func testOneKeyValueHead() { check(heads: 4, kvHeads: 1) }
    func testGroupsOfThreeNonCausalOneThread() { check(heads: 6, kvHeads: 2, t: 37, causal: false, threads: 1) }
    func testEveryHeadItsOwnIsMultiHead() { check(heads: 3, kvHeads: 3, t: 20) }
}
