import Foundation
import XCTest
@testable import TesseraKernels
@testable import TesseraModel
@testable import TesseraTraining

/// `model.init_from`: training starts from a Hugging Face GPT-2 or Llama directory. The oracle's directory (written by
/// transformers) loads into a model with the oracle's loss; a run's export, loaded by a new run on one rank and
/// on two pipeline stages (each stage reading only its tensors), evaluates exactly as the exporting run did
/// at that step; a directory that does not fit the configured model stops the job at start, naming the keys.
final class InitFromTests: XCTestCase {
    func testTheOraclesDirectoryGivesTheOraclesLoss() throws {
        Threads.configure(2)
        let dir = referenceDir.path
        let meta = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: referenceDir.appendingPathComponent("meta.json"))) as? [String: Any])
        let m = ModelConfig(vocabSize: meta["vocab_size"] as! Int, nLayer: meta["n_layer"] as! Int, nHead: meta["n_head"] as! Int,
                            dModel: meta["n_embd"] as! Int, blockSize: meta["seq_len"] as! Int)
        XCTAssertEqual(try HFImport.mismatches(dir: dir, model: m), [])
        var wrong = m
        wrong.nLayer += 1; wrong.dModel *= 2
        let problems = try HFImport.mismatches(dir: dir, model: wrong)
        XCTAssertEqual(problems.count, 2, "\(problems)")
        XCTAssertTrue(problems.contains { $0.contains("model.n_layer") && $0.contains("n_layer = \(m.nLayer)") }, "\(problems)")
        XCTAssertTrue(problems.contains { $0.contains("model.d_model") && $0.contains("n_embd = \(m.dModel)") }, "\(problems)")

        // A file without one of the model's tensors is refused at validation (every rank), naming it.
        let partial = scratchDirectory("init-partial").path
        try FileManager.default.createDirectory(atPath: partial, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: dir + "/config.json", toPath: partial + "/config.json")
        let full = try SafeTensorsFile(path: dir + "/model.safetensors")
        let kept = try full.entries.keys.sorted().filter { $0 != "transformer.ln_f.weight" }.map { ($0, full.entries[$0]!.shape, try full.floats($0)) }
        let buffers = kept.map { t -> UnsafeMutableBufferPointer<Float> in
            let b = UnsafeMutableBufferPointer<Float>.allocate(capacity: t.2.count)
            _ = b.initialize(from: t.2)
            return b
        }
        defer { buffers.forEach { $0.deallocate() } }
        try SafeTensorsFile.write(path: partial + "/model.safetensors",
                                  tensors: zip(kept, buffers).map { (name: $0.0, shape: $0.1, values: UnsafeBufferPointer($1)) },
                                  metadata: ["format": "pt"])
        XCTAssertEqual(try HFImport.mismatches(dir: partial, model: m), ["\(partial)/model.safetensors: no tensor 'transformer.ln_f.weight'"])

        let cfg = TransformerConfig(vocabSize: m.vocabSize, nLayer: m.nLayer, nHead: m.nHead, dModel: m.dModel, blockSize: m.blockSize)
        let model = GPT(config: cfg, seed: 99)
        try HFImport.load(dir: dir, into: model.params)
        let expected = try SafeTensorsFile(path: dir + "/expected.safetensors")
        let (b, t) = (meta["batch"] as! Int, m.blockSize)
        let acts = Activations(config: cfg, batch: b, tokens: t, training: false)
        let ids = try expected.floats("input_ids"), tg = try expected.floats("targets")
        for i in 0..<(b * t) { acts.tokenIds[i] = Int32(ids[i]); acts.targets[i] = Int32(tg[i]) }
        acts.setContiguousPositions()
        let loss = model.lossSum(acts) / Double(b * t), want = meta["loss"] as! Double
        XCTAssertEqual(loss, want, accuracy: 1e-5 * want)
    }

    func testARunsExportStartsANewRunOnAnyLayout() throws { try checkExportStartsANewRun(family: [], "init") }

    /// The same for Llama (grouped heads, untied head): the export is a LlamaForCausalLM directory.
    func testALlamaRunsExportStartsANewRunOnAnyLayout() throws {
        try checkExportStartsANewRun(family: LlamaLayoutTests.llama, "init-llama")
    }

    func checkExportStartsANewRun(family: [String], _ tag: String) throws {
        // The exporting run: 10 steps, a checkpoint and an evaluation at step 5.
        let ckpt = CheckpointJobTests.root("\(tag)-src")
        let a = try CheckpointJobTests.job(np: 1, "\(tag)-src", family + ["--checkpoint.every", "5", "--checkpoint.dir", ckpt])
        let hf = CheckpointJobTests.root("\(tag)-hf")
        let summary = try CheckpointCommands.export(arguments: ["--hf", hf, "--checkpoint", ckpt + "/step-000005"], log: { _ in })
        let config = try String(contentsOfFile: hf + "/config.json", encoding: .utf8)
        XCTAssertTrue(config.contains(family.isEmpty ? "\"GPT2LMHeadModel\"" : "\"LlamaForCausalLM\""), config)
        XCTAssertTrue(summary.contains(family.isEmpty ? "GPT-2" : "Llama"), summary)
        let want = try XCTUnwrap(a.vals[5])
        // New runs whose updates change nothing (lr 1e-30 is below every weight's float spacing): their step-5
        // evaluation is the exported weights' evaluation, on one rank and split over two pipeline stages.
        let frozen = ["--optimizer.lr", "1e-30", "--training.steps", "5"]
        for (np, name, layout) in [(1, "init-1", [String]()), (2, "init-pp2", ["--parallelism.pp", "2", "--training.microbatches", "2"])] {
            // The config key on one rank, the train command's flag on two.
            let from = np == 1 ? ["--model.init_from", hf] : ["--init-from", hf]
            let r = try CheckpointJobTests.job(np: np, "\(tag)-\(name)", family + frozen + layout + from)
            XCTAssertTrue(r.output.contains("weights: from the Hugging Face directory \(hf)"), r.output)
            let got = try XCTUnwrap(r.vals[5], r.output)
            XCTAssertEqual(got, want, accuracy: 1e-6 * want, "\(name): validation loss of the exported weights")
        }
        // Without init_from the same frozen run evaluates its seed's weights: not the exported ones.
        let fresh = try CheckpointJobTests.job(np: 1, "\(tag)-none", family + frozen)
        XCTAssertGreaterThan(abs(try XCTUnwrap(fresh.vals[5]) - want), 1e-3 * want)
        // A directory of another shape stops the job at start, naming both keys.
        let bad = try CheckpointJobTests.job(np: 1, "\(tag)-bad", family + frozen + ["--model.init_from", hf, "--model.n_layer", "3"],
                                             expectFailure: true)
        XCTAssertTrue(bad.output.contains("model.init_from") && bad.output.contains("model.n_layer = 3")
                      && bad.output.contains(family.isEmpty ? "n_layer = 2" : "num_hidden_layers = 2"), bad.output)
        // A directory of the other family is refused by its model_type.
        let other = try CheckpointJobTests.job(np: 1, "\(tag)-family", frozen + (family.isEmpty ? LlamaLayoutTests.llama : [])
                                               + ["--model.init_from", hf], expectFailure: true)
        XCTAssertTrue(other.output.contains("model_type is"), other.output)
    }

    /// The Llama oracle's directory (transformers' LlamaForCausalLM) fits a [model] section of its shape and gives
    /// the oracle's loss through the import the trainer uses.
    func testTheLlamaOraclesDirectoryGivesTheOraclesLoss() throws {
        Threads.configure(2)
        let dir = LlamaReferenceTests.dir.path
        var m = ModelConfig(vocabSize: 96, nLayer: 2, nHead: 4, dModel: 32, blockSize: 16)
        m.family = "llama"; m.nKVHead = 2; m.intermediateSize = 88; m.tieWordEmbeddings = false
        XCTAssertEqual(try HFImport.mismatches(dir: dir, model: m), [])
        var wrong = m
        wrong.nKVHead = 4; wrong.tieWordEmbeddings = true
        let problems = try HFImport.mismatches(dir: dir, model: wrong)
        XCTAssertTrue(problems.contains { $0.contains("model.n_kv_head = 4") && $0.contains("num_key_value_heads = 2") }, "\(problems)")
        XCTAssertTrue(problems.contains { $0.contains("model.tie_word_embeddings = true") }, "\(problems)")
        let model = Llama(config: m.transformer, seed: 99)
        try HFImport.load(dir: dir, into: model.params)
        let expected = try SafeTensorsFile(path: dir + "/expected.safetensors")
        let meta = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/meta.json"))) as? [String: Any])
        let (b, t) = (meta["batch"] as! Int, meta["seq_len"] as! Int)
        let acts = model.activations(batch: b, tokens: t, training: false)
        let ids = try expected.floats("input_ids"), tg = try expected.floats("targets")
        for i in 0..<(b * t) { acts.tokenIds[i] = Int32(ids[i]); acts.targets[i] = Int32(tg[i]) }
        acts.setContiguousPositions()
        let loss = model.lossSum(acts) / Double(b * t), want = meta["loss"] as! Double
        XCTAssertEqual(loss, want, accuracy: 1e-5 * want)
    }
}
