#!/usr/bin/env bash
# Runs every benchmark of the project in one go and prints one table (as root). Starts its
# own throwaway 3-member etcd cluster on free loopback ports with temporary data dirs, builds bin/ratchet
# if it is missing or older than the sources, and stops everything it started at the end.
# Each benchmark runs side by side with its reference in the same run; a few short rounds.
#   ./scripts/bench.sh            # RATCHET_BENCH_LOAD_PAIRS (default 100) sizes the load run,
#                                 # RATCHET_BENCH_METRIC_ENDS (default 10000) the scraped link ends,
#                                 # RATCHET_BENCH_LAB_LINKS (1500) and _ENDS (10000) the lab
#   ./scripts/bench.sh topology link  # only the named benchmarks (load: the load run)
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
BUN="$repo/node_modules/.bin/bun"
say() { printf '== %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
  echo "scripts/bench.sh: the benchmarks create network namespaces and links: run as root" >&2
  exit 1
fi
. "$repo/scripts/deps.sh"
ensure_deps || exit 1

work="$(mktemp -d /tmp/ratchet-bench.XXXXXX)"
etcd_pids=()
export RATCHET_TEST_PREFIX="rb$(od -An -N2 -tx1 /dev/urandom | tr -d ' \n')"
cleanup() {
  stop_etcd
  # The containerd benchmark's runtimes, shims, pods and mounts, should it have crashed.
  containerd_leftovers "$work"
  # Node agents the load test started log (stdout) into $work: stop any still running.
  for fd1 in /proc/[0-9]*/fd/1; do
    case "$(readlink "$fd1" 2>/dev/null)" in "$work"/*) p="${fd1#/proc/}"; kill -9 "${p%%/*}" 2>/dev/null;; esac
  done
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$RATCHET_TEST_PREFIX"); do ip netns delete "$ns" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT

if [ ! -x bin/ratchet ] || [ -n "$(find src scripts/build.ts package.json -newer bin/ratchet -print -quit)" ]; then
  say "build"
  ./scripts/build >&2 || exit 1
fi

start_etcd ratchet-bench "$work" || { exit 1; }
# The test bed (containerd benchmark, load run) keeps its temp dirs here, in reach of cleanup.
export RATCHET_TEST_WORK="$work"

status=0
only=("$@")
wanted() { [ ${#only[@]} -eq 0 ] || [[ " ${only[*]} " == *" $1 "* ]]; }
bench() {
  local name="$1"; shift
  wanted "$name" || return 0
  say "$name"
  local t0=$SECONDS
  if ! "$BUN" "scripts/bench/$name.ts" "$@" --json >"$work/$name.json" 2>"$work/$name.err"; then
    echo "scripts/bench.sh: $name failed:" >&2; tail -n 20 "$work/$name.err" >&2; status=1
  fi
  say "$name: $((SECONDS - t0)) s"
}
bench passthrough 40
bench floor 20
bench agent 30 400
bench netlink 100
bench link 60
bench qdisc 200
bench live 5 20
bench cri 20
bench metrics 40 "${RATCHET_BENCH_METRIC_ENDS:-10000}"
bench topology "${RATCHET_BENCH_LAB_LINKS:-1500}" "${RATCHET_BENCH_LAB_ENDS:-10000}"

if wanted load; then
say "load (${RATCHET_BENCH_LOAD_PAIRS:-100} pairs)"
t0=$SECONDS
if ! RATCHET_LOAD_PAIRS="${RATCHET_BENCH_LOAD_PAIRS:-100}" RATCHET_LOAD_REPORT="$work/load.json" \
  "$BUN" test --timeout 900000 test/integration/load.test.ts >"$work/load.err" 2>&1; then
  echo "scripts/bench.sh: the load run failed:" >&2; tail -n 30 "$work/load.err" >&2; status=1
fi
say "load: $((SECONDS - t0)) s"
fi

echo "ratchet benchmarks, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores; medians, each measured side by side with its reference in this run"
"$BUN" scripts/bench/summary.ts "$work" || status=1
exit "$status"
