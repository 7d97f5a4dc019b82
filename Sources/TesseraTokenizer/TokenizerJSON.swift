// Hugging Face's tokenizer.json for a GPT-2 style byte-level BPE: writing (vocabulary in id order, merges as
// [["a","b"], ...] pairs, special tokens as added tokens) and reading (merges as pairs or as the older "a b"
// strings of GPT-2's own file). Reading refuses what this tokenizer would encode differently from Hugging Face:
// a normalizer, a pre-tokenizer other than ByteLevel without prefix space, BPE dropout or subword affixes.

import Foundation

public struct TokenizerFileError: Error, CustomStringConvertible {
    public let path: String
    public let message: String
    public var description: String { "\(path): \(message)" }
}

enum TokenizerJSON {
    struct Contents {
        var vocab: [String: Int]
        var merges: [(String, String)]
        var special: [(content: String, id: Int)]
        var ignoreMerges: Bool
    }

    // MARK: Writing

    static func render(vocab: [String: Int], merges: [(String, String)], special: [(content: String, id: Int)]) -> String {
        let quote = quoter()
        let added = special.sorted { $0.id < $1.id }.map {
            "    {\"id\": \($0.id), \"content\": \(quote($0.content)), \"single_word\": false, \"lstrip\": false, "
                + "\"rstrip\": false, \"normalized\": false, \"special\": true}"
        }
        let byteLevel = { (prefix: Bool, trim: Bool) in
            "{\"type\": \"ByteLevel\", \"add_prefix_space\": \(prefix), \"trim_offsets\": \(trim), \"use_regex\": true}"
        }
        let vocabLines = vocab.sorted { $0.value < $1.value }.map { "      \(quote($0.key)): \($0.value)" }
        let mergeLines = merges.map { "      [\(quote($0.0)), \(quote($0.1))]" }
        return """
            {
              "version": "1.0",
              "truncation": null,
              "padding": null,
              "added_tokens": [\(list(added, close: "  "))],
              "normalizer": null,
              "pre_tokenizer": \(byteLevel(false, true)),
              "post_processor": \(byteLevel(true, false)),
              "decoder": \(byteLevel(true, true)),
              "model": {
                "type": "BPE",
                "dropout": null,
                "unk_token": null,
                "continuing_subword_prefix": "",
                "end_of_word_suffix": "",
                "fuse_unk": false,
                "byte_fallback": false,
                "ignore_merges": false,
                "vocab": {\(list(vocabLines, close: "    "))},
                "merges": [\(list(mergeLines, close: "    "))]
              }
            }

            """
    }

    /// Lines joined with commas, on their own lines before the closing bracket at `indent` (nothing for none).
    private static func list(_ lines: [String], close indent: String) -> String {
        lines.isEmpty ? "" : "\n" + lines.joined(separator: ",\n") + "\n" + indent
    }

    /// Makes JSON string literals (Foundation's encoder, reused; non-ASCII stays as UTF-8).
    static func quoter() -> (String) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .withoutEscapingSlashes
        return { String(decoding: try! encoder.encode($0), as: UTF8.self) }  // a String always encodes
    }

    // MARK: Reading

    static func parse(_ data: Data, path: String) throws -> Contents {
        func fail(_ message: String) -> TokenizerFileError { TokenizerFileError(path: path, message: message) }
        let root: Any
        do {
            root = try JSONSerialization.jsonObject(with: data)
        } catch {
            throw fail("not a JSON file (expected a Hugging Face tokenizer.json): \(error.localizedDescription)")
        }
        guard let top = root as? [String: Any] else { throw fail("expected a JSON object at the top (a tokenizer.json)") }
        guard let model = top["model"] as? [String: Any] else { throw fail("expected an object \"model\" (a BPE model)") }
        if let type = model["type"], type as? String != "BPE" {
            throw fail("expected model.type \"BPE\", found \(type)")
        }
        if let normalizer = top["normalizer"], !(normalizer is NSNull) {
            throw fail("expected \"normalizer\": null (normalizers are not supported)")
        }
        let pre = top["pre_tokenizer"] as? [String: Any]
        guard pre?["type"] as? String == "ByteLevel", pre?["add_prefix_space"] as? Bool != true,
              pre?["use_regex"] as? Bool != false else {
            throw fail("expected \"pre_tokenizer\" of type ByteLevel with add_prefix_space false and use_regex true")
        }
        if let dropout = model["dropout"], !(dropout is NSNull) { throw fail("expected model.dropout null") }
        for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if let value = model[key], !(value is NSNull), value as? String != "" { throw fail("expected model.\(key) empty") }
        }
        if model["byte_fallback"] as? Bool == true { throw fail("expected model.byte_fallback false") }

        guard let rawVocab = model["vocab"] as? [String: Any] else {
            throw fail("expected model.vocab, an object of token -> id")
        }
        var vocab: [String: Int] = [:]
        for (token, value) in rawVocab {
            guard let id = value as? Int, id >= 0 else { throw fail("expected a non-negative integer id for \(token.debugDescription) in model.vocab") }
            vocab[token] = id
        }
        guard let rawMerges = model["merges"] as? [Any] else {
            throw fail("expected model.merges, a list of [\"a\", \"b\"] pairs or \"a b\" strings")
        }
        var merges: [(String, String)] = []
        merges.reserveCapacity(rawMerges.count)
        for (i, item) in rawMerges.enumerated() {
            if let pair = item as? [String], pair.count == 2 {
                merges.append((pair[0], pair[1]))
            } else if let line = item as? String, case let parts = line.split(separator: " ", omittingEmptySubsequences: false),
                      parts.count == 2 {
                merges.append((String(parts[0]), String(parts[1])))
            } else {
                throw fail("expected merge \(i) to be a pair [\"a\", \"b\"] or a string \"a b\", found \(item)")
            }
        }
        var special: [(content: String, id: Int)] = []
        for (i, item) in ((top["added_tokens"] as? [Any]) ?? []).enumerated() {
            guard let token = item as? [String: Any], let content = token["content"] as? String, let id = token["id"] as? Int else {
                throw fail("expected added_tokens[\(i)] to have a string \"content\" and an integer \"id\"")
            }
            for flag in ["single_word", "lstrip", "rstrip"] where token[flag] as? Bool == true {
                throw fail("expected added token \(content.debugDescription) to have \(flag) false (not supported)")
            }
            special.append((content, id))
        }
        return Contents(vocab: vocab, merges: merges, special: special, ignoreMerges: model["ignore_merges"] as? Bool == true)
    }
}
