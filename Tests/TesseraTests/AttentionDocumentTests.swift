import Foundation
import XCTest
@testable import TesseraKernels

/// Block-causal attention over packed rows (AttentionLayout.documents): every document's output, log-sum-exp and
/// gradients equal those of running that document alone (the definition of the mask), within 1e-5 relative; also
/// when the keys come in two chunks merged by log-sum-exp (ring attention's way) and for a later query chunk.
final class AttentionDocumentTests: XCTestCase {
    let b = 3, h = 2, hd = 8, t = 37
    /// Row 0: four documents (one of a single token); row 1: one document; row 2: many short ones.
    let lengths = [[5, 12, 1, 19], [37], [3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 1]]
    var c: Int { h * hd }

    func layout(tq: Int, tk: Int, qOffset: Int = 0, kOffset: Int = 0, rows: Int, bq: Int, bk: Int) -> AttentionLayout {
        AttentionLayout(batch: rows, heads: h, headDim: hd, tq: tq, tk: tk, qOffset: qOffset, kOffset: kOffset,
                        qRow: c, kRow: c, vRow: c, oRow: c, qBatch: t * c, kBatch: t * c, vBatch: t * c, oBatch: t * c,
                        blockQ: bq, blockK: bk)
    }

    func testPackedRowsEqualEachDocumentAlone() {
        for (bq, bk) in [(4, 5), (64, 64), (8, 3)] { check(bq: bq, bk: bk) }
    }

    /// The packed rows' forward and backward in one call each: (out, lse, dq, dk, dv).
    func wholeCall(_ q: [Float], _ k: [Float], _ v: [Float], _ dout: [Float], bq: Int, bk: Int,
                   scratch: Scratch) -> ([Float], [Float], [Float], [Float], [Float]) {
        var g = layout(tq: t, tk: t, rows: b, bq: bq, bk: bk)
        g.documents = DocumentStarts(lengths: lengths, length: t)
        var out = [Float](repeating: 0, count: b * t * c), lse = [Float](repeating: 0, count: b * h * t)
        var dq = [Float](repeating: 0, count: q.count), dk = dq, dv = dq
        out.ptr { o in lse.ptr { l in
            Attention.forward(out: o, lse: l, q: q, k: k, v: v, layout: g, scratch: scratch)
            dq.ptr { a in dk.ptr { bb in dv.ptr { d in
                Attention.backward(dq: a, dk: bb, dv: d, dout: dout, out: o, lse: l, q: q, k: k, v: v, layout: g, scratch: scratch)
            } } }
        } }
        return (out, lse, dq, dk, dv)
    }

    func check(bq: Int, bk: Int, file: StaticString = #filePath, line: UInt = #line) {
        Threads.configure(2)
        let q = randomFloats(b * t * c, seed: 31), k = randomFloats(b * t * c, seed: 32), v = randomFloats(b * t * c, seed: 33)
        let dout = randomFloats(b * t * c, seed: 34)
        let scratch = Scratch()
        let (out, lse, dq, dk, dv) = wholeCall(q, k, v, dout, bq: bq, bk: bk, scratch: scratch)
        // Each document alone: a causal call over its own rows, positions from 0.
        var aOut = out, aLse = lse, aDq = dq, aDk = dk, aDv = dv
        for r in 0..<b {
            var s = 0
            for n in lengths[r] {
                let base = (r * t + s) * c
                var one = AttentionLayout(batch: 1, heads: h, headDim: hd, tq: n, tk: n, qRow: c, kRow: c, vRow: c, oRow: c,
                                          qBatch: n * c, kBatch: n * c, vBatch: n * c, oBatch: n * c, blockQ: bq, blockK: bk)
                one.causal = true
                var o1 = [Float](repeating: 0, count: n * c), l1 = [Float](repeating: 0, count: h * n)
                var q1 = [Float](repeating: 0, count: n * c), k1 = q1, v1 = q1
                let qs = Array(q[base ..< base + n * c]), ks = Array(k[base ..< base + n * c]), vs = Array(v[base ..< base + n * c])
                let ds = Array(dout[base ..< base + n * c])
                o1.ptr { o in l1.ptr { l in
                    Attention.forward(out: o, lse: l, q: qs, k: ks, v: vs, layout: one, scratch: scratch)
                    q1.ptr { a in k1.ptr { bb in v1.ptr { d in
                        Attention.backward(dq: a, dk: bb, dv: d, dout: ds, out: o, lse: l, q: qs, k: ks, v: vs, layout: one, scratch: scratch)
                    } } }
                } }
                aOut.replaceSubrange(base ..< base + n * c, with: o1)
                aDq.replaceSubrange(base ..< base + n * c, with: q1)
                aDk.replaceSubrange(base ..< base + n * c, with: k1)
                aDv.replaceSubrange(base ..< base + n * c, with: v1)
                for hh in 0..<h { for i in 0..<n { aLse[(r * h + hh) * t + s + i] = l1[hh * n + i] } }
                s += n
            }
        }
        XCTAssertLessThan(relErr(out, aOut), 1e-5, "output (blocks \(bq)×\(bk))", file: file, line: line)
        XCTAssertLessThan(relErr(lse, aLse), 1e-5, "lse (blocks \(bq)×\(bk))", file: file, line: line)
        XCTAssertLessThan(relErr(dq, aDq), 1e-5, "dq (blocks \(bq)×\(bk))", file: file, line: line)
        XCTAssertLessThan(relErr(dk, aDk), 1e-5, "dk (blocks \(bq)×\(bk))", file: file, line: line)
        XCTAssertLessThan(relErr(dv, aDv), 1e-5, "dv (blocks \(bq)×\(bk))", file: file, line: line)
    }

    /// Keys in two chunks (global positions 0..<20 and 20..<37), merged by log-sum-exp, and the queries of a later
    /// chunk (positions 20..<37) against all keys: both equal the whole call's rows.
    func testKeyChunksMergeAndQueryOffsets() {
        Threads.configure(2)
        let q = randomFloats(b * t * c, seed: 41), k = randomFloats(b * t * c, seed: 42), v = randomFloats(b * t * c, seed: 43)
        let docs = DocumentStarts(lengths: lengths, length: t)
        let scratch = Scratch()
        func run(_ g: AttentionLayout, q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>) -> ([Float], [Float]) {
            var o = [Float](repeating: 0, count: b * t * c), l = [Float](repeating: 0, count: b * h * g.tq)
            o.ptr { op in l.ptr { lp in Attention.forward(out: op, lse: lp, q: q, k: k, v: v, layout: g, scratch: scratch) } }
            return (o, l)
        }
        var whole = layout(tq: t, tk: t, rows: b, bq: 4, bk: 5)
        whole.documents = docs
        let (o, l) = q.withUnsafeBufferPointer { qp in k.withUnsafeBufferPointer { kp in v.withUnsafeBufferPointer { vp in
            run(whole, q: qp.baseAddress!, k: kp.baseAddress!, v: vp.baseAddress!) } } }
        // Two key chunks.
        var parts: [([Float], [Float])] = []
        for (k0, n) in [(0, 20), (20, 17)] {
            var g = layout(tq: t, tk: n, kOffset: k0, rows: b, bq: 4, bk: 5)
            g.documents = docs
            parts.append(q.withUnsafeBufferPointer { qp in k.withUnsafeBufferPointer { kp in v.withUnsafeBufferPointer { vp in
                run(g, q: qp.baseAddress!, k: kp.baseAddress! + k0 * c, v: vp.baseAddress! + k0 * c) } } })
        }
        var merged = [Float](repeating: 0, count: o.count), mergedLse = [Float](repeating: 0, count: l.count)
        for r in 0..<b { for hh in 0..<h { for i in 0..<t {
            let li = (r * h + hh) * t + i
            let a = Double(parts[0].1[li]), z = Double(parts[1].1[li])
            let m = max(a, z), total = m == -.infinity ? -Double.infinity : m + log(exp(a - m) + exp(z - m))
            mergedLse[li] = Float(total)
            for d in 0..<hd {
                let x = (r * t + i) * c + hh * hd + d
                var acc = 0.0
                if a > -.infinity { acc += exp(a - total) * Double(parts[0].0[x]) }
                if z > -.infinity { acc += exp(z - total) * Double(parts[1].0[x]) }
                merged[x] = Float(acc)
            }
        } } }
        XCTAssertLessThan(relErr(merged, o), 1e-5, "two key chunks merged")
        XCTAssertLessThan(relErr(mergedLse, l), 1e-5, "two key chunks' lse merged")
        // A later query chunk.
        var late = layout(tq: 17, tk: t, qOffset: 20, rows: b, bq: 4, bk: 5)
        late.documents = docs
        let (lo, ll) = q.withUnsafeBufferPointer { qp in k.withUnsafeBufferPointer { kp in v.withUnsafeBufferPointer { vp in
            run(late, q: qp.baseAddress! + 20 * c, k: kp.baseAddress!, v: vp.baseAddress!) } } }
        for r in 0..<b {
            let got = Array(lo[(r * t) * c ..< (r * t + 17) * c]), want = Array(o[(r * t + 20) * c ..< (r * t + 37) * c])
            XCTAssertLessThan(relErr(got, want), 1e-5, "row \(r): queries 20..<37")
            for hh in 0..<h {
                XCTAssertLessThan(relErr(Array(ll[(r * h + hh) * 17 ..< (r * h + hh + 1) * 17]),
                                         Array(l[(r * h + hh) * t + 20 ..< (r * h + hh) * t + 37])), 1e-5, "row \(r) head \(hh) lse")
            }
        }
    }

    /// The backward in two key chunks (global positions 0..<20 and 20..<37, as ring attention calls it, with the whole
    /// call's output and log-sum-exp): dq summed over the chunks, dk and dv per chunk, equal the whole backward.
    func testBackwardInKeyChunks() {
        Threads.configure(2)
        let q = randomFloats(b * t * c, seed: 51), k = randomFloats(b * t * c, seed: 52), v = randomFloats(b * t * c, seed: 53)
        let dout = randomFloats(b * t * c, seed: 54)
        let docs = DocumentStarts(lengths: lengths, length: t)
        let scratch = Scratch()
        let (out, lse, dq, dk, dv) = wholeCall(q, k, v, dout, bq: 4, bk: 5, scratch: scratch)
        var cq = [Float](repeating: 0, count: q.count), ck = cq, cv = cq
        for (k0, n) in [(0, 20), (20, 17)] {
            var g = layout(tq: t, tk: n, kOffset: k0, rows: b, bq: 4, bk: 5)
            g.documents = docs
            q.withUnsafeBufferPointer { qp in k.withUnsafeBufferPointer { kp in v.withUnsafeBufferPointer { vp in
                out.withUnsafeBufferPointer { op in lse.withUnsafeBufferPointer { lp in
                    cq.ptr { a in ck.ptr { bb in cv.ptr { d in
                        Attention.backward(dq: a, dk: bb + k0 * c, dv: d + k0 * c, dout: dout, out: op.baseAddress!, lse: lp.baseAddress!,
                                           q: qp.baseAddress!, k: kp.baseAddress! + k0 * c, v: vp.baseAddress! + k0 * c,
                                           layout: g, scratch: scratch)
                    } } }
                } }
            } } }
        }
        XCTAssertLessThan(relErr(cq, dq), 1e-5, "dq over two key chunks")
        XCTAssertLessThan(relErr(ck, dk), 1e-5, "dk per key chunk")
        XCTAssertLessThan(relErr(cv, dv), 1e-5, "dv per key chunk")
    }

    func testStartsFromLengths() {
        let d = DocumentStarts(lengths: [[3, 2, 4]], length: 9)
        XCTAssertEqual(d.starts, [0, 0, 0, 3, 3, 5, 5, 5, 5])
        XCTAssertEqual(d.rows(0..<1), d)
    }
}
