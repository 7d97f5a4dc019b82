import Foundation
import XCTest
@testable import TesseraCheckpoint
@testable import TesseraKernels
@testable import TesseraModel
@testable import TesseraTraining

/// A model out of a checkpoint (`CheckpointModel`), its Hugging Face export and `tessera generate`:
/// parameters read back bit-identical from shards split over two ranks; a checkpoint root resolves to its
/// newest valid checkpoint; errors name the path and what was expected; the export holds the parameters
/// exactly and transformers' GPT2LMHeadModel loads it and computes Tessera's logits; the commands run.
final class ExportTests: XCTestCase {
    static var binary: String {
        URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
            .appendingPathComponent("tessera").path
    }

    override func setUp() { Threads.configure(1) }

    func tempDir(_ name: String) -> String {
        let d = NSTemporaryDirectory() + "tessera-export-\(name)-\(getpid())-\(UInt64.random(in: 0..<UInt64.max))"
        try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: d) }
        return d
    }

    func makeConfig(vocab: Int = 256, layers: Int = 2, dModel: Int = 32) -> TesseraConfig {
        var c = TesseraConfig()
        c.model = ModelConfig(vocabSize: vocab, nLayer: layers, nHead: 4, dModel: dModel, blockSize: 16)
        c.training.seqLen = 16
        c.training.batchSize = 2
        c.training.threads = 1
        c.training.seed = 5
        c.data.train = "never-read.txt"
        c.sample = SampleConfig(tokens: 24, prompt: "The ", temperature: 0.9, topK: 40)
        c.checkpoint = CheckpointConfig(dir: "never-written", every: 5)  // as a run that saves checkpoints has
        return c
    }

    /// A model whose every parameter (LayerNorm weights and biases too) is its initialisation plus uniform
    /// noise in [-scale, scale).
    func makeModel(_ c: TesseraConfig, seed: UInt64 = 11, scale: Float = 0.05) -> GPT {
        let m = GPT(config: c.transformer, seed: seed)
        for (i, s) in m.params.specs.enumerated() {
            let noise = randomFloats(s.count, seed: seed &* 1000 &+ UInt64(i), scale: scale)
            let p = m.params.pointer(i)
            for j in 0..<s.count { p[j] += noise[j] }
        }
        return m
    }

    /// Saves `model` as step `step` under `root` the way two ranks would: rank 0 holds wte's first 1000
    /// elements (not a row boundary) and the first half of the other tensors, rank 1 the rest of wte, the
    /// other half and an exp_avg of every tensor (values unlike the parameters, which must not be read).
    /// The manifest's config is `manifestConfig`, else the rendered `config`.
    func save(_ model: GPT, _ config: TesseraConfig, root: String, step: Int, manifestConfig: String? = nil) throws {
        let p = model.params, specs = p.specs
        let moments = p.sameLayout()
        for i in 0..<p.count { moments.storage.ptr[i] = -2 * p.storage.ptr[i] + 1 }
        func piece(_ set: ParameterSet, _ i: Int, kind: String = "param", _ r: Range<Int>? = nil) -> CheckpointStore.Piece {
            let r = r ?? 0..<specs[i].count
            return .init(tensor: specs[i].name, kind: kind, start: r.lowerBound,
                         values: UnsafeBufferPointer(start: set.pointer(i) + r.lowerBound, count: r.count))
        }
        let half = specs.count / 2, wte = specs[0].count
        XCTAssertEqual(specs[0].name, "transformer.wte.weight")
        var rank0 = [piece(p, 0, 0..<1000)], rank1 = [piece(p, 0, 1000..<wte)]
        rank0 += (1..<half).map { piece(p, $0) }
        rank1 += (half..<specs.count).map { piece(p, $0) } + specs.indices.map { piece(moments, $0, kind: "exp_avg") }
        let shards = try CheckpointStore.writeShards(root: root, step: step, rank: 0, pieces: rank0)
            + CheckpointStore.writeShards(root: root, step: step, rank: 1, pieces: rank1)
        let manifest = CheckpointManifest(step: step, tensors: specs.map { .init(name: $0.name, shape: $0.shape) }, shards: shards,
                                          mesh: ["dp": 2], config: manifestConfig ?? ConfigLoader.render(config), state: [:])
        try CheckpointStore.commit(root: root, manifest: manifest, keep: 5)
    }

    func floats(_ p: UnsafePointer<Float>, _ n: Int) -> [UInt32] { (0..<n).map { p[$0].bitPattern } }

    func assertSameParameters(_ a: Transformer, _ b: Transformer, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.params.specs, b.params.specs, file: file, line: line)
        for (i, s) in a.params.specs.enumerated() {
            XCTAssertEqual(floats(a.params.pointer(i), s.count), floats(b.params.pointer(i), s.count), s.name, file: file, line: line)
        }
    }

    func message<T>(_ body: () throws -> T) -> String {
        do { _ = try body(); return "no error" } catch { return "\(error)" }
    }

    // MARK: loading

    func testLoadsBitIdenticalParametersFromACheckpointOrItsRoot() throws {
        let root = tempDir("load"), config = makeConfig(), model = makeModel(config)
        try save(model, config, root: root, step: 3)
        for path in [root, root + "/step-000003"] {
            let loaded = try CheckpointModel(path: path)
            XCTAssertEqual(loaded.path, root + "/step-000003")
            XCTAssertEqual(loaded.manifest.step, 3)
            XCTAssertEqual(loaded.config, config)
            XCTAssertEqual(loaded.model.config, config.transformer)
            XCTAssertTrue(loaded.model.stage.hasHead)
            assertSameParameters(loaded.model, model)
        }
    }

    func testRootSkipsANewerCheckpointThatFailsItsChecksum() throws {
        let root = tempDir("skip"), config = makeConfig(), model = makeModel(config)
        try save(model, config, root: root, step: 3)
        try save(makeModel(config, seed: 12), config, root: root, step: 7)
        let file = root + "/step-000007/rank-1.safetensors"
        let shard = try XCTUnwrap(CheckpointReader(path: root + "/step-000007").manifest.shards.first { $0.rank == 1 && $0.kind == "param" })
        var bytes = try Data(contentsOf: URL(fileURLWithPath: file))
        bytes[shard.byteOffset + 4 * 5 + 1] ^= 0x40
        try bytes.write(to: URL(fileURLWithPath: file))

        var notes: [String] = []
        let loaded = try CheckpointModel(path: root) { notes.append($0) }
        XCTAssertEqual(loaded.manifest.step, 3)
        assertSameParameters(loaded.model, model)
        XCTAssertEqual(notes.count, 1, "\(notes)")
        XCTAssertTrue(notes.first?.contains(file) == true && notes.first?.contains("checksum") == true, "\(notes)")
        // Named directly, the corrupt checkpoint is an error naming the file and the tensor.
        let m = message { try CheckpointModel(path: root + "/step-000007") }
        XCTAssertTrue(m.contains(file) && m.contains("'\(shard.tensor)'") && m.contains("checksum"), m)
        // A root whose every checkpoint is corrupt.
        try FileManager.default.removeItem(atPath: root + "/step-000003")
        let all = message { try CheckpointModel(path: root) }
        XCTAssertTrue(all.contains(root) && all.contains("none of its 1 checkpoint(s) verifies") && all.contains(file), all)
    }

    func testErrorsNameThePathAndWhatWasExpected() throws {
        let root = tempDir("errors"), config = makeConfig(), model = makeModel(config)
        var m = message { try CheckpointModel(path: root + "/missing") }
        XCTAssertTrue(m.contains(root + "/missing") && m.contains("no such file") && m.contains("manifest.json"), m)
        m = message { try CheckpointModel(path: root) }
        XCTAssertTrue(m.contains(root) && m.contains("no manifest.json and no step-NNNNNN/"), m)
        XCTAssertTrue(FileManager.default.createFile(atPath: root + "/file", contents: Data("x".utf8)))
        m = message { try CheckpointModel(path: root + "/file") }
        XCTAssertTrue(m.contains(root + "/file") && m.contains("is a file"), m)

        // The manifest's config describes another model than its tensors.
        try save(model, config, root: root + "/a", step: 1, manifestConfig: ConfigLoader.render(makeConfig(layers: 3)))
        m = message { try CheckpointModel(path: root + "/a") }
        XCTAssertTrue(m.contains(root + "/a/step-000001/manifest.json") && m.contains("n_layer = 3")
                      && m.contains("no tensor 'transformer.h.2.ln_1.weight'"), m)
        try save(model, config, root: root + "/b", step: 1, manifestConfig: ConfigLoader.render(makeConfig(dModel: 64)))
        m = message { try CheckpointModel(path: root + "/b/step-000001") }
        XCTAssertTrue(m.contains(root + "/b/step-000001/manifest.json")
                      && m.contains("tensor 'transformer.wte.weight' has shape [256, 32] in the manifest, the config's model gives [256, 64]"), m)
        try save(model, config, root: root + "/c", step: 1, manifestConfig: ConfigLoader.render(makeConfig(layers: 1)))
        m = message { try CheckpointModel(path: root + "/c") }
        XCTAssertTrue(m.contains("the manifest lists tensor 'transformer.h.1.ln_1.weight', which the config's model does not have"), m)
        // A config that does not load.
        try save(model, config, root: root + "/d", step: 1, manifestConfig: "[model]\nn_layr = 2\n")
        m = message { try CheckpointModel(path: root + "/d") }
        XCTAssertTrue(m.contains(root + "/d/step-000001/manifest.json") && m.contains("its config does not load") && m.contains("n_layr"), m)
        // A missing rank file.
        try save(model, config, root: root + "/e", step: 1)
        try FileManager.default.removeItem(atPath: root + "/e/step-000001/rank-0.safetensors")
        m = message { try CheckpointModel(path: root + "/e/step-000001") }
        XCTAssertTrue(m.contains(root + "/e/step-000001/rank-0.safetensors") && m.contains("cannot open"), m)
    }

    // MARK: export

    func testExportHoldsTheParametersUnderHuggingFaceNames() throws {
        let root = tempDir("export"), config = makeConfig(), model = makeModel(config)
        try save(model, config, root: root, step: 3)
        let dir = root + "/hf"
        let summary = try CheckpointCommands.export(arguments: ["--hf", dir, "--checkpoint", root], log: { _ in })
        XCTAssertTrue(summary.contains(dir + "/config.json and model.safetensors") && summary.contains("from step 3"), summary)

        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/config.json"))) as? [String: Any])
        XCTAssertEqual(json["model_type"] as? String, "gpt2")
        XCTAssertEqual(json["architectures"] as? [String], ["GPT2LMHeadModel"])
        XCTAssertEqual(json["vocab_size"] as? Int, 256)
        XCTAssertEqual(json["n_positions"] as? Int, 16)
        XCTAssertEqual(json["n_embd"] as? Int, 32)
        XCTAssertEqual(json["n_layer"] as? Int, 2)
        XCTAssertEqual(json["n_head"] as? Int, 4)
        XCTAssertTrue(json["n_inner"] is NSNull)
        XCTAssertEqual(json["activation_function"] as? String, "gelu_new")
        XCTAssertEqual(json["layer_norm_epsilon"] as? Double, 1e-5)
        XCTAssertEqual(json["tie_word_embeddings"] as? Bool, true)
        for k in ["attn_pdrop", "embd_pdrop", "resid_pdrop"] { XCTAssertEqual(json[k] as? Double, 0, k) }

        let file = try SafeTensorsFile(path: dir + "/model.safetensors")
        XCTAssertEqual(file.metadata, ["format": "pt"])
        XCTAssertEqual(Set(file.entries.keys), Set(model.params.specs.map(\.name)))
        for (i, s) in model.params.specs.enumerated() {
            XCTAssertEqual(file.entries[s.name]?.dtype, "F32")
            XCTAssertEqual(file.entries[s.name]?.shape, s.shape, s.name)
            XCTAssertEqual(try file.floats(s.name).map(\.bitPattern), floats(model.params.pointer(i), s.count), s.name)
        }
    }

    /// The oracle's weights (shared/reference/gpt2-tiny, written by transformers) exported again: the same
    /// tensors, byte for byte, and a config.json that agrees with the oracle's on every key it writes.
    func testExportOfTheOracleReproducesItsWeightsAndConfig() throws {
        let ref = referenceDir.path
        let weights = try SafeTensorsFile(path: ref + "/model.safetensors")
        let refConfig = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: referenceDir.appendingPathComponent("config.json"))) as? [String: Any])
        let cfg = TransformerConfig(vocabSize: try XCTUnwrap(refConfig["vocab_size"] as? Int), nLayer: try XCTUnwrap(refConfig["n_layer"] as? Int),
                            nHead: try XCTUnwrap(refConfig["n_head"] as? Int), dModel: try XCTUnwrap(refConfig["n_embd"] as? Int),
                            blockSize: try XCTUnwrap(refConfig["n_positions"] as? Int))
        let model = GPT(config: cfg, seed: 0)
        for (i, s) in model.params.specs.enumerated() {
            let w = try weights.floats(s.name)
            XCTAssertEqual(w.count, s.count, s.name)
            model.params.pointer(i).update(from: w, count: s.count)
        }
        let dir = tempDir("oracle")
        try HFExport.write(model: model, to: dir)
        let out = try SafeTensorsFile(path: dir + "/model.safetensors")
        XCTAssertEqual(Set(out.entries.keys), Set(weights.entries.keys))
        XCTAssertEqual(out.metadata, weights.metadata)
        for (name, e) in weights.entries {
            XCTAssertEqual(out.entries[name]?.dtype, e.dtype, name)
            XCTAssertEqual(out.entries[name]?.shape, e.shape, name)
            XCTAssertEqual(try out.floats(name).map(\.bitPattern), try weights.floats(name).map(\.bitPattern), name)
        }
        let mine = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/config.json"))) as? [String: Any])
        for (k, v) in mine {
            let theirs = try XCTUnwrap(refConfig[k], "the oracle's config.json has no '\(k)'")
            XCTAssertEqual(v as? NSObject, theirs as? NSObject, "config.json '\(k)': \(v) here, \(theirs) in the oracle's")
        }
    }

    // MARK: commands

    func testExportAndGenerateRunAsCommands() throws {
        let root = tempDir("cmd"), config = makeConfig(), model = makeModel(config)
        try save(model, config, root: root, step: 3)
        let dir = root + "/hf"
        var (status, out) = try runProcess([Self.binary, "export", "--hf", dir, "--checkpoint", root])
        XCTAssertEqual(status, 0, out)
        XCTAssertTrue(out.contains("checkpoint \(root)/step-000003 (step 3)") && out.contains("wrote \(dir)/config.json"), out)
        let file = try SafeTensorsFile(path: dir + "/model.safetensors")
        XCTAssertEqual(try file.floats("transformer.h.1.mlp.c_fc.bias").map(\.bitPattern),
                       floats(model.params["transformer.h.1.mlp.c_fc.bias"], 128))

        // Explicit options; the same text as Sampler in process (one thread in both).
        let expected = "ab" + Sampler.text(Sampler(model: model).generate(prompt: [97, 98], count: 12, temperature: 0.7, topK: 5, seed: 3))
        (status, out) = try runProcess([Self.binary, "generate", "--checkpoint", root, "--prompt", "ab", "--tokens", "12",
                                        "--temperature=0.7", "--top-k", "5", "--seed", "3"])
        XCTAssertEqual(status, 0, out)
        XCTAssertTrue(out.contains(expected), "expected \(expected.debugDescription) in:\n\(out)")
        // Defaults from the checkpoint config's [sample] section and training.seed.
        let s = config.sample
        let byDefault = s.prompt + Sampler.text(Sampler(model: model).generate(
            prompt: Array(s.prompt.utf8).map { Int32($0) }, count: s.tokens, temperature: s.temperature, topK: s.topK, seed: 5))
        (status, out) = try runProcess([Self.binary, "generate", "--checkpoint", root + "/step-000003"])
        XCTAssertEqual(status, 0, out)
        XCTAssertTrue(out.contains(byDefault), "expected \(byDefault.debugDescription) in:\n\(out)")

        // Usage errors and a bad path: non-zero, naming what is wrong.
        (status, out) = try runProcess([Self.binary, "generate", "--prompt", "x"])
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(out.contains("generate needs --checkpoint PATH"), out)
        (status, out) = try runProcess([Self.binary, "export", "--hf", dir, "--checkpoint", root, "--bogus", "1"])
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(out.contains("unexpected argument '--bogus'"), out)
        (status, out) = try runProcess([Self.binary, "generate", "--checkpoint", root, "--tokens", "0"])
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(out.contains("--tokens expects an integer >= 1, got '0'"), out)
        (status, out) = try runProcess([Self.binary, "generate", "--checkpoint", root + "/nowhere"])
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(out.contains(root + "/nowhere") && out.contains("no such file"), out)
    }

    /// A vocabulary other than bytes prints token ids; a prompt byte outside the vocabulary is an error.
    func testGenerateWithATokenizerVocabularyPrintsIds() throws {
        let root = tempDir("ids"), config = makeConfig(vocab: 64), model = makeModel(config)
        try save(model, config, root: root, step: 1)
        let m = message { try CheckpointCommands.generate(arguments: ["--checkpoint", root], log: { _ in }) }
        XCTAssertTrue(m.contains("sample.prompt of the checkpoint's config contains byte 84, outside the model's vocab_size 64"), m)
        let bad = message { try CheckpointCommands.generate(arguments: ["--checkpoint", root, "--prompt", "A"], log: { _ in }) }
        XCTAssertTrue(bad.contains("--prompt contains byte 65, outside the model's vocab_size 64"), bad)
        let out = try CheckpointCommands.generate(arguments: ["--checkpoint", root, "--prompt", "!", "--tokens", "9"], log: { _ in })
        let ids = Sampler(model: model).generate(prompt: [33], count: 9, temperature: 0.9, topK: 40, seed: 5)
        XCTAssertEqual(out, ids.map(String.init).joined(separator: " "))
    }

    // MARK: Hugging Face

    /// transformers' GPT2LMHeadModel.from_pretrained loads the export with no missing (but the tied
    /// lm_head), unexpected or mismatched weight, and its float32 logits for 16 fixed tokens match Tessera's:
    /// max |Δ| <= 1e-4 · max(1, max |logit|). The weights are large (noise in ±0.5), so that pre-activations
    /// and attention scores are O(1) and a wrong activation (exact "gelu" instead of "gelu_new") or a wrong
    /// LayerNorm eps moves the logits by far more than the tolerance. Needs a venv with torch and transformers
    /// (scripts/hf_venv.sh makes one in the package's .build/hf-venv on first use, so nothing lands in the home
    /// directory's caches); skipped only when pip cannot reach the package index.
    func testHuggingFaceLoadsTheExportAndComputesTheSameLogits() throws {
        guard let python = try huggingFacePython("ExportTests", skipping: "the Hugging Face load") else { return }

        let root = tempDir("hf"), config = makeConfig(), model = makeModel(config, scale: 0.5)
        try save(model, config, root: root, step: 3)
        let dir = root + "/hf"
        _ = try CheckpointCommands.export(arguments: ["--hf", dir, "--checkpoint", root], log: { _ in })
        let loaded = try CheckpointModel(path: root).model
        let t = config.model.blockSize, v = config.model.vocabSize
        let ids = (0..<t).map { Int32(($0 * 37 + 5) % v) }
        let acts = Activations(config: loaded.config, batch: 1, tokens: t, training: false)
        for i in 0..<t { acts.tokenIds[i] = ids[i] }
        acts.setContiguousPositions()
        loaded.forwardBody(acts, saving: false)
        var mine = [Float](repeating: 0, count: t * v)
        mine.ptr { loaded.logits(acts, into: $0) }

        guard let json = try huggingFaceLogits(python: python, dir: dir, ids: ids, tied: true) else { return }
        XCTAssertEqual(json["architecture"] as? String, "GPT2LMHeadModel")
        XCTAssertEqual(json["dtype"] as? String, "torch.float32")
        let rows = try XCTUnwrap(json["logits"] as? [[Double]])
        XCTAssertEqual(rows.count, t)
        let theirs = rows.flatMap { $0.map(Float.init) }
        XCTAssertEqual(theirs.count, mine.count)
        guard theirs.count == mine.count else { return }
        let scale = max(1, mine.map(abs).max() ?? 0), diff = maxAbsDiff(mine, theirs)
        print("ExportTests: torch \(json["torch"] ?? "?"), transformers \(json["transformers"] ?? "?"): "
              + "max |Δlogit| \(diff), max |logit| \(scale)")
        XCTAssertLessThanOrEqual(diff, 1e-4 * scale, "logits differ from transformers' by up to \(diff) (max |logit| \(scale))")
    }
}
