// How samples meet text: a prompt becomes token ids and generated ids become printable output. With
// `data.tokenizer` set, the tokenizer.json encodes the prompt and decodes the output; a byte-level model (vocab_size
// 256) feeds the prompt's bytes and prints bytes as text; any other model feeds bytes and prints the ids.
// Used by the trainer's end-of-run sample and `tessera generate` (docs/export.md).

import Foundation
import TesseraTokenizer

struct SampleText {
    /// The tokenizer named by data.tokenizer, if any.
    let tokenizer: Tokenizer?
    /// data.tokenizer, for messages.
    let path: String
    let vocabSize: Int

    /// Loads `config.data.tokenizer` (when set); the error names the key and the file.
    init(config: TesseraConfig, vocabSize: Int) throws {
        self.vocabSize = vocabSize
        path = config.data.tokenizer
        if path.isEmpty {
            tokenizer = nil
        } else {
            do { tokenizer = try Tokenizer(path: path) } catch {
                throw TrainingError("data.tokenizer = '\(path)': \(error)")
            }
        }
    }

    /// The ids of `prompt`; `what` names where the prompt came from. Throws when an id is outside the model's
    /// vocabulary.
    func encode(_ prompt: String, what: String) throws -> [Int32] {
        if let tokenizer {
            // Every training document follows an <|endoftext|>: an empty prompt starts where documents start.
            if prompt.isEmpty, let eot = tokenizer.id(of: "<|endoftext|>"), eot < vocabSize { return [Int32(eot)] }
            let ids = tokenizer.encode(prompt)
            if let id = ids.first(where: { $0 >= vocabSize }) {
                throw TrainingError("\(what) encodes to id \(id), outside the model's vocab_size \(vocabSize) "
                                    + "(data.tokenizer = '\(path)')")
            }
            return ids.map { Int32($0) }
        }
        if let b = prompt.utf8.first(where: { Int($0) >= vocabSize }) {
            throw TrainingError("\(what) contains byte \(b), outside the model's vocab_size \(vocabSize) "
                                + "(the prompt is fed as bytes; set data.tokenizer to encode it with a tokenizer)")
        }
        return prompt.utf8.map { Int32($0) }
    }

    /// The end-of-text id for `--stop-at-eot`: the tokenizer's `<|endoftext|>`.
    func endOfText() throws -> Int32 {
        guard let tokenizer else {
            throw TrainingError("--stop-at-eot needs data.tokenizer in the checkpoint's config (a tokenizer with <|endoftext|>)")
        }
        guard let id = tokenizer.id(of: "<|endoftext|>") else {
            throw TrainingError("--stop-at-eot: data.tokenizer = '\(path)' has no special token <|endoftext|>")
        }
        return Int32(id)
    }

    /// What to print for a sample: the prompt followed by the decoded output (tokenizer or byte-level), otherwise
    /// the generated ids separated by spaces.
    func render(prompt: String, output: [Int32]) -> String {
        if let tokenizer { return prompt + tokenizer.decode(output.map { Int($0) }) }
        return vocabSize == 256 ? prompt + Sampler.text(output) : output.map(String.init).joined(separator: " ")
    }
}
