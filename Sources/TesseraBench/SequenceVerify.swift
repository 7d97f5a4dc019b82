// `tessera bench-sp --verify` (under mpirun with ring × ulysses ranks): the sequence-parallel attention op
// itself, grouped key/value heads included, against the single-rank kernel. Every rank makes the same global
// q, k, v and output gradient from one seed and computes `Attention.forward` / `backward` over the whole
// sequence; then it runs the op (one layer) on its own tokens and compares what the op gives it with that
// reference sliced through its `SequenceLayout`: output, log-sum-exp (the core's, which under Ulysses holds
// this rank's heads over the ring-local sequence) and dq, dk, dv. The same run checks the bytes the op sent
// against `SequenceBench.theoryBytes`, the ring's exchange alone against the ring's share of it, and the op's
// buffers against `SequenceParallelAttention.plannedBytes`: the formulas the benchmark and the memory plan use.

import Foundation
import TesseraComm
import TesseraKernels
import TesseraSequenceParallel
import TesseraTraining

public enum SequenceVerify {
    public struct Options: Sendable {
        public var ring = 1, ulysses = 1, heads = 8, kvHeads: Int? = nil, headDim = 16, seq = 128, batch = 2, threads = 1
        public var precision = Precision.fp32, seed: UInt64 = 7
        public var json = false
        public init() {}
    }

    /// The largest relative error (max |op − reference| ÷ max |reference| over a tensor) that passes. fp32: the op
    /// adds the same products in another order (key blocks, log-sum-exp merges), some 1e-7 apart. bf16: the op
    /// rounds Ulysses' output and dq, dk, dv to bf16 (2⁻⁹ relative) before they travel and its backward takes
    /// D = rowsum(dO ∘ O) from the rounded output, so a few 2⁻⁹ are expected, while a wrong head, token or
    /// block would be off by order 1.
    public static func tolerance(_ p: Precision) -> Double { p == .bf16 ? 1e-2 : 1e-5 }

    /// The whole problem, the same on every rank: inputs from the seed (operands of the precision) and the
    /// single-rank results.
    struct Reference {
        let qkv: FloatBuffer, dout: FloatBuffer, out: FloatBuffer, lse: FloatBuffer, dqkv: FloatBuffer

        init(_ w: HeadWidths, batch: Int, seq: Int, seed: UInt64, precision: Precision) {
            qkv = FloatBuffer(batch * seq * w.row); dout = FloatBuffer(batch * seq * w.q)
            var rng = SplitMix64(seed: seed)
            for b in [qkv, dout] {
                for i in 0..<b.count { b.ptr[i] = Float(rng.nextDouble() * 2 - 1) }
                precision.roundOperand(b.ptr, count: b.count)
            }
            out = FloatBuffer(batch * seq * w.q); lse = FloatBuffer(batch * w.heads * seq); dqkv = FloatBuffer(qkv.count)
            let g = AttentionLayout.fused(batch: batch, t: seq, heads: w.heads, headDim: w.headDim, kvHeads: w.kvHeads)
            let scratch = Scratch(), q = qkv.ptr, k = qkv.ptr + w.q, v = qkv.ptr + w.q + w.kv
            Attention.forward(out: out.ptr, lse: lse.ptr, q: q, k: k, v: v, layout: g, scratch: scratch)
            Attention.backward(dq: dqkv.ptr, dk: dqkv.ptr + w.q, dv: dqkv.ptr + w.q + w.kv, dout: dout.ptr, out: out.ptr,
                               lse: lse.ptr, q: q, k: k, v: v, layout: g, scratch: scratch)
        }
    }

    /// Rows of [batch, seq, width] at `positions` of every sequence → [batch, positions, width].
    static func gather(_ src: FloatBuffer, width: Int, seq: Int, positions: [Int], batch: Int) -> FloatBuffer {
        let dst = FloatBuffer(batch * positions.count * width)
        for b in 0..<batch {
            for (j, p) in positions.enumerated() {
                (dst.ptr + (b * positions.count + j) * width).update(from: src.ptr + (b * seq + p) * width, count: width)
            }
        }
        return dst
    }

    /// The largest difference and the largest reference magnitude of one tensor, for a relative error over all ranks.
    struct Distance {
        var diff = 0.0, scale = 0.0
        mutating func add(_ got: Float, _ want: Float) {
            diff = max(diff, Double(abs(got - want))); scale = max(scale, Double(abs(want)))
        }
        func relative(over world: Communicator) throws -> Double {
            let d = try world.allreduce(diff, op: .max), s = try world.allreduce(scale, op: .max)
            return d / max(s, 1e-30)
        }
    }

    /// Why these options cannot run, or nil (the command asks before MPI starts).
    public static func configurationError(_ o: Options) -> String? {
        let kv = o.kvHeads ?? o.heads
        if o.heads % kv != 0 { return "--kv-heads \(kv) does not divide --heads \(o.heads)" }
        if let e = SequenceParallelAttention.kvSplitError(heads: o.heads, kvHeads: kv, ulysses: o.ulysses) { return e }
        let multiple = SequenceLayout.tokenMultiple(ring: o.ring, ulysses: o.ulysses)
        return o.seq % multiple == 0 ? nil : "--seq \(o.seq) must be a multiple of \(multiple) for ring \(o.ring) × ulysses \(o.ulysses)"
    }

    public static func run(runtime: MPIRuntime, options o: Options) throws -> (report: String?, passed: Bool) {
        let (R, U) = (o.ring, o.ulysses), kv = o.kvHeads ?? o.heads
        if let e = configurationError(o) { throw TrainingError("bench-sp --verify: \(e)") }
        guard runtime.size == R * U else {
            throw TrainingError("bench-sp --verify: --ring \(R) × --ulysses \(U) needs mpirun -np \(R * U), this job has \(runtime.size)")
        }
        Threads.configure(o.threads)
        let world = runtime.worldCommunicator
        let mesh = try ProcessMesh(world: world, shape: MeshShape(ring: R, ulysses: U))
        let layout = SequenceLayout(seqLen: o.seq, ring: R, ulysses: U, ringRank: mesh.coordinate.ring,
                                    ulyssesRank: mesh.coordinate.ulysses)
        let w = HeadWidths(heads: o.heads, kvHeads: kv, headDim: o.headDim), share = w.share(U), B = o.batch
        let ref = Reference(w, batch: B, seq: o.seq, seed: o.seed, precision: o.precision)

        // The op on this rank's tokens, one layer forward and backward, as the model drives it.
        let op = SequenceParallelAttention(heads: o.heads, kvHeads: kv, headDim: o.headDim, layout: layout, ring: mesh.ring,
                                           ulysses: mesh.ulysses, maxBatch: B, precision: o.precision)
        op.onError = { MPIRuntime.abort("bench-sp --verify: \($0); aborting the job") }
        let tl = layout.local, positions = layout.positions, scratch = Scratch()
        let qkv = gather(ref.qkv, width: w.row, seq: o.seq, positions: positions, batch: B)
        let dout = gather(ref.dout, width: w.q, seq: o.seq, positions: positions, batch: B)
        let out = FloatBuffer(B * tl * w.q), lse = FloatBuffer(B * w.heads * tl), dqkv = FloatBuffer(B * tl * w.row)
        let saved = FloatBuffer(max(1, op.savedFloats(batch: B, tokens: tl)))
        for c in [mesh.ring, mesh.ulysses] { c.bytesSent = 0 }
        op.forward(qkv: qkv.ptr, out: out.ptr, lse: lse.ptr, saved: saved.ptr, batch: B, tokens: tl, layer: 0, scratch: scratch)
        op.prepareBackward(qkv: qkv.ptr, saved: saved.ptr, batch: B, tokens: tl, layer: 0)
        op.backward(dqkv: dqkv.ptr, dout: dout.ptr, out: out.ptr, lse: lse.ptr, qkv: qkv.ptr, saved: saved.ptr, batch: B,
                    tokens: tl, layer: 0, scratch: scratch)
        let sent = mesh.ring.bytesSent + mesh.ulysses.bytesSent
        try world.barrier()

        // Output and dq, dk, dv: this rank's token rows. The lse is the core's [B, H/U, ring-local tokens] for this
        // rank's query heads (all of them, over its own tokens, without Ulysses).
        let names = ["out", "lse", "dq", "dk", "dv"]
        var e = [Distance](repeating: .init(), count: names.count)
        for b in 0..<B {
            for (j, p) in positions.enumerated() {
                let got = out.ptr + (b * tl + j) * w.q, want = ref.out.ptr + (b * o.seq + p) * w.q
                for x in 0..<w.q { e[0].add(got[x], want[x]) }
                let dg = dqkv.ptr + (b * tl + j) * w.row, dw = ref.dqkv.ptr + (b * o.seq + p) * w.row
                for x in 0..<w.row { e[x < w.q ? 2 : x < w.q + w.kv ? 3 : 4].add(dg[x], dw[x]) }
            }
        }
        let T = layout.ringLocal, h0 = layout.ulyssesRank * share.heads
        for b in 0..<B {
            for h in 0..<share.heads {
                for i in 0..<T {
                    let p = layout.ringLocalPosition(i, ringRank: layout.ringRank)
                    e[1].add(lse.ptr[(b * share.heads + h) * T + i], ref.lse.ptr[(b * w.heads + h0 + h) * o.seq + p])
                }
            }
        }
        var relative: [String: Double] = [:]
        for (n, d) in zip(names, e) { relative[n] = try d.relative(over: world) }
        let maxErr = relative.values.max()!

        // Bytes: what the op sent and what the formulas say; the ring's exchange alone; the op's buffers.
        let theory = SequenceBench.theoryBytes(seq: o.seq, ring: R, ulysses: U, layers: 1, dModel: w.q, kvWidth: w.kv,
                                               batch: B, precision: o.precision)
        var aloneSent = 0
        if let ring = op.core as? RingCore {
            mesh.ring.bytesSent = 0
            _ = try ring.exchangeAlone(batch: B, heads: share.heads, kvHeads: share.kvHeads, layers: 1)
            aloneSent = mesh.ring.bytesSent
        }
        let aloneTheory = SequenceBench.theoryRingBytes(seq: o.seq, ring: R, ulysses: U, layers: 1, kvWidth: w.kv, batch: B,
                                                        precision: o.precision)
        let buffers = op.extraBytes + 4 * op.savedFloats(batch: B, tokens: tl)
        let planned = SequenceParallelAttention.plannedBytes(heads: o.heads, kvHeads: kv, headDim: o.headDim, layout: layout,
                                                             layers: 1, maxBatch: B, precision: o.precision)
        let sentRange = (min: try world.allreduce(Double(sent), op: .min), max: try world.allreduce(Double(sent), op: .max))
        let bytesAgree = Double(sent) == theory && Double(aloneSent) == aloneTheory && buffers == planned
        let allAgree = try world.allreduce(bytesAgree ? 1.0 : 0.0, op: .min) == 1
        let tolerance = Self.tolerance(o.precision)
        let passed = maxErr <= tolerance && allAgree

        guard runtime.rank == 0 else { return (nil, passed) }
        let shape = "heads \(o.heads), kv heads \(kv), head dim \(o.headDim), seq \(o.seq), batch \(B), \(o.precision.rawValue)"
        var lines = ["tessera bench-sp --verify — ring \(R) × ulysses \(U) = \(runtime.size) rank(s), \(shape)", ""]
        lines.append("relative error vs single-rank attention (max |op − reference| ÷ max |reference|, all ranks):")
        for n in names { lines.append("  " + BenchScaffold.cell(n, 5) + String(format: "%.3e", relative[n]!)) }
        lines.append("  max  " + String(format: "%.3e", maxErr) + " (tolerance \(tolerance)): " + (maxErr <= tolerance ? "ok" : "FAILED"))
        lines.append("bytes sent per rank: \(Int(sentRange.min))–\(Int(sentRange.max)) (theory \(Int(theory))); ring alone "
                     + "\(aloneSent) (theory \(Int(aloneTheory))); buffers \(buffers) (planned \(planned)) on rank 0: "
                     + (allAgree ? "ok" : "FAILED (some rank differs from the formulas)"))
        if o.json {
            var report: [String: Any] = ["bench": "bench-sp-verify", "ring": R, "ulysses": U, "heads": o.heads, "kv_heads": kv,
                                         "head_dim": o.headDim, "seq": o.seq, "batch": B, "precision": o.precision.rawValue,
                                         "max_error": maxErr, "tolerance": tolerance, "sent_bytes_min": Int(sentRange.min),
                                         "sent_bytes_max": Int(sentRange.max), "theory_bytes": theory,
                                         "ring_alone_bytes": aloneSent, "ring_alone_theory_bytes": aloneTheory,
                                         "buffer_bytes": buffers, "planned_bytes": planned, "bytes_agree": allAgree,
                                         "passed": passed]
            for n in names { report["error_" + n] = relative[n]! }
            lines.append(BenchScaffold.jsonLine(report))
        }
        return (lines.joined(separator: "\n"), passed)
    }
}
