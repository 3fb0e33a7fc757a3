#!/usr/bin/env bash
# Installs bin/ratchet into DIR (default /opt/cni/bin) with the ratchet-child symlink.
# The binary is written to a temporary file in DIR and renamed over the old one, so a
# running ratchet is never overwritten in place ("Text file busy") and a runtime never
# execs a half-written file. Running it again with the same binary changes nothing.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:-/opt/cni/bin}"
src="${RATCHET_BINARY:-$repo/bin/ratchet}"

if [ ! -x "$src" ]; then
  echo "install: $src is missing; building it" >&2
  "$repo/scripts/build"
fi
mkdir -p "$dir"

if [ -f "$dir/ratchet" ] && [ ! -L "$dir/ratchet" ] && cmp -s "$src" "$dir/ratchet"; then
  echo "install: $dir/ratchet is up to date"
else
  tmp="$(mktemp "$dir/.ratchet.XXXXXX")"
  trap 'rm -f "$tmp"' EXIT
  cp "$src" "$tmp"
  chmod 0755 "$tmp"
  mv -f "$tmp" "$dir/ratchet"
  trap - EXIT
  echo "install: installed $dir/ratchet"
fi

if [ "$(readlink "$dir/ratchet-child" 2>/dev/null || true)" != "ratchet" ]; then
  ln -sfn ratchet "$dir/.ratchet-child.tmp"
  mv -fT "$dir/.ratchet-child.tmp" "$dir/ratchet-child"
  echo "install: linked $dir/ratchet-child -> ratchet"
fi
