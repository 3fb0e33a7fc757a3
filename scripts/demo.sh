#!/usr/bin/env bash
# The main job in one command (as root, on Debian with Node/npm): installs what is missing,
# builds, and plays the original ratchet-cni scenario: primary-pod and pair-pod linked by a
# veth on one node, then by a VXLAN tunnel across two simulated nodes, with pings and the
# topology. Leaves nothing behind but the topology picture in demo-out/.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
if [ "$(id -u)" != 0 ]; then
  echo "scripts/demo.sh creates network namespaces and links: run it as root" >&2
  exit 1
fi
. "$repo/scripts/deps.sh"
ensure_deps
echo "== build" >&2
./scripts/build >&2
exec node_modules/.bin/bun scripts/demo.ts
