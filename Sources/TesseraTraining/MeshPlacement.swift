// Where each rank goes in the mesh, decided at start on every rank alike: the hosts (every rank's host name,
// gathered), the links between them (the hostfile's `# link` comments when TESSERA_HOSTFILE names one that
// describes every pair, else measured), the traffic of each group (MeshTraffic, from the config), and
// `parallelism.placement`: "auto" chooses (Placement.choose), "rank" keeps world rank order, an explicit order
// of the dimensions is taken as written.

import Foundation
import TesseraComm
import TesseraTopology

extension Placement {
    /// The placement a job of `config` takes on these hosts and links: chosen when `parallelism.placement = "auto"`,
    /// else in world rank order (in the explicit order of the dimensions, if the key gives one). `traffic`: the
    /// config's, when the caller has it already.
    public static func of(config: TesseraConfig, hosts: HostMap, links: LinkMatrix, searchHostOrders: Bool = true,
                          traffic known: MeshTraffic? = nil) -> Placement {
        let p = config.parallelism
        var shape = MeshShape(pp: p.pp, dp: p.dp, ring: p.ring, ulysses: p.ulysses)
        if let order = p.explicitOrder { shape.order = order }
        let traffic = known ?? MeshTraffic(config: config)
        return p.placement == "auto"
            ? choose(shape: shape, hosts: hosts, links: links, traffic: traffic, searchHostOrders: searchHostOrders)
            : worldOrder(shape: shape, hosts: hosts, links: links, traffic: traffic)
    }
}

public enum MeshPlacement {
    /// The mesh of `config` on this job's ranks. Collective over the world.
    static func make(config: TesseraConfig, world: Communicator) throws -> ProcessMesh {
        let p = config.parallelism
        let hosts = try LinkProbe.hosts(world)
        let measure = p.placement == "auto" && hosts.names.count > 1
        let links = measure ? try linkMatrix(world: world, hosts: hosts)
            : LinkMatrix(hosts: hosts.names, source: "not measured (parallelism.placement = \"\(p.placement)\")")
        let placement = Placement.of(config: config, hosts: hosts, links: links)
        let mesh = try ProcessMesh(world: world, shape: placement.shape, placement: placement.indexOfWorldRank)
        if hosts.names.count > 1 || p.explicitOrder != nil {
            mesh.placementReport = placement.describe(links: links, chosen: "parallelism.placement = \"\(p.placement)\"")
                + (measure ? "\n  traffic per step: " + MeshTraffic(config: config).describe : "")
        }
        return mesh
    }

    /// The hostfile's links when TESSERA_HOSTFILE names a readable hostfile whose comments describe every pair of
    /// these hosts; otherwise measured. Every rank decides alike (the file is on a shared file system, or absent
    /// everywhere; the measured matrix is the same on every rank).
    public static func linkMatrix(world: Communicator, hosts: HostMap) throws -> LinkMatrix {
        var described: Int32 = 0
        var fromFile: LinkMatrix?
        if let file = hostfile(world: world), let m = file.linkMatrix(hosts: hosts.names) {
            fromFile = m; described = 1
        }
        let everywhere = try world.allreduce(described, op: .min, label: "hostfile links")
        if everywhere == 1, let fromFile { return fromFile }
        return try LinkProbe.measure(world, hosts: hosts)
    }

    /// The hostfile TESSERA_HOSTFILE names (nil without one); one that cannot be read or parsed is reported by world
    /// rank 0 (the error names file and line) and ignored.
    public static func hostfile(world: Communicator) -> Hostfile? {
        guard let path = ProcessInfo.processInfo.environment["TESSERA_HOSTFILE"], !path.isEmpty else { return nil }
        do { return try Hostfile(path: path) } catch {
            if world.rank == 0 { print("tessera: warning: TESSERA_HOSTFILE: \(error); its links are not used"); fflush(nil) }
            return nil
        }
    }
}
