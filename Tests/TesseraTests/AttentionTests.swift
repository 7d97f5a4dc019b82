import Foundation
import CKernels
import XCTest
@testable import TesseraKernels
@testable import TesseraModel

/// The blockwise attention kernel against naive full-matrix attention (Double): forward output and
/// log-sum-exp, and the backward against finite differences of the naive version; with and without
/// causal masking, odd block boundaries, position offsets, and rows that see no key at all.
final class AttentionTests: XCTestCase {
    struct Case { var b = 2, h = 2, hd = 8, tq = 13, tk = 11, qOff = 0, kOff = 0, causal = true, bq = 4, bk = 5 }

    func run(_ k: Case, threads: Int = 2, checkBackward: Bool = true, file: StaticString = #filePath, line: UInt = #line) {
        Threads.configure(threads)
        let c = k.h * k.hd
        let q = randomFloats(k.b * k.tq * c, seed: 21), kk = randomFloats(k.b * k.tk * c, seed: 22)
        let v = randomFloats(k.b * k.tk * c, seed: 23), w = randomFloats(k.b * k.tq * c, seed: 24)
        let g = AttentionLayout(batch: k.b, heads: k.h, headDim: k.hd, tq: k.tq, tk: k.tk, qOffset: k.qOff,
                                kOffset: k.kOff, causal: k.causal, qRow: c, kRow: c, vRow: c, oRow: c,
                                qBatch: k.tq * c, kBatch: k.tk * c, vBatch: k.tk * c, oBatch: k.tq * c,
                                blockQ: k.bq, blockK: k.bk)
        var out = [Float](repeating: 0, count: k.b * k.tq * c), lse = [Float](repeating: 0, count: k.b * k.h * k.tq)
        let scratch = Scratch()
        out.ptr { o in lse.ptr { l in Attention.forward(out: o, lse: l, q: q, k: kk, v: v, layout: g, scratch: scratch) } }
        func naive(_ q: [Double], _ kk: [Double], _ v: [Double]) -> ([Double], [Double]) {
            Ref.attention(q: q, k: kk, v: v, b: k.b, h: k.h, hd: k.hd, tq: k.tq, tk: k.tk, qOffset: k.qOff,
                          kOffset: k.kOff, causal: k.causal)
        }
        let (ro, rl) = naive(q.d, kk.d, v.d)
        XCTAssertLessThan(relErr(out, ro.f), 1e-6, "output", file: file, line: line)
        for i in 0..<lse.count {
            if rl[i] == -.infinity { XCTAssertEqual(lse[i], -.infinity, "lse[\(i)] of a row with no visible key", file: file, line: line) }
            else { XCTAssertEqual(Double(lse[i]), rl[i], accuracy: 1e-5, "lse[\(i)]", file: file, line: line) }
        }
        guard checkBackward else { return }
        var dq = [Float](repeating: 0, count: q.count), dk = [Float](repeating: 0, count: kk.count), dv = dk
        dq.ptr { a in dk.ptr { b in dv.ptr { d in out.ptr { o in lse.ptr { l in
            Attention.backward(dq: a, dk: b, dv: d, dout: w, out: o, lse: l, q: q, k: kk, v: v, layout: g, scratch: scratch)
        } } } } }
        let gq = Ref.numericGradient(q.d) { Ref.dot(naive($0, kk.d, v.d).0, w.d) }
        let gk = Ref.numericGradient(kk.d) { Ref.dot(naive(q.d, $0, v.d).0, w.d) }
        let gv = Ref.numericGradient(v.d) { Ref.dot(naive(q.d, kk.d, $0).0, w.d) }
        XCTAssertLessThan(relErr(dq, gq.f), 1e-5, "dq", file: file, line: line)
        XCTAssertLessThan(relErr(dk, gk.f), 1e-5, "dk", file: file, line: line)
        XCTAssertLessThan(relErr(dv, gv.f), 1e-5, "dv", file: file, line: line)
        XCTAssertFalse(dq.contains { !$0.isFinite } || dk.contains { !$0.isFinite }, "non-finite gradient", file: file, line: line)
    }

    func testCausalSelfAttentionOddBlocks() { run(Case(tq: 13, tk: 13)) }
    func testNonCausal() { run(Case(causal: false)) }
    func testQueryOffsetAfterKeys() { run(Case(tq: 9, tk: 11, qOff: 11, kOff: 0)) }      // a later query chunk: sees all keys
    func testKeysPartlyInFuture() { run(Case(tq: 10, tk: 12, qOff: 4, kOff: 6)) }        // rows 0, 1 see no key
    func testDiagonalCrossingOffsets() { run(Case(tq: 12, tk: 12, qOff: 5, kOff: 2, bq: 3, bk: 7)) }
    func testOneThread() { run(Case(), threads: 1) }
    func testLongerForwardManyBlocks() { run(Case(hd: 16, tq: 70, tk: 70, bq: 16, bk: 32), checkBackward: false) }
    func testHeadDimOfTheModels() { run(Case(b: 1, h: 1, hd: 32, tq: 24, tk: 24, bq: 8, bk: 16)) }

    /// Fewer (batch row, key/value head) pairs than threads: the backward splits each pair by key blocks, each split
    /// with its own dQ added in afterwards. Against one thread (one task per pair): dK and dV bit for bit (each key
    /// block is computed alike), dQ within rounding (its sums are grouped by split); grouped-query heads and
    /// documents included, with 3 splits of 5 key blocks (uneven). The backward's query chunks (`chunkQueries`) change
    /// no sum: chunked gradients equal unchunked ones bit for bit.
    func testBackwardSplitByKeyBlocksEqualsOneTask() {
        let (heads, kvHeads, hd, t) = (4, 1, 16, 70), c = heads * hd, row = c + 2 * kvHeads * hd
        var g = AttentionLayout(batch: 1, heads: heads, headDim: hd, tq: t, tk: t, qRow: row, kRow: row, vRow: row, oRow: c,
                                qBatch: t * row, kBatch: t * row, vBatch: t * row, oBatch: t * c, blockQ: 16, blockK: 16,
                                kvHeads: kvHeads)
        for documents in [false, true] {
            g.documents = documents ? DocumentStarts(lengths: [[9, 30, 1, 20, 10]], length: t) : nil
            let qkv = randomFloats(t * row, seed: 31), dout = randomFloats(t * c, seed: 32)
            func grads(threads: Int, chunk: Int = 1024) -> [Float] {
                Threads.configure(threads)
                var g = g
                g.chunkQueries = chunk
                return fusedForwardBackward(qkv, dout: dout, layout: g).dqkv
            }
            let one = grads(threads: 1), split = grads(threads: 3)
            let dq = { (x: [Float]) in (0..<t).flatMap { x[$0 * row ..< $0 * row + c] } }
            let dkv = { (x: [Float]) in (0..<t).flatMap { x[$0 * row + c ..< ($0 + 1) * row] } }
            XCTAssertEqual(dkv(split), dkv(one), "documents \(documents): dK, dV")
            XCTAssertLessThan(relErr(dq(split), dq(one)), 1e-6, "documents \(documents): dQ")
            XCTAssertGreaterThan(dq(one).map { abs($0) }.max()!, 0, "a gradient to compare")
            // Queries packed 16 at a time (5 chunks, the last short): every sum in the same order, so bit for bit.
            XCTAssertEqual(grads(threads: 1, chunk: 20), one, "documents \(documents): chunked backward")
            XCTAssertEqual(dkv(grads(threads: 3, chunk: 20)), dkv(one), "documents \(documents): chunked and split dK, dV")
        }
        Threads.configure(2)
    }
}

/// The attention kernel's AVX-512 code (block products and lane-wise parts in CKernels) against its 8-lane Swift
/// code: forward and backward give the same bits (the same operations in the same order), causal with documents
/// (masked blocks), a short last block, grouped-query heads (4 on one key/value head) and the backward's key-block
/// splits (one (row, key/value head) pair on 2 threads). On a CPU without AVX-512 only the Swift code exists.
final class AttentionISATests: XCTestCase {
    func testAVX512GivesTheBitsOfTheSwiftCode() throws {
        try skipWithoutAVX512()
        let (heads, kvHeads, hd, t) = (4, 1, 32, 83), c = heads * hd, row = c + 2 * kvHeads * hd
        var g = AttentionLayout(batch: 1, heads: heads, headDim: hd, tq: t, tk: t, qRow: row, kRow: row, vRow: row, oRow: c,
                                qBatch: t * row, kBatch: t * row, vBatch: t * row, oBatch: t * c, blockQ: 32, blockK: 16,
                                kvHeads: kvHeads)
        let qkv = randomFloats(t * row, seed: 41), dout = randomFloats(t * c, seed: 42)
        let saved = BlockProduct.wide
        defer { BlockProduct.wide = saved; Threads.configure(2) }
        for documents in [false, true] {
            g.documents = documents ? DocumentStarts(lengths: [[9, 40, 1, 33]], length: t) : nil
            var results: [[Float]] = []
            for wide in [false, true] {
                BlockProduct.wide = wide
                Threads.configure(2)
                let r = fusedForwardBackward(qkv, dout: dout, layout: g)
                results.append(r.out + r.lse + r.dqkv)
            }
            XCTAssertEqual(results[1], results[0], "documents \(documents)")
            XCTAssertGreaterThan(results[0].map { abs($0) }.max()!, 0)
        }
    }
}

/// Attention memory is linear in sequence length: what the model saves per layer, and the kernel's
/// scratch, grow by at most the factor the sequence grows by (a full score matrix would grow by its square).
final class AttentionMemoryTests: XCTestCase {
    func testSavedAndScratchMemoryAreLinearInSequenceLength() {
        Threads.configure(2)
        var saved: [Int] = [], scratchBytes: [Int] = []
        for t in [128, 512] {
            let (h, hd) = (2, 16), c = h * hd
            let acts = TesseraModel.Activations(config: .init(vocabSize: 16, nLayer: 1, nHead: h, dModel: c, blockSize: t),
                                                batch: 1, tokens: t)
            saved.append(acts.store.savedBytes)
            let qkv = randomFloats(t * 3 * c, seed: 5), dout = randomFloats(t * c, seed: 6)
            var out = [Float](repeating: 0, count: t * c), lse = [Float](repeating: 0, count: h * t)
            var dqkv = [Float](repeating: 0, count: t * 3 * c)
            let scratch = Scratch(), g = AttentionLayout.fused(batch: 1, t: t, heads: h, headDim: hd)
            qkv.withUnsafeBufferPointer { q in
                let p = q.baseAddress!
                out.ptr { o in lse.ptr { l in dqkv.ptr { d in
                    Attention.forward(out: o, lse: l, q: p, k: p + c, v: p + 2 * c, layout: g, scratch: scratch)
                    Attention.backward(dq: d, dk: d + c, dv: d + 2 * c, dout: dout, out: o, lse: l, q: p, k: p + c,
                                       v: p + 2 * c, layout: g, scratch: scratch)
                } } }
            }
            scratchBytes.append(scratch.bytes)
        }
        XCTAssertLessThanOrEqual(Double(saved[1]) / Double(saved[0]), 4.0 + 1e-9, "saved activations \(saved)")
        XCTAssertLessThanOrEqual(Double(scratchBytes[1]) / Double(scratchBytes[0]), 4.0, "attention scratch \(scratchBytes)")
        XCTAssertLessThan(scratchBytes[1], 512 * 512 * 4, "scratch must stay below one full score matrix")
    }
}

/// Forward then backward over a fused qkv buffer (the layout's row strides; k and v after the q heads): the output,
/// the log-sum-exp and the gradient of the qkv buffer.
func fusedForwardBackward(_ qkv: [Float], dout: [Float], layout g: AttentionLayout) -> (out: [Float], lse: [Float], dqkv: [Float]) {
    let c = g.heads * g.headDim, kv = g.kvHeads * g.headDim
    var out = [Float](repeating: 0, count: g.tq * c), lse = [Float](repeating: 0, count: g.heads * g.tq)
    var dqkv = [Float](repeating: 0, count: qkv.count)
    let scratch = Scratch()
    qkv.withUnsafeBufferPointer { q in
        let p = q.baseAddress!
        out.ptr { o in lse.ptr { l in dqkv.ptr { d in
            Attention.forward(out: o, lse: l, q: p, k: p + c, v: p + c + kv, layout: g, scratch: scratch)
            Attention.backward(dq: d, dk: d + c, dv: d + c + kv, dout: dout, out: o, lse: l, q: p, k: p + c,
                               v: p + c + kv, layout: g, scratch: scratch)
        } } }
    }
    return (out, lse, dqkv)
}
