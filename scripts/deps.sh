#!/usr/bin/env bash
# Installs (as root, from Debian's packages) what the build, the demo and the end-to-end tests
# use: protoc with protobuf's own .proto files (the etcd client's build needs both), etcd and
# etcdctl (cluster mode: the demo runs on a real etcd), ip (iproute2), ethtool, curl, ping,
# tracepath, dig, wrk (keep-alive load across meshd restarts), libpcap-dev (meshd compiles and
# runs `meshctl capture` filters with libpcap) and tcpdump (the capture test reads the file);
# with --bench also what `bench mesh` compares meshd with: nftables (the kernel's way), DPDK's
# testpmd (the veth ceiling) and libdpdk-dev (meshd's DPDK port).
# Says what is missing when it cannot install. The AF_XDP backend (meshd --io afxdp) needs no
# package: it is plain system calls (no libbpf/libxdp, no clang).
set -euo pipefail
declare -A pkg=( [wrk]=wrk [ip]=iproute2 [ethtool]=ethtool [curl]=curl [ping]=iputils-ping [tracepath]=iputils-tracepath [dig]=bind9-dnsutils
                 [etcd]=etcd-server [etcdctl]=etcd-client [protoc]=protobuf-compiler [tcpdump]=tcpdump )
if [ "${1:-}" = "--bench" ]; then
  pkg[nft]=nftables
  pkg[dpdk-testpmd]=dpdk-dev
  pkg[openssl]=openssl
fi
missing=()
for tool in "${!pkg[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("${pkg[$tool]}")
done
if [ ! -e /usr/include/google/protobuf/descriptor.proto ]; then
  missing+=(libprotobuf-dev)
fi
# libpcap's filter compiler and interpreter: meshd links it for `meshctl capture --filter`.
if [ ! -e /usr/include/pcap/pcap.h ]; then
  missing+=(libpcap-dev)
fi
# With --bench (./test): DPDK's development files, for meshd's DPDK port (--features
# dataplane/dpdk: `meshd --io dpdk`, testbed/tests/dpdk.rs), found with pkg-config.
if [ "${1:-}" = "--bench" ] && ! pkg-config --exists libdpdk 2>/dev/null; then
  missing+=(libdpdk-dev pkg-config)
fi
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "missing tools; install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing ${missing[*]} (apt-get) ..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
