import Foundation
import XCTest
@testable import TesseraSequenceParallel
@testable import TesseraTraining

/// Variable-length documents (`data.max_tokens_per_rank`): the draws of a step's documents, the rows written for an
/// item, and the plans (data-aware and the static ones): every sequence once, no rank above its capacity, rings on
/// aligned power-of-two blocks, and the data-aware plan's balance on a long-tailed mix.
final class DocumentScheduleTests: XCTestCase {
    /// Lognormal lengths (median `median`, σ 1.2), clipped to [2, maxLength], from a fixed seed.
    static func lognormal(_ count: Int, median: Double, maxLength: Int, seed: UInt64) -> [Int] {
        var state = seed
        func uniform() -> Double { state = splitmix64(state); return (Double(state >> 11) + 0.5) / Double(1 << 53) }
        return (0..<count).map { _ in
            let z = (-2 * log(uniform())).squareRoot() * cos(2 * .pi * uniform())
            return min(max(Int(median * exp(1.2 * z)), 2), maxLength)
        }
    }

    /// Each sequence appears in exactly one item with all its tokens (or, truncating, min(length, capacity));
    /// rows fit the capacity per rank; a ring's row is a multiple of 2g; blocks are aligned and inside the ranks.
    func checkPlan(_ plan: DocumentPlan, _ lengths: [Int], truncated: Bool = false, file: StaticString = #filePath, line: UInt = #line) {
        var seen = [Int](repeating: 0, count: lengths.count)
        for it in plan.items {
            XCTAssertTrue(it.size >= 1 && it.size & (it.size - 1) == 0 && it.size <= plan.ranks, "group \(it.size)", file: file, line: line)
            XCTAssertTrue(it.block >= 0 && it.ranks.upperBound <= plan.ranks, "block \(it.block) of \(it.size)", file: file, line: line)
            XCTAssertLessThanOrEqual(it.localTokens, plan.capacity, "a rank's tokens", file: file, line: line)
            XCTAssertEqual(it.length % (it.size == 1 ? 1 : 2 * it.size), 0, file: file, line: line)
            XCTAssertGreaterThanOrEqual(it.length, it.tokens, file: file, line: line)
            for (s, c) in zip(it.sequences, it.counts) {
                seen[s] += 1
                XCTAssertEqual(c, truncated ? min(lengths[s], plan.capacity) : lengths[s], "sequence \(s)'s tokens", file: file, line: line)
            }
        }
        XCTAssertEqual(seen, Array(repeating: 1, count: lengths.count), "every sequence once", file: file, line: line)
    }

    func testDataAwarePlansFitAndBalanceALongTailedMix() {
        let cost = DocumentCost(pair: 1, token: 64)
        for (ranks, capacity) in [(1, 4096), (2, 2048), (4, 1024), (8, 512)] {
            let maxLength = 4096
            let lengths = Self.lognormal(400, median: 200, maxLength: maxLength, seed: UInt64(ranks))
            let plan = DocumentScheduler.dataAware(lengths: lengths, ranks: ranks, capacity: capacity, cost: cost)
            checkPlan(plan, lengths)
            for it in plan.items {
                let longest = it.counts.max()!
                if it.size > 1 {
                    XCTAssertEqual(it.sequences.count, 1, "a ring runs one sequence")
                    XCTAssertGreaterThan(longest, capacity, "only sequences longer than a rank's capacity are split")
                    XCTAssertGreaterThanOrEqual(it.size, DocumentScheduler.smallestGroup(longest, ranks: ranks, capacity: capacity)!)
                } else {
                    XCTAssertLessThanOrEqual(longest, capacity)
                }
            }
            if ranks > 1 {
                XCTAssertTrue(plan.items.contains { $0.size > 1 }, "\(ranks) ranks: the tail needs rings")
                XCTAssertLessThanOrEqual(plan.workImbalance(cost), 1.1, "\(ranks) ranks: max/mean of the balanced work")
            }
            // The static layouts of the same lengths.
            let ring = DocumentScheduler.ring(lengths: lengths, ranks: ranks, capacity: capacity)
            checkPlan(ring, lengths)
            XCTAssertTrue(ring.items.allSatisfy { $0.size == ranks && $0.block == 0 })
            let dp = DocumentScheduler.dataParallel(lengths: lengths, ranks: ranks, capacity: capacity, packed: true)
            checkPlan(dp, lengths, truncated: true)
            XCTAssertEqual(dp.tokens, lengths.reduce(0) { $0 + min($1, capacity) }, "truncation drops the tail's tokens")
            let padded = DocumentScheduler.dataParallel(lengths: lengths, ranks: ranks, capacity: capacity, packed: false)
            checkPlan(padded, lengths, truncated: true)
            XCTAssertTrue(padded.items.allSatisfy { $0.length == capacity && $0.sequences.count == 1 })
            XCTAssertGreaterThan(padded.paddingFraction, dp.paddingFraction)
            // With half the longest per rank: rings of 2 (the size the longest needs), rows dealt round-robin over the blocks.
            let half = maxLength / 2, g = DocumentScheduler.smallestGroup(maxLength, ranks: ranks, capacity: half) ?? 0
            XCTAssertEqual(g, ranks == 1 ? 0 : 2, "\(ranks) ranks of \(half): the longest needs two")
            guard ranks > 1 else { continue }
            let rings = DocumentScheduler.ring(lengths: lengths, ranks: ranks, capacity: half, size: g)
            checkPlan(rings, lengths)
            XCTAssertEqual(rings.items.map(\.size), Array(repeating: g, count: rings.items.count))
            XCTAssertEqual(rings.items.map(\.block), rings.items.indices.map { $0 % (ranks / g) }, "round-robin over the blocks")
            XCTAssertTrue(rings.items.allSatisfy { $0.localTokens <= half })
        }
    }

    /// Measured weights: exact samples give the weights back; samples whose pairs are proportional to their tokens,
    /// or none, give nothing (the plan keeps its weights).
    func testCostFitRecoversTheWeights() throws {
        var fit = DocumentCostFit()
        XCTAssertNil(fit.cost, "no samples")
        let truth = DocumentCost(pair: 3e-9, token: 2e-6)
        for n in [16, 64, 100, 256, 1000] {  // one sequence per item: pairs n(n+1)/2
            fit.add(pairs: Double(n * (n + 1) / 2), tokens: Double(n), seconds: truth.of(n))
        }
        let c = try XCTUnwrap(fit.cost)
        XCTAssertEqual(c.pair / truth.pair, 1, accuracy: 1e-9)
        XCTAssertEqual(c.token / truth.token, 1, accuracy: 1e-9)
        var alike = DocumentCostFit()
        for k in 1...4 { alike.add(pairs: 10 * Double(k), tokens: Double(k), seconds: Double(k)) }
        XCTAssertNil(alike.cost, "pairs proportional to tokens cannot tell the weights apart")
        var negative = DocumentCostFit()
        negative.add(pairs: 100, tokens: 10, seconds: 1); negative.add(pairs: 1000, tokens: 20, seconds: 1)
        XCTAssertNil(negative.cost, "a weight ≤ 0 is no fit")
    }

    /// A mix that only rings of 4 can hold and short documents: the long ones take aligned blocks, the short fill
    /// the ranks left idle, and the work ends balanced.
    func testLongSequencesTakeAlignedBlocksAndShortOnesFillTheRest() {
        let cost = DocumentCost(pair: 1, token: 16)
        let lengths = [1000, 900, 300, 280] + Array(repeating: 60, count: 40)
        let plan = DocumentScheduler.dataAware(lengths: lengths, ranks: 8, capacity: 256, cost: cost)
        checkPlan(plan, lengths)
        let rings = plan.items.filter { $0.size > 1 }
        XCTAssertEqual(rings.map(\.sequences), [[0], [1], [2], [3]], "longest first")
        XCTAssertEqual(rings[0].size, 4)  // 1000 tokens need 4 ranks of 256
        XCTAssertEqual(Set(rings.prefix(2).map(\.block)).count, 2, "the two longest run side by side on both halves")
        XCTAssertEqual(DocumentScheduler.smallestGroup(1000, ranks: 8, capacity: 256), 4)
        XCTAssertNil(DocumentScheduler.smallestGroup(3000, ranks: 8, capacity: 256))
        XCTAssertLessThanOrEqual(plan.workImbalance(cost), 1.1)
        // Every rank's items: its rings in plan order, then its own rows.
        for r in 0..<8 {
            let mine = plan.items(for: r)
            let firstRow = mine.firstIndex { $0.size == 1 } ?? mine.count
            XCTAssertTrue(mine[firstRow...].allSatisfy { $0.size == 1 && $0.block == r })
        }
    }

    /// One rank with an odd capacity: the static ring's rows are that capacity (no pairing of chunks); a rank may
    /// have nothing to run when a step has fewer sequences than ranks.
    func testEdgeCases() {
        let one = DocumentScheduler.ring(lengths: [7, 3, 2], ranks: 1, capacity: 7)
        checkPlan(one, [7, 3, 2])
        XCTAssertEqual(one.items.map(\.length), [7, 5])
        let idle = DocumentScheduler.dataAware(lengths: [10], ranks: 2, capacity: 20, cost: DocumentCost(pair: 1, token: 1))
        XCTAssertEqual(idle.items(for: 0).count, 1)
        XCTAssertTrue(idle.items(for: 1).isEmpty)
        // Odd capacity: a ring of g holds 2·⌈n / 2g⌉ tokens per rank, so 10 tokens at 5 per rank need 4 ranks.
        XCTAssertEqual(DocumentScheduler.smallestGroup(10, ranks: 4, capacity: 5), 4)
        XCTAssertEqual(DocumentScheduler.smallestGroup(10, ranks: 4, capacity: 6), 2)
    }

    // MARK: drawing and writing

    func testStepsDrawWholeDocumentsUpToTheBudget() throws {
        let lengths = [5, 9, 2, 16, 3, 40, 7, 11, 17, 4, 6, 13, 2, 8, 35, 10]
        let (source, docs) = DocumentPackingTests.corpus(lengths)
        let batches = try DocumentBatches(source: source, separator: 0, maxLength: 16, seed: 3)
        XCTAssertEqual(batches.documents, lengths.count)
        XCTAssertEqual(batches.splitDocuments, 3)  // 40, 17, 35
        XCTAssertTrue(batches.pieces.allSatisfy { $0.count >= 2 && $0.count <= 16 })
        // 40 = 16 + 16 + 8 and 35 = 16 + 16 + 3: pieces at offsets 0, 16, 32.
        XCTAssertEqual(batches.pieces.filter { docs[5].contains($0.start) }.map(\.offset), [0, 16, 32])
        XCTAssertEqual(batches.pieces.reduce(0) { $0 + $1.count }, lengths.reduce(0, +) - 1, "17's last token (no target) dropped")
        let budget = 64
        var differ = false
        for step in 0..<20 {
            let s = batches.sequences(step: step, budget: budget)
            XCTAssertFalse(s.isEmpty)
            XCTAssertLessThanOrEqual(batches.lengths(s).reduce(0, +), budget)
            XCTAssertEqual(s, batches.sequences(step: step, budget: budget), "a function of the step")
            if s != batches.sequences(step: step + 1, budget: budget) { differ = true }
        }
        XCTAssertTrue(differ, "steps draw different documents")
        XCTAssertNotEqual(batches.evalSequences(batch: 0, budget: budget), batches.sequences(step: 0, budget: budget))

        // An item's row: each sequence's tokens, targets inside it only, positions from 0, starts; padding last.
        let seqs = batches.sequences(step: 4, budget: budget)
        let item = DocumentPlan.Item(size: 2, block: 0, sequences: [0, 1], counts: batches.lengths(Array(seqs.prefix(2))),
                                     length: DocumentScheduler.ringLength(batches.lengths(Array(seqs.prefix(2))).reduce(0, +), size: 2) + 4)
        var row = [Int32](repeating: 7, count: 4 * item.length)
        row.withUnsafeMutableBufferPointer { b in
            let L = item.length, p = b.baseAddress!
            batches.write(item, sequences: seqs, ids: p, targets: p + L, positions: p + 2 * L, starts: p + 3 * L)
        }
        let L = item.length
        var at = 0
        for (j, n) in item.counts.enumerated() {
            let piece = batches.pieces[seqs[j]]
            var expect = [Int32](repeating: 0, count: n)
            expect.withUnsafeMutableBufferPointer { source.copy(from: piece.start, count: n, into: $0.baseAddress!) }
            XCTAssertEqual(Array(row[at..<(at + n)]), expect)
            XCTAssertEqual(Array(row[(L + at)..<(L + at + n)]), Array(expect.dropFirst()) + [-1], "targets stop at the end")
            XCTAssertEqual(Array(row[(2 * L + at)..<(2 * L + at + n)]), (0..<n).map { Int32($0) })
            XCTAssertEqual(Array(row[(3 * L + at)..<(3 * L + at + n)]), Array(repeating: Int32(at), count: n))
            at += n
        }
        XCTAssertTrue(row[(L + at)..<(2 * L)].allSatisfy { $0 == -1 }, "padding has no target")
        XCTAssertTrue(row[(3 * L + at)..<(4 * L)].allSatisfy { $0 == Int32(at) }, "padding is one document")
        let plan = DocumentPlan(ranks: 2, capacity: 64, items: [item])
        XCTAssertEqual(DocumentBatches.targets(plan), item.counts.reduce(0) { $0 + $1 - 1 })
    }
}
