import ArgumentParser
import Foundation
import TesseraTokenizer

/// `tessera tokenizer train|encode|decode`: byte-level BPE tokenizers in Hugging Face's tokenizer.json.
struct TokenizerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tokenizer", abstract: "Train or use a byte-level BPE tokenizer (Hugging Face tokenizer.json).",
        subcommands: [TokenizerTrainCommand.self, TokenizerEncodeCommand.self, TokenizerDecodeCommand.self])
}

/// `tessera tokenizer train --input FILE... --vocab-size N --out tokenizer.json [--special-token S ...]`.
struct TokenizerTrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train", abstract: "Train a GPT-2 style byte-level BPE tokenizer on text files.",
        discussion: "Ids 0-255 are the bytes, merges follow (most frequent pair first, ties to the smallest pair of "
            + "byte strings), the special tokens take the last ids. The vocabulary size counts all three (docs/tokenizer.md).")

    @Option(name: [.customLong("input"), .customShort("i")], parsing: .upToNextOption,
            help: ArgumentHelp("Text files (UTF-8).", valueName: "file"))
    var inputs: [String] = []

    @Option(help: "The vocabulary size, special tokens included (at least 256 + their number).")
    var vocabSize: Int

    @Option(name: [.customLong("out"), .customShort("o")], help: ArgumentHelp("The tokenizer.json to write.", valueName: "file"))
    var out: String

    @Option(name: .customLong("special-token"), help: ArgumentHelp("A special token (repeatable).", valueName: "text"))
    var specialTokens: [String] = ["<|endoftext|>"]

    func validate() throws {
        guard !inputs.isEmpty else { throw ValidationError("tokenizer train: --input needs at least one file") }
        guard vocabSize >= 256 + specialTokens.count else {
            throw ValidationError("tokenizer train: --vocab-size must be at least \(256 + specialTokens.count) "
                + "(256 bytes and \(specialTokens.count) special token(s))")
        }
    }

    func run() throws {
        let start = Date()
        let tokenizer = try Tokenizer.train(files: inputs, vocabSize: vocabSize, specialTokens: specialTokens)
        try tokenizer.write(to: out)
        let specials = tokenizer.special.tokens.sorted { $0.id < $1.id }.map { "\($0.content) = \($0.id)" }
        print("tokenizer: \(tokenizer.vocabSize) tokens (\(tokenizer.model.merges.count) merges"
            + (specials.isEmpty ? "" : ", " + specials.joined(separator: ", "))
            + String(format: ") in %.1f s -> %@", Date().timeIntervalSince(start), out))
    }
}

/// `tessera tokenizer encode --tokenizer F --text T`: the ids, space-separated, on one line.
struct TokenizerEncodeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "encode", abstract: "Print the ids of a text.")

    @Option(help: ArgumentHelp("A tokenizer.json.", valueName: "file"))
    var tokenizer: String

    @Option(help: "The text to encode.")
    var text: String

    func run() throws {
        print(try Tokenizer(path: tokenizer).encode(text).map(String.init).joined(separator: " "))
    }
}

/// `tessera tokenizer decode --tokenizer F ID...`: the text of some ids.
struct TokenizerDecodeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "decode", abstract: "Print the text of some ids.")

    @Option(help: ArgumentHelp("A tokenizer.json.", valueName: "file"))
    var tokenizer: String

    @Argument(help: "Token ids.")
    var ids: [Int] = []

    func run() throws {
        print(try Tokenizer(path: tokenizer).decode(ids))
    }
}
