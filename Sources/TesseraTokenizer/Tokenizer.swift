// The tokenizer: special tokens, GPT-2 pre-tokenization and byte-level BPE put together, read from and written
// to Hugging Face's tokenizer.json. encode(text) gives the ids Hugging Face's `tokenizers` gives for the same
// file; decode(ids) joins the tokens' bytes (special tokens as their text; ids the tokenizer does not know are
// skipped, as Hugging Face does) and decodes them as UTF-8, invalid sequences becoming U+FFFD.

import Foundation

public struct Tokenizer: Sendable {
    public let model: BPE
    public let special: SpecialTokens

    public init(model: BPE, special: [(content: String, id: Int)]) {
        self.model = model
        self.special = SpecialTokens(special)
    }

    /// Reads a tokenizer.json.
    public init(path: String) throws {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw TokenizerFileError(path: path, message: "cannot read the tokenizer file: \(error.localizedDescription)")
        }
        let contents = try TokenizerJSON.parse(data, path: path)
        do {
            self.init(model: try BPE(vocab: contents.vocab, merges: contents.merges, ignoreMerges: contents.ignoreMerges),
                      special: contents.special)
        } catch {
            throw TokenizerFileError(path: path, message: "\(error)")
        }
    }

    /// Trains on the texts of `files` (read as UTF-8, invalid bytes becoming U+FFFD); see BPETrainer for the rule.
    /// `vocabSize` counts the 256 bytes, the merges and the special tokens; below 256 + specials nothing is merged.
    public static func train(files: [String], vocabSize: Int, specialTokens: [String] = ["<|endoftext|>"]) throws -> Tokenizer {
        let texts = try files.map { path in
            do {
                return String(decoding: try Data(contentsOf: URL(fileURLWithPath: path)), as: UTF8.self)
            } catch {
                throw TokenizerFileError(path: path, message: "cannot read the training text: \(error.localizedDescription)")
            }
        }
        return train(texts: texts, vocabSize: vocabSize, specialTokens: specialTokens)
    }

    public static func train(texts: [String], vocabSize: Int, specialTokens: [String] = ["<|endoftext|>"]) -> Tokenizer {
        let result = BPETrainer.train(texts: texts, vocabSize: vocabSize, specialTokens: specialTokens)
        // The trainer's merges are of its own tokens, so building the model cannot fail.
        let model = try! BPE(vocab: result.vocab, merges: result.merges)
        return Tokenizer(model: model, special: result.special)
    }

    /// One more than the largest id (the size an embedding table needs).
    public var vocabSize: Int {
        max(model.vocab.values.max() ?? -1, special.tokens.map(\.id).max() ?? -1) + 1
    }

    /// The id of a special token, e.g. "<|endoftext|>".
    public func id(of special: String) -> Int? { self.special.id(of: special) }

    public func encode(_ text: String) -> [Int] {
        let scalars = Array(text.unicodeScalars)
        var ids: [Int] = []
        for segment in special.segments(scalars) {
            switch segment {
            case .special(let id):
                ids.append(id)
            case .text(let range):
                for piece in PreTokenizer.pieceBytes(Array(scalars[range])) { ids += model.encode(bytes: piece) }
            }
        }
        return ids
    }

    public func decode(_ ids: [Int]) -> String {
        var bytes: [UInt8] = []
        for id in ids {
            if let content = special.content(of: id) {
                bytes += Array(content.utf8)
            } else if let token = model.token(id) {
                bytes += ByteLevel.decode(token) ?? Array(token.utf8)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Writes Hugging Face's tokenizer.json.
    public func write(to path: String) throws {
        let text = TokenizerJSON.render(vocab: model.vocab, merges: model.merges, special: special.tokens)
        do {
            try text.write(toFile: path, atomically: true, encoding: .utf8)
        } catch {
            throw TokenizerFileError(path: path, message: "cannot write the tokenizer file: \(error.localizedDescription)")
        }
    }
}
