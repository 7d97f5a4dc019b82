// Variable-length global batches (`data.max_tokens_per_rank`): a step trains on whole documents, not rows.
//
// Sequences: the documents of a token source (cut before every separator, as DocumentPacker does), a document
// longer than `maxLength` (training.seq_len) split into pieces of maxLength tokens with each piece's offset
// recorded (a last piece of one token, which has no target, dropped). A sequence of n tokens is n positions:
// inputs its tokens, targets the next token of the same sequence, -1 after its last (n − 1 targets count).
// Positions restart at 0 in every sequence.
// A step's sequences: draws k = 0, 1, … of windowHash(seed ^ salt, step, k) over the sequences, taken while
// they fit the token budget (training.batch_size × training.seq_len), stopping at the first that does not.
// Nothing depends on the ranks or on earlier steps: every rank computes the same global batch and plans it
// the same way, and a resumed run needs only the step. Evaluation batches draw the same way with another salt.

import TesseraSequenceParallel

public final class DocumentBatches: Sendable {
    public let source: any TokenSource
    public let pieces: [DocumentPacker.Piece]
    public let maxLength: Int, seed: UInt64
    /// Documents found, and how many were longer than maxLength (split).
    public let documents: Int, splitDocuments: Int
    static let trainSalt: UInt64 = 0x5641_524C, evalSalt: UInt64 = 0x4556_414C

    public init(source: any TokenSource, separator: Int32, maxLength: Int, seed: UInt64) throws {
        self.source = source; self.maxLength = maxLength; self.seed = seed
        let docs = try DocumentPacker.documentSpans(source: source, separator: separator)
        pieces = docs.flatMap { DocumentPacker.pieces(of: $0, length: maxLength) }
        documents = docs.count; splitDocuments = docs.filter { $0.count > maxLength }.count
    }

    /// The sequences of training step `step` (indices into `pieces`).
    public func sequences(step: Int, budget: Int) -> [Int] { draw(salt: Self.trainSalt, step, budget: budget) }
    /// The sequences of evaluation batch `batch`, the same on every call.
    public func evalSequences(batch: Int, budget: Int) -> [Int] { draw(salt: Self.evalSalt, batch, budget: budget) }

    private func draw(salt: UInt64, _ step: Int, budget: Int) -> [Int] {
        var out: [Int] = [], total = 0
        for k in 0... {
            let i = Int(windowHash(seed: seed ^ salt, step: step, sequence: k) % UInt64(pieces.count))
            guard total + pieces[i].count <= budget else { break }
            out.append(i); total += pieces[i].count
        }
        return out
    }

    public func lengths(_ sequences: [Int]) -> [Int] { sequences.map { pieces[$0].count } }

    /// Targets that count in a plan of these sequences (each row's sequences, as many tokens as it holds).
    public static func targets(_ plan: DocumentPlan) -> Int {
        plan.items.reduce(0) { $0 + $1.counts.reduce(0) { $0 + max($1 - 1, 0) } }
    }

    /// Writes item `item`'s whole row (item.length positions; `sequences` are the step's, which the item indexes):
    /// token ids, targets (-1 after each sequence's last token and in padding), positions within each sequence,
    /// and where each position's sequence starts (padding at the end counts as one sequence, at position 0).
    public func write(_ item: DocumentPlan.Item, sequences: [Int], ids: UnsafeMutablePointer<Int32>,
                      targets: UnsafeMutablePointer<Int32>, positions: UnsafeMutablePointer<Int32>,
                      starts: UnsafeMutablePointer<Int32>) {
        var at = 0
        for (j, count) in zip(item.sequences, item.counts) {
            let p = pieces[sequences[j]]
            source.copy(from: p.start, count: count, into: ids + at)
            for i in 0..<count {
                targets[at + i] = i + 1 < count ? ids[at + i + 1] : -1
                positions[at + i] = Int32(i); starts[at + i] = Int32(at)
            }
            at += count
        }
        // Padding: token 0 at position 0 (a padded row may be longer than any sequence, so no later position is
        // sure to exist), no target, one document.
        for i in at..<item.length { ids[i] = 0; targets[i] = -1; positions[i] = 0; starts[i] = Int32(at) }
    }
}
