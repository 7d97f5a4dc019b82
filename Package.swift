// swift-tools-version: 6.0
// Tessera: a distributed GPT training runtime in Swift over MPI and OpenBLAS.
import PackageDescription

// Release-only code generation flags for the runtime's own targets (see docs/architecture.md, "Build").
let fast: [SwiftSetting] = [
    .unsafeFlags(["-Ounchecked", "-target-cpu", "haswell", "-cross-module-optimization"],
                 .when(configuration: .release)),
]
// The kernels are optimized in debug builds too (the test suite runs the debug build): their SIMD loops and the
// attention's block products run 10–100× slower unoptimized. Bounds and overflow checks stay on (-O, not -Ounchecked).
let kernels: [SwiftSetting] = fast + [.unsafeFlags(["-O", "-target-cpu", "haswell"], .when(configuration: .debug))]

let package = Package(
    name: "Tessera",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "tessera", targets: ["tessera"]),
    ],
    dependencies: [
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
    ],
    targets: [
        // C libraries, bound through pkg-config; shim.h exposes Open MPI's handle macros as inline getters.
        .systemLibrary(name: "CMPI", pkgConfig: "ompi-c",
                       providers: [.apt(["libopenmpi-dev", "openmpi-bin"])]),
        .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas",
                       providers: [.apt(["libopenblas-dev"])]),
        // oneDNN's matmul: the native bf16 product on CPUs with AVX512_BF16 (see docs/precision.md).
        .systemLibrary(name: "COneDNN", providers: [.apt(["libdnnl-dev"])]),
        // Kernels for instruction sets the Swift build does not target (AVX-512), picked at run time
        // (Sources/CKernels/include/ckernels.h). Optimized in debug builds too, as the Swift kernels are; no
        // contraction of a * b + c into one fused operation, so they keep giving the Swift code's bits.
        .target(name: "CKernels", cSettings: [.unsafeFlags(["-O2", "-ffp-contract=off"])]),
        // Plain C MPI loops that `tessera bench-comm` measures the Swift communication layer against.
        .target(name: "CCommBench", dependencies: ["CMPI"]),
        // Step phase accounting (compute / communication wait / idle) and Chrome trace files.
        .target(name: "TesseraTimeline", swiftSettings: fast),
        // MPI bindings and the process mesh.
        .target(name: "TesseraComm", dependencies: ["CMPI", "TesseraTimeline"], swiftSettings: fast),
        // CPU kernels: thread pool, SIMD math, forward/backward of every op, blockwise attention.
        .target(name: "TesseraKernels", dependencies: ["COpenBLAS", "COneDNN", "CKernels"], swiftSettings: kernels),
        // Activation memory: the store and its meter, layer policies, the offload tier, the budget planner.
        .target(name: "TesseraMemory", dependencies: ["TesseraKernels"], swiftSettings: fast),
        // Checkpoints: the format (manifest, per-rank safetensors shards, checksums), atomic commit, reading
        // any range of a saved tensor from the shards that overlap it.
        .target(name: "TesseraCheckpoint", swiftSettings: fast),
        // The GPT-2 model: named global parameters, their initialisation, forward and backward.
        .target(name: "TesseraModel", dependencies: ["TesseraKernels", "TesseraMemory"], swiftSettings: fast),
        // Data parallelism: bucketed, overlapped gradient reduction and ZeRO-1 partitions.
        .target(name: "TesseraDataParallel",
                dependencies: ["TesseraComm", "TesseraModel", "TesseraKernels", "TesseraTimeline"], swiftSettings: fast),
        // Sequence parallelism: zigzag token layout, ring attention, Ulysses all-to-all, their hybrid.
        .target(name: "TesseraSequenceParallel",
                dependencies: ["TesseraComm", "TesseraModel", "TesseraKernels", "TesseraTimeline"], swiftSettings: fast),
        // Pipeline parallelism: schedules as data (planner, simulation), stage partition, the engine.
        .target(name: "TesseraPipeline",
                dependencies: ["TesseraComm", "TesseraModel", "TesseraKernels", "TesseraTimeline"], swiftSettings: fast),
        // Hosts and links: the job's hosts, the links between them (measured or from the hostfile), and the
        // placement of the mesh on them.
        .target(name: "TesseraTopology", dependencies: ["TesseraComm"], swiftSettings: fast),
        // Byte-level BPE tokenizer (GPT-2 style), trained here or read from Hugging Face's tokenizer.json.
        .target(name: "TesseraTokenizer", swiftSettings: fast),
        // Training: config, data, optimizer, schedule, loop, metrics, sampling.
        .target(name: "TesseraTraining",
                dependencies: ["TesseraModel", "TesseraMemory", "TesseraKernels", "TesseraComm", "TesseraTimeline", "TesseraDataParallel",
                               "TesseraSequenceParallel", "TesseraPipeline", "TesseraCheckpoint", "TesseraTokenizer", "TesseraTopology", "TOMLKit"],
                swiftSettings: fast),
        // The layout planner (`tessera plan --auto`, `training.layout = "auto"`): the valid layouts of a job, a
        // calibration run, predicted memory and step time, the ranking.
        .target(name: "TesseraPlanner",
                dependencies: ["TesseraTraining", "TesseraTopology", "TesseraComm", "TesseraModel", "TesseraPipeline", "TesseraKernels"],
                swiftSettings: fast),
        // Benchmarks (`tessera bench*`): one shared scaffold (synthetic data, sizes, median, tables, JSON reports).
        .target(name: "TesseraBench",
                dependencies: ["TesseraTraining", "TesseraModel", "TesseraMemory", "TesseraKernels", "TesseraComm", "TesseraTimeline",
                               "TesseraDataParallel", "TesseraSequenceParallel", "TesseraPipeline", "CCommBench"],
                swiftSettings: fast),
        // `tessera mpi-check`: every call of the MPI layer and the mesh, checked under mpirun.
        .target(name: "TesseraSelfCheck", dependencies: ["TesseraComm", "CMPI"], swiftSettings: fast),
        // The `tessera` command.
        .executableTarget(name: "tessera",
                          dependencies: ["TesseraTraining", "TesseraBench", "TesseraSelfCheck", "TesseraTokenizer", "TesseraPlanner",
                                         .product(name: "ArgumentParser", package: "swift-argument-parser")],
                          swiftSettings: fast),
        .testTarget(name: "TesseraTests",
                    dependencies: ["TesseraTraining", "TesseraModel", "TesseraMemory", "TesseraCheckpoint", "TesseraKernels", "CKernels", "TesseraComm", "TesseraTimeline",
                                 "TesseraDataParallel", "TesseraSequenceParallel", "TesseraPipeline", "TesseraBench", "TesseraSelfCheck",
                                 "TesseraTokenizer", "TesseraTopology", "TesseraPlanner", "tessera"]),
    ]
)
