// GPT-2's pre-tokenization: the split of text into the pieces that BPE then encodes one by one. Hand-written
// equivalent of the regular expression (Hugging Face's ByteLevel pre-tokenizer with use_regex)
//
//     's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//
// matched leftmost-first on Unicode scalars: \p{L} is the general categories L*, \p{N} the categories N*, \s
// the White_Space property. "?" is an optional U+0020 only. The rule \s+(?!\S) means that a run of two or more
// whitespace scalars followed by a non-space leaves its last scalar to the next piece: "a   b" splits as
// "a", "  ", " b"; before a letter a newline stays alone: "a\n\nb" is "a", "\n", "\n", "b".

public enum PreTokenizer {
    enum Kind { case letter, number, space, other }

    static func kind(_ scalar: Unicode.Scalar) -> Kind {
        let properties = scalar.properties
        if properties.isWhitespace { return .space }
        switch properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return .letter
        case .decimalNumber, .letterNumber, .otherNumber: return .number
        default: return .other
        }
    }

    /// The pieces of `text`, in order; their concatenation is `text`.
    public static func split(_ text: String) -> [String] {
        let scalars = Array(text.unicodeScalars)
        return ranges(scalars).map { String(String.UnicodeScalarView(scalars[$0])) }
    }

    /// The UTF-8 bytes of each piece of `scalars`.
    public static func pieceBytes(_ scalars: [Unicode.Scalar]) -> [[UInt8]] {
        ranges(scalars).map { range in
            var bytes: [UInt8] = []
            for scalar in scalars[range] { UTF8.encode(scalar) { bytes.append($0) } }
            return bytes
        }
    }

    /// The pieces of `scalars` as ranges of indices.
    static func ranges(_ s: [Unicode.Scalar]) -> [Range<Int>] {
        let kinds = s.map(kind)
        var pieces: [Range<Int>] = []
        var i = 0
        while i < s.count {
            let end = pieceEnd(s, kinds, from: i)
            pieces.append(i..<end)
            i = end
        }
        return pieces
    }

    /// Where the piece that starts at `i` ends (the first alternative of the pattern that matches there).
    static func pieceEnd(_ s: [Unicode.Scalar], _ kinds: [Kind], from i: Int) -> Int {
        if let length = contraction(s, at: i) { return i + length }
        // ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+': an optional space, then a run of one kind.
        var j = i
        if s[j] == " " && j + 1 < s.count && kinds[j + 1] != .space { j += 1 }
        if kinds[j] != .space {
            let runKind = kinds[j]
            j += 1
            while j < s.count && kinds[j] == runKind { j += 1 }
            return j
        }
        // '\s+(?!\S)' then '\s+': whitespace to the end, or all but the last before a non-space (if that leaves any).
        var k = i
        while k < s.count && kinds[k] == .space { k += 1 }
        if k == s.count || k - i == 1 { return k }
        return k - 1
    }

    /// The length of "'s", "'t", "'re", "'ve", "'m", "'ll" or "'d" at `i`, if one starts there.
    static func contraction(_ s: [Unicode.Scalar], at i: Int) -> Int? {
        guard s[i] == "'", i + 1 < s.count else { return nil }
        switch s[i + 1] {
        case "s", "t", "m", "d": return 2
        case "r", "v": return i + 2 < s.count && s[i + 2] == "e" ? 3 : nil
        case "l": return i + 2 < s.count && s[i + 2] == "l" ? 3 : nil
        default: return nil
        }
    }
}
