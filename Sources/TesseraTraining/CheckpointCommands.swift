// `tessera export` and `tessera generate`: commands over a saved checkpoint (docs/export.md).
//   tessera export --hf DIR --checkpoint PATH
//   tessera generate --checkpoint PATH [--prompt TEXT] [--tokens N] [--temperature T] [--top-k K] [--seed S]
//                    [--stop-at-eot]
// PATH is one checkpoint (step-NNNNNN/) or a checkpoint root (its newest valid checkpoint). Notes (which
// checkpoint, skipped ones) go to `log`; the result is returned for standard output.

import Foundation
import TesseraKernels
import TesseraModel
import TesseraTokenizer

public enum CheckpointCommands {
    public static let exportUsage = "usage: tessera export --hf DIR --checkpoint PATH"
    public static let generateUsage = "usage: tessera generate --checkpoint PATH [--prompt TEXT] [--tokens N] "
        + "[--temperature T] [--top-k K] [--seed S] [--stop-at-eot]"

    /// Writes a Hugging Face GPT-2 directory from a checkpoint; returns a summary line.
    public static func export(arguments: [String], log: (String) -> Void = CheckpointCommands.stderr) throws -> String {
        var o = try Options(arguments, allowed: ["--hf", "--checkpoint"], usage: exportUsage)
        guard let dir = o.take("--hf"), let path = o.take("--checkpoint") else {
            throw TrainingError("export needs --hf DIR and --checkpoint PATH\n" + exportUsage)
        }
        return try export(hf: dir, checkpoint: path, log: log)
    }

    /// Writes a Hugging Face directory `dir` (GPT2LMHeadModel or LlamaForCausalLM) from the checkpoint at `path`;
    /// returns a summary line.
    public static func export(hf dir: String, checkpoint path: String, log: (String) -> Void = CheckpointCommands.stderr) throws -> String {
        let loaded = try load(path, log: log)
        let c = loaded.model.config, tokenizerPath = loaded.config.data.tokenizer
        // A run trained on a tokenizer's ids exports it too, its end-of-text token as bos and eos.
        var endOfText: Int?, tokenizerNote = ""
        if !tokenizerPath.isEmpty {
            let eot = "<|endoftext|>"
            let tokenizer: Tokenizer
            do { tokenizer = try Tokenizer(path: tokenizerPath) } catch {
                throw TrainingError("export: the checkpoint's data.tokenizer: \(error)")
            }
            guard let id = tokenizer.id(of: eot) else {
                throw TrainingError("export: \(tokenizerPath) has no special token \(eot) to name as bos and eos")
            }
            endOfText = id
            tokenizerNote = "; tokenizer.json, tokenizer_config.json, special_tokens_map.json (bos = eos = \(id))"
        }
        try HFExport.write(model: loaded.model, to: dir, endOfText: endOfText)
        if !tokenizerPath.isEmpty {
            try HFExport.writeTokenizer(from: tokenizerPath, token: "<|endoftext|>", to: dir, maxLength: c.blockSize)
        }
        let shape = c.family == .llama
            ? "Llama, vocab_size \(c.vocabSize), num_hidden_layers \(c.nLayer), num_attention_heads \(c.nHead), "
              + "num_key_value_heads \(c.nKVHead), hidden_size \(c.dModel), intermediate_size \(c.intermediate), "
              + "tie_word_embeddings \(c.tied)"
            : "GPT-2, vocab_size \(c.vocabSize), n_layer \(c.nLayer), n_head \(c.nHead), n_embd \(c.dModel), n_positions \(c.blockSize)"
        return "wrote \(dir)/config.json and model.safetensors\(tokenizerNote): \(shape) (\(c.parameterCount) parameters), "
            + "from step \(loaded.manifest.step)"
    }

    /// Samples text from a checkpoint; defaults come from the checkpoint config's [sample] section.
    public static func generate(arguments: [String], log: (String) -> Void = CheckpointCommands.stderr) throws -> String {
        let stopAtEOT = arguments.contains("--stop-at-eot")
        var o = try Options(arguments.filter { $0 != "--stop-at-eot" },
                            allowed: ["--checkpoint", "--prompt", "--tokens", "--temperature", "--top-k", "--seed"],
                            usage: generateUsage)
        guard let path = o.take("--checkpoint") else { throw TrainingError("generate needs --checkpoint PATH\n" + generateUsage) }
        // Parse every option before the (possibly long) load, so that a typo fails at once.
        let prompt = o.take("--prompt")
        let tokens = try o.integer("--tokens", atLeast: 1)
        let temperature = try o.number("--temperature")
        let topK = try o.integer("--top-k", atLeast: 0)
        let seed = try o.integer("--seed", atLeast: Int.min)
        return try generate(checkpoint: path, prompt: prompt, tokens: tokens, temperature: temperature, topK: topK, seed: seed,
                            stopAtEOT: stopAtEOT, log: log)
    }

    /// Samples text from the checkpoint at `path`; nil options come from the checkpoint config's [sample] section.
    /// The checkpoint config's data.tokenizer, when set, encodes the prompt and decodes the output (SampleText);
    /// `stopAtEOT` then ends the sample at its `<|endoftext|>`.
    public static func generate(checkpoint path: String, prompt: String?, tokens: Int?, temperature: Double?, topK: Int?,
                                seed: Int?, stopAtEOT: Bool = false,
                                log: (String) -> Void = CheckpointCommands.stderr) throws -> String {
        let loaded = try load(path, log: log)
        let config = loaded.config, s = config.sample
        // sample.tokens = 0 turns off the trainer's sample; generate then uses the default length.
        let count = tokens ?? (s.tokens > 0 ? s.tokens : SampleConfig().tokens)
        let text = prompt ?? s.prompt
        let codec = try SampleText(config: config, vocabSize: loaded.model.config.vocabSize)
        let ids = try codec.encode(text, what: prompt == nil ? "sample.prompt of the checkpoint's config" : "--prompt")
        let stop = stopAtEOT ? try codec.endOfText() : nil
        Threads.configure(config.training.threads > 0 ? config.training.threads : Threads.availableCores())
        let out = Sampler(model: loaded.model).generate(
            prompt: ids, count: count, temperature: temperature ?? s.temperature,
            topK: topK ?? s.topK, seed: UInt64(bitPattern: Int64(seed ?? config.training.seed)), stop: stop)
        return codec.render(prompt: text, output: out)
    }

    static func load(_ path: String, log: (String) -> Void) throws -> CheckpointModel {
        let loaded = try CheckpointModel(path: path, log: log)
        log("checkpoint \(loaded.path) (step \(loaded.manifest.step))")
        return loaded
    }

    public static func stderr(_ line: String) {
        FileHandle.standardError.write(Data("tessera: \(line)\n".utf8))
    }

    /// `--name VALUE` and `--name=VALUE` options, each at most once, all of them known.
    struct Options {
        var values: [String: String] = [:]

        init(_ args: [String], allowed: Set<String>, usage: String) throws {
            var i = 0
            while i < args.count {
                let a = args[i]
                var name = a, value: String? = nil
                if let eq = a.firstIndex(of: "="), a.hasPrefix("--") { name = String(a[..<eq]); value = String(a[a.index(after: eq)...]) }
                guard allowed.contains(name) else { throw TrainingError("unexpected argument '\(a)'\n" + usage) }
                if value == nil {
                    guard i + 1 < args.count else { throw TrainingError("\(name) needs a value\n" + usage) }
                    value = args[i + 1]; i += 1
                }
                guard values[name] == nil else { throw TrainingError("\(name) given twice") }
                values[name] = value
                i += 1
            }
        }

        mutating func take(_ name: String) -> String? { values.removeValue(forKey: name) }

        mutating func integer(_ name: String, atLeast low: Int) throws -> Int? {
            guard let v = take(name) else { return nil }
            guard let i = Int(v), i >= low else {
                throw TrainingError("\(name) expects an integer\(low == Int.min ? "" : " >= \(low)"), got '\(v)'")
            }
            return i
        }

        mutating func number(_ name: String) throws -> Double? {
            guard let v = take(name) else { return nil }
            guard let x = Double(v), x > 0, x.isFinite else { throw TrainingError("\(name) expects a number > 0, got '\(v)'") }
            return x
        }
    }
}
