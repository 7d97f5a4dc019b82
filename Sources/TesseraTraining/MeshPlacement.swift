// Where each rank goes in the mesh, decided at start on every rank alike: the hosts (every rank's host name,
// gathered), the links between them (the hostfile's `# link` comments when TESSERA_HOSTFILE names one that
// describes every pair, else measured), the traffic of each group (MeshTraffic, from the config), and
// `parallelism.placement`: "auto" chooses (Placement.choose), "rank" keeps world rank order, an explicit order
// of the dimensions is taken as written.

import Foundation
import TesseraComm
import TesseraTopology

enum MeshPlacement {
    /// The mesh of `config` on this job's ranks. Collective over the world.
    static func make(config: TesseraConfig, world: Communicator) throws -> ProcessMesh {
        let p = config.parallelism
        var shape = MeshShape(pp: p.pp, dp: p.dp, ring: p.ring, ulysses: p.ulysses)
        if let order = p.explicitOrder { shape.order = order }
        let hosts = try LinkProbe.hosts(world)
        guard p.placement == "auto", hosts.names.count > 1 else {
            let mesh = try ProcessMesh(world: world, shape: shape)
            if hosts.names.count > 1 || p.explicitOrder != nil {
                let traffic = MeshTraffic(config: config)
                let links = LinkMatrix(hosts: hosts.names, source: "not measured (parallelism.placement = \"\(p.placement)\")")
                mesh.placementReport = Placement.worldOrder(shape: shape, hosts: hosts, links: links, traffic: traffic)
                    .describe(links: links, chosen: "parallelism.placement = \"\(p.placement)\"")
            }
            return mesh
        }
        let links = try linkMatrix(world: world, hosts: hosts)
        let traffic = MeshTraffic(config: config)
        let placement = Placement.choose(shape: shape, hosts: hosts, links: links, traffic: traffic)
        let mesh = try ProcessMesh(world: world, shape: placement.shape, placement: placement.indexOfWorldRank)
        mesh.placementReport = placement.describe(links: links, chosen: "parallelism.placement = \"auto\"")
            + "\n  traffic per step: " + traffic.describe
        return mesh
    }

    /// The hostfile's links when TESSERA_HOSTFILE names a readable hostfile whose comments describe every pair of
    /// these hosts; otherwise measured. Every rank decides alike (the file is on a shared file system, or absent
    /// everywhere; the measured matrix is the same on every rank).
    static func linkMatrix(world: Communicator, hosts: HostMap) throws -> LinkMatrix {
        var described: Int32 = 0
        var fromFile: LinkMatrix?
        if let path = ProcessInfo.processInfo.environment["TESSERA_HOSTFILE"], !path.isEmpty,
           let file = try? Hostfile(path: path), let m = file.linkMatrix(hosts: hosts.names) {
            fromFile = m; described = 1
        }
        let everywhere = try world.allreduce(described, op: .min, label: "hostfile links")
        if everywhere == 1, let fromFile { return fromFile }
        return try LinkProbe.measure(world, hosts: hosts)
    }
}
