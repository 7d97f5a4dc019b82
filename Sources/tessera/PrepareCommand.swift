import ArgumentParser
import TesseraTraining

/// `tessera prepare --input FILE... --out DIR [--val-fraction F] [--shard-tokens N]
///  [--tokenizer tokenizer.json [--delimiter S | --jsonl] [--eot TOKEN]]`.
struct PrepareCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prepare", abstract: "Turn text into llm.c token shards.",
        discussion: "Tokenizes text files byte-level (token = byte, vocabulary 256), concatenated in order, and writes "
            + "llm.c token shards DIR/train_000000.bin ... (at most --shard-tokens tokens each) and DIR/val_000000.bin "
            + "(the last --val-fraction of the tokens). With --tokenizer, encodes documents (whole files, --delimiter "
            + "records or --jsonl \"text\" fields) with a BPE tokenizer.json, the --eot token before each document; "
            + "vocabularies over 65536 give version 2 (uint32) shards (docs/data.md).")

    @Option(name: [.customLong("input"), .customShort("i")], parsing: .upToNextOption,
            help: ArgumentHelp("Text files, concatenated in order.", valueName: "file"))
    var inputs: [String] = []

    @Option(name: [.customLong("out"), .customShort("o")], help: ArgumentHelp("The output directory.", valueName: "dir"))
    var out: String

    @Option(help: "The fraction of the tokens (the last ones) kept for validation.")
    var valFraction = 0.1

    @Option(help: "At most this many tokens per training shard.")
    var shardTokens = 100_000_000

    @Option(help: ArgumentHelp("Encode with this tokenizer.json instead of bytes.", valueName: "file"))
    var tokenizer: String?

    @Option(parsing: .unconditional,
            help: ArgumentHelp("Split files into documents at this string (escapes \\n \\t \\r \\\\).", valueName: "string"))
    var delimiter: String?

    @Flag(help: "Read JSON lines; each line's \"text\" field is a document.")
    var jsonl = false

    @Option(parsing: .unconditional,
            help: ArgumentHelp("The special token before every document (default <|endoftext|>).", valueName: "token"))
    var eot: String?

    func validate() throws {
        guard !inputs.isEmpty else { throw ValidationError("prepare: --input needs at least one file") }
    }

    func run() throws {
        _ = prepareMachine()
        let tokenization = try PrepareTokenization.fromFlags(tokenizer: tokenizer, delimiter: delimiter, jsonl: jsonl, eot: eot)
        print(try Prepare.run(inputs: inputs, outDir: out, valFraction: valFraction, shardTokens: shardTokens,
                              tokenization: tokenization))
    }
}
