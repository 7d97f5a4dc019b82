// `tessera prepare`: text files -> llm.c token shards (train_000000.bin ..., val_000000.bin), byte-level or, with a
// tokenizer.json, BPE (PrepareTokenized.swift). Streams the inputs, so memory use does not grow with the corpus.
// See docs/data.md.

import Foundation
#if canImport(Glibc)
import Glibc
#endif

public enum Prepare {
    public static let usage = """
        usage: tessera prepare --input FILE... --out DIR [--val-fraction 0.1] [--shard-tokens N]
                               [--tokenizer tokenizer.json [--delimiter STRING | --jsonl] [--eot "<|endoftext|>"]]
          Tokenizes text files byte-level (token = byte, vocabulary 256), concatenated in order, and writes llm.c
          token shards DIR/train_000000.bin ... (at most N tokens each, default 100000000) and DIR/val_000000.bin
          (the last --val-fraction of the tokens).
          With --tokenizer: encodes documents with the BPE tokenizer, each preceded by the --eot token. A document is
          a whole file, a record between --delimiter strings (escapes \\n \\t \\r \\\\), or the "text" of each
          JSON line (--jsonl). Vocabularies over 65536 give version 2 (uint32) shards.
        """

    /// Reads the input text files (concatenated in order; byte-level tokens, or with `tokenization` the documents
    /// encoded by a tokenizer, each preceded by its end-of-text token), splits off the last `valFraction` as
    /// validation, writes `<outDir>/train_000000.bin` (and further shards of at most `shardTokens` tokens:
    /// train_000001.bin, ...) and `<outDir>/val_000000.bin`. Returns a summary (token counts, files).
    public static func run(inputs: [String], outDir: String, valFraction: Double,
                           shardTokens: Int = 100_000_000, tokenization: PrepareTokenization? = nil) throws -> String {
        guard !inputs.isEmpty else { throw DataError("prepare: no input files given\n\(usage)") }
        guard valFraction > 0 && valFraction < 1 else {
            throw DataError("prepare: --val-fraction \(valFraction) must be greater than 0 and less than 1")
        }
        guard shardTokens > 0 && shardTokens <= Int(Int32.max) else {
            throw DataError("prepare: --shard-tokens \(shardTokens) must be in 1...\(Int32.max)")
        }

        let sizes = try inputSizes(inputs)
        if let tokenization { return try runTokenized(inputs: inputs, outDir: outDir, valFraction: valFraction,
                                                      shardTokens: shardTokens, tokenization: tokenization) }

        // Sizes first: the split point and every shard's token count are known before anything is written.
        let total = sizes.reduce(0, +)
        let layout = try ShardLayout(total: total, valFraction: valFraction, shardTokens: shardTokens,
                                     inputs: inputs, outDir: outDir)
        let reader = try ConcatenatedReader(paths: inputs, sizes: sizes)
        defer { reader.close() }
        try layout.write(version: TokenShard.version) { out in
            try withUnsafeTemporaryAllocation(of: UInt8.self, capacity: out.count) { bytes in
                try reader.read(into: bytes)
                for i in 0..<out.count { out[i] = UInt32(bytes[i]) }
            }
        }
        return layout.summary(first: "prepared \(total) tokens (byte-level, vocabulary 256) from \(inputs.count) file(s) into \(outDir)")
    }

    static func runTokenized(inputs: [String], outDir: String, valFraction: Double, shardTokens: Int,
                             tokenization t: PrepareTokenization) throws -> String {
        try ShardLayout.makeDirectory(outDir)
        let encoded = try EncodedTokens(inputs: inputs, outDir: outDir, options: t)
        defer { encoded.close() }
        let layout = try ShardLayout(total: encoded.count, valFraction: valFraction, shardTokens: shardTokens,
                                     inputs: inputs, outDir: outDir)
        let vocab = encoded.tokenizer.vocabSize
        let version = TokenShard.version(forVocabSize: vocab)
        try layout.write(version: version) { try encoded.read(into: $0) }
        return layout.summary(first: "prepared \(encoded.count) tokens (tokenizer \(t.path), vocabulary \(vocab), "
                              + "shard version \(version)) from \(encoded.documents) document(s) in \(inputs.count) "
                              + "file(s) into \(outDir); \"\(t.eot)\" (id \(encoded.eotId)) precedes every document",
                              last: "model: vocab_size >= \(vocab)")
    }

    /// The size of each input file; throws naming a missing, unreadable or empty one.
    static func inputSizes(_ inputs: [String]) throws -> [Int] {
        var sizes: [Int] = []
        for path in inputs {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
                throw DataError("\(path): no such input file")
            }
            guard !isDir.boolValue else { throw DataError("\(path): is a directory, expected a text file") }
            guard let attrs = try? FileManager.default.attributesOfItem(atPath: path),
                  let size = (attrs[.size] as? NSNumber)?.intValue else {
                throw DataError("\(path): cannot read the file's size")
            }
            guard size > 0 else { throw DataError("\(path): input file is empty") }
            sizes.append(size)
        }
        return sizes
    }

    /// Parses `tessera prepare` arguments (those after "prepare"), runs it, and returns the summary.
    public static func command(arguments: [String]) throws -> String {
        var inputs: [String] = []
        var out: String?
        var valFraction = 0.1
        var shardTokens = 100_000_000
        var tokenizer: String?, delimiter: String?, eot: String?, jsonl = false
        var i = 0
        func value(_ flag: String) throws -> String {
            i += 1
            guard i < arguments.count else { throw DataError("prepare: \(flag) needs a value\n\(usage)") }
            return arguments[i]
        }
        while i < arguments.count {
            let a = arguments[i]
            switch a {
            case "--input", "-i":
                // One or more files, up to the next flag.
                let first = i
                while i + 1 < arguments.count, !arguments[i + 1].hasPrefix("--") { i += 1; inputs.append(arguments[i]) }
                if i == first { throw DataError("prepare: --input needs at least one file\n\(usage)") }
            case "--out", "-o":
                out = try value(a)
            case "--val-fraction":
                let v = try value(a)
                guard let f = Double(v) else { throw DataError("prepare: --val-fraction \"\(v)\" is not a number") }
                valFraction = f
            case "--shard-tokens":
                let v = try value(a)
                guard let n = Int(v) else { throw DataError("prepare: --shard-tokens \"\(v)\" is not an integer") }
                shardTokens = n
            case "--tokenizer": tokenizer = try value(a)
            case "--delimiter": delimiter = try value(a)
            case "--eot": eot = try value(a)
            case "--jsonl": jsonl = true
            case "--help", "-h":
                return usage
            default:
                throw DataError("prepare: unknown argument \"\(a)\"\n\(usage)")
            }
            i += 1
        }
        guard let outDir = out else { throw DataError("prepare: --out DIR is required\n\(usage)") }
        let tokenization = try PrepareTokenization.fromFlags(tokenizer: tokenizer, delimiter: delimiter, jsonl: jsonl, eot: eot)
        return try run(inputs: inputs, outDir: outDir, valFraction: valFraction, shardTokens: shardTokens,
                       tokenization: tokenization)
    }
}

/// Reads the bytes of several files in order, as one stream.
final class ConcatenatedReader {
    private let paths: [String]
    private let sizes: [Int]
    private var index = -1
    private var file: UnsafeMutablePointer<FILE>?
    private var readFromFile = 0

    init(paths: [String], sizes: [Int]) throws {
        self.paths = paths
        self.sizes = sizes
    }

    /// Fills `buffer` exactly; throws if the inputs end early or cannot be read.
    func read(into buffer: UnsafeMutableBufferPointer<UInt8>) throws {
        var done = 0
        while done < buffer.count {
            if file == nil {
                index += 1
                guard index < paths.count else { throw DataError("prepare: the inputs ended early (did a file shrink?)") }
                guard let f = fopen(paths[index], "rb") else {
                    throw DataError("\(paths[index]): cannot open: \(String(cString: strerror(errno)))")
                }
                file = f
                readFromFile = 0
            }
            let got = fread(buffer.baseAddress! + done, 1, buffer.count - done, file)
            done += got
            readFromFile += got
            if got == 0 || done < buffer.count {
                if ferror(file) != 0 { throw DataError("\(paths[index]): read failed: \(String(cString: strerror(errno)))") }
                if feof(file) != 0 {
                    fclose(file)
                    file = nil
                    guard readFromFile == sizes[index] else {
                        throw DataError("\(paths[index]): read \(readFromFile) bytes, expected \(sizes[index]) (did the file change?)")
                    }
                }
            }
        }
    }

    func close() {
        if let f = file { fclose(f); file = nil }
    }
}
