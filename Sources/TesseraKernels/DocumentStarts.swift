// Document boundaries of packed rows for block-causal attention (`data.packing = "documents"`): for each batch
// row and global position, the global position where that position's document starts. A row packed from
// documents of lengths 3, 2, 4 has starts 0 0 0 3 3 5 5 5 5. The attention kernel reads it (AttentionLayout's
// `documents`); positions restart at each start (the model's position ids), and the loader writes both.

public struct DocumentStarts: Sendable, Equatable {
    /// [rows, length] row-major: starts[r * length + p] = start of the document holding position p of row r.
    public let starts: [Int32]
    /// Positions per row (the whole sequence, not a rank's share: ranks index it by global position).
    public let length: Int

    public init(starts: [Int32], length: Int) {
        precondition(length > 0 && starts.count % length == 0, "document starts: \(starts.count) values are not whole rows of \(length)")
        self.starts = starts; self.length = length
    }

    /// From each row's document lengths (each row's lengths sum to `length`).
    public init(lengths: [[Int]], length: Int) {
        var s: [Int32] = []
        s.reserveCapacity(lengths.count * length)
        for row in lengths {
            precondition(row.reduce(0, +) == length && row.allSatisfy { $0 > 0 }, "document starts: lengths \(row) do not fill \(length)")
            var at = 0
            for n in row { s += Array(repeating: Int32(at), count: n); at += n }
        }
        self.init(starts: s, length: length)
    }

    public var rows: Int { starts.count / length }

    @inlinable public func start(_ row: Int, _ position: Int) -> Int { Int(starts[row * length + position]) }

    /// The rows `range` (a rank's share of the batch, or a micro-batch).
    public func rows(_ range: Range<Int>) -> DocumentStarts {
        DocumentStarts(starts: Array(starts[range.lowerBound * length ..< range.upperBound * length]), length: length)
    }
}
