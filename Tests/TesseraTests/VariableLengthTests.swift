import Foundation
import TesseraCheckpoint
import XCTest

/// Variable-length documents (`data.max_tokens_per_rank`) under real mpirun jobs against the single rank that holds
/// every sequence whole (DataParallelTests.checkLayout: every step's loss over 10 steps and the validation losses
/// within 1e-5 relative, step 1's gradients within 1e-5 relative norm). The documents: the test text cut before
/// every '1' (data.document_token = 49), 2 to 364 tokens, split at seq_len = 64: each step draws 4 or 5 whole
/// sequences of up to 256 tokens (1024 in the 4-rank case). With 40 tokens per rank on 2 ranks (also with ZeRO-1 and
/// with selective recomputation, whose recompute buffer serves items of every length), sequences longer
/// than 40 run as rings of 2 (or as Ulysses over 2) and the rest whole on one rank (with ZeRO-1, planned with
/// weights fitted to measured times from step 3: every rank plans alike); with 20 on 4 ranks, rings of 4 and of 2 (on both
/// halves at once); the static rings of 2 (the size seq_len needs at 32 per rank) dealt over both halves of 4 ranks;
/// with a budget of 64 tokens on 4 ranks, most steps leave some rank without a sequence (it joins the
/// reduction at once). The static data-parallel plan with padding runs against its own single rank (same truncation).
/// A bf16 case against its bf16 single rank (losses within 1e-3). The cases are data.
final class VariableLengthTests: XCTestCase {
    static let documents = ["--data.packing", "documents", "--data.document_token", "49", "--model.block_size", "64",
                            "--training.seq_len", "64", "--training.batch_size", "4", "--data.max_tokens_per_rank", "64"]
    static let llama = documents + ["--model.family", "llama", "--model.n_kv_head", "1", "--model.intermediate_size", "88",
                                    "--model.tie_word_embeddings", "false"]

    static let cases: [(Int, String, [String], [String], (rings: Int, sizes: Set<Int>))] = [
        (2, "aware", documents, ["--parallelism.dp", "2", "--data.max_tokens_per_rank", "40"], (1, [2])),
        (2, "aware-zero1", documents, ["--parallelism.dp", "2", "--parallelism.zero", "1", "--data.max_tokens_per_rank", "40",
                                       "--data.cost_weights", "measured"], (1, [2])),
        (2, "aware-selective", documents, ["--parallelism.dp", "2", "--data.max_tokens_per_rank", "40", "--memory.policy", "selective"], (1, [2])),
        (2, "aware-ulysses", documents, ["--parallelism.dp", "2", "--data.max_tokens_per_rank", "40", "--data.group_attention", "ulysses"], (1, [2])),
        (2, "ring", documents, ["--parallelism.dp", "2", "--data.max_tokens_per_rank", "40", "--data.schedule", "ring"], (1, [2])),
        (4, "aware4", documents + ["--training.batch_size", "16"], ["--parallelism.dp", "4", "--data.max_tokens_per_rank", "20"], (1, [2, 4])),
        (4, "ring-dp4", documents + ["--training.batch_size", "16"], ["--parallelism.dp", "4", "--data.max_tokens_per_rank", "32",
                                                                       "--data.schedule", "ring_dp"], (1, [2])),
        (4, "aware4-idle", documents + ["--training.batch_size", "1"], ["--parallelism.dp", "4", "--data.max_tokens_per_rank", "20"], (0, [4])),
        (2, "dp-padded", documents + ["--data.max_tokens_per_rank", "40", "--data.schedule", "dp_padded"], ["--parallelism.dp", "2"], (0, [])),
        (2, "llama-aware", llama, ["--parallelism.dp", "2", "--data.max_tokens_per_rank", "40"], (1, [2])),
        // bf16 against the single rank in bf16 (MixedPrecisionLayoutTests' tolerances: losses 1e-3, gradients 1e-2), at
        // lr 3e-3: at the suite's 1e-2 this mix has a loss spike at step 7 that turns the layouts' 3e-5 weight
        // differences into other bf16 roundings of the weight copy (2.1e-3 there, steps 1-6 within 3.3e-5; at 3e-3 all
        // within 1e-5).
        (2, "bf16-aware", documents + ["--training.precision", "bf16", "--optimizer.lr", "3e-3"], ["--parallelism.dp", "2", "--data.max_tokens_per_rank", "40"], (1, [2])),
    ]

    func testPlannedStepsReproduceTheSingleRank() throws {
        for (np, name, shape, overrides, expect) in Self.cases {
            let bf16 = name.hasPrefix("bf16")
            let r = try DataParallelTests.checkLayout(np: np, "varlen-" + name, shape: shape, overrides,
                                                      tolerance: bf16 ? MixedPrecisionLayoutTests.lossTolerance : DataParallelTests.tolerance,
                                                      gradTolerance: bf16 ? MixedPrecisionLayoutTests.gradTolerance : DataParallelTests.tolerance)
            XCTAssertTrue(r.output.contains("variable-length documents"), "\(name): the banner\n\(r.output)")
            // The plans did split sequences over rings (the metrics' per-step plan summary).
            let metrics = DataParallelTests.dir.appendingPathComponent("varlen-\(name).jsonl").path
            var rings = 0, steps = 0, sizes = Set<Int>(), idle = 0
            for line in try String(contentsOfFile: metrics, encoding: .utf8).split(separator: "\n") {
                let obj = try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
                guard let d = obj["documents"] as? [String: Any] else { continue }
                steps += 1
                rings += d["ring_items"] as! Int
                sizes.formUnion(d["ring_sizes"] as! [Int])
                idle += d["idle_ranks"] as! Int
                // The pair's weight the plan used, in tokens (measured: the fit's once there is one).
                XCTAssertGreaterThan(d["pair_per_token"] as? Double ?? 0, 0, "\(name): the plan's weights")
                // One activation set of max_tokens_per_rank tokens whatever the item: the meter's peak = the prediction.
                let a = try XCTUnwrap(obj["activations"] as? [String: Any])
                XCTAssertEqual(a["peak_bytes"] as? [Int], a["predicted_bytes"] as? [Int], "\(name): activation memory")
                // One op per group size the schedule may use (none for data parallelism), each with buffers for
                // max_tokens_per_rank tokens: as the memory preflight predicts.
                let buffers = a["sequence_buffer_bytes"] as? [Int] ?? []
                XCTAssertEqual(buffers, a["predicted_sequence_buffer_bytes"] as? [Int], "\(name): sequence-parallel buffers")
                XCTAssertTrue(buffers.count == np && buffers.allSatisfy { expect.sizes.isEmpty ? $0 == 0 : $0 > 0 }, "\(name): buffers \(buffers)")
            }
            XCTAssertEqual(steps, 10, name)
            XCTAssertGreaterThanOrEqual(rings, expect.rings * 10, "\(name): sequences longer than a rank's tokens ran as rings")
            XCTAssertEqual(sizes, expect.sizes, "\(name): ring sizes")
            if name.hasSuffix("idle") { XCTAssertGreaterThan(idle, 0, "\(name): some step leaves a rank without a sequence") }
        }
    }

    /// A data-aware run on 2 ranks saves at step 5 (and samples text at the end, on rank 0 alone); the single rank
    /// resumes from it and trains steps 6–10 on the same documents (a step's batch is a function of the step alone)
    /// with the same losses (1e-5), and says so.
    func testResumeOnAnotherLayoutContinuesTheSameDocuments() throws {
        let dir = DataParallelTests.dir, cfg = try DataParallelTests.config()
        func train(np: Int, _ name: String, _ extra: [String]) throws -> (losses: [Int: Double], tokens: [Int: Int], output: String) {
            let metrics = dir.appendingPathComponent("varlen-\(name).jsonl").path
            let (status, out) = try runProcess(["mpirun", "-np", "\(np)", CommandTests.binary, "train", cfg, "--metrics.path", metrics]
                                               + Self.documents + extra, timeout: 300)
            guard status == 0 else { throw TestFailure("\(name): exit \(status)\n\(out)") }
            var losses: [Int: Double] = [:], tokens: [Int: Int] = [:]
            for line in try String(contentsOfFile: metrics, encoding: .utf8).split(separator: "\n") {
                let obj = try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
                if let loss = obj["loss"] as? Double { losses[obj["step"] as! Int] = loss }
                if let d = obj["documents"] as? [String: Any] { tokens[obj["step"] as! Int] = d["tokens"] as? Int }
            }
            return (losses, tokens, out)
        }
        let root = dir.appendingPathComponent("varlen-ckpt").path
        let whole = try train(np: 2, "saving", ["--parallelism.dp", "2", "--data.max_tokens_per_rank", "40",
                                                 "--checkpoint.every", "5", "--checkpoint.dir", root, "--sample.tokens", "16"])
        // Rank 0 samples alone after the last step (whose items may end in a ring): it must run its own attention.
        XCTAssertFalse(whole.output.contains("no sample"), whole.output)
        // The manifests count the tokens the plans trained so far (each step's own).
        for (path, upTo) in [(root + "/step-000005", 5), (root + "/step-000010", 10)] {
            let seen = try CheckpointReader(path: path).manifest.state["tokens_seen"]
            XCTAssertEqual(seen, "\((1...upTo).reduce(0) { $0 + (whole.tokens[$1] ?? -1_000_000) })", path)
        }
        let resumed = try train(np: 1, "resumed", ["--resume", root + "/step-000005", "--checkpoint.dir", root + "-r",
                                                   "--checkpoint.every", "5"])
        let resumedSeen = try CheckpointReader(path: root + "-r/step-000010").manifest.state["tokens_seen"]
        XCTAssertEqual(resumedSeen, try CheckpointReader(path: root + "/step-000010").manifest.state["tokens_seen"],
                       "the resumed run counts the steps before it too")
        XCTAssertTrue(resumed.output.contains("continuing from"), resumed.output)
        XCTAssertEqual(Set(resumed.losses.keys), Set(6...10), "the resumed run trains steps 6 to 10")
        for step in 6...10 {
            let a = try XCTUnwrap(resumed.losses[step]), b = try XCTUnwrap(whole.losses[step])
            XCTAssertLessThanOrEqual(abs(a - b) / abs(b), 1e-5, "step \(step): \(a) resumed vs \(b)")
        }
    }
}
