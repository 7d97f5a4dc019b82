import Foundation
import XCTest
@testable import TesseraBench
@testable import TesseraKernels
@testable import TesseraSequenceParallel

/// Grouped-query attention (4 query heads on 2 or 1 key/value heads) through the sequence-parallel op, with real
/// `mpirun` jobs of `tessera bench-sp --verify`: every rank runs the op forward and backward on its own tokens of
/// a random problem the ranks share, and compares output, log-sum-exp and dq, dk, dv with single-rank attention
/// over the whole sequence. Ring 2, Ulysses 2, ring 2 × Ulysses 2 and ring 4 (from 3 ranks on, received blocks are
/// passed on from their bf16 twins), each in fp32 and bf16; the bytes each rank sends equal the formulas with the
/// key/value width, and so do the op's buffers.
///
/// Tolerances: fp32 1e-5 (the op adds the same products in another order: measured about 3e-7). bf16 1e-2: the op
/// rounds Ulysses' output and dq, dk, dv to bf16 before they travel (2⁻⁹ ≈ 2e-3 relative each) and the backward
/// takes D = rowsum(dO ∘ O) from the rounded output, so errors of a few 2⁻⁹ are right (measured about 3e-3), and a
/// wrong head, token or block is off by order 1. The ring alone is exact in bf16 (its blocks are bf16 values
/// already), so a ring-only bf16 run is held to fp32's 1e-5.
final class GroupedSequenceParallelTests: XCTestCase {
    /// 320 tokens (ring 2: chunks of 80, a whole and a partial 64-key block), head dim 24 (a 16-wide SIMD run and a tail).
    static let shape = ["--heads", "4", "--head-dim", "24", "--seq", "320", "--batch", "2"]

    /// Runs the verification of one layout; returns its JSON report (nil after a failure is recorded).
    @discardableResult
    func verify(np: Int, ring: Int = 1, ulysses: Int = 1, kvHeads: Int, precision: Precision,
                file: StaticString = #filePath, line: UInt = #line) throws -> [String: Any]? {
        let name = "ring \(ring) × ulysses \(ulysses), kv heads \(kvHeads), \(precision.rawValue)"
        let (status, out) = try runProcess(["mpirun", "-np", "\(np)", CommandTests.binary, "bench-sp", "--verify", "--json",
                                            "--ring", "\(ring)", "--ulysses", "\(ulysses)", "--kv-heads", "\(kvHeads)",
                                            "--precision", precision.rawValue] + Self.shape, timeout: 300)
        XCTAssertEqual(status, 0, "\(name)\n\(out)", file: file, line: line)
        guard let r = benchReports(out, bench: "bench-sp-verify").first else {
            XCTFail("\(name): no report\n\(out)", file: file, line: line); return nil
        }
        let errors = ["out", "lse", "dq", "dk", "dv"].map { number(r, "error_" + $0) ?? .infinity }
        let tolerance = precision == .bf16 && ulysses > 1 ? 1e-2 : 1e-5
        print("grouped sequence-parallel \(name): max relative error \(errors.max()!) (out, lse, dq, dk, dv: \(errors))")
        for (n, e) in zip(["out", "lse", "dq", "dk", "dv"], errors) {
            XCTAssertLessThanOrEqual(e, tolerance, "\(name): \(n)", file: file, line: line)
        }
        XCTAssertEqual(r["kv_heads"] as? Int, kvHeads, file: file, line: line)
        let theory = SequenceBench.theoryBytes(seq: 320, ring: ring, ulysses: ulysses, layers: 1, dModel: 4 * 24,
                                               kvWidth: kvHeads * 24, batch: 2, precision: precision)
        XCTAssertGreaterThan(theory, 0, file: file, line: line)
        XCTAssertEqual(number(r, "sent_bytes_min"), theory, "\(name): bytes sent, least rank", file: file, line: line)
        XCTAssertEqual(number(r, "sent_bytes_max"), theory, "\(name): bytes sent, most rank", file: file, line: line)
        XCTAssertEqual(number(r, "ring_alone_bytes"), number(r, "ring_alone_theory_bytes"), name, file: file, line: line)
        XCTAssertEqual(number(r, "buffer_bytes"), number(r, "planned_bytes"), "\(name): buffers vs plan", file: file, line: line)
        XCTAssertEqual(r["passed"] as? Bool, true, file: file, line: line)
        return r
    }

    func testRing2() throws {
        for p in Precision.allCases {
            try verify(np: 2, ring: 2, kvHeads: 2, precision: p)
            try verify(np: 2, ring: 2, kvHeads: 1, precision: p)
        }
    }

    func testUlysses2() throws {
        for p in Precision.allCases { try verify(np: 2, ulysses: 2, kvHeads: 2, precision: p) }
    }

    func testRing2Ulysses2() throws {
        for p in Precision.allCases { try verify(np: 4, ring: 2, ulysses: 2, kvHeads: 2, precision: p) }
    }

    func testRing4OneKeyValueHead() throws {
        for p in Precision.allCases { try verify(np: 4, ring: 4, kvHeads: 1, precision: p) }
    }

    /// The same harness on multi-head attention (kv heads = heads): GPT-2's shapes through the new code.
    func testMultiHeadThroughTheSameCheck() throws {
        try verify(np: 4, ring: 2, ulysses: 2, kvHeads: 4, precision: .fp32)
    }

    /// The bytes worked out by hand (fp32, batch 2, 320 tokens, head dim 24), so the formula is not only checked
    /// against itself. Ring 2, 1 key/value head: one block of 2 · 160 tokens · 2·24 floats, sent forward, backward
    /// and as dK|dV: 15360 · 12 bytes. Ulysses 2, 2 key/value heads: half of q, k, v, out, dout, dq, dk, dv of
    /// 2 · 160 tokens, 4·(4 + 2)·24 floats a token: 0.5 · 320 · 576 · 4 bytes. Multi-head, as before: the ring block
    /// 4× wider, Ulysses' 8·d_model a token.
    func testBytesByHand() throws {
        let ring = try XCTUnwrap(try verify(np: 2, ring: 2, kvHeads: 1, precision: .fp32))
        XCTAssertEqual(number(ring, "sent_bytes_max"), 184_320)
        let uly = try XCTUnwrap(try verify(np: 2, ulysses: 2, kvHeads: 2, precision: .fp32))
        XCTAssertEqual(number(uly, "sent_bytes_max"), 368_640)
        XCTAssertEqual(SequenceBench.theoryBytes(seq: 320, ring: 2, ulysses: 1, layers: 1, dModel: 96, batch: 2), 4 * 184_320)
        XCTAssertEqual(SequenceBench.theoryBytes(seq: 320, ring: 1, ulysses: 2, layers: 1, dModel: 96, batch: 2),
                       0.5 * 320 * 8 * 96 * 4)
        // GPT-2's model M figures of docs/sequence-parallel.md, unchanged without a key/value width.
        XCTAssertEqual(SequenceBench.theoryBytes(seq: 1024, ring: 2, ulysses: 1, layers: 6, dModel: 256), 18_874_368)
        XCTAssertEqual(SequenceBench.theoryBytes(seq: 1024, ring: 1, ulysses: 2, layers: 6, dModel: 256), 12_582_912)
    }

    /// Ulysses cannot split 1 key/value head over 2 ranks: the helper says so, and `bench-sp --verify` stops on every
    /// rank with that text before any work.
    func testUlyssesKeyValueSplitError() throws {
        let text = "model.n_kv_head = 2 is not divisible by parallelism.ulysses = 4 (Ulysses splits key/value heads across its group)"
        XCTAssertEqual(SequenceParallelAttention.kvSplitError(heads: 8, kvHeads: 2, ulysses: 4), text)
        XCTAssertNil(SequenceParallelAttention.kvSplitError(heads: 8, kvHeads: 2, ulysses: 2))
        XCTAssertNil(SequenceParallelAttention.kvSplitError(heads: 8, kvHeads: 1, ulysses: 1))
        XCTAssertNil(SequenceParallelAttention.kvSplitError(heads: 4, kvHeads: nil, ulysses: 4))
        XCTAssertNotNil(SequenceParallelAttention.kvSplitError(heads: 6, kvHeads: nil, ulysses: 4))
        let (status, out) = try runProcess(["mpirun", "-np", "2", CommandTests.binary, "bench-sp", "--verify", "--ulysses", "2",
                                            "--kv-heads", "1"] + Self.shape)
        XCTAssertNotEqual(status, 0, out)
        XCTAssertTrue(out.contains("model.n_kv_head = 1 is not divisible by parallelism.ulysses = 2"), out)
        XCTAssertFalse(out.contains("relative error"), out)
    }

    /// The widths a Ulysses rank attends with, and the saved and planned sizes: grouped ones smaller, multi-head ones
    /// (no kvHeads) the GPT-2 formulas as before.
    func testWidthsAndSizes() {
        let w = HeadWidths(heads: 8, kvHeads: 2, headDim: 4)
        XCTAssertEqual([w.q, w.kv, w.row, w.packed], [32, 8, 48, 16])
        let s = w.share(2)
        XCTAssertEqual([s.heads, s.kvHeads, s.row], [4, 1, 24])
        XCTAssertEqual(SequenceParallelAttention.savedFloats(batch: 2, tokens: 16, heads: 4, headDim: 8, ulysses: 2), 2 * 16 * 4 * 4 * 8)
        XCTAssertEqual(SequenceParallelAttention.savedFloats(batch: 2, tokens: 16, heads: 4, kvHeads: 1, headDim: 8, ulysses: 2),
                       2 * 16 * (2 * 4 + 2 * 1) * 8)
        let l = SequenceLayout(seqLen: 64, ring: 2, ulysses: 1, ringRank: 0, ulyssesRank: 0)
        let mha = RingCore.plannedBytes(layout: l, heads: 4, headDim: 8, maxBatch: 1)
        XCTAssertEqual(mha, 4 * (7 * 32 * 2 * 32 + 16 * 32 + 3 * 4 * 16))
        XCTAssertLessThan(RingCore.plannedBytes(layout: l, heads: 4, kvHeads: 1, headDim: 8, maxBatch: 1), mha)
    }
}
