#!/usr/bin/env bash
# Runs every test of the project on a fresh Debian machine with Node/npm, as root.
# Installs what is missing (apt, npm ci), builds bin/ratchet, starts a throwaway 3-member etcd
# cluster on loopback, runs the type check and `bun test`, stops everything it started, and prints
# "N passed, N failed" alone on its last line.
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"

say() { printf '== %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
  echo "scripts/test.sh: the tests create network namespaces and links: run as root" >&2
  echo "0 passed, 1 failed"
  exit 1
fi

# --- dependencies ------------------------------------------------------------------------
. "$repo/scripts/deps.sh"
ensure_deps || { echo "0 passed, 1 failed"; exit 1; }
BUN="$repo/node_modules/.bin/bun"

# --- state to clean up, whatever happens ----------------------------------------------------
work="$(mktemp -d /tmp/ratchet-ci.XXXXXX)"
# Every netns and host link a test creates starts with this prefix (short: link names are
# at most 15 bytes), so the safety net below removes only this run's leftovers.
export RATCHET_TEST_PREFIX="${RATCHET_TEST_PREFIX:-rt$(od -An -N2 -tx1 /dev/urandom | tr -d ' \n')}"
etcd_pids=()
cleanup() {
  stop_etcd
  # Safety net: tests remove what they create, but a crashed test must not leave state behind.
  # containerd's pods, shims and mounts (the containerd suite), and every process of the run.
  containerd_leftovers "$work"
  # Node agents the tests started log (stdout) into $work: stop any still running.
  for fd1 in /proc/[0-9]*/fd/1; do
    case "$(readlink "$fd1" 2>/dev/null)" in "$work"/*) p="${fd1#/proc/}"; kill -9 "${p%%/*}" 2>/dev/null;; esac
  done
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$RATCHET_TEST_PREFIX"); do ip netns delete "$ns" 2>/dev/null; done
  for l in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep "^$RATCHET_TEST_PREFIX"); do ip link delete "$l" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT

# --- build -------------------------------------------------------------------------------
passed=0; failed=0
say "build"
if ./scripts/build >&2; then passed=$((passed+1)); else failed=$((failed+1)); echo "$passed passed, $failed failed"; exit 1; fi

# Formatting and lint in check mode: ./scripts/fmt fixes what this reports.
say "format and lint (biome check)"
if node_modules/.bin/biome check --max-diagnostics=50 . >&2; then passed=$((passed+1)); else failed=$((failed+1)); fi

say "typecheck"
if node_modules/.bin/tsc --noEmit -p . >&2; then passed=$((passed+1)); else failed=$((failed+1)); fi

# --- etcd on loopback, free ports, data in a temp dir ------------------------------------------
start_etcd ratchet-test "$work" || { echo "$passed passed, $((failed+1)) failed"; exit 1; }
export RATCHET_TEST_WORK="$work"

# --- tests -------------------------------------------------------------------------------
say "bun test"
# Integration tests create namespaces and start agents: each gets up to 2 minutes.
"$BUN" test --timeout 120000 --reporter=junit --reporter-outfile="$work/junit.xml" "$@" >&2
rc=$?
if [ -s "$work/junit.xml" ]; then
  read -r tests failures skipped < <(sed -n 's/.*<testsuites[^>]* tests="\([0-9]*\)"[^>]* failures="\([0-9]*\)" skipped="\([0-9]*\)".*/\1 \2 \3/p' "$work/junit.xml" | head -1)
  passed=$((passed + tests - failures - skipped)); failed=$((failed + failures))
  [ "$rc" != 0 ] && [ "$failures" = 0 ] && failed=$((failed+1))   # e.g. an error outside any test
else
  failed=$((failed+1))
fi

# The README's first command must keep working: the demo's exit code counts as a test.
say "demo"
if "$BUN" scripts/demo.ts >&2; then passed=$((passed+1)); else failed=$((failed+1)); fi

# netem on a kernel that has it (this machine's may not): counts as passed only if the VM ran
# and printed PASS; RATCHET_SKIP_VM=1 skips it (counted as skipped, never as passed).
say "kernel VM (scripts/kernel-vm.sh)"
vm_skipped=0
RATCHET_TEST_WORK="$work" ./scripts/kernel-vm.sh >&2
case $? in
  0) passed=$((passed+1)) ;;
  77) vm_skipped=1 ;;
  *) failed=$((failed+1)) ;;
esac

# The failures' reasons again, last: a log cut to its end still says why.
[ -s "$work/junit.xml" ] && "$BUN" scripts/failures.ts "$work/junit.xml" >&2
echo "$passed passed, $failed failed$([ "$vm_skipped" = 0 ] || echo ", 1 skipped")"
[ "$failed" = 0 ]
