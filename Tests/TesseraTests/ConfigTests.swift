import Foundation
import XCTest
@testable import TesseraKernels
import TesseraModel
@testable import TesseraTraining

final class ConfigTests: XCTestCase {
    private var dir = ""
    private var trainPath = ""
    private var configPath = ""

    override func setUpWithError() throws {
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("tessera-config-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: base, withIntermediateDirectories: true)
        dir = base.path
        trainPath = try write("train.txt", "hello tessera\n")
        configPath = dir + "/run.toml"
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: dir)
    }

    // MARK: Helpers

    @discardableResult
    private func write(_ name: String, _ text: String) throws -> String {
        let path = dir + "/" + name
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// A config file holding `body` plus a valid data.train (unless `body` has its own [data] section).
    private func load(_ body: String, overrides: [(key: String, value: String)] = []) throws -> TesseraConfig {
        let data = body.contains("[data]") ? "" : "[data]\ntrain = \"\(trainPath)\"\n"
        try write("run.toml", body + "\n" + data)
        return try ConfigLoader.load(path: configPath, overrides: overrides)
    }

    /// Asserts that `body` throws a ConfigError whose message contains every one of `parts`.
    private func assertConfigError<T>(_ body: @autoclosure () throws -> T, contains parts: [String],
                                      file: StaticString = #filePath, line: UInt = #line) {
        do {
            _ = try body()
            XCTFail("expected a ConfigError containing \(parts)", file: file, line: line)
        } catch let error as ConfigError {
            for part in parts where !error.description.contains(part) {
                XCTFail("error does not contain \"\(part)\":\n\(error.description)", file: file, line: line)
            }
        } catch {
            XCTFail("expected a ConfigError, got \(error)", file: file, line: line)
        }
    }

    // MARK: Defaults and decoding

    func testDefaults() throws {
        let c = TesseraConfig()
        XCTAssertEqual(c.job, JobConfig(name: "tessera", outputDir: "runs/default"))
        XCTAssertEqual(c.model, ModelConfig(vocabSize: 256, nLayer: 4, nHead: 4, dModel: 128, blockSize: 256))
        XCTAssertEqual(c.training, TrainingConfig(steps: 100, batchSize: 8, seqLen: 256, microbatches: 1, seed: 1337,
                                                  threads: 0, logEvery: 10, evalEvery: 50, evalBatches: 4))
        XCTAssertEqual(c.optimizer, OptimizerConfig(lr: 1e-3, minLrRatio: 0.1, warmupSteps: 10, decay: "cosine",
                                                    beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, gradClip: 1.0))
        XCTAssertEqual(c.data, DataConfig(format: "auto", train: "", val: "", valFraction: 0.1))
        XCTAssertEqual(c.sample, SampleConfig(tokens: 200, prompt: "\n", temperature: 0.8, topK: 0))
        XCTAssertEqual(c.parallelism, ParallelismConfig(pp: 1, dp: 1, ring: 1, ulysses: 1, zero: 0,
                                                        pipelineSchedule: "1f1b", virtualStages: 1,
                                                        bucketMb: 25, timeoutS: 300))
        XCTAssertEqual(c.checkpoint, CheckpointConfig(dir: "", every: 0, mode: "lazy", keep: 3))
        XCTAssertEqual(c.memory, MemoryConfig(policy: "keep", activationBudget: 0, offloadDir: ""))
        XCTAssertEqual(c.metrics, MetricsConfig(path: "", tensorboard: true, tensorboardDir: ""))
        XCTAssertEqual(c.metricsPath, "runs/default/metrics.jsonl")
        XCTAssertEqual(c.tensorboardDir, "runs/default/tensorboard")
        XCTAssertEqual(c.checkpointDir, "runs/default/checkpoints")

        // A file with only data.train gives the defaults everywhere else.
        XCTAssertEqual(try load(""), TesseraConfig(data: DataConfig(train: trainPath)))
        XCTAssertNoThrow(try load("").validateForThisBuild())
    }

    func testFullFileDecode() throws {
        try write("shard_000.bin", "")
        try write("shard_001.bin", "")
        let valPath = try write("val.bin", "")
        let c = try load("""
            [job]
            name = "gpt-small"
            output_dir = "runs/small"
            [model]
            vocab_size = 50257
            n_layer = 12
            n_head = 12
            d_model = 768
            block_size = 1024
            [training]
            steps = 5000
            batch_size = 64
            seq_len = 512
            microbatches = 4
            seed = 42
            threads = 2
            log_every = 5
            eval_every = 0
            eval_batches = 8
            [optimizer]
            lr = 6e-4
            min_lr_ratio = 0.05
            warmup_steps = 200
            decay = "linear"
            beta1 = 0.85
            beta2 = 0.99
            eps = 1e-6
            weight_decay = 0.0
            grad_clip = 0.5
            [data]
            format = "bin"
            train = "\(dir)/shard_*.bin"
            val = "\(valPath)"
            val_fraction = 0.2
            [sample]
            tokens = 0
            prompt = "Once upon"
            temperature = 1.5
            top_k = 40
            [parallelism]
            pp = 2
            dp = 2
            ring = 2
            ulysses = 2
            zero = 1
            pipeline_schedule = "interleaved"
            virtual_stages = 2
            bucket_mb = 50.5
            timeout_s = 60.0
            [checkpoint]
            dir = "ckpt"
            every = 100
            mode = "sync"
            keep = 5
            [memory]
            policy = "selective"
            activation_budget = 1073741824
            offload_dir = "\(dir)/offload"
            [metrics]
            path = "m.jsonl"
            tensorboard = false
            tensorboard_dir = "tb"
            """)
        let expected = TesseraConfig(
            job: JobConfig(name: "gpt-small", outputDir: "runs/small"),
            model: ModelConfig(vocabSize: 50257, nLayer: 12, nHead: 12, dModel: 768, blockSize: 1024),
            training: TrainingConfig(steps: 5000, batchSize: 64, seqLen: 512, microbatches: 4, seed: 42, threads: 2,
                                     logEvery: 5, evalEvery: 0, evalBatches: 8),
            optimizer: OptimizerConfig(lr: 6e-4, minLrRatio: 0.05, warmupSteps: 200, decay: "linear", beta1: 0.85,
                                       beta2: 0.99, eps: 1e-6, weightDecay: 0, gradClip: 0.5),
            data: DataConfig(format: "bin", train: "\(dir)/shard_*.bin", val: valPath, valFraction: 0.2),
            sample: SampleConfig(tokens: 0, prompt: "Once upon", temperature: 1.5, topK: 40),
            parallelism: ParallelismConfig(pp: 2, dp: 2, ring: 2, ulysses: 2, zero: 1, pipelineSchedule: "interleaved",
                                           virtualStages: 2, bucketMb: 50.5, timeoutS: 60),
            checkpoint: CheckpointConfig(dir: "ckpt", every: 100, mode: "sync", keep: 5),
            memory: MemoryConfig(policy: "selective", activationBudget: 1 << 30, offloadDir: "\(dir)/offload"),
            metrics: MetricsConfig(path: "m.jsonl", tensorboard: false, tensorboardDir: "tb"))
        XCTAssertEqual(c, expected)
        XCTAssertEqual(c.metricsPath, "m.jsonl")
        XCTAssertEqual(ConfigLoader.expandDataPath(c.data.train), ["\(dir)/shard_000.bin", "\(dir)/shard_001.bin"])
    }

    func testIntegerAcceptedForDouble() throws {
        let c = try load("[optimizer]\nlr = 1\ngrad_clip = 2\n[parallelism]\nbucket_mb = 50\n")
        XCTAssertEqual(c.optimizer.lr, 1.0)
        XCTAssertEqual(c.optimizer.gradClip, 2.0)
        XCTAssertEqual(c.parallelism.bucketMb, 50.0)
    }

    func testFloatRejectedForInteger() {
        assertConfigError(try load("[training]\nsteps = 10.5\n"),
                          contains: ["\(configPath): key 'training.steps' expects an integer, found floating-point number 10.5"])
    }

    // MARK: Overrides

    func testSplitOverrides() throws {
        let (overrides, rest) = try ConfigLoader.splitOverrides(
            ["train", "--training.steps", "50", "--config=Configs/a.toml", "--optimizer.lr=3e-4", "--verbose",
             "run.toml", "--sample.prompt=a=b", "--metrics.tensorboard", "false"])
        XCTAssertEqual(overrides.map(\.key), ["training.steps", "optimizer.lr", "sample.prompt", "metrics.tensorboard"])
        XCTAssertEqual(overrides.map(\.value), ["50", "3e-4", "a=b", "false"])
        XCTAssertEqual(rest, ["train", "--config=Configs/a.toml", "--verbose", "run.toml"])
    }

    func testSplitOverridesErrors() {
        assertConfigError(try ConfigLoader.splitOverrides(["--training.steps"]),
                          contains: ["command line", "'--training.steps' needs a value"])
        assertConfigError(try ConfigLoader.splitOverrides(["--training.stesp", "5"]),
                          contains: ["command line", "unknown key 'training.stesp'", "did you mean 'training.steps'?"])
    }

    func testOverridesAreTypedAndWin() throws {
        let c = try load("[training]\nsteps = 10\n", overrides: [
            (key: "training.steps", value: "50"), (key: "optimizer.lr", value: "3e-4"),
            (key: "parallelism.bucket_mb", value: "8"), (key: "metrics.tensorboard", value: "false"),
            (key: "sample.prompt", value: " 42 "), (key: "model.n_layer", value: "2"), (key: "model.n_layer", value: "6"),
        ])
        XCTAssertEqual(c.training.steps, 50)
        XCTAssertEqual(c.optimizer.lr, 3e-4)
        XCTAssertEqual(c.parallelism.bucketMb, 8)
        XCTAssertEqual(c.metrics.tensorboard, false)
        XCTAssertEqual(c.sample.prompt, " 42 ")
        XCTAssertEqual(c.model.nLayer, 6, "the last override of a key wins")
    }

    func testOverrideUnknownKey() {
        assertConfigError(try load("", overrides: [(key: "model.n_layr", value: "2")]),
                          contains: ["command line: unknown key 'model.n_layr'", "known keys in [model]:",
                                     "did you mean 'model.n_layer'?"])
        assertConfigError(try load("", overrides: [(key: "modle.n_layer", value: "2")]),
                          contains: ["command line: unknown section [modle]", "did you mean [model]?"])
    }

    func testOverrideBadValue() {
        assertConfigError(try load("", overrides: [(key: "training.steps", value: "ten")]),
                          contains: ["command line: key 'training.steps' expects an integer, found \"ten\""])
        assertConfigError(try load("", overrides: [(key: "metrics.tensorboard", value: "yes")]),
                          contains: ["command line", "metrics.tensorboard", "expects a boolean (true or false)", "\"yes\""])
        assertConfigError(try load("", overrides: [(key: "optimizer.lr", value: "fast")]),
                          contains: ["command line", "optimizer.lr", "expects a number", "\"fast\""])
        assertConfigError(try load("", overrides: [(key: "optimizer.lr", value: "nan")]),
                          contains: ["command line", "optimizer.lr", "expects a finite number"])
    }

    func testOverrideValidationNamesCommandLine() {
        assertConfigError(try load("", overrides: [(key: "training.steps", value: "0")]),
                          contains: ["command line: key 'training.steps' expects an integer >= 1, found 0"])
    }

    // MARK: Unknown keys, types, syntax

    func testUnknownKeyWithSuggestion() {
        assertConfigError(try load("[model]\nn_layr = 2\n"),
                          contains: ["\(configPath): unknown key 'model.n_layr'",
                                     "(known keys in [model]: family, vocab_size, n_layer, n_head, d_model, block_size, n_kv_head, intermediate_size, rms_norm_eps, rope_theta, tie_word_embeddings, init_from)",
                                     "did you mean 'model.n_layer'?"])
        assertConfigError(try load("[model]\nlr = 0.1\n"), contains: ["unknown key 'model.lr'", "did you mean 'optimizer.lr'?"])
        assertConfigError(try load("[model]\nzzzzzz = 1\n"), contains: ["unknown key 'model.zzzzzz'"])
        XCTAssertThrowsError(try load("[model]\nzzzzzz = 1\n")) { error in
            XCTAssertFalse(String(describing: error).contains("did you mean"))
        }
    }

    func testUnknownSectionAndTopLevelKey() {
        assertConfigError(try load("[modle]\nn_layer = 2\n"),
                          contains: ["\(configPath): unknown section [modle]", "known sections: job, model,",
                                     "did you mean [model]?"])
        assertConfigError(try load("[extra]\n"), contains: ["unknown section [extra]"])
        assertConfigError(try load("steps = 5\n"),
                          contains: ["\(configPath): unknown key 'steps' at the top level", "did you mean 'training.steps'?"])
        assertConfigError(try load("[model.sub]\nx = 1\n"), contains: ["unknown key 'model.sub'"])
    }

    func testWrongType() {
        assertConfigError(try load("[training]\nsteps = \"ten\"\n"),
                          contains: ["\(configPath): key 'training.steps' expects an integer, found string \"ten\""])
        assertConfigError(try load("[metrics]\ntensorboard = 1\n"),
                          contains: ["key 'metrics.tensorboard' expects a boolean (true or false), found integer 1"])
        assertConfigError(try load("[job]\nname = 3\n"), contains: ["key 'job.name' expects a string, found integer 3"])
        assertConfigError(try load("[optimizer]\nlr = \"0.1\"\n"), contains: ["key 'optimizer.lr' expects a number, found string"])
        assertConfigError(try load("[model]\nn_layer = [1, 2]\n"), contains: ["key 'model.n_layer' expects an integer, found an array"])
        assertConfigError(try load("[optimizer]\nlr = inf\n"), contains: ["key 'optimizer.lr' expects a finite number"])
    }

    func testSyntaxErrorHasLineAndColumn() {
        assertConfigError(try load("[training]\nsteps = 5\nseed = = 3\n"), contains: ["\(configPath):3:", "TOML syntax error"])
        assertConfigError(try ConfigLoader.load(text: "[model]\nn_layer = 2\nn_layer = 3\n", source: "dup.toml", overrides: []),
                          contains: ["dup.toml:3:"])
    }

    func testMissingConfigFile() {
        assertConfigError(try ConfigLoader.load(path: dir + "/nope.toml", overrides: []),
                          contains: ["\(dir)/nope.toml: config file not found"])
    }

    func testAllProblemsReportedTogether() {
        XCTAssertThrowsError(try load("[model]\nn_layr = 2\n[training]\nsteps = \"x\"\n")) { error in
            let lines = String(describing: error).split(separator: "\n")
            XCTAssertEqual(lines.count, 2, "\(error)")
        }
    }

    // MARK: Impossible values

    func testDModelDivisibleByNHead() {
        assertConfigError(try load("[model]\nd_model = 100\nn_head = 3\n"),
                          contains: ["\(configPath): model.d_model = 100 is not divisible by model.n_head = 3",
                                     "100 = 3 × 33 + 1", "expected a multiple of 3 such as 99 or 102"])
    }

    func testSeqLenWithinBlockSize() {
        assertConfigError(try load("[training]\nseq_len = 512\n"),
                          contains: ["\(configPath): training.seq_len = 512 exceeds model.block_size = 256",
                                     "expected seq_len <= block_size"])
    }

    func testCountsMustBePositive() {
        let keys = ["training.steps", "training.batch_size", "training.seq_len", "training.microbatches",
                    "model.n_layer", "model.n_head", "model.d_model", "model.vocab_size", "model.block_size",
                    "parallelism.pp", "parallelism.dp", "parallelism.ring", "parallelism.ulysses",
                    "training.log_every", "parallelism.virtual_stages", "checkpoint.keep"]
        for key in keys {
            assertConfigError(try load("", overrides: [(key: key, value: "0")]),
                              contains: ["command line: key '\(key)' expects an integer", "found 0"])
            assertConfigError(try load("", overrides: [(key: key, value: "-3")]), contains: ["'\(key)'", "found -3"])
        }
    }

    func testBatchDivisibleByMicrobatches() {
        assertConfigError(try load("[training]\nbatch_size = 10\nmicrobatches = 3\n"),
                          contains: ["\(configPath): training.batch_size = 10 is not divisible by training.microbatches = 3",
                                     "(10 = 3 × 3 + 1)", "such as 9 or 12"])
        assertConfigError(try load("[training]\nbatch_size = 8\nmicrobatches = 2\n[parallelism]\ndp = 3\n"),
                          contains: ["training.batch_size = 8 is not divisible by parallelism.dp × training.microbatches"
                                     + " = 3 × 2 = 6"])
    }

    func testVocabSizeLimit() throws {
        // Vocabularies over 65536 are stored in version 2 (uint32) shards; ids are int32 in the model.
        XCTAssertEqual(try load("[model]\nvocab_size = 65537\n").model.vocabSize, 65537)
        XCTAssertEqual(try load("[model]\nvocab_size = 2147483647\n").model.vocabSize, 2147483647)
        assertConfigError(try load("[model]\nvocab_size = 2147483648\n"),
                          contains: ["key 'model.vocab_size' expects an integer in 1...2147483647 (token ids are int32)",
                                     "found 2147483648"])
    }

    func testEnumValues() {
        assertConfigError(try load("[optimizer]\ndecay = \"cosin\"\n"),
                          contains: ["\(configPath): key 'optimizer.decay' expects one of \"cosine\", \"linear\", \"constant\"",
                                     "found \"cosin\"", "did you mean \"cosine\"?"])
        let cases = [("data.format", "json"), ("parallelism.pipeline_schedule", "zb"), ("checkpoint.mode", "eager"),
                     ("memory.policy", "never"), ("data.packing", "docs")]
        for (key, value) in cases {
            assertConfigError(try load("", overrides: [(key: key, value: value)]),
                              contains: ["command line: key '\(key)' expects one of", "found \"\(value)\""])
        }
    }

    /// data.packing = "documents" needs a token that starts documents (given, or the tokenizer's), inside the vocabulary.
    func testPackingSettings() throws {
        let train = "train = \"\(trainPath)\"\n"
        XCTAssertEqual(try load("[data]\n" + train + "packing = \"documents\"\ndocument_token = 10\n").data.documentToken, 10)
        assertConfigError(try load("[data]\n" + train + "packing = \"documents\"\n"),
                          contains: ["data.packing = \"documents\" needs the token that starts each document", "data.document_token"])
        assertConfigError(try load("[model]\nvocab_size = 256\n[data]\n" + train + "packing = \"documents\"\ndocument_token = 300\n"),
                          contains: ["data.document_token = 300 is not a token of the model", "model.vocab_size = 256"])
        assertConfigError(try load("[data]\n" + train + "document_token = -2\n"), contains: ["data.document_token", ">= -1"])
    }

    func testVariableLengthSettings() throws {
        let docs = "[data]\ntrain = \"\(trainPath)\"\npacking = \"documents\"\ndocument_token = 10\n"
        let ok = try load("[training]\nseq_len = 64\n[parallelism]\ndp = 2\n" + docs + "max_tokens_per_rank = 32\nschedule = \"ring\"\n")
        XCTAssertEqual(ok.data.maxTokensPerRank, 32)
        XCTAssertEqual(ok.data.schedule, "ring")
        assertConfigError(try load("[training]\nseq_len = 64\n[parallelism]\ndp = 2\n" + docs + "max_tokens_per_rank = 30\n"),
                          contains: ["the longest sequence (training.seq_len = 64 tokens)", "needs 32 tokens per rank",
                                     "data.max_tokens_per_rank >= 32, found 30"])
        assertConfigError(try load("[training]\nseq_len = 64\n[data]\ntrain = \"\(trainPath)\"\nmax_tokens_per_rank = 64\n"),
                          contains: ["data.max_tokens_per_rank = 64 trains on whole documents", "data.packing = \"documents\""])
        assertConfigError(try load("[training]\nseq_len = 64\n[parallelism]\ndp = 3\n" + docs + "max_tokens_per_rank = 64\n"),
                          contains: ["parallelism.dp a power of two, found 3"])
        assertConfigError(try load("[training]\nseq_len = 64\n[parallelism]\nring = 2\n" + docs + "max_tokens_per_rank = 64\n"),
                          contains: ["forms its sequence groups per step", "found 1, 2, 1"])
        assertConfigError(try load("[training]\nseq_len = 64\nmicrobatches = 2\n" + docs + "max_tokens_per_rank = 64\n"),
                          contains: ["training.microbatches = 1, found 2"])
        assertConfigError(try load(docs + "schedule = \"zigzag\"\n"), contains: ["data.schedule", "zigzag"])
        assertConfigError(try load(docs + "schedule = \"ring\"\n"), contains: ["has no effect without data.max_tokens_per_rank > 0"])
        assertConfigError(try load(docs + "group_attention = \"ulysses\"\n"), contains: ["has no effect without data.max_tokens_per_rank > 0"])
        let measured = try load("[training]\nseq_len = 64\n[parallelism]\ndp = 2\n" + docs + "max_tokens_per_rank = 32\ncost_weights = \"measured\"\n")
        XCTAssertEqual(measured.data.costWeights, "measured")
        XCTAssertEqual(ok.data.costWeights, "flops")
        assertConfigError(try load("[training]\nseq_len = 64\n[parallelism]\ndp = 2\n" + docs
                                   + "max_tokens_per_rank = 32\nschedule = \"ring\"\ncost_weights = \"measured\"\n"),
                          contains: ["data.cost_weights = \"measured\"", "data.schedule = \"aware\", found 32 and \"ring\""])
        assertConfigError(try load(docs + "cost_weights = \"timed\"\n"), contains: ["data.cost_weights", "timed"])
        assertConfigError(try load("[model]\nn_head = 2\n[training]\nseq_len = 64\n[parallelism]\ndp = 4\n" + docs
                                   + "max_tokens_per_rank = 64\ngroup_attention = \"ulysses\"\n"),
                          contains: ["model.n_head (2) and the key/value heads (2) divisible by 4"])
        // ring_dp forms rings of the size seq_len needs (2 here), so 2 heads split over them.
        XCTAssertEqual(try load("[model]\nn_head = 2\n[training]\nseq_len = 64\n[parallelism]\ndp = 4\n" + docs
                                + "max_tokens_per_rank = 32\nschedule = \"ring_dp\"\ngroup_attention = \"ulysses\"\n").data.schedule, "ring_dp")
        assertConfigError(try load("[training]\nseq_len = 64\nlayout = \"auto\"\n" + docs + "max_tokens_per_rank = 64\n"),
                          contains: ["training.layout = \"manual\"", "data.max_tokens_per_rank = 64 plans its sequence groups"])
        assertConfigError(try load(docs + "max_tokens_per_rank = -1\n"), contains: ["data.max_tokens_per_rank", ">= 0"])
    }

    func testMemorySettings() throws {
        XCTAssertEqual(try load("[model]\nn_layer = 3\n[memory]\nlayer_policy = \"full*2,keep\"\n").memory.layerPolicy, "full*2,keep")
        assertConfigError(try load("[memory]\npolicy = \"auto\"\n"),
                          contains: ["memory.policy = \"auto\" needs memory.activation_budget > 0", "found 0"])
        assertConfigError(try load("[memory]\npolicy = \"auto\"\nactivation_budget = 1000000\nlayer_policy = \"full\"\n"),
                          contains: ["memory.layer_policy = \"full\" fixes every layer's policy", "expected one of the two"])
        assertConfigError(try load("[model]\nn_layer = 3\n[memory]\nlayer_policy = \"full,keep\"\n"),
                          contains: ["memory.layer_policy = \"full,keep\" gives 2 layer policies", "model.n_layer = 3"])
        assertConfigError(try load("[memory]\nlayer_policy = \"fast\"\n"),
                          contains: ["'fast' is not a layer policy", "keep, full, selective, offload"])
    }

    func testNumericRanges() {
        let cases: [(String, String, String)] = [
            ("optimizer.lr", "0", "> 0"), ("optimizer.lr", "-1e-3", "> 0"),
            ("optimizer.beta1", "1", "in [0, 1)"), ("optimizer.beta2", "-0.1", "in [0, 1)"),
            ("optimizer.eps", "0", "> 0"), ("optimizer.weight_decay", "-0.1", ">= 0"),
            ("optimizer.grad_clip", "-1", ">= 0"), ("optimizer.min_lr_ratio", "1.5", "in [0, 1]"),
            ("data.val_fraction", "0", "in (0, 1)"), ("data.val_fraction", "1", "in (0, 1)"),
            ("sample.temperature", "0", "> 0"), ("sample.top_k", "-1", ">= 0"), ("sample.tokens", "-1", ">= 0"),
            ("training.threads", "-1", ">= 0"), ("training.eval_every", "-1", ">= 0"),
            ("optimizer.warmup_steps", "-1", ">= 0"), ("checkpoint.every", "-1", ">= 0"),
            ("parallelism.zero", "2", "in 0...1"), ("parallelism.bucket_mb", "0", "> 0"),
            ("parallelism.timeout_s", "-5", "> 0"), ("memory.activation_budget", "-1", ">= 0"),
        ]
        for (key, value, expected) in cases {
            assertConfigError(try load("", overrides: [(key: key, value: value)]),
                              contains: ["command line: key '\(key)' expects", expected, "found"])
        }
    }

    func testParallelShapeRelations() {
        assertConfigError(try load("[parallelism]\nulysses = 3\n"),
                          contains: ["model.n_head = 4 is not divisible by parallelism.ulysses = 3"])
        assertConfigError(try load("[parallelism]\nring = 3\n"),
                          contains: ["training.seq_len = 256 cannot be split for ring attention: it needs 2 × parallelism.ring = 6",
                                     "expected a multiple of 6 such as 252 or 258"])
        // Zigzag needs 2 × ring chunks: 18 splits into ring × ulysses = 6 slices but not into 4 chunks.
        assertConfigError(try load("[model]\nn_head = 6\nd_model = 192\n[training]\nseq_len = 18\n[parallelism]\nring = 2\nulysses = 3\n"),
                          contains: ["training.seq_len = 18 cannot be split", "parallelism.ulysses = 3 slices", "multiple of 12 such as 12 or 24"])
        assertConfigError(try load("[parallelism]\nulysses = 4\n[training]\nseq_len = 254\n"),
                          contains: ["training.seq_len = 254 is not divisible by parallelism.ulysses = 4"])
        XCTAssertNoThrow(try load("[training]\nseq_len = 96\n[parallelism]\nring = 2\nulysses = 2\n"))
        assertConfigError(try load("[parallelism]\npp = 8\n"),
                          contains: ["model.n_layer = 4 is less than parallelism.pp × parallelism.virtual_stages = 8 × 1 = 8"])
        assertConfigError(try load("[parallelism]\nvirtual_stages = 2\n"),
                          contains: ["parallelism.virtual_stages = 2 needs parallelism.pipeline_schedule = \"interleaved\""])
    }

    // MARK: Data files

    func testDataTrainRequiredAndMustExist() {
        assertConfigError(try load("[data]\nformat = \"text\"\n"),
                          contains: ["\(configPath): key 'data.train' expects the path of the training data"])
        assertConfigError(try load("[data]\ntrain = \"no-such-file.txt\"\n"),
                          contains: ["data.train = 'no-such-file.txt' in \(configPath): file not found",
                                     "relative paths resolve against the working directory"])
        assertConfigError(try load("", overrides: [(key: "data.val", value: dir + "/missing.bin")]),
                          contains: ["data.val = '\(dir)/missing.bin' in command line: file not found"])
        assertConfigError(try load("", overrides: [(key: "data.train", value: dir)]),
                          contains: ["in command line: is a directory"])
    }

    func testDataGlob() throws {
        try write("a_1.bin", "")
        try write("a_0.bin", "")
        let c = try load("[data]\ntrain = \"\(dir)/a_*.bin\"\n")
        XCTAssertEqual(ConfigLoader.expandDataPath(c.data.train), ["\(dir)/a_0.bin", "\(dir)/a_1.bin"])
        assertConfigError(try load("[data]\ntrain = \"\(dir)/b_*.bin\"\n"),
                          contains: ["data.train = '\(dir)/b_*.bin' in \(configPath): no file matches this glob"])
    }

    // MARK: Features of this build

    func testCheckpointPersistDirMustDifferFromDir() throws {
        // Paths inside this test's own directory (`ck` is not created here).
        assertConfigError(try load("[checkpoint]\ndir = \"\(dir)/ck\"\npersist_dir = \"\(dir)/ck/\"\n"),
                          contains: ["checkpoint.persist_dir = '\(dir)/ck/' is the checkpoint directory itself"])
        XCTAssertEqual(try load("[checkpoint]\ndir = \"\(dir)/ck\"\npersist_dir = \"\(dir)/shared-ck\"\n").checkpoint.persistDir,
                       "\(dir)/shared-ck")
        // The same answer whether the directory exists or not (the comparison never looks at the file system).
        for exists in [false, true] {
            let ck = dir + "/ck"
            if exists { try FileManager.default.createDirectory(atPath: ck, withIntermediateDirectories: true) }
            assertConfigError(try load("[checkpoint]\ndir = \"\(ck)\"\npersist_dir = \"\(dir)//./other/../ck/\"\n"),
                              contains: ["is the checkpoint directory itself"])
            XCTAssertEqual(try load("[checkpoint]\ndir = \"\(ck)\"\npersist_dir = \"\(ck)/persist\"\n").checkpoint.persistDir,
                           ck + "/persist", "exists: \(exists)")
        }
    }

    func testPrecisionKey() throws {
        XCTAssertEqual(TesseraConfig().training.precision, "fp32")
        XCTAssertEqual(TesseraConfig().precision, .fp32)
        let c = try load("[training]\nprecision = \"bf16\"\n")
        XCTAssertEqual(c.precision, .bf16)
        XCTAssertTrue(ConfigLoader.render(c).contains("precision = \"bf16\"  # default: \"fp32\""))
        XCTAssertEqual(try load("", overrides: [(key: "training.precision", value: "bf16")]).precision, .bf16)
        assertConfigError(try load("[training]\nprecision = \"fp16\"\n"),
                          contains: ["key 'training.precision' expects one of \"fp32\", \"bf16\", found \"fp16\""])
    }

    /// `model.family` and the Llama keys: defaults keep GPT-2, a Llama section becomes the TransformerConfig it
    /// describes (Meta's MLP width when unset), GPT-2 refuses Llama-only values, and the relations are checked.
    func testModelFamilyKeys() throws {
        XCTAssertEqual(TesseraConfig().transformer.family, .gpt2)
        XCTAssertEqual(TesseraConfig().transformer, TransformerConfig(vocabSize: 256, nLayer: 4, nHead: 4, dModel: 128, blockSize: 256))
        let c = try load("[model]\nfamily = \"llama\"\nn_head = 4\nn_kv_head = 2\nd_model = 128\nrope_theta = 500000.0\ntie_word_embeddings = false\n")
        let m = c.transformer
        XCTAssertEqual(m.family, .llama)
        XCTAssertEqual([m.nHead, m.nKVHead, m.intermediate, m.qkvWidth], [4, 2, 512, 256])  // 8·128/3 = 341 → 512
        XCTAssertEqual(m.ropeTheta, 500_000); XCTAssertFalse(m.tied)
        XCTAssertEqual(try load("[model]\nfamily = \"llama\"\n").transformer.nKVHead, 4)  // 0 = n_head
        let rendered = ConfigLoader.render(c)
        XCTAssertTrue(rendered.contains("family = \"llama\"  # default: \"gpt2\""), rendered)
        // A rendered config (a checkpoint's manifest) loads back to the same model, either family.
        for cfg in [c, try load("")] {
            XCTAssertEqual(try load(ConfigLoader.render(cfg)).transformer, cfg.transformer)
        }
        assertConfigError(try load("[model]\nfamily = \"mistral\"\n"), contains: ["key 'model.family' expects one of \"gpt2\", \"llama\""])
        assertConfigError(try load("[model]\nn_kv_head = 2\n"), contains: ["model.n_kv_head applies to model.family = \"llama\" only"])
        assertConfigError(try load("[model]\ntie_word_embeddings = false\n"), contains: ["model.tie_word_embeddings applies to model.family = \"llama\" only"])
        assertConfigError(try load("[model]\nfamily = \"llama\"\nn_head = 4\nn_kv_head = 3\n"),
                          contains: ["model.n_head = 4 is not divisible by model.n_kv_head = 3"])
        assertConfigError(try load("[model]\nfamily = \"llama\"\nrms_norm_eps = 0.0\n"), contains: ["model.rms_norm_eps"])
        assertConfigError(try load("[model]\nfamily = \"llama\"\nn_head = 4\nn_kv_head = 2\n[parallelism]\nulysses = 4\n[training]\nseq_len = 64\n"),
                          contains: ["model.n_kv_head = 2 is not divisible by parallelism.ulysses = 4"])
    }

    func testNonfiniteGuardKeys() throws {
        let defaults = TesseraConfig().training
        XCTAssertEqual(defaults.onNonfinite, "stop")
        XCTAssertEqual(defaults.maxSkipped, 5)
        let c = try load("[training]\non_nonfinite = \"skip\"\nmax_skipped = 3\n")
        XCTAssertEqual(c.training.onNonfinite, "skip")
        XCTAssertEqual(c.training.maxSkipped, 3)
        let rendered = ConfigLoader.render(c)
        XCTAssertTrue(rendered.contains("on_nonfinite = \"skip\"  # default: \"stop\""), rendered)
        XCTAssertTrue(rendered.contains("max_skipped = 3  # default: 5"), rendered)
        XCTAssertTrue(ConfigLoader.render(TesseraConfig()).contains("max_skipped = 5\n"))
        let overridden = try load("", overrides: [(key: "training.on_nonfinite", value: "skip"), (key: "training.max_skipped", value: "1")])
        XCTAssertEqual(overridden.training.onNonfinite, "skip")
        XCTAssertEqual(overridden.training.maxSkipped, 1)
        assertConfigError(try load("[training]\non_nonfinite = \"ignore\"\n"),
                          contains: ["key 'training.on_nonfinite' expects one of \"stop\", \"skip\", found \"ignore\""])
        assertConfigError(try load("[training]\non_nonfinite = \"Skip\"\n"), contains: ["did you mean \"skip\"?"])
        for bad in ["0", "-2"] {
            assertConfigError(try load("", overrides: [(key: "training.max_skipped", value: bad)]),
                              contains: ["command line: key 'training.max_skipped' expects an integer >= 1, found \(bad)"])
        }
        assertConfigError(try load("[training]\nmax_skipped = \"five\"\n"), contains: ["training.max_skipped"])
    }

    func testPathsAreComparedAsText() {
        // Text only: none of these paths exists, and none is looked up.
        let n = { (path: String) in ConfigPaths.normalized(path, against: "/work/run") }
        XCTAssertEqual(n("/no-such-root/ck/"), "/no-such-root/ck")
        XCTAssertEqual(n("/no-such-root//ck/./"), "/no-such-root/ck")
        XCTAssertEqual(n("/no-such-root/a/../ck"), "/no-such-root/ck")
        XCTAssertEqual(n("/../ck"), "/ck")
        XCTAssertEqual(n("/"), "/")
        XCTAssertEqual(n("ck"), "/work/run/ck")
        XCTAssertEqual(n("./ck/"), "/work/run/ck")
        XCTAssertEqual(n("../ck"), "/work/ck")
        XCTAssertTrue(ConfigPaths.same("ck", "/work/run/ck/", against: "/work/run"))
        XCTAssertFalse(ConfigPaths.same("/no-such-root/ck", "/no-such-root/ck2", against: "/work/run"))
    }

    func testValidateForThisBuild() throws {
        XCTAssertNoThrow(try TesseraConfig().validateForThisBuild())
        var c = TesseraConfig()
        c.parallelism.dp = 2
        c.parallelism.zero = 1
        XCTAssertNoThrow(try c.validateForThisBuild(), "data parallelism and ZeRO-1 are built")
        c = TesseraConfig()
        c.checkpoint.every = 10
        c.checkpoint.mode = "sync"
        XCTAssertNoThrow(try c.validateForThisBuild(), "checkpointing is built")
        c = TesseraConfig()
        for policy in ["full", "selective", "offload"] {
            c.memory.policy = policy
            XCTAssertNoThrow(try c.validateForThisBuild(), "memory.policy = \(policy) is built")
        }
        let loaded = try load("[training]\nbatch_size = 8\n[model]\nn_head = 4\n", overrides: [(key: "parallelism.pp", value: "2")])
        XCTAssertNoThrow(try loaded.validateForThisBuild(), "pipeline parallelism is built")
        let ppUlysses = try load("[training]\nbatch_size = 8\nseq_len = 64\n[model]\nn_head = 4\n",
                                 overrides: [(key: "parallelism.pp", value: "2"), (key: "parallelism.ulysses", value: "2")])
        XCTAssertNoThrow(try ppUlysses.validateForThisBuild(), "pipeline with Ulysses is built")
        for key in ["ring", "ulysses"] {
            let built = try load("[training]\nseq_len = 64\n[model]\nn_head = 4\n", overrides: [(key: "parallelism." + key, value: "2")])
            XCTAssertNoThrow(try built.validateForThisBuild(), "sequence parallelism is built")
        }
    }

    // MARK: Rendering

    func testRenderRoundTrips() throws {
        var c = TesseraConfig(data: DataConfig(train: trainPath))
        XCTAssertEqual(try ConfigLoader.load(text: ConfigLoader.render(c), source: "rendered", overrides: []), c)

        c.job.name = "quote \" backslash \\ tab \t bell \u{07} unicode é✓"
        c.sample.prompt = "line one\nline two\r\n"
        c.training.steps = 50
        c.optimizer.lr = 3e-4
        c.optimizer.eps = 1e-12
        c.optimizer.weightDecay = 0
        c.parallelism.bucketMb = 1e20
        c.metrics.tensorboard = false
        c.model.vocabSize = 65536
        let text = ConfigLoader.render(c)
        XCTAssertTrue(text.contains("steps = 50  # default: 100"), text)
        XCTAssertTrue(text.contains("seed = 1337\n"), text)
        XCTAssertTrue(text.contains("[parallelism]"), text)
        XCTAssertEqual(try ConfigLoader.load(text: text, source: "rendered", overrides: []), c)
    }
}
