// Special (added) tokens such as "<|endoftext|>": found in the raw text before pre-tokenization, each standing
// for its own id. Matching is leftmost, and the longest token at the same position wins (as Hugging Face's added
// vocabulary does); the text between two matches is pre-tokenized on its own.

public struct SpecialTokens: Sendable {
    /// (content, id), longest content first.
    public let tokens: [(content: String, id: Int)]
    private let patterns: [[Unicode.Scalar]]
    private let ids: [String: Int]
    private let contents: [Int: String]

    public enum Segment: Equatable {
        /// Ordinary text: the scalars in this range of the text's scalars.
        case text(Range<Int>)
        /// A special token's id.
        case special(Int)
    }

    public init(_ tokens: [(content: String, id: Int)]) {
        let nonEmpty = tokens.filter { !$0.content.isEmpty }
        let sorted = nonEmpty.sorted { $0.content.unicodeScalars.count > $1.content.unicodeScalars.count }
        self.tokens = sorted
        patterns = sorted.map { Array($0.content.unicodeScalars) }
        ids = Dictionary(sorted.map { ($0.content, $0.id) }, uniquingKeysWith: { first, _ in first })
        contents = Dictionary(sorted.map { ($0.id, $0.content) }, uniquingKeysWith: { first, _ in first })
    }

    public var isEmpty: Bool { tokens.isEmpty }

    public func id(of content: String) -> Int? { ids[content] }

    public func content(of id: Int) -> String? { contents[id] }

    /// `scalars` cut into ordinary text and special tokens, in order.
    public func segments(_ scalars: [Unicode.Scalar]) -> [Segment] {
        var out: [Segment] = []
        var textStart = 0, i = 0
        while i < scalars.count {
            if let k = patterns.firstIndex(where: { matches($0, scalars, at: i) }) {
                if textStart < i { out.append(.text(textStart..<i)) }
                out.append(.special(tokens[k].id))
                i += patterns[k].count
                textStart = i
            } else {
                i += 1
            }
        }
        if textStart < scalars.count { out.append(.text(textStart..<scalars.count)) }
        return out
    }

    private func matches(_ pattern: [Unicode.Scalar], _ scalars: [Unicode.Scalar], at i: Int) -> Bool {
        guard scalars.count - i >= pattern.count else { return false }
        for (k, scalar) in pattern.enumerated() where scalars[i + k] != scalar { return false }
        return true
    }
}
