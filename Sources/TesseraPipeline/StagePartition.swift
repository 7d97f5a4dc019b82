// Which layers each pipeline stage holds: contiguous ranges, one per virtual stage, chosen to minimise the
// most expensive stage. The first stage also runs the embeddings and the last ln_f, the tied LM head and
// the loss, so their costs count there.

public struct StagePartition: Sendable, Equatable {
    /// Layer range of each virtual stage, in order.
    public let layers: [Range<Int>]
    /// Estimated cost of each virtual stage (the unit of the inputs).
    public let costs: [Double]

    init(layers: [Range<Int>], costs: [Double]) { self.layers = layers; self.costs = costs }

    /// The cost of virtual stage k of n holding `layers` blocks.
    static func stageCost(_ k: Int, of n: Int, layers: Int, blockCost: Double, first: Double, last: Double) -> Double {
        Double(layers) * blockCost + (k == 0 ? first : 0) + (k == n - 1 ? last : 0)
    }

    /// A split given as layers per virtual stage, in order, with its costs.
    public static func explicit(layerCounts: [Int], blockCost: Double, first: Double = 0, last: Double = 0) -> StagePartition {
        var lo = 0, ranges: [Range<Int>] = []
        for c in layerCounts { ranges.append(lo..<(lo + c)); lo += c }
        return StagePartition(layers: ranges, costs: ranges.enumerated().map { k, r in
            stageCost(k, of: ranges.count, layers: r.count, blockCost: blockCost, first: first, last: last)
        })
    }

    /// Balanced contiguous split of `layerCount` equal blocks over `stages` virtual stages, with `first` and
    /// `last` extra cost on the first and last stage. Every stage gets at least one layer.
    public static func balanced(layerCount L: Int, stages n: Int, blockCost: Double, first: Double = 0,
                                last: Double = 0) -> StagePartition {
        precondition(n >= 1 && L >= n, "need at least one layer per stage (\(L) layers, \(n) stages)")
        // best[k][i]: the least possible maximum stage cost putting layers 0..<i on stages 0..<k.
        let inf = Double.infinity
        var best = [[Double]](repeating: [Double](repeating: inf, count: L + 1), count: n + 1)
        var cut = [[Int]](repeating: [Int](repeating: 0, count: L + 1), count: n + 1)
        best[0][0] = 0
        func cost(_ k: Int, _ lo: Int, _ hi: Int) -> Double {  // stage k holds layers lo..<hi
            stageCost(k, of: n, layers: hi - lo, blockCost: blockCost, first: first, last: last)
        }
        for k in 1...n {
            for i in k...L {
                for j in (k - 1)..<i where best[k - 1][j] < inf {
                    let c = max(best[k - 1][j], cost(k - 1, j, i))
                    if c < best[k][i] { best[k][i] = c; cut[k][i] = j }
                }
            }
        }
        var ranges: [Range<Int>] = [], i = L
        for k in stride(from: n, through: 1, by: -1) { let j = cut[k][i]; ranges.append(j..<i); i = j }
        ranges.reverse()
        return StagePartition(layers: ranges, costs: ranges.enumerated().map { cost($0.offset, $0.element.lowerBound, $0.element.upperBound) })
    }
}
