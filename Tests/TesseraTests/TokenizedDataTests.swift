// `tessera prepare --tokenizer`: shards hold [eot] + encode(document) per document for whole files, delimiter
// records and JSON lines; its errors; version 2 (uint32) shards written and read back through the loader; an
// unsupported shard version named with its file.

import Foundation
import XCTest
import TesseraTokenizer
@testable import TesseraTraining

final class TokenizedDataTests: XCTestCase {
    static let corpus = """
        The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs off into the woods.
        Numbers 12 345 and words again: quick, brown, lazy, fox, dog. Über café naïve — ünïcödé text too.
        """

    private func scratch(_ name: String) throws -> URL {
        let dir = scratchDirectory("tokdata").appendingPathComponent(name)
        try? FileManager.default.removeItem(at: dir)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir
    }

    private func write(_ text: String, _ dir: URL, _ name: String) throws -> String {
        let path = dir.appendingPathComponent(name).path
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// A tokenizer trained on the corpus, written to DIR/tokenizer.json.
    private func trainedTokenizer(_ dir: URL) throws -> (Tokenizer, String) {
        let tokenizer = Tokenizer.train(texts: [Self.corpus], vocabSize: 320, specialTokens: ["<|endoftext|>"])
        let path = dir.appendingPathComponent("tokenizer.json").path
        try tokenizer.write(to: path)
        return (tokenizer, path)
    }

    /// All tokens of DIR's train shards then its validation shard, through the loader.
    private func shardTokens(_ out: String) throws -> [Int] {
        let (train, val) = try openDataset(format: "auto", train: out + "/train_*.bin", val: out + "/val_000000.bin",
                                           valFraction: 0)
        return [train, val].flatMap { s -> [Int] in
            var buf = [Int32](repeating: -1, count: s.count)
            buf.withUnsafeMutableBufferPointer { s.copy(from: 0, count: s.count, into: $0.baseAddress!) }
            return buf.map(Int.init)
        }
    }

    // MARK: documents

    func testWholeFilesAreDocumentsEachPrecededByEOT() throws {
        let dir = try scratch("files")
        let (tok, tokPath) = try trainedTokenizer(dir)
        let eot = try XCTUnwrap(tok.id(of: "<|endoftext|>"))
        let docs = ["The quick brown fox.\nJumps over the lazy dog.\n", "Über café — naïve ünïcödé.", "fox dog fox dog 12 345"]
        let inputs = try docs.enumerated().map { try write($0.element, dir, "doc\($0.offset).txt") }
        let out = dir.appendingPathComponent("out").path
        let summary = try Prepare.run(inputs: inputs, outDir: out, valFraction: 0.2, shardTokens: 7,
                                      tokenization: PrepareTokenization(path: tokPath))
        let expected = docs.flatMap { [eot] + tok.encode($0) }
        XCTAssertEqual(try shardTokens(out), expected)
        XCTAssertTrue(summary.contains("from 3 document(s) in 3 file(s)"), summary)
        XCTAssertTrue(summary.contains("(id \(eot)) precedes every document"), summary)
        XCTAssertEqual(try TokenShard.readInfo(path: out + "/train_000000.bin").version, 1, "a small vocabulary gives uint16 shards")
        XCTAssertEqual(try TokenShard.readHeader(path: out + "/train_000000.bin"), 7)
        XCTAssertFalse(FileManager.default.fileExists(atPath: out + "/.prepare-tokens.tmp"), "the temporary file is removed")
        XCTAssertEqual(tok.decode(try shardTokens(out)), docs.map { "<|endoftext|>" + $0 }.joined())
    }

    func testDelimiterRecordsAreDocuments() throws {
        let dir = try scratch("delimited")
        let (tok, tokPath) = try trainedTokenizer(dir)
        let eot = try XCTUnwrap(tok.id(of: "<|endoftext|>"))
        let records = ["The quick brown fox.", "Jumps over\nthe lazy dog.", "fox dog 12"]
        // An empty record (two delimiters in a row) and a trailing delimiter are skipped.
        let a = try write(records[0] + "\n\n" + records[1] + "\n\n\n\n", dir, "a.txt")
        let b = try write(records[2], dir, "b.txt")
        let out = dir.appendingPathComponent("out").path
        // Through the command line: "\n\n" is the escape for two newlines.
        let summary = try Prepare.command(arguments: ["--input", a, b, "--out", out, "--tokenizer", tokPath,
                                                      "--delimiter", "\\n\\n", "--val-fraction", "0.1"])
        XCTAssertEqual(try shardTokens(out), records.flatMap { [eot] + tok.encode($0) })
        XCTAssertTrue(summary.contains("from 3 document(s) in 2 file(s)"), summary)
        // A delimiter longer than one byte, spanning the reader's chunks, splits the same as splitting in memory.
        let long = String(repeating: "fox dog ", count: 100_000) + "<SEP>" + String(repeating: "lazy ", count: 200_000)
        var found: [String] = []
        try DocumentFormat.delimited("<SEP>").forEachDocument(in: try write(long, dir, "long.txt")) { found.append($0) }
        XCTAssertEqual(found, long.components(separatedBy: "<SEP>"))
    }

    func testJSONLinesTextFieldsAreDocuments() throws {
        let dir = try scratch("jsonl")
        let (tok, tokPath) = try trainedTokenizer(dir)
        let eot = try XCTUnwrap(tok.id(of: "<|endoftext|>"))
        let texts = ["The quick brown fox.", "Line one\nline two \"quoted\" café", "lazy dog"]
        let lines = texts.map { t -> String in
            let data = try! JSONSerialization.data(withJSONObject: ["id": 1, "text": t])
            return String(decoding: data, as: UTF8.self)
        }
        let path = try write(lines[0] + "\n" + lines[1] + "\r\n\n" + lines[2] + "\n", dir, "docs.jsonl")
        let out = dir.appendingPathComponent("out").path
        _ = try Prepare.command(arguments: ["--input", path, "--out", out, "--tokenizer", tokPath, "--jsonl"])
        XCTAssertEqual(try shardTokens(out), texts.flatMap { [eot] + tok.encode($0) })
    }

    // MARK: errors

    func testBadJSONLinesNameFileAndLine() throws {
        let dir = try scratch("jsonl-errors")
        let (_, tokPath) = try trainedTokenizer(dir)
        let out = dir.appendingPathComponent("out").path
        let cases: [(String, String)] = [
            ("{\"text\": \"ok\"}\n{\"text\": \"ok\"}\nnot json\n", "bad.jsonl:3"),
            ("{\"text\": \"ok\"}\n{\"body\": \"no text\"}\n", "notext.jsonl:2"),
            ("{\"text\": 5}\n", "number.jsonl:1"),
            ("[\"text\"]\n", "array.jsonl:1"),
        ]
        for (content, where_) in cases {
            let path = try write(content, dir, String(where_.split(separator: ":")[0]))
            assertThrows({ _ = try Prepare.run(inputs: [path], outDir: out, valFraction: 0.1,
                                               tokenization: PrepareTokenization(path: tokPath, documents: .jsonl)) },
                         mentioning: [where_, "\"text\""])
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: out + "/.prepare-tokens.tmp"), "no temporary file left")
        XCTAssertFalse(FileManager.default.fileExists(atPath: out + "/train_000000.bin"), "no shard written")
    }

    func testMissingEOTAndFlagErrors() throws {
        let dir = try scratch("eot-errors")
        let tok = Tokenizer.train(texts: [Self.corpus], vocabSize: 300, specialTokens: ["<|pad|>"])
        let tokPath = dir.appendingPathComponent("noeot.json").path
        try tok.write(to: tokPath)
        let input = try write(Self.corpus, dir, "text.txt")
        let out = dir.appendingPathComponent("out").path
        assertThrows({ _ = try Prepare.run(inputs: [input], outDir: out, valFraction: 0.1,
                                           tokenization: PrepareTokenization(path: tokPath)) },
                     mentioning: ["noeot.json", "no special token \"<|endoftext|>\"", "<|pad|>"])
        // --eot names another special token: fine.
        XCTAssertNoThrow(try Prepare.command(arguments: ["--input", input, "--out", out, "--tokenizer", tokPath, "--eot", "<|pad|>"]))
        assertThrows({ _ = try Prepare.command(arguments: ["--input", input, "--out", out, "--jsonl"]) },
                     mentioning: ["--jsonl", "--tokenizer"])
        assertThrows({ _ = try Prepare.command(arguments: ["--input", input, "--out", out, "--tokenizer", tokPath,
                                                            "--jsonl", "--delimiter", "x"]) },
                     mentioning: ["--delimiter", "--jsonl"])
        assertThrows({ _ = try Prepare.command(arguments: ["--input", input, "--out", out, "--tokenizer",
                                                            dir.appendingPathComponent("missing.json").path]) },
                     mentioning: ["missing.json"])
    }

    // MARK: version 2 shards

    func testLargeVocabularyWritesVersion2ShardsTheLoaderReads() throws {
        let dir = try scratch("v2")
        // A tokenizer whose end-of-text id, 70000, does not fit uint16.
        let small = Tokenizer.train(texts: [Self.corpus], vocabSize: 300, specialTokens: [])
        let wide = Tokenizer(model: small.model, special: [(content: "<|endoftext|>", id: 70_000)])
        let tokPath = dir.appendingPathComponent("wide.json").path
        try wide.write(to: tokPath)
        XCTAssertEqual(try Tokenizer(path: tokPath).vocabSize, 70_001)
        let docs = ["fox dog", "the lazy dog jumps"]
        let inputs = try docs.enumerated().map { try write($0.element, dir, "d\($0.offset).txt") }
        let out = dir.appendingPathComponent("out").path
        let summary = try Prepare.run(inputs: inputs, outDir: out, valFraction: 0.3,
                                      tokenization: PrepareTokenization(path: tokPath))
        XCTAssertTrue(summary.contains("shard version 2"), summary)
        XCTAssertTrue(summary.contains("vocab_size >= 70001"), summary)
        let expected = docs.flatMap { [70_000] + wide.encode($0) }
        XCTAssertEqual(try shardTokens(out), expected)
        let info = try TokenShard.readInfo(path: out + "/train_000000.bin")
        XCTAssertEqual(info.version, 2)
        let size = try XCTUnwrap(FileManager.default.attributesOfItem(atPath: out + "/train_000000.bin")[.size] as? NSNumber)
        XCTAssertEqual(size.intValue, 1024 + 4 * info.count, "uint32 tokens")
        let (train, _) = try openDataset(format: "bin", train: out + "/train_000000.bin", val: "", valFraction: 0.2)
        XCTAssertEqual(train.maxToken, 70_000)
        assertThrows({ try train.checkTokens(vocabSize: 65_536) }, mentioning: ["train_000000.bin", "70000", "65536"])
        XCTAssertNoThrow(try train.checkTokens(vocabSize: 70_001))
    }

    func testVersion2WriterAndVersion1Overflow() throws {
        let dir = try scratch("v2-writer")
        let p = dir.appendingPathComponent("wide.bin").path
        let toks: [UInt32] = [0, 65_535, 65_536, 4_000_000, 7]
        try TokenShard.write(toks, to: p)
        let shards = try ShardTokens(paths: [p])
        var got = [Int32](repeating: -1, count: toks.count)
        got.withUnsafeMutableBufferPointer { shards.copy(from: 0, count: toks.count, into: $0.baseAddress!) }
        XCTAssertEqual(got.map(UInt32.init), toks)
        XCTAssertEqual(shards.maxToken, 4_000_000)
        // A version 1 shard cannot hold 65536; the error names the file and the version to use.
        let narrow = dir.appendingPathComponent("narrow.bin").path
        assertThrows({ try TokenShard.write(count: 2, to: narrow, version: 1) { _, out in out[0] = 1; out[1] = 65_536 } },
                     mentioning: ["narrow.bin", "65536", "version 2"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: narrow))
        XCTAssertFalse(FileManager.default.fileExists(atPath: narrow + ".tmp"))
    }

    func testUnsupportedVersionAndWrongSizeNameFileAndVersion() throws {
        let dir = try scratch("v3")
        let good = dir.appendingPathComponent("good.bin").path
        try TokenShard.write([1, 2, 3, 4] as [UInt32], to: good)
        var raw = try Data(contentsOf: URL(fileURLWithPath: good))
        raw[4] = 3
        let v3 = dir.appendingPathComponent("v3.bin").path
        try raw.write(to: URL(fileURLWithPath: v3))
        assertThrows({ _ = try ShardTokens(paths: [v3]) }, mentioning: ["v3.bin", "unsupported shard version 3", "uint32"])
        assertThrows({ _ = try TokenShard.readHeader(path: v3) }, mentioning: ["v3.bin", "version 3"])
        // A version 1 header on uint32 data: the size check names the version and the expected size.
        raw[4] = 1
        let mislabelled = dir.appendingPathComponent("mislabelled.bin").path
        try raw.write(to: URL(fileURLWithPath: mislabelled))
        assertThrows({ _ = try ShardTokens(paths: [mislabelled]) },
                     mentioning: ["mislabelled.bin", "version 1", "1032", "trailing data"])
    }
}
