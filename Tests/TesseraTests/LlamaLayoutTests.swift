import Foundation
import XCTest

/// Llama under every parallel layout and memory policy against the single-rank Llama run of the same config,
/// with real `mpirun` jobs (the GPT-2 tests' harness: DataParallelTests.checkLayout). The model: 4 layers,
/// d 32, 4 query heads sharing 2 key/value heads (grouped-query attention), MLP 88, untied head unless the case
/// says tied, 64 tokens per sequence (ring 2 × Ulysses 2 needs a multiple of 8).
///
/// fp32: every step's loss (10 steps) and the validation losses within 1e-5 relative, step 1's gradients within
/// 1e-5 relative norm; memory policies also bit for bit against keep. bf16: MixedPrecisionLayoutTests' 1e-3 / 1e-2
/// (why those: see there). The cases are data: (ranks, name, overrides).
final class LlamaLayoutTests: XCTestCase {
    static let llama = ["--model.family", "llama", "--model.n_kv_head", "2", "--model.intermediate_size", "88",
                        "--model.tie_word_embeddings", "false"]
    static let shape = llama + ["--model.n_layer", "4", "--model.n_head", "4", "--model.block_size", "64",
                                "--training.seq_len", "64", "--training.batch_size", "4"]
    static let pp = ["--parallelism.pp", "2", "--training.microbatches", "4"]

    static let fp32Cases: [(Int, String, [String])] = [
        (2, "dp2", ["--parallelism.dp", "2"]),
        (2, "dp2-zero1", ["--parallelism.dp", "2", "--parallelism.zero", "1"]),
        (2, "ring2", ["--parallelism.ring", "2"]),
        (2, "ulysses2", ["--parallelism.ulysses", "2"]),
        (4, "ring2-ulysses2", ["--parallelism.ring", "2", "--parallelism.ulysses", "2"]),
        (4, "dp2-ring2-zero1", ["--parallelism.dp", "2", "--parallelism.ring", "2", "--parallelism.zero", "1"]),
        (2, "pp2-gpipe", pp + ["--parallelism.pipeline_schedule", "gpipe"]),
        (2, "pp2-1f1b", pp + ["--parallelism.pipeline_schedule", "1f1b"]),
        (2, "pp2-interleaved", pp + ["--parallelism.pipeline_schedule", "interleaved", "--parallelism.virtual_stages", "2"]),
        (4, "pp2-ulysses2", pp + ["--parallelism.ulysses", "2"]),
    ]

    func testLayouts() throws {
        for (np, name, overrides) in Self.fp32Cases {
            let r = try DataParallelTests.checkLayout(np: np, "llama-" + name, shape: Self.shape, overrides)
            XCTAssertTrue(r.output.contains("Llama 4 layers, d 32, 4 heads (2 key/value)"), "\(name): banner\n\(r.output)")
        }
    }

    /// A tied head under pipeline parallelism: the first and last stage each hold model.embed_tokens.weight and sum
    /// its gradient every step (as GPT-2's wte).
    func testTiedHeadUnderPipelines() throws {
        let tied = Self.shape + ["--model.tie_word_embeddings", "true"]
        for (name, schedule) in [("1f1b", ["--parallelism.pipeline_schedule", "1f1b"]),
                                 ("interleaved", ["--parallelism.pipeline_schedule", "interleaved", "--parallelism.virtual_stages", "2"])] {
            let r = try DataParallelTests.checkLayout(np: 2, "llama-tied-" + name, shape: tied, Self.pp + schedule)
            XCTAssertTrue(r.output.contains("tied head"), r.output)
            XCTAssertNil(r.grads["lm_head.weight"], "a tied model has no lm_head")
        }
        // Tying changes the model: the tied run is not the untied one.
        let untied = try DataParallelTests.baseline(shape: Self.shape, name: "single-llama")
        let t = try DataParallelTests.baseline(shape: tied, name: "single-llama-tied")
        XCTAssertNotEqual(untied.losses.last, t.losses.last)
    }

    /// Every memory policy (and a per-layer mix) under ring 2 and under pp 2: the single-rank losses, keep's
    /// gradients bit for bit, and each rank's measured activation peak equal to the prediction.
    func testMemoryPolicies() throws {
        let offload = DataParallelTests.dir.appendingPathComponent("llama-offload").path
        for (np, layout, overrides) in [(2, "ring2", ["--parallelism.ring", "2"]), (2, "pp2", Self.pp)] {
            let keep = try DataParallelTests.checkLayout(np: np, "llama-\(layout)-keep", shape: Self.shape, overrides)
            for (name, memory) in [("full", ["--memory.policy", "full"]), ("selective", ["--memory.policy", "selective"]),
                                   ("offload", ["--memory.policy", "offload"]),
                                   ("mixed", ["--memory.layer_policy", "full,offload,selective,keep"])] {
                let job = "llama-\(layout)-\(name)"
                let r = try DataParallelTests.checkLayout(np: np, job, shape: Self.shape,
                                                          overrides + memory + ["--memory.offload_dir", offload])
                XCTAssertEqual(r.losses, keep.losses, "\(job): losses differ from keep")
                for (k, g) in keep.grads { XCTAssertEqual(r.grads[k], g, "\(job): gradient of \(k) differs from keep's") }
                let acts = try MixedPrecisionLayoutTests.activationRecords(job, prefix: "")
                let last = try XCTUnwrap(acts.last, "\(job): no activation record")
                XCTAssertEqual(last["peak_bytes"] as? [Int], last["predicted_bytes"] as? [Int], "\(job): measured vs predicted peaks")
                XCTAssertEqual(last["sequence_buffer_bytes"] as? [Int], last["predicted_sequence_buffer_bytes"] as? [Int],
                               "\(job): sequence-parallel buffers (grouped key/value heads) vs predicted")
            }
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: offload), [], "offload directory not empty")
    }

    /// bf16 Llama layouts against the single-rank bf16 Llama run.
    func testBF16Layouts() throws {
        let bf16 = Self.shape + MixedPrecisionLayoutTests.bf16
        for (np, name, overrides) in [(2, "dp2-zero1", ["--parallelism.dp", "2", "--parallelism.zero", "1"]),
                                      (2, "ring2", ["--parallelism.ring", "2"]), (2, "ulysses2", ["--parallelism.ulysses", "2"]),
                                      (2, "pp2-1f1b", Self.pp + ["--parallelism.pipeline_schedule", "1f1b"])] {
            let r = try DataParallelTests.checkLayout(np: np, "llama-bf16-" + name, shape: bf16, overrides,
                                                      tolerance: MixedPrecisionLayoutTests.lossTolerance,
                                                      gradTolerance: MixedPrecisionLayoutTests.gradTolerance)
            XCTAssertTrue(r.output.contains("precision: bf16"), r.output)
        }
        // And bf16 really rounds: its losses are not the fp32 ones.
        let fp32 = try DataParallelTests.baseline(shape: Self.shape + ["--optimizer.lr", "3e-3"], name: "single-llama-lr3e-3")
        let b = try XCTUnwrap(DataParallelTests.baselines[bf16])
        XCTAssertNotEqual(fp32.losses[0], b.losses[0])
    }

    /// Ulysses splits the key/value heads across its group: 2 key/value heads over 4 Ulysses ranks is a config
    /// error before any work, naming both keys.
    func testUlyssesNeedsKeyValueHeadsItCanSplit() throws {
        let cfg = try DataParallelTests.config()
        let (status, out) = try runProcess(["mpirun", "-np", "4", CommandTests.binary, "train", cfg] + Self.shape
                                           + ["--parallelism.ulysses", "4"])
        XCTAssertNotEqual(status, 0, out)
        XCTAssertTrue(out.contains("model.n_kv_head = 2 is not divisible by parallelism.ulysses = 4"), out)
        XCTAssertFalse(out.contains("step 1/"), out)
    }

    /// Lazy checkpoints of a Llama run resume on other layouts and continue the uninterrupted single-rank run.
    func testResumeOnAnotherLayout() throws {
        let base = try DataParallelTests.baseline(shape: Self.shape, name: "single-llama")
        let root = DataParallelTests.dir.appendingPathComponent("llama-ckpt").path
        _ = try DataParallelTests.run(np: 2, "llama-w-pp2", Self.shape + Self.pp + ["--checkpoint.every", "4", "--checkpoint.mode", "lazy",
                                                                                     "--checkpoint.dir", root])
        for (np, name, layout) in [(2, "llama-r-ring2", ["--parallelism.ring", "2"]),
                                   (2, "llama-r-dp2z", ["--parallelism.dp", "2", "--parallelism.zero", "1"]),
                                   (1, "llama-r-single", [String]())] {
            let metrics = DataParallelTests.dir.appendingPathComponent("\(name).jsonl").path
            let (status, out) = try runProcess(["mpirun", "-np", "\(np)", CommandTests.binary, "train", try DataParallelTests.config(),
                                                "--metrics.path", metrics, "--resume", root + "/step-000004",
                                                "--checkpoint.dir", root + "-" + name] + Self.shape + layout, timeout: 300)
            XCTAssertEqual(status, 0, out)
            XCTAssertTrue(out.contains("continuing from \(root)/step-000004"), out)
            let losses = try String(contentsOfFile: metrics, encoding: .utf8).split(separator: "\n").compactMap {
                (try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])?["loss"] as? Double
            }
            XCTAssertEqual(losses.count, 6, "\(name): steps 5–10\n\(out)")
            for (i, (a, b)) in zip(losses, base.losses.dropFirst(4)).enumerated() {
                XCTAssertLessThanOrEqual(abs(a - b) / b, DataParallelTests.tolerance, "\(name): step \(i + 5) loss \(a) vs \(b)")
            }
        }
        // A GPT-2 config does not resume the Llama checkpoint: the job stops naming the family and the tensors.
        let (status, out) = try runProcess([CommandTests.binary, "train", try DataParallelTests.config(), "--resume", root + "/step-000004",
                                            "--checkpoint.dir", root + "-gpt2"])
        XCTAssertNotEqual(status, 0, out)
        XCTAssertTrue(out.contains("does not fit this config's model (model.family = \"gpt2\"") && out.contains("no tensor 'transformer.wte.weight'"), out)
        XCTAssertFalse(out.contains("step 5/"), out)
    }
}
