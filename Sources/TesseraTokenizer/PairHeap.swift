// The trainer's priority queue of candidate merges: a binary max-heap of (count, pair) entries, where a higher
// count comes first and equal counts go to the pair whose (left bytes, right bytes) is lexicographically
// smallest. The order is total over distinct pairs, so training does not depend on insertion order.

struct PairHeap {
    private var entries: [(count: Int, key: UInt64)] = []

    mutating func push(count: Int, key: UInt64, tokenBytes: [[UInt8]]) {
        entries.append((count, key))
        var i = entries.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            guard Self.before(entries[i], entries[parent], tokenBytes) else { break }
            entries.swapAt(i, parent)
            i = parent
        }
    }

    mutating func pop(tokenBytes: [[UInt8]]) -> (count: Int, key: UInt64)? {
        guard !entries.isEmpty else { return nil }
        entries.swapAt(0, entries.count - 1)
        let top = entries.removeLast()
        var i = 0
        while true {
            let l = 2 * i + 1, r = l + 1
            var best = i
            if l < entries.count && Self.before(entries[l], entries[best], tokenBytes) { best = l }
            if r < entries.count && Self.before(entries[r], entries[best], tokenBytes) { best = r }
            if best == i { break }
            entries.swapAt(i, best)
            i = best
        }
        return top
    }

    /// True if `a` is popped before `b`.
    static func before(_ a: (count: Int, key: UInt64), _ b: (count: Int, key: UInt64), _ tokenBytes: [[UInt8]]) -> Bool {
        if a.count != b.count { return a.count > b.count }
        let aLeft = tokenBytes[Int(a.key >> 32)], bLeft = tokenBytes[Int(b.key >> 32)]
        if aLeft != bLeft { return aLeft.lexicographicallyPrecedes(bLeft) }
        return tokenBytes[Int(a.key & 0xFFFF_FFFF)].lexicographicallyPrecedes(tokenBytes[Int(b.key & 0xFFFF_FFFF)])
    }
}
