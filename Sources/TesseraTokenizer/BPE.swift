// The byte-level BPE model: a vocabulary of byte-level strings and a ranked list of merges. One pre-token is
// encoded by starting from its bytes' symbols and applying, again and again, the merge of lowest rank among the
// adjacent pairs (every occurrence of that pair, left to right), until no adjacent pair has a merge. This is
// GPT-2's rule and gives the same ids as Hugging Face's BPE (which pops the lowest (rank, position) first).

import Foundation

public final class BPE: @unchecked Sendable {
    /// Byte-level string -> id.
    public let vocab: [String: Int]
    /// Merges in rank order (rank = index).
    public let merges: [(String, String)]
    /// id -> byte-level string (nil where no string has that id).
    let tokens: [String?]
    /// The id of each byte's one-scalar symbol (nil if the vocabulary lacks it: such bytes are dropped, as
    /// Hugging Face does without an unknown token).
    let byteIds: [Int?]
    /// (left id, right id) -> (rank, merged id).
    let mergeTable: [UInt64: (rank: Int, id: Int)]
    /// With Hugging Face's ignore_merges: a pre-token that is itself in the vocabulary is that one token.
    let ignoreMerges: Bool

    private let lock = NSLock()
    private var cache: [[UInt8]: [Int]] = [:]
    private static let cacheLimit = 200_000

    public enum ModelError: Error, CustomStringConvertible {
        case unknownMergePart(rank: Int, part: String)
        public var description: String {
            switch self {
            case .unknownMergePart(let rank, let part):
                return "merge \(rank) needs \"\(part)\", which is not in the vocabulary"
            }
        }
    }

    public init(vocab: [String: Int], merges: [(String, String)], ignoreMerges: Bool = false) throws {
        self.vocab = vocab
        self.merges = merges
        self.ignoreMerges = ignoreMerges
        var tokens = [String?](repeating: nil, count: (vocab.values.max() ?? -1) + 1)
        for (token, id) in vocab { tokens[id] = token }
        self.tokens = tokens
        byteIds = ByteLevel.scalars.map { vocab[String($0)] }
        var table: [UInt64: (rank: Int, id: Int)] = [:]
        for (rank, (a, b)) in merges.enumerated() {
            guard let left = vocab[a] else { throw ModelError.unknownMergePart(rank: rank, part: a) }
            guard let right = vocab[b] else { throw ModelError.unknownMergePart(rank: rank, part: b) }
            guard let merged = vocab[a + b] else { throw ModelError.unknownMergePart(rank: rank, part: a + b) }
            table[BPE.pairKey(left, right)] = (rank, merged)  // a repeated pair takes its last rank, as in HF
        }
        mergeTable = table
    }

    static func pairKey(_ left: Int, _ right: Int) -> UInt64 { UInt64(UInt32(left)) << 32 | UInt64(UInt32(right)) }

    /// The ids of one pre-token given as its byte-level string (characters outside the alphabet are dropped).
    public func encode(_ word: String) -> [Int] {
        encode(bytes: word.unicodeScalars.compactMap { ByteLevel.bytes[$0] })
    }

    /// The ids of one pre-token given as its bytes.
    public func encode(bytes: [UInt8]) -> [Int] {
        lock.lock()
        let cached = cache[bytes]
        lock.unlock()
        if let cached { return cached }
        let ids = merge(bytes)
        lock.lock()
        if cache.count >= BPE.cacheLimit { cache.removeAll(keepingCapacity: true) }
        cache[bytes] = ids
        lock.unlock()
        return ids
    }

    /// The merge loop of one pre-token (uncached).
    func merge(_ bytes: [UInt8]) -> [Int] {
        if ignoreMerges, let whole = vocab[ByteLevel.string(bytes)] { return [whole] }
        var symbols = bytes.compactMap { byteIds[Int($0)] }
        while symbols.count > 1 {
            var best: (rank: Int, id: Int, left: Int, right: Int)?
            for i in 0..<(symbols.count - 1) {
                if let m = mergeTable[BPE.pairKey(symbols[i], symbols[i + 1])], m.rank < best?.rank ?? Int.max {
                    best = (m.rank, m.id, symbols[i], symbols[i + 1])
                }
            }
            guard let best else { break }
            var merged: [Int] = []
            merged.reserveCapacity(symbols.count)
            var i = 0
            while i < symbols.count {
                if i + 1 < symbols.count && symbols[i] == best.left && symbols[i + 1] == best.right {
                    merged.append(best.id)
                    i += 2
                } else {
                    merged.append(symbols[i])
                    i += 1
                }
            }
            symbols = merged
        }
        return symbols
    }

    /// The byte-level string of an id, if the vocabulary has one.
    public func token(_ id: Int) -> String? { id >= 0 && id < tokens.count ? tokens[id] : nil }
}
