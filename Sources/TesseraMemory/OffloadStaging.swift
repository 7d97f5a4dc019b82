// The staging slots of offloaded blocks: a block's tensors are produced into a slot, written to the tier
// in the background while the next block computes, and read back into a slot one block ahead of the
// backward that needs them. Two slots suffice: in the forward pass one fills while the other drains; in
// the backward pass one is read from while the other is being filled by the prefetch.
//
// A slot is named by the tier region of the block it holds (unique per activation set and layer), so the
// activation sets of a pipeline stage can share one pair of slots: a slot still holding a block that is
// also on disk can always be taken over, and a block found still in a slot at its backward is used from
// memory (its write, if not started, is cancelled).
//
// Compact blocks (bf16 training): the first `compact` floats of a block are bf16 values, so they travel to
// and from the tier as bf16. Before a write the slot is packed in place (those floats narrowed into the
// first 2·compact bytes, the fp32 rest moved down behind them) and the compact image is written; a slot
// read back, or about to be used from memory after being packed, is unpacked in place before anyone sees
// it. Lossless: the block is bit for bit what the forward produced.

import TesseraKernels

public final class OffloadStaging {
    public let tier: OffloadTier
    /// Floats per slot (one block's tensors).
    public let floats: Int
    public let slots: [UnsafeMutablePointer<Float>]
    private var owner: [Int?]          // tier region whose data the slot holds (or is receiving)
    private var lastJob: [Int]         // the slot's last tier job (0: none)
    private var lastIsRead: [Bool]
    private var pinned: [Bool]
    private var lastUse: [Int]
    private var clock = 0
    /// Leading floats of a block that travel as bf16 (0: the whole block as fp32).
    public let compact: Int
    /// Whether the slot holds the packed image (after a write was queued, or a read).
    private var packed: [Bool]
    private let convertScratch: UnsafeMutableRawPointer

    public init(tier: OffloadTier, floats: Int, store: ActivationStore, count: Int = 2, compact: Int = 0) {
        precondition(compact >= 0 && compact <= floats)
        self.tier = tier; self.floats = floats; self.compact = compact
        packed = Array(repeating: false, count: count)
        convertScratch = .allocate(byteCount: 4 * BF16.inPlaceChunk, alignment: 64)
        slots = (0..<count).map { _ in store.allocate(floats, .staging) }
        owner = Array(repeating: nil, count: count); lastJob = Array(repeating: 0, count: count)
        lastIsRead = Array(repeating: false, count: count); pinned = Array(repeating: false, count: count)
        lastUse = Array(repeating: 0, count: count)
    }

    deinit { convertScratch.deallocate() }

    /// Bytes of one block in the tier (its compact image).
    public var bytes: Int { Self.bytes(floats: floats, compact: compact) }
    public static func bytes(floats: Int, compact: Int) -> Int { 2 * compact + 4 * (floats - compact) }

    private func pack(_ i: Int) {
        guard compact > 0, !packed[i] else { return }
        let p = UnsafeMutableRawPointer(slots[i])
        BF16.narrowInPlace(p, count: compact, scratch: convertScratch)
        (p + 2 * compact).copyMemory(from: p + 4 * compact, byteCount: 4 * (floats - compact))  // memmove: overlaps
        packed[i] = true
    }

    private func unpack(_ i: Int) {
        guard packed[i] else { return }
        let p = UnsafeMutableRawPointer(slots[i])
        (p + 4 * compact).copyMemory(from: p + 2 * compact, byteCount: 4 * (floats - compact))
        BF16.widenInPlace(p, count: compact, scratch: convertScratch)
        packed[i] = false
    }

    private func slot(of region: Int) -> Int? { owner.firstIndex { $0 == region } }

    /// An unpinned slot: a free one, else the least recently used; its I/O in flight is finished first.
    private func take(for region: Int) -> Int {
        var pick: Int?
        for j in slots.indices where !pinned[j] {
            if owner[j] == nil { pick = j; break }
            if pick == nil || lastUse[j] < lastUse[pick!] { pick = j }
        }
        guard let i = pick else { preconditionFailure("offload staging: every slot is in use") }
        if lastJob[i] > 0 { tier.wait(lastJob[i]) }
        owner[i] = region; lastJob[i] = 0; lastIsRead[i] = false; packed[i] = false
        return i
    }

    private func touch(_ i: Int) { clock += 1; lastUse[i] = clock }

    /// Forward: the slot to compute block `region`'s tensors into (pinned until `endFill`).
    public func beginFill(region: Int) -> UnsafeMutablePointer<Float> {
        let i = slot(of: region) ?? take(for: region)
        if lastJob[i] > 0 { tier.wait(lastJob[i]) }  // a stale read or write of this region
        lastJob[i] = 0; lastIsRead[i] = false; packed[i] = false
        pinned[i] = true; touch(i)
        return slots[i]
    }

    /// Forward done: write the block to the tier (`save`), or drop it (evaluation).
    public func endFill(region: Int, save: Bool) {
        guard let i = slot(of: region) else { return }
        pinned[i] = false
        if save {
            pack(i)
            lastJob[i] = tier.write(slots[i], bytes: bytes, offset: region); lastIsRead[i] = false
        } else {
            owner[i] = nil
        }
    }

    /// Starts reading block `region` back, unless a slot holds it already.
    public func prefetch(region: Int) {
        guard slot(of: region) == nil else { return }
        let i = take(for: region)
        lastJob[i] = tier.read(into: slots[i], bytes: bytes, offset: region); lastIsRead[i] = true
        packed[i] = compact > 0
        touch(i)
    }

    /// The slot holding block `region` if it is there now, ready to read (no waiting).
    public func residentSlot(region: Int) -> UnsafeMutablePointer<Float>? {
        guard let i = slot(of: region) else { return nil }
        // A read not done, or a packed image whose write still reads it: not without waiting.
        if (lastIsRead[i] || packed[i]) && lastJob[i] > 0 && !tier.isDone(lastJob[i]) { return nil }
        unpack(i)
        return slots[i]
    }

    /// Backward: the slot holding block `region` (read back now if it is not there; pinned until `endUse`).
    public func beginUse(region: Int) -> UnsafeMutablePointer<Float> {
        prefetch(region: region)
        let i = slot(of: region)!
        if lastIsRead[i] {
            tier.wait(lastJob[i])
        } else if packed[i], lastJob[i] > 0 {
            tier.cancel(lastJob[i]); tier.wait(lastJob[i])  // used from memory: its write may not run over the unpacking
        }
        unpack(i)
        pinned[i] = true; touch(i)
        return slots[i]
    }

    /// Backward done with block `region`: the slot is free and the tier releases the region.
    public func endUse(region: Int) {
        guard let i = slot(of: region) else { return }
        if !lastIsRead[i], lastJob[i] > 0 { tier.cancel(lastJob[i]) }  // used from memory: no need to write it
        pinned[i] = false; owner[i] = nil
        tier.release(offset: region, bytes: bytes)
    }
}
