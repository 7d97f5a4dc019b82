// data.tokenizer end to end: a tiny job trained on shards prepared with a tokenizer, then `tessera generate` encodes
// a text prompt and prints decoded text; config validation of data.tokenizer; the sampler's stop token.

import Foundation
import XCTest
import TesseraModel
@testable import TesseraKernels
import TesseraTokenizer
@testable import TesseraTraining

final class TokenizedTrainingTests: XCTestCase {
    /// A tokenizer trained on the tiny job's text, shards of its lines (one document each), and a config using both.
    static func tokenizedJob(_ dir: URL) throws -> (config: String, tokenizer: Tokenizer) {
        try? FileManager.default.removeItem(at: dir)
        let text = try writeTrainingText(in: dir, lines: 300)
        let tokenizer = try Tokenizer.train(files: [text], vocabSize: 300)
        let tokPath = dir.appendingPathComponent("tokenizer.json").path
        try tokenizer.write(to: tokPath)
        let data = dir.appendingPathComponent("data").path
        _ = try Prepare.run(inputs: [text], outDir: data, valFraction: 0.1,
                            tokenization: PrepareTokenization(path: tokPath, documents: .delimited("\n")))
        let toml = """
            [job]
            name = "tok"
            output_dir = "\(dir.path)/out"
            [model]
            vocab_size = \(tokenizer.vocabSize)
            n_layer = 1
            n_head = 2
            d_model = 32
            block_size = 32
            [training]
            steps = 4
            batch_size = 4
            seq_len = 32
            log_every = 2
            eval_every = 0
            threads = 1
            [data]
            train = "\(data)/train_000000.bin"
            val = "\(data)/val_000000.bin"
            tokenizer = "\(tokPath)"
            [sample]
            tokens = 8
            prompt = "Line 3:"
            [checkpoint]
            dir = "\(dir.path)/ck"
            every = 4
            """
        let path = dir.appendingPathComponent("tok.toml").path
        try toml.write(toFile: path, atomically: true, encoding: .utf8)
        return (path, tokenizer)
    }

    func testTrainOnTokenizedDataThenGenerateFromATextPrompt() throws {
        let dir = scratchDirectory("tessera-tokjob")
        let (config, _) = try Self.tokenizedJob(dir)
        var (status, out) = try runProcess([CommandTests.binary, "train", config])
        XCTAssertEqual(status, 0, out)
        XCTAssertTrue(out.contains("step 4/4"), out)
        // The trainer's own sample is decoded text after the prompt, not ids.
        XCTAssertTrue(out.contains("--- sample (8 tokens") && out.contains("\nLine 3:"), out)
        let ck = dir.appendingPathComponent("ck").path
        (status, out) = try runProcess([CommandTests.binary, "generate", "--checkpoint", ck, "--prompt", "The quick brown",
                                        "--tokens", "12"])
        XCTAssertEqual(status, 0, out)
        let printed = out.split(separator: "\n").first { $0.hasPrefix("The quick brown") }
        XCTAssertNotNil(printed, "generate prints the prompt followed by decoded text: \(out)")
        XCTAssertGreaterThan(printed?.count ?? 0, "The quick brown".count, out)
        (status, out) = try runProcess([CommandTests.binary, "generate", "--checkpoint", ck, "--prompt", "Line",
                                        "--tokens", "40", "--stop-at-eot"])
        XCTAssertEqual(status, 0, out)
        XCTAssertTrue(out.contains("Line"), out)
        XCTAssertFalse(out.contains("<|endoftext|>"), "stops before the end-of-text token: \(out)")
    }

    /// The Llama ready job (Configs/llama-fortunes.toml, the steps of Launch/run-llama.sh) as shipped, on the tiny
    /// job's tokenizer and shards and shortened: it trains a Llama, samples text, checkpoints, and exports a Llama
    /// directory with the tokenizer.
    func testLlamaReadyJobRunsAsShipped() throws {
        let dir = scratchDirectory("tessera-llama-ready")
        _ = try Self.tokenizedJob(dir)
        let data = dir.appendingPathComponent("data").path, ck = dir.appendingPathComponent("ck").path
        var (status, out) = try runProcess([CommandTests.binary, "train", repoRoot.appendingPathComponent("Configs/llama-fortunes.toml").path,
                                            "--training.steps", "2", "--training.eval_every", "0", "--sample.tokens", "6",
                                            "--data.train", data + "/train_000000.bin", "--data.val", data + "/val_000000.bin",
                                            "--data.tokenizer", dir.appendingPathComponent("tokenizer.json").path,
                                            "--job.output_dir", dir.appendingPathComponent("out").path,
                                            "--checkpoint.dir", ck, "--checkpoint.every", "2"])
        XCTAssertEqual(status, 0, out)
        XCTAssertTrue(out.contains("Llama 4 layers, d 128, 4 heads (2 key/value), MLP 384"), out)
        XCTAssertTrue(out.contains("step 2/2") && out.contains("--- sample (6 tokens"), out)
        (status, out) = try runProcess([CommandTests.binary, "export", "--hf", dir.appendingPathComponent("hf").path, "--checkpoint", ck])
        XCTAssertEqual(status, 0, out)
        XCTAssertTrue(out.contains("Llama, vocab_size 2048") && out.contains("tokenizer.json"), out)
    }

    /// The export of a tokenized run carries its tokenizer: transformers' AutoTokenizer loads the directory and
    /// encodes texts to Tessera's ids, bos and eos are the end-of-text id in both the tokenizer and config.json,
    /// and the model loads cleanly beside it.
    func testExportCarriesTheTokenizerForTransformers() throws { try checkExportCarriesTheTokenizer(family: [], "tessera-tokexport") }

    /// The same for a Llama run (grouped heads 2/1, untied): transformers' LlamaForCausalLM loads the export with the
    /// logits of Tessera's model from the same checkpoint, within 1e-4.
    func testLlamaExportCarriesTheTokenizerForTransformers() throws {
        try checkExportCarriesTheTokenizer(family: ["--model.family", "llama", "--model.n_kv_head", "1", "--model.intermediate_size", "64",
                                                    "--model.tie_word_embeddings", "false"], "tessera-tokexport-llama")
    }

    func checkExportCarriesTheTokenizer(family: [String], _ name: String) throws {
        guard let python = try huggingFacePython("TokenizedTrainingTests", skipping: "the Hugging Face tokenizer load") else { return }
        let dir = scratchDirectory(name)
        let (config, tokenizer) = try Self.tokenizedJob(dir)
        let (status, out) = try runProcess([CommandTests.binary, "train", config, "--sample.tokens", "0"] + family)
        XCTAssertEqual(status, 0, out)
        let hf = dir.appendingPathComponent("hf").path
        let summary = try CheckpointCommands.export(arguments: ["--hf", hf, "--checkpoint", dir.appendingPathComponent("ck").path],
                                                    log: { _ in })
        let eot = try XCTUnwrap(tokenizer.id(of: "<|endoftext|>"))
        XCTAssertTrue(summary.contains("tokenizer.json") && summary.contains("bos = eos = \(eot)"), summary)
        let cfg = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: hf + "/config.json"))) as? [String: Any])
        XCTAssertEqual(cfg["bos_token_id"] as? Int, eot); XCTAssertEqual(cfg["eos_token_id"] as? Int, eot)

        let texts = ["Line 3: the quick brown fox", "  spaces  and\nnewlines\n", "<|endoftext|>Line 7: lazy dogs.", "héllo wörld 42!"]
        let textsPath = dir.appendingPathComponent("texts.json"), result = dir.appendingPathComponent("hf-ids.json")
        try JSONSerialization.data(withJSONObject: texts).write(to: textsPath)
        let (s2, o2) = try runProcess([python, repoRoot.path + "/scripts/hf_tokenize.py", hf, textsPath.path, result.path], timeout: 600)
        XCTAssertEqual(s2, 0, o2)
        guard s2 == 0 else { return }
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: result)) as? [String: Any])
        // transformers 4 names the fast tokenizer PreTrainedTokenizerFast, 5 TokenizersBackend.
        XCTAssertTrue(["PreTrainedTokenizerFast", "TokenizersBackend"].contains(json["class"] as? String ?? ""), "\(json["class"] ?? "none")")
        XCTAssertEqual(json["bos_token_id"] as? Int, eot); XCTAssertEqual(json["eos_token_id"] as? Int, eot)
        XCTAssertEqual(try XCTUnwrap(json["ids"] as? [[Int]]), texts.map { tokenizer.encode($0) })
        XCTAssertEqual(try XCTUnwrap(json["decoded"] as? [String]), texts)
        let ids = tokenizer.encode("Line 3: the quick").map(Int32.init)
        let theirs = try XCTUnwrap(try huggingFaceLogits(python: python, dir: hf, ids: ids, tied: family.isEmpty)?["logits"] as? [[Double]])
        XCTAssertEqual(try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: hf + "/config.json"))) as? [String: Any])["model_type"] as? String,
                       family.isEmpty ? "gpt2" : "llama")
        // Tessera's logits of the same checkpoint.
        let mine = tesseraLogits(try CheckpointModel(path: dir.appendingPathComponent("ck").path).model, ids: ids)
        let e = relErr(mine, theirs.flatMap { $0.map(Float.init) })
        print("\(name): transformers' logits vs Tessera's: \(e) relative")
        XCTAssertLessThan(e, 1e-4)
    }

    /// With a tokenizer an empty prompt is <|endoftext|> (where every training document starts); exporting into
    /// the directory that holds the tokenizer keeps it.
    func testEmptyPromptAndExportNextToTheTokenizer() throws {
        let dir = scratchDirectory("tessera-tokempty")
        let (configPath, tokenizer) = try Self.tokenizedJob(dir)
        let config = try ConfigLoader.load(path: configPath, overrides: [])
        let codec = try SampleText(config: config, vocabSize: tokenizer.vocabSize)
        XCTAssertEqual(try codec.encode("", what: "test"), [Int32(try XCTUnwrap(tokenizer.id(of: "<|endoftext|>")))])
        let path = dir.appendingPathComponent("tokenizer.json").path
        let before = try Data(contentsOf: URL(fileURLWithPath: path))
        try HFExport.writeTokenizer(from: path, token: "<|endoftext|>", to: dir.path, maxLength: 32)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: path)), before)
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir.appendingPathComponent("tokenizer_config.json").path))
    }

    func testDataTokenizerIsValidated() throws {
        let dir = scratchDirectory("tessera-tokcfg")
        let (config, tokenizer) = try Self.tokenizedJob(dir)
        var (status, out) = try runProcess([CommandTests.binary, "config", "show", config,
                                            "--model.vocab_size", "\(tokenizer.vocabSize - 1)"])
        XCTAssertNotEqual(status, 0, out)
        XCTAssertTrue(out.contains("data.tokenizer") && out.contains("more than model.vocab_size = \(tokenizer.vocabSize - 1)"), out)
        let missing = dir.appendingPathComponent("missing.json").path
        (status, out) = try runProcess([CommandTests.binary, "config", "show", config, "--data.tokenizer", missing])
        XCTAssertNotEqual(status, 0, out)
        XCTAssertTrue(out.contains("data.tokenizer = '\(missing)'"), out)
    }

    func testSamplerStopsAtTheStopToken() throws {
        var c = TesseraConfig()
        c.model = ModelConfig(vocabSize: 64, nLayer: 1, nHead: 2, dModel: 16, blockSize: 16)
        let sampler = Sampler(model: GPT(config: c.transformer, seed: 3))
        let free = sampler.generate(prompt: [1, 2], count: 12, temperature: 1.5, topK: 0, seed: 9)
        XCTAssertEqual(free.count, 12)
        let stop = free[5]
        let cut = sampler.generate(prompt: [1, 2], count: 12, temperature: 1.5, topK: 0, seed: 9, stop: stop)
        XCTAssertEqual(cut, Array(free.prefix { $0 != stop }), "the same draws, ending before the first stop token")
    }
}
