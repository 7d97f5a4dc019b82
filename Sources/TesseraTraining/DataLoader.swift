// The data loader: stateless, deterministic windows over a token source.
//
// Training: sequence j of step s's global batch starts at
//     windowHash(seed, s, j) % (count - seqLen)
// where windowHash is a chain of splitmix64 finalisers (below). Nothing is carried from step to step, so every rank
// computes the same global batch whatever its slice of it, a run resumed at step s needs only s, and changing the
// number of ranks or the per-rank split never changes which tokens a step trains on. Sampling is with replacement
// (there are no epochs); over many steps every position is equally likely to start a window.
//
// Evaluation: `batches * batchSize` windows at evenly spaced starts, the same every time.
// See docs/data.md.

import Foundation

/// splitmix64 (Steele, Lea & Flood 2014): the state increment followed by the output finaliser.
@inline(__always)
public func splitmix64(_ x: UInt64) -> UInt64 {
    var z = x &+ 0x9E37_79B9_7F4A_7C15
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
}

/// The counter-based hash behind training windows:
/// splitmix64(splitmix64(splitmix64(seed) ^ step) ^ sequence).
@inline(__always)
public func windowHash(seed: UInt64, step: Int, sequence: Int) -> UInt64 {
    splitmix64(splitmix64(splitmix64(seed) ^ UInt64(truncatingIfNeeded: step)) ^ UInt64(truncatingIfNeeded: sequence))
}

extension TokenSource {
    /// Throws unless every token id is below `vocabSize` (scans the source once; the maximum is cached).
    public func checkTokens(vocabSize: Int) throws {
        let m = maxToken
        guard m < vocabSize else {
            throw DataError("\(description): token id \(m) is not below the model's vocab_size \(vocabSize)")
        }
    }
}

public final class DataLoader: Sendable {
    public let source: any TokenSource
    /// Tokens per sequence (T): a window is T + 1 tokens, inputs its first T and targets its last T.
    public let seqLen: Int
    public let seed: UInt64

    /// `data.packing = "documents"`: rows packed from whole documents (DocumentPacker) instead of windows.
    public let packer: DocumentPacker?

    /// `documentSeparator`: pack documents cut before this token instead of cutting windows.
    public init(source: any TokenSource, seqLen: Int, seed: UInt64, documentSeparator: Int32? = nil) throws {
        guard seqLen > 0 else { throw DataError("\(source.description): sequence length \(seqLen) must be positive") }
        guard source.count >= seqLen + 1 else {
            throw DataError("\(source.description): \(source.count) tokens, but a sequence of \(seqLen) needs at least \(seqLen + 1)")
        }
        self.source = source
        self.seqLen = seqLen
        self.seed = seed
        packer = try documentSeparator.map { try DocumentPacker(source: source, seqLen: seqLen, separator: $0, seed: seed) }
    }

    /// Targets that count in step `step`'s global batch (every one with windows; packed rows leave out document ends
    /// and padding): the loss and the gradients are normalised by it, once.
    public func targetCount(step: Int, globalBatch: Int) -> Int {
        packedTargets(count: globalBatch) { packer!.row(step: step, sequence: $0) }
    }

    /// Model FLOPs of step `step`'s global batch, `perToken(n)` being a token's FLOPs in a sequence of n: windows are
    /// sequences of seqLen; packed rows count each document piece's input positions at their own number (attention
    /// never crosses pieces; a row's last token is only a target).
    public func flops(step: Int, globalBatch: Int, perToken: (Int) -> Double) -> Double {
        guard let packer else { return perToken(seqLen) * Double(globalBatch * seqLen) }
        var sum = 0.0
        for j in 0..<globalBatch {
            var at = 0
            for p in packer.rows[packer.row(step: step, sequence: j)] {
                let n = min(p.count, seqLen - at)
                sum += perToken(n) * Double(n)
                at += p.count
            }
        }
        return sum
    }

    /// Targets that count in evaluation batch `batch`.
    public func evalTargetCount(batch: Int, batches: Int, batchSize: Int) -> Int {
        packedTargets(count: batchSize) { evalRow(batch * batchSize + $0, total: batches * batchSize) }
    }

    /// Targets of `count` sequences, the j-th packed row being `row(j)` (every one of seqLen with windows).
    private func packedTargets(count: Int, row: (Int) -> Int) -> Int {
        guard let packer else { return count * seqLen }
        return (0..<count).reduce(0) { $0 + packer.targetCount(row: row($1)) }
    }

    /// Writes packed row `row` as sequence r of the outputs (laid out as `fill` says).
    private func writePacked(row: Int, r: Int, tokens t: Range<Int>, inputs: UnsafeMutablePointer<Int32>,
                             targets: UnsafeMutablePointer<Int32>, positions: UnsafeMutablePointer<Int32>?,
                             starts: UnsafeMutablePointer<Int32>?) {
        packer!.write(row: row, tokens: t, source: source, inputs: inputs + r * t.count, targets: targets + r * t.count,
                      positions: positions.map { $0 + r * t.count }, starts: starts.map { $0 + r * seqLen })
    }

    /// Packed evaluation row of window `window` of `total`: evenly spaced over the rows.
    func evalRow(_ window: Int, total: Int) -> Int {
        guard let packer, total > 1 else { return 0 }
        return window * (packer.rows.count - 1) / (total - 1)
    }

    /// Number of distinct window starts, count - seqLen.
    public var windows: Int { source.count - seqLen }

    // MARK: training

    /// Start of sequence `sequence` (0 ..< globalBatch) of training step `step`'s global batch.
    /// Depends only on (seed, step, sequence); `globalBatch` is checked, not mixed in.
    public func start(step: Int, sequence: Int, globalBatch: Int) -> Int {
        precondition(sequence >= 0 && sequence < globalBatch, "DataLoader: sequence \(sequence) outside 0..<\(globalBatch)")
        return Int(windowHash(seed: seed, step: step, sequence: sequence) % UInt64(windows))
    }

    /// Fills `inputs` and `targets` (each `sequences.count * tokens.count` Int32, row-major by sequence) for sequences
    /// `sequences` of step `step`'s global batch, and within each sequence the token positions `tokens`
    /// (default 0 ..< seqLen): inputs[r][t] = x[s + t0 + t], targets[r][t] = x[s + t0 + t + 1], where s is the
    /// sequence's start. A rank passes its slice of the global batch; all ranks agree on the whole of it.
    /// Packed rows also write `positions` (each token's position in its document, laid out as inputs) and `starts`
    /// (seqLen values per sequence: where each position's document starts, DocumentStarts); windows leave them alone.
    public func fill(step: Int, globalBatch: Int, sequences: Range<Int>, tokens: Range<Int>? = nil,
                     inputs: UnsafeMutablePointer<Int32>, targets: UnsafeMutablePointer<Int32>,
                     positions: UnsafeMutablePointer<Int32>? = nil, starts: UnsafeMutablePointer<Int32>? = nil) {
        precondition(sequences.lowerBound >= 0 && sequences.upperBound <= globalBatch,
                     "DataLoader.fill: sequences \(sequences) outside 0..<\(globalBatch)")
        let t = tokens ?? 0..<seqLen
        for (r, j) in sequences.enumerated() {
            if let packer {
                writePacked(row: packer.row(step: step, sequence: j), r: r, tokens: t, inputs: inputs, targets: targets,
                            positions: positions, starts: starts)
            } else {
                copyWindow(start: start(step: step, sequence: j, globalBatch: globalBatch), tokens: t, row: r,
                           inputs: inputs, targets: targets)
            }
        }
    }

    // MARK: evaluation

    /// Start of evaluation window `window` of `total`: evenly spaced from 0 to the last valid start,
    /// window * (count - seqLen - 1) / (total - 1).
    public func evalStart(window: Int, total: Int) -> Int {
        precondition(window >= 0 && window < total, "DataLoader: eval window \(window) outside 0..<\(total)")
        guard total > 1 else { return 0 }
        let span = windows - 1  // last valid start
        let product = window.multipliedFullWidth(by: span)
        return (total - 1).dividingFullWidth(product).quotient
    }

    /// Fills evaluation batch `batch` (0 ..< batches): its sequences `sequences` (within 0 ..< batchSize), and token
    /// positions `tokens` of each, laid out as in `fill`. The `batches * batchSize` windows are spread evenly over
    /// the source (see `evalStart`) and are the same on every call, rank and run.
    public func fillEval(batch: Int, batches: Int, batchSize: Int, sequences: Range<Int>, tokens: Range<Int>? = nil,
                         inputs: UnsafeMutablePointer<Int32>, targets: UnsafeMutablePointer<Int32>,
                         positions: UnsafeMutablePointer<Int32>? = nil, starts: UnsafeMutablePointer<Int32>? = nil) {
        precondition(batch >= 0 && batch < batches, "DataLoader.fillEval: batch \(batch) outside 0..<\(batches)")
        precondition(sequences.lowerBound >= 0 && sequences.upperBound <= batchSize,
                     "DataLoader.fillEval: sequences \(sequences) outside 0..<\(batchSize)")
        let t = tokens ?? 0..<seqLen
        let total = batches * batchSize
        for (r, j) in sequences.enumerated() {
            if packer != nil {
                writePacked(row: evalRow(batch * batchSize + j, total: total), r: r, tokens: t, inputs: inputs, targets: targets,
                            positions: positions, starts: starts)
            } else {
                copyWindow(start: evalStart(window: batch * batchSize + j, total: total), tokens: t, row: r,
                           inputs: inputs, targets: targets)
            }
        }
    }

    /// How many evaluation batches of `batchSize` it takes for the windows to cover the source about once
    /// (at least 1).
    public func evalBatchesCovering(batchSize: Int) -> Int {
        max(1, (source.count - 1) / (seqLen * max(batchSize, 1)))
    }

    // MARK: copying

    /// Row `row` of inputs/targets gets window positions `tokens` of the window starting at `s`.
    @inline(__always)
    private func copyWindow(start s: Int, tokens t: Range<Int>, row: Int,
                            inputs: UnsafeMutablePointer<Int32>, targets: UnsafeMutablePointer<Int32>) {
        precondition(t.lowerBound >= 0 && t.upperBound <= seqLen, "DataLoader: token range \(t) outside 0..<\(seqLen)")
        let w = t.count
        guard w > 0 else { return }
        let x = inputs + row * w, y = targets + row * w
        source.copy(from: s + t.lowerBound, count: w, into: x)
        // Targets are the inputs shifted by one, plus the token after the last input.
        y.update(from: x + 1, count: w - 1)
        source.copy(from: s + t.upperBound, count: 1, into: y + (w - 1))
    }
}
