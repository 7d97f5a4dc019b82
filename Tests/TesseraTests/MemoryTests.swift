import Foundation
import XCTest
@testable import TesseraKernels
@testable import TesseraMemory
@testable import TesseraModel

/// Activation policies on one rank, in process: every policy gives the gradients of `keep` bit for bit,
/// holds less activation memory, and leaves nothing in the offload directory.
final class MemoryTests: XCTestCase {
    let cfg = TransformerConfig(vocabSize: 64, nLayer: 4, nHead: 4, dModel: 32, blockSize: 64)
    let (batch, tokens) = (2, 48)

    func tempDir() -> String {
        let d = NSTemporaryDirectory() + "tessera-memory-\(getpid())-\(UInt64.random(in: 0..<UInt64.max))"
        try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }

    /// Two micro-batches of forward + backward (gradients accumulate), with an evaluation forward between
    /// them; returns (losses, gradients, activation bytes held, recompute ns).
    func run(_ policies: [LayerPolicy], tier: OffloadTier? = nil, precision: Precision = .fp32)
        -> (loss: [Double], grads: [Float], held: Int) {
        Threads.configure(1)
        let model = GPT(config: cfg, seed: 7)
        model.precision = precision
        model.memory = MemoryPlan(policies: policies, tier: tier)
        let before = ActivationMeter.shared.activationBytes
        let a = model.activations(batch: batch, tokens: tokens)
        let held = ActivationMeter.shared.activationBytes - before
        model.grads.zero()
        var losses: [Double] = []
        for mb in 0..<2 {
            for i in 0..<(batch * tokens) {
                a.tokenIds[i] = Int32((i * 7 + 3 * mb + 1) % cfg.vocabSize)
                a.targets[i] = Int32((i * 5 + mb) % cfg.vocabSize)
            }
            a.setContiguousPositions()
            losses.append(model.forwardLoss(a, gradScale: 1 / Float(2 * batch * tokens)))
            if mb == 0 { losses.append(model.lossSum(a)) }  // an evaluation pass between forward and backward
            model.backward(a)
        }
        return (losses, Array(UnsafeBufferPointer(start: model.grads.storage.ptr, count: model.grads.count)), held)
    }

    func testEveryPolicyGivesTheGradientsOfKeepBitForBit() throws {
        _ = try checkPolicies(precision: .fp32)
    }

    /// In bf16 the recomputed operands are rounded as the forward rounded them, and offload sends the operands
    /// as bf16 and widens them back: still bit for bit, with fewer bytes through the tier. Reads are the same blocks
    /// in both precisions; writes are whole block images, but how many depends on timing (a write not yet started
    /// when its block is used from memory is skipped), so only their unit is compared.
    func testEveryPolicyGivesTheGradientsOfKeepBitForBitInBF16() throws {
        let bf16 = try checkPolicies(precision: .bf16), fp32 = try checkPolicies(precision: .fp32)
        let shape = Activations.LayerShape(n: batch * tokens, config: cfg, lse: batch * cfg.nHead * tokens, attention: 0)
        let image = OffloadStaging.bytes(floats: shape.floats, compact: shape.operandFloats)
        let ratio = Double(image) / Double(4 * shape.floats)
        XCTAssertLessThan(ratio, 0.7)
        XCTAssertEqual(Double(bf16.bytesRead), Double(fp32.bytesRead) * ratio, accuracy: 1)
        XCTAssertEqual(bf16.bytesWritten % image, 0, "bf16 writes are whole compact images of \(image) bytes")
        XCTAssertEqual(fp32.bytesWritten % (4 * shape.floats), 0, "fp32 writes are whole blocks")
        XCTAssertGreaterThanOrEqual(bf16.bytesWritten, bf16.bytesRead); XCTAssertGreaterThanOrEqual(fp32.bytesWritten, fp32.bytesRead)
    }

    /// Returns the offload tier's traffic.
    func checkPolicies(precision: Precision) throws -> OffloadTier.Stats {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let tier = try OffloadTier(directory: dir, rank: 0)
        let keep = run(Array(repeating: .keep, count: 4), precision: precision)
        XCTAssertGreaterThan(keep.grads.map(abs).max()!, 0)
        var held: [String: Int] = ["keep": keep.held]
        let cases: [(String, [LayerPolicy])] = [
            ("full", Array(repeating: .full, count: 4)), ("selective", Array(repeating: .selective, count: 4)),
            ("offload", Array(repeating: .offload, count: 4)), ("mixed", [.offload, .full, .selective, .keep]),
            ("offload-top", [.keep, .keep, .offload, .offload]),
        ]
        for (name, policies) in cases {
            let r = run(policies, tier: tier, precision: precision)
            held[name] = r.held
            XCTAssertEqual(r.loss, keep.loss, "\(name): losses")
            let differ = zip(r.grads, keep.grads).filter { $0 != $1 }.count
            XCTAssertEqual(differ, 0, "\(name): \(differ) of \(keep.grads.count) gradient elements differ from keep's")
        }
        tier.drain()  // the last jobs (releases, skipped writes) may still be queued
        let stats = tier.takeStats()
        XCTAssertGreaterThan(stats.bytesWritten, 0, "offload wrote nothing")
        XCTAssertGreaterThan(stats.bytesRead, 0, "offload read nothing back")
        XCTAssertEqual(tier.heldBytes, 0, "the tier still holds activations after the backward")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), [], "offload directory not empty")
        // Memory: full < selective < keep, offload < keep.
        XCTAssertLessThan(held["full"]!, held["selective"]!)
        XCTAssertLessThan(held["selective"]!, held["keep"]!)
        XCTAssertLessThan(held["offload"]!, held["keep"]!)
        return stats
    }

    func testUnwritableOffloadDirectoryIsAClearError() throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = dir + "/not-a-directory"
        XCTAssertTrue(FileManager.default.createFile(atPath: file, contents: Data("x".utf8)))
        XCTAssertThrowsError(try OffloadTier(directory: file + "/sub", rank: 3)) { e in
            let m = "\(e)"
            XCTAssertTrue(m.contains("memory.offload_dir") && m.contains(file) && m.contains("rank 3"), m)
        }
    }

    func testLayerPolicyLists() throws {
        XCTAssertEqual(try LayerPolicy.parseList("full", layers: 3, key: "k"), [.full, .full, .full])
        XCTAssertEqual(try LayerPolicy.parseList("full*2, keep", layers: 3, key: "k"), [.full, .full, .keep])
        XCTAssertEqual(LayerPolicy.describe([.full, .full, .keep]), "full*2,keep")
        XCTAssertThrowsError(try LayerPolicy.parseList("full,keep", layers: 3, key: "memory.layer_policy")) {
            XCTAssertTrue("\($0)".contains("memory.layer_policy") && "\($0)".contains("n_layer = 3"), "\($0)")
        }
        XCTAssertThrowsError(try LayerPolicy.parseList("ful*3", layers: 3, key: "k")) {
            XCTAssertTrue("\($0)".contains("'ful*3' is not a layer policy"), "\($0)")
        }
    }
}

/// The auto planner against brute force: the cheapest plan that fits, for every budget.
final class ActivationPlannerTests: XCTestCase {
    func testPlannerFindsTheCheapestPlanThatFits() throws {
        // Two groups of layers (two pipeline chunks with different pool sizes) and shared buffers.
        let a = ActivationPlanner.Layer(sets: 2, keepBytes: 100, selectiveBytes: 40, fullSeconds: 1.0, selectiveSeconds: 0.3,
                                        offloadSeconds: 0.2)
        let b = ActivationPlanner.Layer(sets: 1, keepBytes: 100, selectiveBytes: 40, fullSeconds: 1.0, selectiveSeconds: 0.3,
                                        offloadSeconds: 0.2)
        let planner = ActivationPlanner(layers: [a, a, b, b], fixedBytes: 50, recomputeBufferBytes: 60, stagingBytes: 120)
        var all: [[LayerPolicy]] = [[]]
        for _ in 0..<4 { all = all.flatMap { p in LayerPolicy.allCases.map { p + [$0] } } }
        let least = planner.smallest.predictedBytes
        XCTAssertEqual(least, 50 + 60)
        for budget in stride(from: least, through: 700, by: 7) {
            let plan = try planner.plan(budget: budget)
            XCTAssertLessThanOrEqual(plan.predictedBytes, budget)
            let best = all.filter { planner.bytes($0) <= budget }.map { planner.seconds($0) }.min()!
            XCTAssertEqual(plan.predictedSeconds, best, accuracy: 1e-9, "budget \(budget): \(plan.policies)")
        }
        XCTAssertEqual(try planner.plan(budget: 10_000).policies, [.keep, .keep, .keep, .keep])
        XCTAssertThrowsError(try planner.plan(budget: least - 1)) { e in
            XCTAssertTrue("\(e)".contains("smallest feasible plan on this rank: \(least) bytes"), "\(e)")
        }
    }
}
