# Sourced by the other Launch/ scripts: installs what is missing, sets the MPI environment.
# Needs only the Swift toolchain on a Debian machine; installs Open MPI, OpenBLAS, oneDNN, pkg-config,
# iproute2, iptables and the fortunes text with apt-get (as root, or through sudo when available).

tessera_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

tessera_install_missing() {
    local need=()
    command -v mpirun >/dev/null 2>&1 || need+=(openmpi-bin)
    [ -e /usr/include/x86_64-linux-gnu/openmpi/include/mpi.h ] || pkg-config --exists ompi-c 2>/dev/null || need+=(libopenmpi-dev)
    pkg-config --exists openblas 2>/dev/null || need+=(libopenblas-dev)
    [ -e /usr/include/oneapi/dnnl/dnnl.h ] || need+=(libdnnl-dev)
    command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
    [ -d /usr/share/games/fortunes ] || need+=(fortunes)
    # ip and tc for Launch/netns-hosts (the multi-host tests); they live in sbin, which a user's PATH may lack.
    local t
    for t in ip tc; do
        if ! command -v "$t" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$t" ] && [ ! -x "/sbin/$t" ]; then need+=(iproute2); break; fi
    done
    # iptables (NFQUEUE) and python3 for Launch/delay-line: link delays on kernels without sch_netem.
    command -v iptables >/dev/null 2>&1 || [ -x /usr/sbin/iptables ] || need+=(iptables)
    command -v python3 >/dev/null 2>&1 || need+=(python3)
    [ ${#need[@]} -eq 0 ] && return 0
    echo "tessera: installing ${need[*]}" >&2
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || { echo "tessera: please install as root: apt-get install ${need[*]}" >&2; return 1; }
        sudo="sudo"
    fi
    $sudo apt-get update -qq >/dev/null && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
}

tessera_mpi_env() {
    if [ "$(id -u)" -eq 0 ]; then
        export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    fi
    # Open MPI's CMA single-copy transport is 3-4x slower than none on these machines.
    export OMPI_MCA_btl_vader_single_copy_mechanism="${OMPI_MCA_btl_vader_single_copy_mechanism:-none}"
    # A core type narrower than the CPU (e.g. Haswell on AVX-512) halves sgemm: drop it.
    if [ -n "${OPENBLAS_CORETYPE:-}" ] && grep -qw avx512f /proc/cpuinfo 2>/dev/null && [ "${TESSERA_KEEP_OPENBLAS_CORETYPE:-}" != 1 ]; then
        case "${OPENBLAS_CORETYPE,,}" in
            haswell|zen|sandybridge|nehalem|core2|prescott)
                echo "tessera: note: unsetting OPENBLAS_CORETYPE=$OPENBLAS_CORETYPE (forces AVX2 kernels on this AVX-512 CPU; on many such CPUs that halves sgemm)" >&2
                unset OPENBLAS_CORETYPE ;;
        esac
    fi
}

# The effective config, as `tessera config show BIN-ARGS...` prints it, in tessera_shown. The binary parses
# and validates the config, so no script here parses TOML. Usage: tessera_show_config BIN CONFIG [overrides]
tessera_show_config() {
    local bin="$1"; shift
    tessera_shown=$("$bin" config show "$@")
}

# The first word of KEY's value in [SECTION] of tessera_shown (enough for the integers read here; the
# `# default: ...` comment that marks a changed value is not part of it). Empty when there is no such key.
tessera_config_value() {
    printf '%s\n' "$tessera_shown" | awk -v key="$1" -v section="[$2]" '
        /^\[/ { inside = ($0 == section); next }
        inside && $1 == key && $2 == "=" { print $3; exit }'
}

# The mesh size pp × dp × ring × ulysses of tessera_shown in tessera_ranks, and its factors in tessera_mesh
# ("pp 1 × dp 2 × ring 1 × ulysses 1"). Fails with a message if a degree cannot be read.
tessera_mesh_size() {
    local key v
    tessera_ranks=1 tessera_mesh=""
    for key in pp dp ring ulysses; do
        v=$(tessera_config_value "$key" parallelism)
        if ! [[ "$v" =~ ^[1-9][0-9]{0,8}$ ]]; then
            echo "tessera: cannot read parallelism.$key from the config (got '$v')" >&2
            return 1
        fi
        tessera_ranks=$((tessera_ranks * v))
        tessera_mesh+="${tessera_mesh:+ × }$key $v"
    done
}

# The fortunes corpus as one UTF-8 text file (records separated by blank lines).
# What a ready job needs before it trains: the packages, the fortunes text, the release build; then the
# working directory is the repository.
tessera_ready_job() {
    tessera_install_missing
    tessera_fortunes
    cd "$tessera_root"
    tessera_build -c release --product tessera
}

# The fortune files of Debian's `fortunes` packages, one path per line (fortunes separated by "%" lines).
tessera_fortune_files() {
    local f
    for f in /usr/share/games/fortunes/*; do
        case "$f" in *.dat|*.u8) continue ;; esac
        [ -f "$f" ] && echo "$f"
    done
    return 0
}

tessera_fortunes() {
    local out="$tessera_root/data/fortunes.txt"
    [ -s "$out" ] && return 0
    mkdir -p "$tessera_root/data"
    local files=()
    mapfile -t files < <(tessera_fortune_files)
    [ ${#files[@]} -gt 0 ] || { echo "tessera: no fortunes found in /usr/share/games/fortunes" >&2; return 1; }
    cat "${files[@]}" | sed 's/^%$//' | iconv -f utf-8 -t utf-8 -c > "$out.tmp" && mv "$out.tmp" "$out"
    echo "tessera: wrote $out ($(wc -c < "$out") bytes from ${#files[@]} fortune files)" >&2
}

# Builds quietly; on failure prints the compiler's output and stops.
tessera_build() {
    local log
    log=$(mktemp)
    if ! (cd "$tessera_root" && swift build "$@") > "$log" 2>&1; then
        cat "$log" >&2; rm -f "$log"
        echo "tessera: build failed (swift build $*)" >&2
        return 1
    fi
    grep -E "warning: |complete" "$log" || true
    rm -f "$log"
}
