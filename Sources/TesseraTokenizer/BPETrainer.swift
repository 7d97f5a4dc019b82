// Training a byte-level BPE vocabulary. The texts are cut at special tokens (never learned), pre-tokenized, and
// each distinct pre-token is counted. Ids 0...255 are the single bytes, id = byte value (so the first 256 ids
// are the byte-level tokens of `tessera prepare`). Then, until the vocabulary has `vocabSize` tokens counting
// the special ones, the most frequent adjacent pair (summed over pre-tokens times their counts) is merged into a
// new token with the next id; ties go to the pair whose (left bytes, right bytes) is lexicographically smallest
// as unsigned bytes. A merge whose result has the bytes of an existing token reuses that token's id. The special
// tokens take the ids after the last merged token, in the order given. Training stops early when no pair is left.
//
// Pair counts are kept incrementally: each merge updates only the pre-tokens that hold its pair (an index from
// pair to pre-tokens) and a max-heap with lazy deletion (a popped entry whose count is stale is pushed again).

public enum BPETrainer {
    public struct Result {
        public var vocab: [String: Int]
        public var merges: [(String, String)]
        public var special: [(content: String, id: Int)]
    }

    public static func train(texts: [String], vocabSize: Int, specialTokens given: [String]) -> Result {
        var specialTokens: [String] = []  // each once, in the order given
        for t in given where !specialTokens.contains(t) { specialTokens.append(t) }
        let special = SpecialTokens(specialTokens.enumerated().map { ($0.element, $0.offset) })
        var counts: [[UInt8]: Int] = [:]
        for text in texts {
            let scalars = Array(text.unicodeScalars)
            for case .text(let range) in special.segments(scalars) {
                for piece in PreTokenizer.pieceBytes(Array(scalars[range])) { counts[piece, default: 0] += 1 }
            }
        }
        var state = State(counts: counts)
        while state.tokenBytes.count + specialTokens.count < vocabSize, state.mergeBest() {}

        var vocab: [String: Int] = [:]
        for (id, bytes) in state.tokenBytes.enumerated() { vocab[ByteLevel.string(bytes)] = id }
        let merges = state.merges.map { (ByteLevel.string(state.tokenBytes[$0.0]), ByteLevel.string(state.tokenBytes[$0.1])) }
        var ids: [(content: String, id: Int)] = []
        for content in specialTokens where !ids.contains(where: { $0.content == content }) {
            ids.append((content, state.tokenBytes.count + ids.count))
        }
        return Result(vocab: vocab, merges: merges, special: ids)
    }

    /// The training state: pre-tokens as symbol ids, pair counts, the pair -> pre-tokens index, the heap.
    struct State {
        var words: [[Int]]
        var wordCounts: [Int]
        var tokenBytes: [[UInt8]] = (0..<256).map { [UInt8($0)] }
        var idOfBytes: [[UInt8]: Int] = [:]
        var merges: [(Int, Int)] = []
        var pairCounts: [UInt64: Int] = [:]
        var pairWords: [UInt64: [Int]] = [:]
        var heap: PairHeap

        init(counts: [[UInt8]: Int]) {
            words = counts.keys.map { $0.map(Int.init) }
            wordCounts = counts.values.map { $0 }
            for (id, bytes) in tokenBytes.enumerated() { idOfBytes[bytes] = id }
            for (w, word) in words.enumerated() where word.count > 1 {
                for i in 0..<(word.count - 1) {
                    let key = BPE.pairKey(word[i], word[i + 1])
                    pairCounts[key, default: 0] += wordCounts[w]
                    pairWords[key, default: []].append(w)
                }
            }
            heap = PairHeap()
            for (key, count) in pairCounts { heap.push(count: count, key: key, tokenBytes: tokenBytes) }
        }

        /// Merges the best pair everywhere; false when no pair is left.
        mutating func mergeBest() -> Bool {
            guard let key = popBest() else { return false }
            let left = Int(key >> 32), right = Int(key & 0xFFFF_FFFF)
            let bytes = tokenBytes[left] + tokenBytes[right]
            let id: Int
            if let existing = idOfBytes[bytes] {
                id = existing
            } else {
                id = tokenBytes.count
                tokenBytes.append(bytes)
                idOfBytes[bytes] = id
            }
            merges.append((left, right))

            var delta: [UInt64: Int] = [:]
            for w in pairWords.removeValue(forKey: key) ?? [] {
                let old = words[w]
                var new: [Int] = []
                new.reserveCapacity(old.count)
                var i = 0
                while i < old.count {
                    if i + 1 < old.count && old[i] == left && old[i + 1] == right {
                        new.append(id); i += 2
                    } else {
                        new.append(old[i]); i += 1
                    }
                }
                if new.count == old.count { continue }  // a stale index entry
                let c = wordCounts[w]
                for i in 0..<(old.count - 1) { delta[BPE.pairKey(old[i], old[i + 1]), default: 0] -= c }
                for i in 0..<max(new.count - 1, 0) {
                    let k = BPE.pairKey(new[i], new[i + 1])
                    delta[k, default: 0] += c
                    if new[i] == id || new[i + 1] == id { pairWords[k, default: []].append(w) }
                }
                words[w] = new
            }
            for (k, d) in delta where d != 0 {
                let now = pairCounts[k, default: 0] + d
                if now > 0 { pairCounts[k] = now } else { pairCounts[k] = nil; pairWords[k] = nil }
                if d > 0 { heap.push(count: now, key: k, tokenBytes: tokenBytes) }
            }
            return true
        }

        /// The most frequent pair with its true count (stale heap entries are re-pushed with their current count).
        mutating func popBest() -> UInt64? {
            while let (count, key) = heap.pop(tokenBytes: tokenBytes) {
                let now = pairCounts[key] ?? 0
                if now == count { return key }
                if now > 0 { heap.push(count: now, key: key, tokenBytes: tokenBytes) }
            }
            return nil
        }
    }
}
