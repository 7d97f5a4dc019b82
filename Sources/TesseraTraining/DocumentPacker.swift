// Packing whole documents into training rows (`data.packing = "documents"`), for block-causal attention.
//
// Documents: a token source is cut before every separator token (the end-of-text token `prepare --tokenizer`
// writes before each document), so a document is its separator and the tokens up to the next one. A row holds
// seqLen + 1 tokens (inputs are its first seqLen, targets its last seqLen) packed from whole documents:
//   - documents come in an order shuffled by the seed (Fisher-Yates over splitmix64), so rows mix the corpus;
//   - each goes into the first of a few open rows (8) with room for it (first fit); when none has room a new row
//     opens, and when more than 8 are open the fullest is closed; what a closed row does not fill is padding;
//   - only a document longer than a row is split: into row-sized pieces, whole rows of their own, and a last piece
//     placed like a document (the split is recorded: each piece's offset in its document; a last piece of a single
//     token, which has no target, is dropped), so every row has targets;
// so no document shorter than a row is ever cut, and attention never crosses a document (DocumentStarts).
// Targets: the next token of the same document; at a document's end and in padding, -1 (ignored by the loss).
// Positions restart at each document and at each piece of a split one (attention cannot see the piece before).
// Which rows a step trains on is, as for windows, a counter-based hash of (seed, step, sequence): the same global
// batch for any number of ranks, and a resumed run needs only the step.

import Foundation
import TesseraKernels

public final class DocumentPacker: Sendable {
    /// A run of one document's tokens inside a row.
    public struct Piece: Sendable, Equatable {
        /// Where the run starts in the token source, and its length.
        public var start: Int, count: Int
        /// The run's first token's position within its document (0 unless the document was split).
        public var offset: Int
    }

    public let seqLen: Int
    public let seed: UInt64
    public let rows: [[Piece]]
    /// Documents found, and how many were split (longer than a row).
    public let documents: Int, splitDocuments: Int
    /// Padding tokens over all row tokens.
    public let paddingFraction: Double
    /// Row slots a document may go into before the fullest is closed.
    public static let openRows = 8

    public var rowLength: Int { seqLen + 1 }

    /// Packs the documents of `source` (cut before each `separator` token) into rows of seqLen + 1 tokens.
    public init(source: any TokenSource, seqLen: Int, separator: Int32, seed: UInt64) throws {
        self.seqLen = seqLen; self.seed = seed
        let length = seqLen + 1
        var docs = try Self.documentSpans(source: source, separator: separator)
        // Shuffled order.
        var state = splitmix64(seed ^ 0x5041_434B)
        for i in stride(from: docs.count - 1, to: 0, by: -1) {
            state = splitmix64(state)
            docs.swapAt(i, Int(state % UInt64(i + 1)))
        }
        var rows: [[Piece]] = [], open: [(pieces: [Piece], used: Int)] = []
        var split = 0
        for d in docs {
            if d.count > length {
                split += 1
                for p in Self.pieces(of: d, length: length) {
                    if p.count == length { rows.append([p]) } else { Self.place(p, &open, &rows, length) }
                }
            } else {
                Self.place(Piece(start: d.start, count: d.count, offset: 0), &open, &rows, length)
            }
        }
        rows += open.map(\.pieces)
        let used = rows.reduce(0) { $0 + $1.reduce(0) { $0 + $1.count } }
        self.rows = rows
        documents = docs.count; splitDocuments = split
        paddingFraction = 1 - Double(used) / Double(rows.count * length)
    }

    /// The documents of `source`: cut before every `separator` token, each at least 2 tokens (a lone separator has
    /// no target), in corpus order. Throws when there is none.
    public static func documentSpans(source: any TokenSource, separator: Int32) throws -> [(start: Int, count: Int)] {
        var starts: [Int] = [0]
        let chunk = 1 << 16
        withUnsafeTemporaryAllocation(of: Int32.self, capacity: chunk) { buf in
            var i = 0
            while i < source.count {
                let n = min(chunk, source.count - i)
                source.copy(from: i, count: n, into: buf.baseAddress!)
                for k in 0..<n where buf[k] == separator && i + k > 0 { starts.append(i + k) }
                i += n
            }
        }
        var docs = (0..<starts.count).map { (start: starts[$0], count: ($0 + 1 < starts.count ? starts[$0 + 1] : source.count) - starts[$0]) }
        docs.removeAll { $0.count < 2 }
        guard !docs.isEmpty else {
            throw DataError("\(source.description): no document of 2 or more tokens to pack (documents start at token \(separator))")
        }
        return docs
    }

    /// Document `d` cut into pieces of `length` tokens and a shorter last one, each with its offset; a last piece of
    /// one token (no target) is dropped.
    static func pieces(of d: (start: Int, count: Int), length: Int) -> [Piece] {
        stride(from: 0, to: d.count, by: length).compactMap { offset in
            let n = min(length, d.count - offset)
            return n >= 2 ? Piece(start: d.start + offset, count: n, offset: offset) : nil
        }
    }

    /// First fit among the open rows; a new row when none has room; the fullest closed beyond `openRows`.
    private static func place(_ p: Piece, _ open: inout [(pieces: [Piece], used: Int)], _ rows: inout [[Piece]], _ length: Int) {
        if let i = open.firstIndex(where: { $0.used + p.count <= length }) {
            open[i].pieces.append(p); open[i].used += p.count
            if open[i].used == length { rows.append(open.remove(at: i).pieces) }
            return
        }
        open.append(([p], p.count))
        if open.count > Self.openRows {
            let fullest = open.indices.max { open[$0].used < open[$1].used }!
            rows.append(open.remove(at: fullest).pieces)
        }
    }

    /// The row sequence `sequence` of step `step` trains on.
    public func row(step: Int, sequence: Int) -> Int {
        Int(windowHash(seed: seed ^ 0x524F_5753, step: step, sequence: sequence) % UInt64(rows.count))
    }

    /// Writes row `row`'s tokens at positions `t` (of 0 ..< seqLen): inputs, targets (-1 across a document's end and
    /// in padding), each token's position within its document, and the whole row's document starts (seqLen values:
    /// where each position's document starts in the row; padding counts as one document).
    public func write(row: Int, tokens t: Range<Int>, source: any TokenSource, inputs: UnsafeMutablePointer<Int32>,
                      targets: UnsafeMutablePointer<Int32>, positions: UnsafeMutablePointer<Int32>?,
                      starts: UnsafeMutablePointer<Int32>?) {
        let length = rowLength
        withUnsafeTemporaryAllocation(of: Int32.self, capacity: 4 * length) { buf in
            let ids = buf.baseAddress!, doc = ids + length, pos = doc + length, begin = pos + length
            var at = 0
            for (k, p) in rows[row].enumerated() {
                source.copy(from: p.start, count: p.count, into: ids + at)
                for i in 0..<p.count { doc[at + i] = Int32(k); pos[at + i] = Int32(i); begin[at + i] = Int32(at) }
                at += p.count
            }
            // Padding: token 0 (no target is ever read from it: its targets are -1, and no real token's target is it).
            for i in at..<length { ids[i] = 0; doc[i] = -1; pos[i] = Int32(i - at); begin[i] = Int32(at) }
            for (j, i) in t.enumerated() {
                inputs[j] = ids[i]
                targets[j] = doc[i] >= 0 && doc[i + 1] == doc[i] ? ids[i + 1] : -1
                positions?[j] = pos[i]
            }
            if let starts { for i in 0..<seqLen { starts[i] = begin[i] } }
        }
    }

    /// Targets that count (not -1) in row `row`: each piece of n tokens gives its n - 1 next-token pairs (the row's
    /// last token is only ever a target, so every pair lies within the row's inputs and targets).
    public func targetCount(row: Int) -> Int {
        rows[row].reduce(0) { $0 + $1.count - 1 }
    }
}
