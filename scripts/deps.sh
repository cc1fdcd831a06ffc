#!/usr/bin/env bash
# Installs (as root, from Debian's packages) the tools the demo and the end-to-end tests use:
# ip (iproute2), ethtool, curl, ping, tracepath, dig; with --bench also what `bench mesh` compares meshd
# with: nftables (the kernel's way) and DPDK's testpmd (the veth ceiling), and what the cluster
# store's tests use: etcd and etcdctl, and protoc with protobuf's own .proto files (the etcd
# client's build needs both).
# Says what is missing when it cannot install. The AF_XDP backend (meshd --io afxdp) needs no
# package: it is plain system calls (no libbpf/libxdp, no clang).
set -euo pipefail
declare -A pkg=( [ip]=iproute2 [ethtool]=ethtool [curl]=curl [ping]=iputils-ping [tracepath]=iputils-tracepath [dig]=bind9-dnsutils )
if [ "${1:-}" = "--bench" ]; then
  pkg[nft]=nftables
  pkg[dpdk-testpmd]=dpdk-dev
  pkg[etcd]=etcd-server
  pkg[etcdctl]=etcd-client
  pkg[protoc]=protobuf-compiler
fi
missing=()
for tool in "${!pkg[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("${pkg[$tool]}")
done
if [ "${1:-}" = "--bench" ] && [ ! -e /usr/include/google/protobuf/descriptor.proto ]; then
  missing+=(libprotobuf-dev)
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
