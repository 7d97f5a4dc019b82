import Foundation
import XCTest
@testable import TesseraTokenizer

/// The byte-level BPE tokenizer: the byte alphabet, GPT-2's pre-tokenization on tricky strings (expected splits
/// worked out by hand from the pattern), a hand-derived training run (ids, tie-break, special ids), round trips,
/// tokenizer.json in both merge spellings and its errors, the command line, and — against Hugging Face's
/// `tokenizers` — the same ids for a tokenizer trained here and for one trained by Hugging Face.
final class TokenizerTests: XCTestCase {
    /// A fresh directory under this process's scratch directory.
    func scratch(_ name: String) throws -> URL {
        let dir = scratchDirectory("tok").appendingPathComponent(name)
        try? FileManager.default.removeItem(at: dir)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir
    }

    /// A few KB of varied text: prose, contractions, numbers, code, whitespace of every kind, other scripts, emoji.
    static let trainingText: String = {
        let lines = [
            "The quick brown fox jumps over the lazy dog. It's 3:45 pm and they'll be here soon, won't they?",
            "I'm sure you've seen it; we'd rather not. She said: \"Don't!\" -- and left (quietly).",
            "Numbers: 0 1 2 3 42 1024 65536 3.14159 2,718 1e-9 #7 $19.99 100%",
            "    def encode(self, text):\n        return [self.vocab[t] for t in text]  # comment",
            "\tTabbed\tcolumns\tof\tdata\t1\t2\t3",
            "Windows line\r\nendings\r\nhere.",
            "Héllo wörld, ça va? Übermäßig große Straße; naïve café résumé.",
            "Привет, мир! Как дела? Ελληνικά γράμματα.",
            "日本語のテキストと中文的文本。한국어 텍스트.",
            "Emoji: 👋🏽 🎉🎉 ❤️ 🚀 done!!! ... ?!? *** --- ===",
            "Multiple   spaces   between   words   and trailing spaces   ",
            "",
            "Blank lines above and below.",
            "",
        ]
        var text = ""
        for round in 0..<6 { for line in lines { text += line + (round % 2 == 0 ? "\n" : " \n") } }
        return text
    }()

    /// Texts to encode: spaces, newlines, punctuation, digits, other scripts, emoji, special tokens in the middle.
    static let texts = [
        "Hello world",
        "Hello   world  ",
        "  leading spaces",
        "I'm sure they'll say it's fine, don't you think? 'RE 've 's",
        "line one\nline two\n\n\tindented\r\nwindows\n",
        "numbers 12345 and 3.14159, 1,000,000 x9y8",
        "punctuation!!! ... ?!? (parens) [brackets] {braces} --- ***",
        "héllo wörld, ça va? Übermäßig große Straße",
        "日本語のテキスト と 中文",
        "Привет, мир!",
        "emoji 👋🏽 and 🎉🎉 done",
        "first part<|endoftext|>second part",
        "<|endoftext|>",
        "a<|endoftext|> <|endoftext|>b  <|endoftext|>",
        "def f(x):\n    return x * 2  # comment\n",
        "\u{00A0}nbsp and\u{2003}em space, controls \u{1}\u{7F}",
        "",
    ]

    /// 300 pseudo-random strings (fixed seed) over an alphabet of the pattern's edge cases: spaces, tabs, newlines,
    /// CR, NBSP, apostrophes and contraction letters, digits, punctuation, accented and CJK letters, a combining
    /// mark, emoji, a control byte and the special token.
    static let fuzzTexts: [String] = {
        let alphabet = [" ", " ", "  ", "\n", "\t", "\r\n", "\u{00A0}", "'", "'", "s", "t", "re", "ll", "d", "m", "v",
                        "e", "A", "x", "7", "42", ".", ",", "!", "-", "(", "é", "ß", "日", "\u{0301}", "½", "👋🏽", "🎉",
                        "\u{1}", "<|endoftext|>"]
        var state: UInt64 = 0x2545_F491_4F6C_DD1D
        func next(_ n: Int) -> Int {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Int((state >> 33) % UInt64(n))
        }
        return (0..<300).map { _ in (0..<next(16)).map { _ in alphabet[next(alphabet.count)] }.joined() }
    }()

    // MARK: The byte alphabet

    func testByteTableIsABijectionWithGPT2sLayout() {
        let scalars = ByteLevel.scalars
        XCTAssertEqual(scalars.count, 256)
        XCTAssertEqual(Set(scalars).count, 256)
        XCTAssertEqual((0..<256).filter { scalars[$0].value == UInt32($0) }.count, 188)
        XCTAssertEqual(scalars[0x20], "Ġ")
        XCTAssertEqual(scalars[0x0A], "Ċ")
        XCTAssertEqual(scalars[0], "\u{100}")
        XCTAssertEqual(scalars[0xAD], "\u{143}")  // the last of the 68 shifted bytes
        XCTAssertEqual(scalars[Int(UInt8(ascii: "A"))], "A")
        for byte in 0..<256 { XCTAssertEqual(ByteLevel.bytes[scalars[byte]], UInt8(byte)) }
        let all = (0..<256).map(UInt8.init)
        XCTAssertEqual(ByteLevel.decode(ByteLevel.string(all)), all)
        XCTAssertNil(ByteLevel.decode("\u{200}"))
    }

    // MARK: Pre-tokenization

    func testPreTokenizerSplitsLikeGPT2sPattern() {
        let cases: [(String, [String])] = [
            ("I'm don't we'll they've she'd you're it's",
             ["I", "'m", " don", "'t", " we", "'ll", " they", "'ve", " she", "'d", " you", "'re", " it", "'s"]),
            ("'hello 'S 'sam", ["'", "hello", " '", "S", " '", "sam"]),
            ("'sam", ["'s", "am"]),
            ("Hello   world", ["Hello", "  ", " world"]),
            ("trailing  ", ["trailing", "  "]),
            ("end ", ["end", " "]),
            ("a\nb", ["a", "\n", "b"]),
            ("a\n\nb", ["a", "\n", "\n", "b"]),
            ("line one\n\n  indented", ["line", " one", "\n\n ", " indented"]),
            ("x  \n", ["x", "  \n"]),
            ("\t tab", ["\t", " tab"]),
            ("abc123 4567 x9", ["abc", "123", " 4567", " x", "9"]),
            ("3.14", ["3", ".", "14"]),
            ("Hello, world!!! (yes)...", ["Hello", ",", " world", "!!!", " (", "yes", ")..."]),
            ("?!'s", ["?!'", "s"]),
            ("héllo wörld", ["héllo", " wörld"]),
            ("日本語 テキスト", ["日本語", " テキスト"]),
            ("hi 👋🏽 there", ["hi", " 👋🏽", " there"]),
            ("a\u{00A0}b", ["a", "\u{00A0}", "b"]),
            ("½ of Ⅻ", ["½", " of", " Ⅻ"]),
            ("", []),
        ]
        for (text, expected) in cases {
            let pieces = PreTokenizer.split(text)
            XCTAssertEqual(pieces, expected, "split of \(text.debugDescription)")
            XCTAssertEqual(pieces.joined(), text)
        }
    }

    // MARK: Training

    /// "ab ab ab cd": pre-tokens "ab" x1, " ab" x2, " cd" x1. (a,b) has 3, then (' ',ab) 2, then (' ',c) and
    /// (c,d) tie at 1 and ' ' < 'c' wins, then (' c',d); then no pair is left, so the special token takes 260.
    func testTrainingMergesTheMostFrequentPairWithTheSmallerPairWinningTies() {
        let tokenizer = Tokenizer.train(texts: ["ab ab ab cd"], vocabSize: 300, specialTokens: ["<|endoftext|>"])
        XCTAssertEqual(tokenizer.model.merges.map { [$0.0, $0.1] }, [["a", "b"], ["Ġ", "ab"], ["Ġ", "c"], ["Ġc", "d"]])
        XCTAssertEqual(tokenizer.model.vocab["a"], 97)
        XCTAssertEqual(tokenizer.model.vocab["Ġ"], 32)
        XCTAssertEqual(tokenizer.model.vocab["ab"], 256)
        XCTAssertEqual(tokenizer.model.vocab["Ġcd"], 259)
        XCTAssertEqual(tokenizer.id(of: "<|endoftext|>"), 260)
        XCTAssertEqual(tokenizer.vocabSize, 261)
        XCTAssertEqual(tokenizer.encode("ab cd abc"), [256, 259, 257, 99])
        // The vocabulary size counts the special tokens.
        let small = Tokenizer.train(texts: ["ab ab ab cd"], vocabSize: 259, specialTokens: ["<|endoftext|>"])
        XCTAssertEqual(small.vocabSize, 259)
        XCTAssertEqual(small.model.merges.count, 2)
    }

    /// A special token given twice is one token: the vocabulary still has the size asked for.
    func testDuplicateSpecialTokensCountOnce() {
        let texts = [(0..<200).map { "Line \($0 % 23): the quick brown fox jumps over \($0 % 7) lazy dogs." }.joined(separator: "\n")]
        let once = Tokenizer.train(texts: texts, vocabSize: 300, specialTokens: ["<|endoftext|>"])
        let twice = Tokenizer.train(texts: texts, vocabSize: 300, specialTokens: ["<|endoftext|>", "<|endoftext|>"])
        XCTAssertEqual(once.vocabSize, 300)
        XCTAssertEqual(twice.vocabSize, 300)
        XCTAssertEqual(twice.vocabSize, once.vocabSize)
        XCTAssertEqual(twice.encode(texts[0]), once.encode(texts[0]))
    }

    func testTrainedTokenizerRoundTripsAndIsDeterministic() {
        let tokenizer = Tokenizer.train(texts: [Self.trainingText], vocabSize: 600)
        XCTAssertEqual(tokenizer.vocabSize, 600)
        XCTAssertEqual(tokenizer.id(of: "<|endoftext|>"), 599)
        for text in Self.texts + Self.fuzzTexts + [Self.trainingText] {
            let ids = tokenizer.encode(text)
            XCTAssertEqual(tokenizer.decode(ids), text, "round trip of \(text.debugDescription)")
            XCTAssertEqual(PreTokenizer.split(text).joined(), text)
            XCTAssertTrue(ids.allSatisfy { (0..<600).contains($0) })
        }
        let ids = tokenizer.encode(Self.trainingText)
        XCTAssertLessThan(ids.count, Self.trainingText.utf8.count / 2, "BPE compresses its own training text")
        // A byte the merges never touch is its own id.
        XCTAssertEqual(tokenizer.encode("\u{7}"), [7])
        let again = Tokenizer.train(texts: [Self.trainingText], vocabSize: 600)
        XCTAssertEqual(again.model.merges.map { [$0.0, $0.1] }, tokenizer.model.merges.map { [$0.0, $0.1] })
    }

    func testSpecialTokensAreMatchedBeforePreTokenizationAndNeverLearned() {
        let text = "hello world<|endoftext|>hello world<|endoftext|>"
        let tokenizer = Tokenizer.train(texts: [String(repeating: text, count: 20)], vocabSize: 400,
                                        specialTokens: ["<|endoftext|>", "<|pad|>"])
        let eot = try! XCTUnwrap(tokenizer.id(of: "<|endoftext|>")), pad = try! XCTUnwrap(tokenizer.id(of: "<|pad|>"))
        XCTAssertEqual(pad, eot + 1)
        XCTAssertEqual(tokenizer.vocabSize, pad + 1)
        XCTAssertFalse(tokenizer.model.vocab.keys.contains { $0.contains("endoftext") }, "a special token was learned")
        let ids = tokenizer.encode("hello<|endoftext|> world<|pad|>")
        XCTAssertEqual(ids.filter { $0 == eot }.count, 1)
        XCTAssertEqual(ids.last, pad)
        XCTAssertEqual(tokenizer.decode(ids), "hello<|endoftext|> world<|pad|>")
        // The text on each side is pre-tokenized alone: "hello" then the token, as if the text ended there.
        XCTAssertEqual(Array(ids.prefix(while: { $0 != eot })), tokenizer.encode("hello"))
        // Longest match at one position.
        let nested = Tokenizer.train(texts: ["x"], vocabSize: 300, specialTokens: ["<|a|>", "<|a|>b"])
        XCTAssertEqual(nested.encode("<|a|>b<|a|>"), [nested.id(of: "<|a|>b")!, nested.id(of: "<|a|>")!])
    }

    // MARK: tokenizer.json

    func testWrittenFileReadsBackToTheSameIdsInBothMergeSpellings() throws {
        let dir = try scratch("json")
        let tokenizer = Tokenizer.train(texts: [Self.trainingText], vocabSize: 500)
        let path = dir.appendingPathComponent("tokenizer.json").path
        try tokenizer.write(to: path)
        let read = try Tokenizer(path: path)
        XCTAssertEqual(read.vocabSize, tokenizer.vocabSize)
        XCTAssertEqual(read.id(of: "<|endoftext|>"), tokenizer.id(of: "<|endoftext|>"))
        for text in Self.texts { XCTAssertEqual(read.encode(text), tokenizer.encode(text), text.debugDescription) }

        // The file is the Hugging Face layout, and GPT-2's older "a b" merge strings read the same.
        var json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any])
        XCTAssertEqual(json["version"] as? String, "1.0")
        var model = try XCTUnwrap(json["model"] as? [String: Any])
        XCTAssertEqual(model["type"] as? String, "BPE")
        let merges = try XCTUnwrap(model["merges"] as? [[String]])
        XCTAssertEqual(merges.count, tokenizer.model.merges.count)
        model["merges"] = merges.map { $0.joined(separator: " ") }
        json["model"] = model
        let old = dir.appendingPathComponent("old.json").path
        try JSONSerialization.data(withJSONObject: json).write(to: URL(fileURLWithPath: old))
        let readOld = try Tokenizer(path: old)
        for text in Self.texts { XCTAssertEqual(readOld.encode(text), tokenizer.encode(text), text.debugDescription) }
    }

    func testMalformedFilesAreRefusedSayingWhatWasExpected() throws {
        let dir = try scratch("bad")
        let good = #""version":"1.0","added_tokens":[],"normalizer":null,"pre_tokenizer":{"type":"ByteLevel","add_prefix_space":false}"#
        let cases: [(String, String)] = [
            ("not json {", "not a JSON file"),
            ("[1, 2]", "expected a JSON object at the top"),
            ("{\(good)}", "expected an object \"model\""),
            ("{\(good),\"model\":{\"type\":\"WordPiece\",\"vocab\":{}}}", "expected model.type \"BPE\""),
            ("{\(good),\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[[1,2]]}}", "expected merge 0 to be a pair"),
            ("{\(good),\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[\"a b\"]}}", "merge 0 needs \"b\""),
            ("{\(good),\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":\"x\"},\"merges\":[]}}", "expected a non-negative integer id"),
            ("{\"version\":\"1.0\",\"normalizer\":{\"type\":\"NFC\"},\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]}}",
             "normalizers are not supported"),
            ("{\"version\":\"1.0\",\"added_tokens\":[{\"id\":0,\"content\":\"<mask>\",\"lstrip\":true}],\"normalizer\":null,"
                + "\"pre_tokenizer\":{\"type\":\"ByteLevel\"},\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]}}",
             "expected added token \"<mask>\" to have lstrip false"),
            ("{\"version\":\"1.0\",\"pre_tokenizer\":{\"type\":\"Whitespace\"},\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]}}",
             "expected \"pre_tokenizer\" of type ByteLevel"),
        ]
        for (i, (contents, expected)) in cases.enumerated() {
            let path = dir.appendingPathComponent("bad\(i).json").path
            try contents.write(toFile: path, atomically: true, encoding: .utf8)
            XCTAssertThrowsError(try Tokenizer(path: path), contents) { error in
                let message = "\(error)"
                XCTAssertTrue(message.hasPrefix(path + ": "), message)
                XCTAssertTrue(message.contains(expected), "\(message) does not say \(expected)")
            }
        }
        let missing = dir.appendingPathComponent("missing.json").path
        XCTAssertThrowsError(try Tokenizer(path: missing)) { XCTAssertTrue("\($0)".hasPrefix(missing + ": cannot read"), "\($0)") }
    }

    // MARK: Command line

    func testTokenizerCommandsTrainEncodeAndDecode() throws {
        let dir = try scratch("cli")
        let input = dir.appendingPathComponent("text.txt").path, out = dir.appendingPathComponent("tokenizer.json").path
        try Self.trainingText.write(toFile: input, atomically: true, encoding: .utf8)
        let binary = CommandTests.binary
        let (status, log) = try runProcess([binary, "tokenizer", "train", "--input", input, "--vocab-size", "400", "--out", out])
        XCTAssertEqual(status, 0, log)
        XCTAssertTrue(log.contains("400 tokens") && log.contains("<|endoftext|> = 399"), log)
        let text = "Héllo world<|endoftext|> 42"
        let (encStatus, encoded) = try runProcess([binary, "tokenizer", "encode", "--tokenizer", out, "--text", text])
        XCTAssertEqual(encStatus, 0, encoded)
        let ids = encoded.split(whereSeparator: \.isWhitespace).compactMap { Int($0) }
        XCTAssertEqual(ids, try Tokenizer(path: out).encode(text))
        let (decStatus, decoded) = try runProcess([binary, "tokenizer", "decode", "--tokenizer", out] + ids.map(String.init))
        XCTAssertEqual(decStatus, 0, decoded)
        XCTAssertEqual(decoded, text + "\n")
        let (badStatus, bad) = try runProcess([binary, "tokenizer", "train", "--input", input, "--vocab-size", "100", "--out", out])
        XCTAssertEqual(badStatus, 2, bad)
        XCTAssertTrue(bad.contains("--vocab-size must be at least 257"), bad)
    }

    // MARK: Against Hugging Face's tokenizers

    /// Runs scripts/hf_tokenize.py on `texts`; returns Hugging Face's ids and decoded texts.
    func huggingFaceEncode(_ python: String, tokenizer: String, texts: [String], in dir: URL,
                           train: [String] = []) throws -> (ids: [[Int]], decoded: [String])? {
        let textsPath = dir.appendingPathComponent("texts.json"), outPath = dir.appendingPathComponent("hf-ids.json")
        try JSONSerialization.data(withJSONObject: texts).write(to: textsPath)
        let (status, out) = try runProcess([python, repoRoot.path + "/scripts/hf_tokenize.py", tokenizer, textsPath.path,
                                            outPath.path] + train, timeout: 600)
        XCTAssertEqual(status, 0, out)
        guard status == 0 else { return nil }
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: outPath)) as? [String: Any])
        print("TokenizerTests: tokenizers \(json["version"] ?? "?")")
        return (try XCTUnwrap(json["ids"] as? [[Int]]), try XCTUnwrap(json["decoded"] as? [String]))
    }

    func testHuggingFaceEncodesATokenizerTrainedHereToTheSameIds() throws {
        guard let python = try huggingFacePython("TokenizerTests", skipping: "the Hugging Face comparison") else { return }
        let dir = try scratch("hf-ours")
        let input = dir.appendingPathComponent("text.txt").path, path = dir.appendingPathComponent("tokenizer.json").path
        try Self.trainingText.write(toFile: input, atomically: true, encoding: .utf8)
        let tokenizer = try Tokenizer.train(files: [input], vocabSize: 600)
        try tokenizer.write(to: path)
        let texts = Self.texts + Self.fuzzTexts
        guard let hf = try huggingFaceEncode(python, tokenizer: path, texts: texts, in: dir) else { return }
        XCTAssertEqual(hf.ids.count, texts.count)
        for (i, text) in texts.enumerated() {
            XCTAssertEqual(tokenizer.encode(text), hf.ids[i], "ids of \(text.debugDescription)")
            XCTAssertEqual(hf.decoded[i], text, "Hugging Face's decode of \(text.debugDescription)")
        }
        XCTAssertTrue(hf.ids.joined().contains(599), "<|endoftext|> is id 599 for Hugging Face too")
    }

    func testATokenizerTrainedByHuggingFaceEncodesToTheSameIdsHere() throws {
        guard let python = try huggingFacePython("TokenizerTests", skipping: "the Hugging Face comparison") else { return }
        let dir = try scratch("hf-theirs")
        let input = dir.appendingPathComponent("text.txt").path, path = dir.appendingPathComponent("tokenizer.json").path
        try Self.trainingText.write(toFile: input, atomically: true, encoding: .utf8)
        let texts = Self.texts + Self.fuzzTexts
        guard let hf = try huggingFaceEncode(python, tokenizer: path, texts: texts, in: dir,
                                             train: ["--train", input, "600"]) else { return }
        let tokenizer = try Tokenizer(path: path)
        XCTAssertEqual(tokenizer.id(of: "<|endoftext|>"), 0, "Hugging Face's trainer puts special tokens first")
        XCTAssertGreaterThan(tokenizer.model.merges.count, 100)
        XCTAssertEqual(hf.ids.count, texts.count)
        for (i, text) in texts.enumerated() {
            XCTAssertEqual(tokenizer.encode(text), hf.ids[i], "ids of \(text.debugDescription)")
            XCTAssertEqual(tokenizer.decode(hf.ids[i]), text, "decode of \(text.debugDescription)")
        }
    }
}
