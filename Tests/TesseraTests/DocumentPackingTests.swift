import Foundation
import XCTest
@testable import TesseraKernels
@testable import TesseraModel
@testable import TesseraTraining

/// Packed documents (`data.packing = "documents"`): the packer keeps every document shorter than a row whole and
/// splits only longer ones; targets stop at document ends; positions restart; the loader serves the same global
/// batch however it is split over ranks and tokens; and a model over a packed row computes exactly what it computes
/// for each document alone (GPT-2 and Llama), so that attention never crosses a document.
final class DocumentPackingTests: XCTestCase {
    static let separator: UInt8 = 0

    /// Documents of lengths `lengths` (each its separator byte 0 and then bytes 1...) as one byte source.
    static func corpus(_ lengths: [Int]) -> (ByteTokens, [Range<Int>]) {
        var bytes: [UInt8] = [], docs: [Range<Int>] = []
        for (d, n) in lengths.enumerated() {
            docs.append(bytes.count ..< bytes.count + n)
            bytes.append(separator)
            for i in 1..<n { bytes.append(UInt8(1 + (d * 7 + i * 3) % 200)) }
        }
        return (ByteTokens(bytes: bytes, description: "corpus"), docs)
    }

    /// MFU's FLOPs (perToken(n) = n here, so a sequence of n positions counts n²): windows count every token at
    /// seq_len; packed rows each document piece at its own number of input positions (a row's last token is a target).
    func testStepFlopsCountEachDocumentAtItsLength() throws {
        // One document of 17 tokens fills a row of seq_len + 1 = 17: 16 input positions, 16².
        let one = try DataLoader(source: Self.corpus([17]).0, seqLen: 16, seed: 3, documentSeparator: 0)
        XCTAssertEqual(one.flops(step: 0, globalBatch: 1) { Double($0) }, 256)
        // Two documents of 6 in a row of 12 (seq_len 11): 6 and 5 input positions, 36 + 25, in either order.
        let two = try DataLoader(source: Self.corpus([6, 6]).0, seqLen: 11, seed: 3, documentSeparator: 0)
        XCTAssertEqual(two.flops(step: 0, globalBatch: 2) { Double($0) }, 2 * 61)
        let windows = try DataLoader(source: Self.corpus([6, 6]).0, seqLen: 11, seed: 3)
        XCTAssertEqual(windows.flops(step: 0, globalBatch: 2) { Double($0) }, 2 * 121)
    }

    func testPackerKeepsShortDocumentsWholeAndSplitsOnlyLongOnes() throws {
        let lengths = [5, 9, 2, 16, 3, 40, 7, 11, 17, 4, 6, 13, 2, 8, 35, 10]  // 40 and 35 (= 2 rows + 1) are split
        let (source, docs) = Self.corpus(lengths)
        let seqLen = 16, row = seqLen + 1
        let packer = try DocumentPacker(source: source, seqLen: seqLen, separator: 0, seed: 7)
        XCTAssertEqual(packer.documents, lengths.count)
        XCTAssertEqual(packer.splitDocuments, lengths.filter { $0 > row }.count)
        var covered: [Int: [DocumentPacker.Piece]] = [:]
        for r in packer.rows {
            XCTAssertLessThanOrEqual(r.reduce(0) { $0 + $1.count }, row)
            for p in r {
                let d = try XCTUnwrap(docs.firstIndex { $0.contains(p.start) })
                covered[d, default: []].append(p)
            }
        }
        for (d, range) in docs.enumerated() {
            let pieces = (covered[d] ?? []).sorted { $0.offset < $1.offset }
            if range.count <= row {
                XCTAssertEqual(pieces, [DocumentPacker.Piece(start: range.lowerBound, count: range.count, offset: 0)], "document \(d) whole, once")
            } else {
                // Row-sized pieces and the rest; a rest of one token (no target) is dropped.
                let offsets = Array(stride(from: 0, to: range.count, by: row)).filter { range.count - $0 >= 2 }
                XCTAssertEqual(pieces.map(\.offset), offsets, "document \(d)'s pieces")
                XCTAssertEqual(pieces.reduce(0) { $0 + $1.count }, range.count - (range.count % row == 1 ? 1 : 0))
            }
        }
        // Each row as written: targets within a piece only, positions from 0 in each piece, the starts.
        for r in packer.rows.indices {
            var ids = [Int32](repeating: 0, count: seqLen), tg = ids, pos = ids, st = ids
            ids.withUnsafeMutableBufferPointer { i in tg.withUnsafeMutableBufferPointer { t in pos.withUnsafeMutableBufferPointer { p in
                st.withUnsafeMutableBufferPointer { s in
                    packer.write(row: r, tokens: 0..<seqLen, source: source, inputs: i.baseAddress!, targets: t.baseAddress!,
                                 positions: p.baseAddress!, starts: s.baseAddress!)
                } } } }
            var at = 0
            for p in packer.rows[r] {
                for i in 0..<p.count where at + i < seqLen {
                    XCTAssertEqual(pos[at + i], Int32(i))
                    XCTAssertEqual(st[at + i], Int32(at))
                    var x: Int32 = 0
                    source.copy(from: p.start + i, count: 1, into: &x)
                    XCTAssertEqual(ids[at + i], x)
                    if i + 1 < p.count {
                        source.copy(from: p.start + i + 1, count: 1, into: &x)
                        XCTAssertEqual(tg[at + i], x, "row \(r): the next token of the same document")
                    } else {
                        XCTAssertEqual(tg[at + i], -1, "row \(r): no target across a document's end")
                    }
                }
                at += p.count
            }
            for i in min(at, seqLen)..<seqLen { XCTAssertEqual(tg[i], -1, "padding has no target") }
            XCTAssertEqual(packer.targetCount(row: r), tg.filter { $0 >= 0 }.count)
        }
        XCTAssertGreaterThanOrEqual(packer.paddingFraction, 0)
        XCTAssertLessThan(packer.paddingFraction, 0.5)
    }

    /// The global batch of a step is the same filled whole, by halves (two replicas) or by token ranges (sequence ranks).
    func testLoaderServesTheSameGlobalBatchForAnySplit() throws {
        let (source, _) = Self.corpus((0..<60).map { 2 + ($0 * 37) % 23 })
        let loader = try DataLoader(source: source, seqLen: 16, seed: 3, documentSeparator: 0)
        let batch = 4, T = 16
        func fill(_ seqs: Range<Int>, _ tokens: Range<Int>) -> ([Int32], [Int32], [Int32], [Int32]) {
            var i = [Int32](repeating: 0, count: seqs.count * tokens.count), t = i, p = i
            var s = [Int32](repeating: 0, count: seqs.count * T)
            i.withUnsafeMutableBufferPointer { a in t.withUnsafeMutableBufferPointer { b in p.withUnsafeMutableBufferPointer { c in
                s.withUnsafeMutableBufferPointer { d in
                    loader.fill(step: 5, globalBatch: batch, sequences: seqs, tokens: tokens, inputs: a.baseAddress!, targets: b.baseAddress!,
                                positions: c.baseAddress!, starts: d.baseAddress!)
                } } } }
            return (i, t, p, s)
        }
        let whole = fill(0..<batch, 0..<T)
        let halves = [fill(0..<2, 0..<T), fill(2..<4, 0..<T)]
        XCTAssertEqual(halves[0].0 + halves[1].0, whole.0)
        XCTAssertEqual(halves[0].1 + halves[1].1, whole.1)
        XCTAssertEqual(halves[0].2 + halves[1].2, whole.2)
        XCTAssertEqual(halves[0].3 + halves[1].3, whole.3)
        let front = fill(0..<batch, 0..<8), back = fill(0..<batch, 8..<16)
        for r in 0..<batch {
            XCTAssertEqual(Array(front.1[r * 8 ..< r * 8 + 8]) + Array(back.1[r * 8 ..< r * 8 + 8]), Array(whole.1[r * T ..< (r + 1) * T]))
            XCTAssertEqual(Array(front.2[r * 8 ..< r * 8 + 8]) + Array(back.2[r * 8 ..< r * 8 + 8]), Array(whole.2[r * T ..< (r + 1) * T]))
            XCTAssertEqual(Array(front.3[r * T ..< (r + 1) * T]), Array(whole.3[r * T ..< (r + 1) * T]), "every token range gets the whole row's starts")
        }
        XCTAssertEqual(loader.targetCount(step: 5, globalBatch: batch), whole.1.filter { $0 >= 0 }.count)
        XCTAssertLessThan(loader.targetCount(step: 5, globalBatch: batch), batch * T, "document ends and padding do not count")
    }

    func testPackedRowIsEachDocumentAloneGPT() throws {
        try checkDocumentsAlone(TransformerConfig(vocabSize: 64, nLayer: 2, nHead: 2, dModel: 32, blockSize: 24)) { GPT(config: $0, seed: 5) }
    }

    func testPackedRowIsEachDocumentAloneLlama() throws {
        try checkDocumentsAlone(.llama(vocabSize: 64, nLayer: 2, nHead: 4, nKVHead: 2, dModel: 32, intermediate: 48, blockSize: 24)) {
            Llama(config: $0, seed: 5)
        }
    }

    /// Rows [A B pad], [B A pad], [A pad] and [B pad] (A: 8 tokens, B: 10, T = 24): the loss of the first two and the
    /// sum of the last two agree, and so do their gradients (1e-5), which holds only if no token sees another
    /// document and positions restart at each.
    func checkDocumentsAlone(_ cfg: TransformerConfig, _ make: (TransformerConfig) -> Transformer) throws {
        Threads.configure(2)
        let T = 24
        let a = (0..<8).map { Int32(1 + ($0 * 5) % 60) }, b = (0..<10).map { Int32(2 + ($0 * 11) % 60) }
        let model = make(cfg)
        // (tokens of the row's documents in order) -> (loss, gradients)
        func run(_ docs: [[Int32]]) -> (Double, [[Float]]) {
            let acts = Activations(config: cfg, batch: 1, tokens: T)
            // As the packer lays a row out: each document whole, its last token without a target, positions from 0.
            var ids: [Int32] = [], lengths: [Int] = [], targets: [Int32] = [], positions: [Int32] = []
            for d in docs {
                ids += d; lengths.append(d.count)
                targets += Array(d.dropFirst()) + [-1]
                positions += (0..<d.count).map(Int32.init)
            }
            let pad = T - ids.count
            ids += Array(repeating: 0, count: pad); targets += Array(repeating: -1, count: pad)
            positions += (0..<pad).map(Int32.init); lengths.append(pad)
            for i in 0..<T { acts.tokenIds[i] = ids[i]; acts.targets[i] = targets[i]; acts.positions[i] = positions[i] }
            acts.documents = DocumentStarts(lengths: [lengths.filter { $0 > 0 }], length: T)
            model.grads.zero()
            let loss = model.forwardBackward(acts, gradScale: 1)
            return (loss, model.grads.specs.indices.map { copyArray(model.grads.pointer($0), model.grads.specs[$0].count) })
        }
        let ab = run([a, b]), ba = run([b, a]), aa = run([a]), bb = run([b])
        XCTAssertEqual(ab.0, aa.0 + bb.0, accuracy: 1e-5 * abs(ab.0))
        XCTAssertEqual(ba.0, aa.0 + bb.0, accuracy: 1e-5 * abs(ab.0))
        for i in ab.1.indices {
            let alone = zip(aa.1[i], bb.1[i]).map { $0 + $1 }
            XCTAssertLessThan(relErr(ab.1[i], alone), 1e-5, "\(model.grads.specs[i].name): [A B] vs A + B alone")
            XCTAssertLessThan(relErr(ba.1[i], alone), 1e-5, "\(model.grads.specs[i].name): [B A] vs A + B alone")
        }
    }
}
