// Which tokens of every sequence a rank of the sequence group holds.
//
// Ring (context parallel, R ranks): the sequence is cut into 2R chunks of c = S / 2R tokens and ring
// rank r holds chunks r and 2R−1−r ("zigzag"), so under the causal mask every rank does the same
// attention work. That pair of chunks, in this order, is the rank's *ring-local* sequence (S / R tokens).
// Ulysses (U ranks inside each ring position): Ulysses rank u holds the u-th contiguous slice of the
// ring-local sequence (S / (R·U) tokens). Before attention an all-to-all gives every Ulysses rank the
// whole ring-local sequence for H / U heads; ring attention then runs across ring ranks on that.
// With R = 1 the two chunks are the two halves of the sequence: the ring-local sequence is the sequence.

public struct SequenceLayout: Sendable, Equatable {
    public let seqLen: Int, ring: Int, ulysses: Int
    public let ringRank: Int, ulyssesRank: Int

    public init(seqLen: Int, ring: Int, ulysses: Int, ringRank: Int, ulyssesRank: Int) {
        precondition(seqLen % Self.tokenMultiple(ring: ring, ulysses: ulysses) == 0,
                     "seq_len \(seqLen) must be a multiple of \(Self.tokenMultiple(ring: ring, ulysses: ulysses))")
        self.seqLen = seqLen; self.ring = ring; self.ulysses = ulysses
        self.ringRank = ringRank; self.ulyssesRank = ulyssesRank
    }

    /// The sequence length must be a multiple of this: 2R chunks (ring > 1), each ring-local sequence
    /// split into U slices.
    public static func tokenMultiple(ring: Int, ulysses: Int) -> Int {
        ring > 1 ? lcm(2 * ring, ring * ulysses) : ulysses
    }

    static func gcd(_ a: Int, _ b: Int) -> Int { b == 0 ? a : gcd(b, a % b) }
    static func lcm(_ a: Int, _ b: Int) -> Int { a / gcd(a, b) * b }

    /// Tokens per chunk (2R chunks per sequence).
    public var chunk: Int { seqLen / (2 * ring) }
    /// Tokens of the ring-local sequence and of the rank's own slice.
    public var ringLocal: Int { seqLen / ring }
    public var local: Int { seqLen / (ring * ulysses) }

    /// Global position of token j of ring rank `r`'s ring-local sequence.
    public func ringLocalPosition(_ j: Int, ringRank r: Int) -> Int {
        j < chunk ? r * chunk + j : (2 * ring - 1 - r) * chunk + (j - chunk)
    }

    /// Global positions of this rank's tokens, in local order.
    public var positions: [Int] {
        (0..<local).map { ringLocalPosition(ulyssesRank * local + $0, ringRank: ringRank) }
    }

    /// The two contiguous position runs of ring rank r's ring-local sequence: (local start, global start, length).
    public func runs(ringRank r: Int) -> [(local: Int, global: Int, count: Int)] {
        [(0, r * chunk, chunk), (chunk, (2 * ring - 1 - r) * chunk, chunk)]
    }
}
