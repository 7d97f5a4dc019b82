import Foundation
import XCTest

/// Packed documents under every parallel layout against the single-rank packed run (DataParallelTests.checkLayout:
/// real mpirun jobs; every step's loss over 10 steps and the validation losses within 1e-5 relative, step 1's
/// gradients within 1e-5 relative norm), for GPT-2 and Llama. The documents: the test text cut before every 'e'
/// (data.document_token = 101), so rows of 64 tokens hold 3 to 9 documents of 2 to 30 tokens, which cross ring
/// chunks, Ulysses slices and micro-batch rows. The cases are data: (ranks, name, overrides).
final class PackedLayoutTests: XCTestCase {
    static let packed = ["--data.packing", "documents", "--data.document_token", "101"]
    static let gpt = packed + ["--model.n_layer", "4", "--model.n_head", "4", "--model.block_size", "64",
                               "--training.seq_len", "64", "--training.batch_size", "4"]
    static let llama = gpt + ["--model.family", "llama", "--model.n_kv_head", "2", "--model.intermediate_size", "88",
                              "--model.tie_word_embeddings", "false"]
    static let pp = ["--parallelism.pp", "2", "--training.microbatches", "4"]

    static let cases: [(Int, String, [String], [String])] = [
        (2, "dp2", gpt, ["--parallelism.dp", "2"]),
        (2, "ring2", gpt, ["--parallelism.ring", "2"]),
        (2, "ulysses2", gpt, ["--parallelism.ulysses", "2"]),
        (4, "ring2-ulysses2", gpt, ["--parallelism.ring", "2", "--parallelism.ulysses", "2"]),
        (4, "dp2-ring2-zero1", gpt, ["--parallelism.dp", "2", "--parallelism.ring", "2", "--parallelism.zero", "1"]),
        (2, "pp2-1f1b", gpt, pp + ["--parallelism.pipeline_schedule", "1f1b"]),
        (2, "pp2-interleaved-full", gpt, pp + ["--parallelism.pipeline_schedule", "interleaved", "--parallelism.virtual_stages", "2",
                                               "--memory.policy", "full"]),
        (2, "llama-ring2", llama, ["--parallelism.ring", "2"]),
        (2, "llama-ulysses2", llama, ["--parallelism.ulysses", "2"]),
        (2, "llama-pp2-1f1b", llama, pp + ["--parallelism.pipeline_schedule", "1f1b"]),
    ]

    func testLayoutsReproduceTheSinglePackedRank() throws {
        for (np, name, shape, overrides) in Self.cases {
            let r = try DataParallelTests.checkLayout(np: np, "packed-" + name, shape: shape, overrides)
            XCTAssertTrue(r.output.contains("documents"), "\(name): the banner names the packing\n\(r.output)")
        }
    }
}
