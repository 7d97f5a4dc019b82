// `tessera prepare --tokenizer`: documents encoded with a BPE tokenizer.json, each preceded by the end-of-text token
// (llm.c's convention), into a temporary token file that `Prepare` then cuts into shards. Documents are encoded one at
// a time, so memory holds one document, not the corpus. See docs/data.md.

import Foundation
import TesseraTokenizer
#if canImport(Glibc)
import Glibc
#endif

/// How `tessera prepare` tokenizes with a tokenizer.json.
public struct PrepareTokenization: Sendable {
    /// The tokenizer.json.
    public var path: String
    /// How input files are cut into documents.
    public var documents: DocumentFormat
    /// The special token written before every document.
    public var eot: String

    public init(path: String, documents: DocumentFormat = .wholeFile, eot: String = "<|endoftext|>") {
        self.path = path
        self.documents = documents
        self.eot = eot
    }

    /// The tokenization the command-line flags ask for: nil without --tokenizer (byte-level), and an error naming
    /// the flag when --delimiter, --jsonl or --eot come without it, or --delimiter with --jsonl. The delimiter's
    /// escapes \n, \t, \r and \\ stand for newline, tab, carriage return and backslash.
    public static func fromFlags(tokenizer: String?, delimiter: String?, jsonl: Bool, eot: String?) throws
        -> PrepareTokenization?
    {
        guard let tokenizer else {
            let given = [(delimiter != nil, "--delimiter"), (jsonl, "--jsonl"), (eot != nil, "--eot")].filter(\.0)
            if let flag = given.first?.1 { throw DataError("prepare: \(flag) needs --tokenizer FILE (byte-level has no documents)") }
            return nil
        }
        var documents = DocumentFormat.wholeFile
        if let delimiter {
            guard !jsonl else { throw DataError("prepare: --delimiter and --jsonl exclude each other") }
            let d = unescape(delimiter)
            guard !d.isEmpty else { throw DataError("prepare: --delimiter must not be empty") }
            documents = .delimited(d)
        } else if jsonl {
            documents = .jsonl
        }
        return PrepareTokenization(path: tokenizer, documents: documents, eot: eot ?? "<|endoftext|>")
    }

    /// `text` with \n, \t, \r and \\ replaced by what they stand for; other backslashes stay.
    static func unescape(_ text: String) -> String {
        var out = "", escaped = false
        for ch in text {
            if escaped {
                switch ch {
                case "n": out.append("\n")
                case "t": out.append("\t")
                case "r": out.append("\r")
                case "\\": out.append("\\")
                default: out.append("\\"); out.append(ch)
                }
                escaped = false
            } else if ch == "\\" {
                escaped = true
            } else {
                out.append(ch)
            }
        }
        if escaped { out.append("\\") }
        return out
    }
}

/// The token stream of a tokenized prepare, held in a temporary file of native uint32 ids.
final class EncodedTokens {
    let tmpPath: String
    let tokenizer: Tokenizer
    let eotId: Int
    private(set) var count = 0
    private(set) var documents = 0
    private var file: UnsafeMutablePointer<FILE>?

    /// Encodes the documents of `inputs` into `DIR/.prepare-tokens.tmp`, EOT before each document.
    init(inputs: [String], outDir: String, options: PrepareTokenization) throws {
        if case .delimited(let d) = options.documents, d.isEmpty {
            throw DataError("prepare: the document delimiter must not be empty")
        }
        tokenizer = try Tokenizer(path: options.path)
        guard let eot = tokenizer.id(of: options.eot) else {
            let known = tokenizer.special.tokens.map { "\"\($0.content)\"" }.joined(separator: ", ")
            throw DataError("\(options.path): the tokenizer has no special token \"\(options.eot)\" to write between "
                            + "documents (--eot); its special tokens: \(known.isEmpty ? "none" : known)")
        }
        eotId = eot
        tmpPath = (outDir as NSString).appendingPathComponent(".prepare-tokens.tmp")
        guard let f = fopen(tmpPath, "w+b") else {
            throw DataError("\(tmpPath): cannot create the temporary token file: \(String(cString: strerror(errno)))")
        }
        file = f
        do {
            for path in inputs {
                try options.documents.forEachDocument(in: path) { text in
                    try append([eot] + tokenizer.encode(text))
                    documents += 1
                }
            }
            guard documents > 0 else {
                throw DataError("\(inputs.joined(separator: ", ")): no documents (every record is empty)")
            }
            guard fflush(f) == 0, fseek(f, 0, SEEK_SET) == 0 else {
                throw DataError("\(tmpPath): write failed: \(String(cString: strerror(errno)))")
            }
        } catch {
            close()
            throw error
        }
    }

    private func append(_ ids: [Int]) throws {
        let words = ids.map { UInt32(truncatingIfNeeded: $0) }
        let wrote = words.withUnsafeBytes { fwrite($0.baseAddress, 4, words.count, file) }
        guard wrote == words.count else {
            throw DataError("\(tmpPath): write failed: \(String(cString: strerror(errno)))")
        }
        count += ids.count
    }

    /// Fills `out` with the next tokens of the stream.
    func read(into out: UnsafeMutableBufferPointer<UInt32>) throws {
        guard out.count > 0 else { return }
        guard fread(out.baseAddress!, 4, out.count, file) == out.count else {
            throw DataError("\(tmpPath): the temporary token file ended early or cannot be read")
        }
    }

    /// Closes and removes the temporary file.
    func close() {
        if let f = file { fclose(f); file = nil; unlink(tmpPath) }
    }

    deinit { close() }
}
