import Foundation
import XCTest
@testable import TesseraComm
import TesseraSequenceParallel
@testable import TesseraTopology
@testable import TesseraTraining

/// The placement of the mesh on hosts (TesseraTopology): hostfiles and their `# link` comments, the traffic each
/// group sends by the config, and the choice of dimension order and host order against the links. The choice is
/// checked on cases whose right answer follows from the bytes (a pipeline-heavy and a gradient-heavy job on two
/// hosts; four hosts in two fast pairs joined by slow links, listed in a bad order). A real job under an order
/// other than the default reproduces the single-rank run (mpirun).
final class PlacementTests: XCTestCase {
    func testHostfileHostsSlotsAndLinks() throws {
        let f = try Hostfile(text: """
            # two racks
            a slots=2
            b slots=2   # second
            c
            c
            # link a b 1gbit 1ms
            # link * * 10gbit 50us
            # link a a 40gbit 2us
            """, path: "h.txt")
        XCTAssertEqual(f.hosts.map(\.name), ["a", "b", "c"])
        XCTAssertEqual(f.hosts.map(\.slots), [2, 2, 2])
        let m = f.map(ranks: 5)
        XCTAssertEqual(m.names, ["a", "b", "c"])
        XCTAssertEqual(m.hostOfRank, [0, 0, 1, 1, 2])
        XCTAssertEqual(f.map(ranks: 8).hostOfRank.count, 8, "more ranks than slots: spread over the hosts")
        let links = try XCTUnwrap(f.linkMatrix(hosts: ["a", "b", "c"]))
        // A comment naming both hosts wins over a wildcard, even one after it.
        func same(_ a: Link, _ bits: Double, _ latency: Double, _ what: String) {
            XCTAssertEqual(a.bandwidth, bits / 8, accuracy: 1, what); XCTAssertEqual(a.latency, latency, accuracy: 1e-12, what)
        }
        same(links[0, 1], 1e9, 1e-3, "a ↔ b")
        same(links[1, 0], 1e9, 1e-3, "b ↔ a")
        same(links[2, 0], 10e9, 50e-6, "c ↔ a")
        same(links[0, 0], 40e9, 2e-6, "a host named twice: inside it")
        XCTAssertEqual(links[1, 1], Link.sharedMemoryDefault, "a wildcard does not describe the inside of a host")
        let partial = try Hostfile(text: "a\nb\nc\n# link a b 1gbit 1ms\n")
        XCTAssertNil(partial.linkMatrix(hosts: ["a", "b", "c"]), "pairs not described: measured instead")
    }

    func testHostfileErrorsNameFileAndLine() {
        for (text, words) in [("a slots=0\n", ["h:1", "slots=N"]), ("a\n# link a b fast 1ms\n", ["h:2", "rate 'fast'"]),
                              ("a\n# link a b 1gbit soon\n", ["h:2", "latency 'soon'"]), ("a\n# link a b 1gbit\n", ["h:2", "# link HOST HOST"]),
                              ("# nothing\n", ["h:0", "names no host"])] {
            XCTAssertThrowsError(try Hostfile(text: text, path: "h")) { e in
                for w in words { XCTAssertTrue("\(e)".contains(w), "\(text): \(e)") }
            }
        }
    }

    /// The traffic model uses the sequence-parallel formulas and the stage's gradient bytes.
    func testTrafficFollowsTheConfig() throws {
        var c = TesseraConfig()
        c.model.nLayer = 4; c.model.dModel = 64; c.model.nHead = 4; c.model.blockSize = 256; c.model.vocabSize = 256
        c.training.seqLen = 256; c.training.batchSize = 8; c.training.microbatches = 2
        c.parallelism.ring = 2; c.parallelism.ulysses = 2; c.parallelism.dp = 2
        let t = MeshTraffic(config: c)
        // micro-batch 8 / (2 · 2) = 2 sequences, 2 micro-batches, 4 layers.
        XCTAssertEqual(t.ringBytes, 2 * SequenceTraffic.ringBytes(seq: 256, ring: 2, ulysses: 2, layers: 4, kvWidth: 64, batch: 2))
        XCTAssertEqual(t.ulyssesBytes, 2 * SequenceTraffic.ulyssesBytes(seq: 256, ring: 2, ulysses: 2, layers: 4, dModel: 64, kvWidth: 64, batch: 2))
        XCTAssertEqual(t.ulyssesCalls, 2 * 4 * 4)
        XCTAssertEqual(t.gradientBytes, Double(4 * c.transformer.parameterCount), accuracy: Double(4 * 16 * 40), "padded to 16 floats a tensor")
        XCTAssertEqual(t.pipelineMessages, 0)
        c.parallelism.ring = 1; c.parallelism.ulysses = 1; c.parallelism.pp = 2
        c.parallelism.pipelineSchedule = "interleaved"; c.parallelism.virtualStages = 2
        let p = MeshTraffic(config: c)
        XCTAssertEqual(p.pipelineBytes, Double(2 * 256 * 64 * 4), "one micro-batch's activations: 2 sequences × 256 tokens × d")
        XCTAssertEqual(p.pipelineMessages, 4); XCTAssertEqual(p.pipelineWrapMessages, 2)
        XCTAssertEqual(p.embeddingBytes, Double(4 * 256 * 64), "GPT-2 ties its head")
        XCTAssertLessThan(p.gradientBytes, t.gradientBytes, "a stage holds part of the model")
    }

    static func twoHosts(_ rate: String = "1gbit") throws -> (Hostfile, HostMap, LinkMatrix) {
        let f = try Hostfile(text: "hA slots=2\nhB slots=2\n# link hA hB \(rate) 1ms\n")
        let hosts = f.map(ranks: 4)
        return (f, hosts, try XCTUnwrap(f.linkMatrix(hosts: hosts.names)))
    }

    /// Two hosts of two ranks, dp 2 × pp 2. Large activations and a small model: the pipeline's messages outweigh
    /// the gradients, so the pipeline goes inside the hosts and data parallelism across; the reverse job (a
    /// larger model, short sequences) keeps the world rank order (pipeline across).
    func testTwoHostsPutTheHeavierGroupInside() throws {
        let (_, hosts, links) = try Self.twoHosts()
        var c = TesseraConfig()
        c.model.nLayer = 2; c.model.dModel = 64; c.model.nHead = 4; c.model.blockSize = 1024; c.model.vocabSize = 256
        c.training.seqLen = 1024; c.training.batchSize = 16; c.training.microbatches = 4
        c.parallelism.dp = 2; c.parallelism.pp = 2
        let shape = MeshShape(pp: 2, dp: 2)
        let heavy = MeshTraffic(config: c)
        XCTAssertGreaterThan(heavy.pipelineBytes * heavy.pipelineMessages, 2 * heavy.gradientBytes)
        let p = Placement.choose(shape: shape, hosts: hosts, links: links, traffic: heavy)
        XCTAssertEqual(p.shape.order.filter { shape.degree($0) > 1 }, [.pp, .dp])
        XCTAssertEqual(p.estimate.hostsSpanned["pipeline"], 1)
        XCTAssertEqual(p.estimate.hostsSpanned["gradients"], 2)
        XCTAssertLessThan(p.estimate.total, p.naive.total / 2)
        XCTAssertEqual(p.indexOfWorldRank[0], 0, "world rank 0 keeps index 0")
        XCTAssertEqual(Set(p.indexOfWorldRank), Set(0..<4))

        c.model.dModel = 256; c.model.nLayer = 4; c.training.seqLen = 64; c.training.batchSize = 4; c.model.blockSize = 64
        let light = MeshTraffic(config: c)
        let q = Placement.choose(shape: shape, hosts: hosts, links: links, traffic: light)
        XCTAssertEqual(q.shape.order, MeshShape.defaultOrder)
        XCTAssertEqual(q.indexOfWorldRank, [0, 1, 2, 3])
        XCTAssertEqual(q.estimate.hostsSpanned["pipeline"], 2)
        XCTAssertEqual(q.estimate, q.naive)
        XCTAssertTrue(q.describe(links: links, chosen: "auto").contains("hA ↔ hB: 1.00 Gbit/s, 1.00 ms"))
    }

    /// One host: nothing to choose (the default order, world order), whatever the traffic.
    func testOneHostKeepsTheDefault() {
        let hosts = HostMap(rankHosts: ["m", "m", "m", "m"])
        var t = MeshTraffic(); t.ringBytes = 1e9; t.ringMessages = 10; t.ulyssesBytes = 1; t.ulyssesCalls = 1
        let p = Placement.choose(shape: MeshShape(ring: 2, ulysses: 2), hosts: hosts, links: LinkMatrix(hosts: ["m"], source: "test"), traffic: t)
        XCTAssertEqual(p.shape.order, MeshShape.defaultOrder)
        XCTAssertEqual(p.indexOfWorldRank, [0, 1, 2, 3])
    }

    /// Four hosts in two fast pairs (h0-h1, h2-h3 at 100 Gbit/s) joined by 1 Gbit/s links, listed h0, h2, h1, h3:
    /// in world order each data-parallel group would cross a slow link. The placement reorders the hosts so that
    /// the gradient groups stay on fast pairs and the pipeline boundary falls on the slow links (Holmes' rule).
    func testSlowLinksCarryThePipelineBoundary() throws {
        let f = try Hostfile(text: """
            h0 slots=2
            h2 slots=2
            h1 slots=2
            h3 slots=2
            # link * * 1gbit 1ms
            # link h0 h1 100gbit 5us
            # link h2 h3 100gbit 5us
            """)
        let hosts = f.map(ranks: 8), links = try XCTUnwrap(f.linkMatrix(hosts: hosts.names))
        var c = TesseraConfig()
        c.model.nLayer = 4; c.model.dModel = 256; c.model.nHead = 4; c.model.blockSize = 64
        c.training.seqLen = 64; c.training.batchSize = 8; c.training.microbatches = 2
        c.parallelism.dp = 4; c.parallelism.pp = 2
        let shape = MeshShape(pp: 2, dp: 4)
        let p = Placement.choose(shape: shape, hosts: hosts, links: links, traffic: MeshTraffic(config: c))
        XCTAssertEqual(p.hostOrder.map { hosts.names[$0] }.prefix(2).sorted(), ["h0", "h1"])
        XCTAssertEqual(p.estimate.hostsSpanned["gradients"], 2)
        XCTAssertLessThan(p.estimate.total, p.naive.total / 5, "naive: \(p.naive.breakdown); chosen: \(p.estimate.breakdown)")
        // Every data-parallel group on one fast pair.
        var hostOfIndex = [Int](repeating: 0, count: 8)
        for (w, i) in p.indexOfWorldRank.enumerated() { hostOfIndex[i] = hosts.hostOfRank[w] }
        for stage in 0..<2 {
            let names = Set((0..<4).map { hosts.names[hostOfIndex[p.shape.rank(of: MeshCoordinate(pp: stage, dp: $0, ring: 0, ulysses: 0))]] })
            XCTAssertTrue(names == ["h0", "h1"] || names == ["h2", "h3"], "stage \(stage) on \(names)")
        }
    }

    func testPlacementKeyIsValidated() throws {
        var c = TesseraConfig()
        c.data.train = "train.txt"
        for good in ["auto", "rank", "pp,dp,ring,ulysses"] {
            c.parallelism.placement = good
            XCTAssertNoThrow(try c.validate(origins: [:], fallbackSource: "test", dataFiles: false), good)
        }
        XCTAssertEqual(c.parallelism.explicitOrder, [.pp, .dp, .ring, .ulysses])
        for bad in ["fast", "pp,dp,ring", "pp,pp,ring,ulysses"] {
            c.parallelism.placement = bad
            XCTAssertThrowsError(try c.validate(origins: [:], fallbackSource: "test", dataFiles: false), bad) { XCTAssertTrue("\($0)".contains("parallelism.placement"), "\($0)") }
        }
    }

    /// A job whose mesh runs in another order (pipeline innermost) reproduces the single-rank run: the groups follow
    /// the coordinates, not the world ranks.
    func testAnotherOrderReproducesTheSingleRankRun() throws {
        let r = try DataParallelTests.checkLayout(np: 4, "placed-pp-inside", shape: [],
                                                  ["--parallelism.dp", "2", "--parallelism.pp", "2", "--training.microbatches", "2",
                                                   "--parallelism.placement", "pp,dp,ring,ulysses"])
        XCTAssertTrue(r.output.contains("placement (parallelism.placement = \"pp,dp,ring,ulysses\"): pp inside dp"), r.output)
    }
}
