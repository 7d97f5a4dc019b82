// Which ranks run which sequences of a step whose global batch is variable-length documents
// (`data.max_tokens_per_rank`): the data-aware schedule, and the two static layouts it is measured against.
//
// A plan is a list of items in one global order. An item is a row of tokens run by a group of `size` ranks
// (a power of two), the aligned block `block·size ..< (block+1)·size` of the replicas:
//   size 1   a row of whole short sequences packed together (block-causal attention), on one rank;
//   size g   one long sequence over g ranks, padded to a multiple of 2g (each rank holds length / g ≤ capacity
//            tokens): a zigzag ring, or Ulysses (data.group_attention; the plan is the same, DocumentAttention
//            runs it).
// Every rank runs the items it belongs to in plan order. Group items are collectives of their ranks; since
// every rank meets them in the same global order, the earliest unfinished group item always has all its
// ranks on the way (single-rank items never wait), so no order of arrival deadlocks.
//
// The data-aware rule (after ByteScale's and Megatron's hybrid context parallelism, see docs/data.md):
//   1. sequences longer than `capacity` are placed first, longest first: each goes to the smallest group
//      size (from the smallest that fits) with an aligned block that finishes it by the ideal makespan (the
//      step's whole cost over the ranks; of those blocks the earliest), else to the size and block that finish
//      it earliest. A group starts when its slowest member is free and takes cost(n) / g (cost = pair·n(n+1)/2
//      + token·n: attention work is quadratic, the rest linear). Smaller groups send fewer bytes and run larger
//      blocks, so a group grows only when the sequence would otherwise end the step late;
//   2. the other sequences, longest first, go to the rank that is free earliest (LPT), into the fullest of
//      its rows with room (best fit; rows hold at most `capacity` tokens), else a new row.
// Static layouts: `ring` packs every sequence into rows of g × capacity tokens (first fit decreasing), each over a
// ring of g ranks (all of them, or the smallest that holds the longest sequence a step may draw, the rows dealt
// round-robin over the blocks); `dataParallel` truncates sequences to `capacity` tokens and deals rows of
// one rank's capacity round-robin (packed by first fit, or one sequence per row padded to capacity).

import TesseraModel

/// Work of a sequence of n tokens: `pair` per causal attention pair, `token` per token (relative units).
public struct DocumentCost: Sendable, Equatable {
    public var pair: Double, token: Double
    public init(pair: Double, token: Double) { self.pair = pair; self.token = token }
    public func of(_ n: Int) -> Double { pair * Double(n) * Double(n + 1) / 2 + token * Double(n) }

    /// A model's: per token the products (6 FLOPs per weight, forward and backward), per causal attention pair 12
    /// FLOPs per layer and model width, weighted 2.5 because the blockwise kernel runs at about 40% of the product
    /// rate (docs/benchmarks.md).
    public init(model m: TransformerConfig) {
        let lookup = m.family == .llama && !m.tied ? m.vocabSize * m.dModel : 0
        self.init(pair: 2.5 * 12 * Double(m.nLayer * m.dModel), token: 6 * Double(m.parameterCount - lookup))
    }
}

/// Weights from measured item times (`data.cost_weights = "measured"`): least squares of seconds ≈ pair·p + token·t
/// over samples of (attention pairs p, tokens t) a rank computed for an item. Only the weights' ratio matters to
/// the plan (every comparison in it is linear in the cost).
public struct DocumentCostFit: Sendable, Equatable {
    /// Σp², Σp·t, Σt², Σp·y, Σt·y over the samples (y: seconds).
    public var sums: [Double]
    public init(sums: [Double] = [0, 0, 0, 0, 0]) { precondition(sums.count == 5); self.sums = sums }

    public mutating func add(pairs p: Double, tokens t: Double, seconds y: Double) {
        sums[0] += p * p; sums[1] += p * t; sums[2] += t * t; sums[3] += p * y; sums[4] += t * y
    }

    /// The fitted weights; nil when the samples do not tell the two apart (too few, or pairs proportional to tokens
    /// in all of them: the normal equations nearly singular) or a weight comes out ≤ 0.
    public var cost: DocumentCost? {
        let (pp, pt, tt, py, ty) = (sums[0], sums[1], sums[2], sums[3], sums[4])
        let det = pp * tt - pt * pt
        guard pp > 0, tt > 0, det > 1e-6 * pp * tt else { return nil }
        let pair = (py * tt - pt * ty) / det, token = (pp * ty - pt * py) / det
        return pair > 0 && token > 0 ? DocumentCost(pair: pair, token: token) : nil
    }
}

public struct DocumentPlan: Sendable, Equatable {
    public struct Item: Sendable, Equatable {
        /// Ranks in the group (a power of two) and which aligned block of the replicas.
        public var size: Int, block: Int
        /// Indices into the step's sequences, and how many leading tokens of each the row holds (its length
        /// unless truncated).
        public var sequences: [Int], counts: [Int]
        /// Tokens of the row, padding included (a multiple of 2·size for a ring; ≥ Σ counts).
        public var length: Int
        public var ranks: Range<Int> { (block * size)..<((block + 1) * size) }
        public var tokens: Int { counts.reduce(0, +) }
        /// Tokens each rank of the group holds.
        public var localTokens: Int { length / size }
        /// Causal attention pairs of the row's documents (padding counts as one document), per rank.
        public var pairsPerRank: Double {
            let pad = length - tokens
            return (counts + [pad]).reduce(0.0) { $0 + Double($1) * Double($1 + 1) / 2 } / Double(size)
        }
    }

    public let ranks: Int, capacity: Int
    public internal(set) var items: [Item]

    public init(ranks: Int, capacity: Int, items: [Item]) { self.ranks = ranks; self.capacity = capacity; self.items = items }

    /// The items `rank` runs, in plan order.
    public func items(for rank: Int) -> [Item] { items.filter { $0.ranks.contains(rank) } }

    /// Per rank: attention pairs and tokens (padding included) it computes.
    public var pairsPerRank: [Double] {
        var p = [Double](repeating: 0, count: ranks)
        for it in items { for r in it.ranks { p[r] += it.pairsPerRank } }
        return p
    }
    public var tokensPerRank: [Int] {
        var t = [Int](repeating: 0, count: ranks)
        for it in items { for r in it.ranks { t[r] += it.localTokens } }
        return t
    }
    /// Tokens trained (padding excluded) and padding over all row tokens.
    public var tokens: Int { items.reduce(0) { $0 + $1.tokens } }
    public var paddingFraction: Double {
        let all = items.reduce(0) { $0 + $1.length }
        return all == 0 ? 0 : 1 - Double(tokens) / Double(all)
    }
    /// max / mean of a per-rank quantity (1 = balanced).
    public static func imbalance(_ x: [Double]) -> Double {
        let mean = x.reduce(0, +) / Double(max(x.count, 1))
        return mean > 0 ? x.max()! / mean : 1
    }
    /// max / mean of a cost per rank (what the data-aware rule balances).
    public func workImbalance(_ cost: DocumentCost) -> Double {
        Self.imbalance(zip(pairsPerRank, tokensPerRank).map { cost.pair * $0 + cost.token * Double($1) })
    }
}

public enum DocumentScheduler {
    /// Whether n is a power of two (group sizes and the ranks they divide must be).
    public static func isPowerOfTwo(_ n: Int) -> Bool { n > 0 && n & (n - 1) == 0 }

    /// Sequence indices, longest first (ties by index: every rank orders them alike).
    static func longestFirst(_ lengths: [Int]) -> [Int] {
        lengths.indices.sorted { lengths[$0] != lengths[$1] ? lengths[$0] > lengths[$1] : $0 < $1 }
    }

    /// Every group size the schedules may use for `ranks` (a power of two): 1, 2, 4, …, ranks.
    public static func groupSizes(ranks: Int) -> [Int] {
        precondition(isPowerOfTwo(ranks), "document groups need a power-of-two number of ranks, not \(ranks)")
        return (0...ranks.trailingZeroBitCount).map { 1 << $0 }
    }

    /// Row length of one sequence of n tokens over a ring of g ranks (a multiple of 2g; n itself for g = 1).
    public static func ringLength(_ n: Int, size g: Int) -> Int { g == 1 ? n : (n + 2 * g - 1) / (2 * g) * (2 * g) }

    /// The smallest group that holds n tokens at `capacity` per rank, nil if even all `ranks` cannot.
    public static func smallestGroup(_ n: Int, ranks: Int, capacity: Int) -> Int? {
        groupSizes(ranks: ranks).first { ringLength(n, size: $0) / $0 <= capacity }
    }

    /// The data-aware plan (rule above). Every length must fit the ranks: smallestGroup ≠ nil.
    public static func dataAware(lengths: [Int], ranks: Int, capacity: Int, cost: DocumentCost) -> DocumentPlan {
        let order = longestFirst(lengths)
        var free = [Double](repeating: 0, count: ranks)
        let ideal = lengths.reduce(0.0) { $0 + cost.of($1) } / Double(ranks)
        var items: [DocumentPlan.Item] = []
        var rows = [[DocumentPlan.Item]](repeating: [], count: ranks)
        for i in order {
            let n = lengths[i]
            if n > capacity {
                guard let smallest = smallestGroup(n, ranks: ranks, capacity: capacity) else {
                    preconditionFailure("a sequence of \(n) tokens does not fit \(ranks) ranks of \(capacity) tokens")
                }
                var best: (end: Double, size: Int, block: Int)? = nil, inTime: (end: Double, size: Int, block: Int)? = nil
                for g in groupSizes(ranks: ranks) where g >= smallest {
                    for b in 0..<(ranks / g) {
                        let start = free[(b * g)..<((b + 1) * g)].max()!
                        let end = start + cost.of(n) / Double(g)
                        if best == nil || end < best!.end - 1e-9 * end { best = (end, g, b) }
                        if end <= ideal * (1 + 1e-9), inTime == nil || (inTime!.size == g && end < inTime!.end - 1e-9 * end) {
                            inTime = (end, g, b)
                        }
                    }
                }
                let (end, g, b) = inTime ?? best!
                for r in (b * g)..<((b + 1) * g) { free[r] = end }
                items.append(.init(size: g, block: b, sequences: [i], counts: [n], length: ringLength(n, size: g)))
            } else {
                let r = free.indices.min { free[$0] != free[$1] ? free[$0] < free[$1] : $0 < $1 }!
                free[r] += cost.of(n)
                let fit = rows[r].indices.filter { rows[r][$0].length + n <= capacity }
                    .max { rows[r][$0].length != rows[r][$1].length ? rows[r][$0].length < rows[r][$1].length : $0 > $1 }
                if let k = fit {
                    rows[r][k].sequences.append(i); rows[r][k].counts.append(n); rows[r][k].length += n
                } else {
                    rows[r].append(.init(size: 1, block: r, sequences: [i], counts: [n], length: n))
                }
            }
        }
        return DocumentPlan(ranks: ranks, capacity: capacity, items: items + rows.flatMap { $0 })
    }

    /// Static: every sequence over a ring of `size` ranks (all of them unless given), packed into rows of
    /// size × capacity tokens (first fit, longest first), the rows dealt round-robin to the ranks / size blocks
    /// (context parallelism of a fixed size, data parallelism over the blocks, as a static mesh runs it).
    public static func ring(lengths: [Int], ranks: Int, capacity: Int, size: Int? = nil) -> DocumentPlan {
        let g = size ?? ranks
        precondition(isPowerOfTwo(g) && ranks % g == 0, "a ring of \(g) ranks does not divide \(ranks)")
        let rowTokens = g == 1 ? capacity : g * capacity - (g * capacity) % (2 * g)
        var rows: [DocumentPlan.Item] = []
        for i in longestFirst(lengths) {
            let n = lengths[i]
            precondition(n <= rowTokens, "a sequence of \(n) tokens does not fit a ring row of \(rowTokens)")
            if let k = rows.firstIndex(where: { $0.tokens + n <= rowTokens }) {
                rows[k].sequences.append(i); rows[k].counts.append(n)
            } else {
                rows.append(.init(size: g, block: 0, sequences: [i], counts: [n], length: 0))
            }
        }
        for k in rows.indices { rows[k].length = ringLength(rows[k].tokens, size: g); rows[k].block = k % (ranks / g) }
        return DocumentPlan(ranks: ranks, capacity: capacity, items: rows)
    }

    /// Static: plain data parallelism; sequences truncated to `capacity` tokens, rows dealt round-robin.
    /// `packed`: rows packed by first fit (longest first); otherwise one sequence per row, padded to capacity.
    public static func dataParallel(lengths: [Int], ranks: Int, capacity: Int, packed: Bool) -> DocumentPlan {
        var rows: [DocumentPlan.Item] = []
        for i in longestFirst(lengths) {
            let n = min(lengths[i], capacity)
            if packed, let k = rows.firstIndex(where: { $0.length + n <= capacity }) {
                rows[k].sequences.append(i); rows[k].counts.append(n); rows[k].length += n
            } else {
                rows.append(.init(size: 1, block: 0, sequences: [i], counts: [n], length: packed ? n : capacity))
            }
        }
        for k in rows.indices { rows[k].block = k % ranks }
        return DocumentPlan(ranks: ranks, capacity: capacity, items: rows)
    }
}
