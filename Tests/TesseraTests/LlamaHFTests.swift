import Foundation
import XCTest
@testable import TesseraKernels
@testable import TesseraModel
@testable import TesseraTraining

/// Llama and Hugging Face both ways: the oracle's directory (written by transformers) loads into a Tessera Llama
/// that computes the oracle's logits; a Tessera Llama written out loads in transformers' LlamaForCausalLM
/// (untied and tied) with logits within 1e-4; wrong directories are refused with the file and what was expected.
final class LlamaHFTests: XCTestCase {
    func logits(_ model: Llama, ids: [Int32]) -> [Float] { tesseraLogits(model, ids: ids) }

    func testTheOraclesDirectoryLoadsAndGivesItsLogits() throws {
        Threads.configure(2)
        let dir = LlamaReferenceTests.dir.path
        let model = try LlamaHF.load(dir: dir)
        let c = model.config
        XCTAssertEqual([c.vocabSize, c.nLayer, c.nHead, c.nKVHead, c.dModel, c.intermediate, c.blockSize], [96, 2, 4, 2, 32, 88, 16])
        XCTAssertEqual(c.ropeTheta, 10_000); XCTAssertEqual(c.rmsEps, 1e-5); XCTAssertFalse(c.tied)
        let expected = try SafeTensorsFile(path: dir + "/expected.safetensors")
        let ids = try expected.floats("input_ids").prefix(16).map { Int32($0) }
        let want = try expected.floats("logits").prefix(16 * 96)
        XCTAssertLessThan(relErr(logits(model, ids: ids), Array(want)), 1e-5)
    }

    func testTransformersLoadsTheExportWithTheSameLogits() throws {
        guard let python = try huggingFacePython("LlamaHFTests", skipping: "the Hugging Face load") else { return }
        Threads.configure(2)
        let root = scratchDirectory("llama-hf")
        for tied in [false, true] {
            let cfg = TransformerConfig.llama(vocabSize: 120, nLayer: 2, nHead: 4, nKVHead: 2, dModel: 32, intermediate: 72, blockSize: 24,
                                  rmsEps: 1e-6, ropeTheta: 500, tied: tied)
            let model = Llama(config: cfg, seed: 11)
            // Norm weights away from one, so a wrong eps or a skipped norm weight would show.
            for s in model.params.specs where s.name.hasSuffix("norm.weight") {
                let p = model.params[s.name]
                for i in 0..<s.count { p[i] = 1 + 0.1 * Float(i % 7) }
            }
            let dir = root.appendingPathComponent(tied ? "tied" : "untied").path
            try LlamaHF.write(model, to: dir)
            let ids = (0..<20).map { Int32(($0 * 37 + 5) % 120) }
            let mine = logits(model, ids: ids)
            guard let json = try huggingFaceLogits(python: python, dir: dir, ids: ids, tied: tied) else { continue }
            XCTAssertEqual(json["architecture"] as? String, "LlamaForCausalLM")
            let theirs = try XCTUnwrap(json["logits"] as? [[Double]]).flatMap { $0.map(Float.init) }
            let e = relErr(mine, theirs)
            print("llama export (tied \(tied)): logits relative difference \(e)")
            XCTAssertLessThan(e, 1e-4, "tied \(tied)")
            // And back: the directory loads into an equal model.
            let back = try LlamaHF.load(dir: dir)
            XCTAssertEqual(back.config, cfg)
            XCTAssertEqual(copyArray(back.params.storage.ptr, back.params.count), copyArray(model.params.storage.ptr, model.params.count))
        }
    }

    func testBadDirectoriesAreRefusedClearly() throws {
        let root = scratchDirectory("llama-hf-bad")
        let model = Llama(config: .llama(vocabSize: 30, nLayer: 1, nHead: 2, nKVHead: 1, dModel: 8, intermediate: 12, blockSize: 8), seed: 1)
        let dir = root.appendingPathComponent("m").path
        try LlamaHF.write(model, to: dir)
        func expectError(_ contains: [String], file: StaticString = #filePath, line: UInt = #line) {
            XCTAssertThrowsError(try LlamaHF.load(dir: dir), file: file, line: line) { e in
                for s in contains { XCTAssertTrue("\(e)".contains(s), "\(e) lacks \(s)", file: file, line: line) }
            }
        }
        let config = try String(contentsOfFile: dir + "/config.json", encoding: .utf8)
        func withConfig(_ edit: (String) -> String, _ contains: [String], line: UInt = #line) throws {
            try edit(config).write(toFile: dir + "/config.json", atomically: true, encoding: .utf8)
            expectError([dir + "/config.json"] + contains, line: line)
            try config.write(toFile: dir + "/config.json", atomically: true, encoding: .utf8)
        }
        // Tensors that are not parameters but older files store (rotary tables) load; an unknown one does not.
        let original = try Data(contentsOf: URL(fileURLWithPath: dir + "/model.safetensors"))
        func withExtra(_ name: String) throws {
            let p = model.params, extra = [Float](repeating: 1, count: 2)
            try extra.withUnsafeBufferPointer { e in
                try SafeTensorsFile.write(path: dir + "/model.safetensors",
                                          tensors: p.specs.enumerated().map { i, s in
                                              (name: s.name, shape: s.shape, values: UnsafeBufferPointer(start: p.pointer(i), count: s.count))
                                          } + [(name: name, shape: [2], values: e)], metadata: ["format": "pt"])
            }
        }
        try withExtra("model.layers.0.self_attn.rotary_emb.inv_freq")
        XCTAssertNoThrow(try LlamaHF.load(dir: dir))
        try withExtra("model.layers.0.mystery.weight")
        expectError([dir + "/model.safetensors", "model.layers.0.mystery.weight", "not a parameter"])
        try original.write(to: URL(fileURLWithPath: dir + "/model.safetensors"))
        try withConfig({ $0.replacingOccurrences(of: "\"llama\"", with: "\"gpt2\"") }, ["model_type", "expected \"llama\""])
        try withConfig({ $0.replacingOccurrences(of: "\"num_key_value_heads\": 1", with: "\"num_key_value_heads\": 3") }, ["key/value heads"])
        try withConfig({ $0.replacingOccurrences(of: "\"silu\"", with: "\"gelu\"") }, ["hidden_act"])
        try withConfig({ $0.replacingOccurrences(of: "\"mlp_bias\": false", with: "\"mlp_bias\": true") }, ["mlp_bias"])
        // The config and the weights disagree: a shape the config does not give.
        try config.replacingOccurrences(of: "\"intermediate_size\": 12", with: "\"intermediate_size\": 16")
            .write(toFile: dir + "/config.json", atomically: true, encoding: .utf8)
        expectError([dir + "/model.safetensors", "model.layers.0.mlp.gate_proj.weight", "[12, 8]", "[16, 8]"])
    }
}
