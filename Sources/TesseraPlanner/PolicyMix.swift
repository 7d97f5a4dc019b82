// Per-layer memory policies for the planner: where keeping every activation (`keep`) does not fit a layout's memory,
// the least recomputation that does. For a recompute policy P (selective or full) each pipeline stage gets the
// smallest k_s such that its first k_s layers under P and the rest under keep fit the memory per rank (Megatron-LM's
// `--recompute-num-layers`, chosen per stage: under 1F1B the first stage holds more micro-batches in flight than the
// last and needs more recomputation). Layers of one model are alike, so which k layers of a stage recompute changes
// neither its time nor its memory; only k does.
//
// Other mixes are not listed: where keep fits, every mix is slower than keep and no smaller in what matters (it fits
// already); where keep does not fit, a mix with more recomputed layers than k_s is slower than the k_s one and a mix
// with fewer does not fit. So the candidates (uniform keep/selective/full, and these mixes) hold every layout that
// could be the fastest one fitting.

import TesseraMemory
import TesseraPipeline
import TesseraTraining

public enum PolicyMix {
    /// The mix of `policy` for candidate `c` (uniform keep) under `memory` bytes per rank, or nil when keep fits
    /// every stage already, when some stage does not fit even with all its layers under `policy` (that is the uniform
    /// candidate's case), or when every stage needs all its layers (the uniform candidate itself).
    public static func candidate(_ c: LayoutCandidate, policy: String, memory: Int) -> LayoutCandidate? {
        guard c.config.memory.policy == "keep", c.config.memory.layerPolicy.isEmpty, policy == "selective" || policy == "full",
              let p = LayerPolicy(rawValue: policy) else { return nil }
        let stageLayers = Self.stageLayers(c.config)
        guard let keep = MemoryPreflight.stageNeeds(c.config), keep.count == stageLayers.count else { return nil }
        if keep.allSatisfy({ $0.total <= memory }) { return nil }
        let most = stageLayers.map(\.count).max() ?? 0
        var needed: [Int?] = keep.map { $0.total <= memory ? 0 : nil }
        for k in 1...max(most, 1) where needed.contains(where: { $0 == nil }) {
            var trial = c.config
            trial.memory.layerPolicy = text(policies(layers: c.config.transformer.nLayer, stageLayers: stageLayers, k: stageLayers.map { _ in k }, policy: p))
            guard let needs = MemoryPreflight.stageNeeds(trial) else { return nil }
            for s in needs.indices where needed[s] == nil && needs[s].total <= memory { needed[s] = min(k, stageLayers[s].count) }
        }
        guard needed.allSatisfy({ $0 != nil }) else { return nil }
        let k = needed.map { $0! }
        if zip(k, stageLayers).allSatisfy({ $0 == $1.count }) { return nil }
        let mix = text(policies(layers: c.config.transformer.nLayer, stageLayers: stageLayers, k: k, policy: p))
        var out = c
        out.config.memory.layerPolicy = mix
        out.overrides = out.overrides.map { $0.key == "memory.layer_policy" ? (key: $0.key, value: mix) : $0 }
        return out
    }

    /// Each pipeline stage's layers (global indices, in order; one stage of every layer without pipelining).
    static func stageLayers(_ c: TesseraConfig) -> [[Int]] {
        guard c.parallelism.pp > 1, let layout = try? PipelineLayout(config: c) else { return [Array(0..<c.transformer.nLayer)] }
        return (0..<c.parallelism.pp).map { layout.stage(rank: $0).layers }
    }

    /// One policy per layer: the first k[s] layers of stage s under `policy`, the rest keep.
    static func policies(layers: Int, stageLayers: [[Int]], k: [Int], policy: LayerPolicy) -> [LayerPolicy] {
        var out = Array(repeating: LayerPolicy.keep, count: layers)
        for (s, mine) in stageLayers.enumerated() { for l in mine.prefix(k[s]) { out[l] = policy } }
        return out
    }

    /// The `memory.layer_policy` text of a list, runs compressed: "full*2,keep*4".
    public static func text(_ list: [LayerPolicy]) -> String {
        var parts: [String] = []
        var i = 0
        while i < list.count {
            var j = i
            while j + 1 < list.count && list[j + 1] == list[i] { j += 1 }
            parts.append(j > i ? "\(list[i].rawValue)*\(j - i + 1)" : list[i].rawValue)
            i = j + 1
        }
        return parts.joined(separator: ",")
    }
}
