import Foundation
import XCTest
@testable import TesseraKernels
@testable import TesseraModel
@testable import TesseraTraining

/// The training loop: bit-identical reruns, gradient accumulation equal to one big batch, a falling loss.
final class TrainingTests: XCTestCase {
    static let corpus: String = {
        let dir = madeScratchDirectory("tessera-training-tests")
        let path = dir.appendingPathComponent("corpus.txt").path
        var text = ""
        for i in 0..<400 { text += "The quick brown fox \(i % 7) jumps over the lazy dog number \(i % 13).\n" }
        _ = FileManager.default.createFile(atPath: path, contents: Data(text.utf8))
        return path
    }()

    func config(_ extra: [(String, String)] = []) throws -> TesseraConfig {
        let base: [(String, String)] = [
            ("data.train", Self.corpus), ("model.n_layer", "2"), ("model.n_head", "2"), ("model.d_model", "32"),
            ("model.block_size", "32"), ("training.seq_len", "32"), ("training.batch_size", "4"),
            ("training.steps", "6"), ("training.threads", "2"), ("training.eval_every", "3"), ("training.eval_batches", "2"),
            ("optimizer.lr", "3e-3"), ("optimizer.warmup_steps", "2"), ("sample.tokens", "0"),
        ]
        return try ConfigLoader.load(text: "", source: "test", overrides: (base + extra).map { (key: $0.0, value: $0.1) })
    }

    func run(_ c: TesseraConfig) throws -> (losses: [Double], params: [Float], val: [Double]) {
        let t = try Trainer(config: c, runtime: nil, measurePeak: false)
        t.log = { _ in }
        let h = t.run(metrics: nil)
        return (h.map(\.loss), copyArray(t.model.params.storage.ptr, t.model.params.count), h.compactMap(\.valLoss))
    }

    func testSameSeedIsBitIdentical() throws {
        let a = try run(config()), b = try run(config())
        XCTAssertEqual(a.losses, b.losses)
        XCTAssertEqual(a.val, b.val)
        XCTAssertTrue(a.params == b.params, "parameters after training differ between two runs with the same seed")
        let c = try run(config([("training.seed", "7")]))
        XCTAssertNotEqual(a.losses, c.losses, "a different seed should change the run")
    }

    func testGradientAccumulationEqualsOneBatch() throws {
        // Same global batch in 1, 2 and 4 micro-batches: the same loss and the same update.
        let one = try run(config([("training.steps", "3")]))
        for mb in ["2", "4"] {
            let acc = try run(config([("training.steps", "3"), ("training.microbatches", mb)]))
            for (x, y) in zip(one.losses, acc.losses) { XCTAssertEqual(x, y, accuracy: 1e-6 * x, "microbatches \(mb)") }
            XCTAssertLessThan(relErr(acc.params, one.params), 1e-5, "parameters, microbatches \(mb)")
        }
    }

    func testLossFalls() throws {
        let r = try run(config([("training.steps", "40"), ("training.eval_every", "0")]))
        let head = r.losses.prefix(3).reduce(0, +) / 3, tail = r.losses.suffix(3).reduce(0, +) / 3
        XCTAssertLessThan(tail, head - 1.0, "loss \(head) → \(tail)")
    }

    func testTrainsFromLlmcTokenShards() throws {
        // `tessera prepare` output (llm.c .bin shards) trains like the text it came from.
        let dir = scratchDirectory("tessera-shards").path
        try? FileManager.default.removeItem(atPath: dir)
        _ = try Prepare.run(inputs: [Self.corpus], outDir: dir, valFraction: 0.1)
        let text = try run(config([("training.eval_every", "0")]))
        let bin = try run(config([("training.eval_every", "0"), ("data.train", dir + "/train_*.bin"),
                                  ("data.val", dir + "/val_*.bin"), ("data.format", "bin")]))
        XCTAssertEqual(bin.losses.count, text.losses.count)
        XCTAssertLessThan(bin.losses.last!, bin.losses.first!, "loss falls on shard data: \(bin.losses)")
        XCTAssertEqual(bin.losses.first!, log(256), accuracy: 0.3)
    }

    func testScheduleWarmupAndCosine() {
        let s = LRSchedule(peak: 1, minRatio: 0.1, warmup: 4, total: 14, decay: "cosine")
        XCTAssertEqual(s.lr(0), 0.25, accuracy: 1e-12)
        XCTAssertEqual(s.lr(3), 1, accuracy: 1e-12)
        XCTAssertEqual(s.lr(4), 1, accuracy: 1e-12)
        XCTAssertEqual(s.lr(13), 0.1, accuracy: 1e-12)
        XCTAssertEqual(s.lr(Int(8.5)), 0.55 + 0.45 * cos(Double.pi * 4 / 9), accuracy: 1e-12)
    }

    func testBadDataIsRejectedBeforeTraining() throws {
        // Bytes above the vocabulary: the error names the data and the key.
        XCTAssertThrowsError(try Trainer(config: config([("model.vocab_size", "100")]), runtime: nil, measurePeak: false)) { e in
            let m = "\(e)"
            XCTAssertTrue(m.contains("vocab"), m)
        }
    }
}
