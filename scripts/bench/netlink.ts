// Benchmark (not a test): per veth pair, create + address both ends + get + delete, through
// src/netlink and through the equivalent iproute2 commands, between two fresh namespaces.
// Run as root: node_modules/.bin/bun scripts/bench/netlink.ts [pairs]
import { readdirSync } from "node:fs";
import { addAddress, addVethPair, deleteLink, getLink } from "../../src/netlink/index.ts";
import { ARGS, report } from "./support.ts";

const PAIRS = Number(ARGS[0] ?? 200);
const tag = `rtb${process.pid.toString(36).slice(-4)}`;
const nsA = `${tag}a`;
const nsB = `${tag}b`;
const pathA = `/var/run/netns/${nsA}`;
const pathB = `/var/run/netns/${nsB}`;

function ip(...args: string[]): void {
  const r = Bun.spawnSync({ cmd: ["ip", ...args], stdout: "ignore", stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`ip ${args.join(" ")}: ${r.stderr.toString().trim()}`);
}

// Deleting a veth spends ~15-18 ms inside the kernel, within the RTM_DELLINK request itself
// (strace -T shows it in sendto; device unregistration waits for RCU), the same for both
// paths, so the table shows each phase apart.
const fdCount = () => readdirSync("/proc/self/fd").length;
const median = (xs: number[]) => {
  const s = [...xs].sort((x, y) => x - y);
  return s.length % 2
    ? (s[(s.length - 1) / 2] as number)
    : ((s[s.length / 2 - 1] as number) + (s[s.length / 2] as number)) / 2;
};
const addr = (i: number, end: 1 | 2) => `10.${100 + Math.floor(i / 64)}.${(i % 64) * 4}.${end}/30`;

type Phase = "create" | "address" | "get" | "delete";
const PHASES: Phase[] = ["create", "address", "get", "delete"];
type Steps = Record<Phase, (i: number) => void>;

const viaNetlink: Steps = {
  create: (i) => addVethPair({ a: { name: `na${i}`, ns: pathA }, b: { name: `nb${i}`, ns: pathB } }),
  address: (i) => {
    addAddress(`na${i}`, addr(i, 1), pathA);
    addAddress(`nb${i}`, addr(i, 2), pathB);
  },
  get: (i) => {
    const link = getLink(`na${i}`, pathA);
    if (!link.up || link.kind !== "veth") throw new Error(`na${i} is not an up veth`);
  },
  delete: (i) => deleteLink(`na${i}`, pathA),
};

const viaIp: Steps = {
  create: (i) => {
    ip("link", "add", `ia${i}`, "netns", nsA, "up", "type", "veth", "peer", "name", `ib${i}`, "netns", nsB);
    ip("-n", nsB, "link", "set", `ib${i}`, "up");
  },
  address: (i) => {
    ip("-n", nsA, "addr", "add", addr(i, 1), "dev", `ia${i}`);
    ip("-n", nsB, "addr", "add", addr(i, 2), "dev", `ib${i}`);
  },
  get: (i) => ip("-n", nsA, "-d", "link", "show", "dev", `ia${i}`),
  delete: (i) => ip("-n", nsA, "link", "del", `ia${i}`),
};

/** Per phase and in total, the milliseconds each pair took. */
function measure(steps: Steps): Record<Phase | "total", number[]> {
  const out = {
    create: [] as number[],
    address: [] as number[],
    get: [] as number[],
    delete: [] as number[],
    total: [] as number[],
  };
  for (let i = 0; i < PAIRS; i++) {
    let total = 0;
    for (const phase of PHASES) {
      const t0 = Bun.nanoseconds();
      steps[phase](i);
      const ms = (Bun.nanoseconds() - t0) / 1e6;
      out[phase].push(ms);
      total += ms;
    }
    out.total.push(total);
  }
  return out;
}

ip("netns", "add", nsA);
try {
  ip("netns", "add", nsB);
  try {
    const fdsBefore = fdCount();
    const nl = measure(viaNetlink);
    const fdsAfter = fdCount();
    const ipTimes = measure(viaIp);
    const label: Record<Phase | "total", string> = {
      create: "create pair, both ends up",
      address: "add an IPv4 address per end",
      get: "get link",
      delete: "delete pair",
      total: "total",
    };
    const human = [
      `${PAIRS} veth pairs between two fresh namespaces; median ms per pair`,
      "| phase                         |  netlink | iproute2 |  ratio |",
      "|-------------------------------|----------|----------|--------|",
    ];
    for (const phase of [...PHASES, "total"] as const) {
      const a = median(nl[phase]);
      const b = median(ipTimes[phase]);
      human.push(
        `| ${label[phase].padEnd(29)} | ${a.toFixed(3).padStart(8)} | ${b.toFixed(3).padStart(8)} | ${(b / a).toFixed(1).padStart(5)}x |`,
      );
    }
    const sum = (r: Record<Phase | "total", number[]>) =>
      median(r.total.map((t, i) => t - (r.delete[i] as number)));
    human.push(
      `without the delete (kernel-bound, see below): ${sum(nl).toFixed(3)} vs ${sum(ipTimes).toFixed(3)} ms, ${(sum(ipTimes) / sum(nl)).toFixed(1)}x`,
    );
    human.push(
      `/proc/self/fd entries before / after the netlink run: ${fdsBefore} / ${fdsAfter}${fdsBefore === fdsAfter ? "" : "  <-- LEAK"}`,
    );
    report(
      {
        pairs: PAIRS,
        netlinkNoDeleteMs: sum(nl),
        iprouteNoDeleteMs: sum(ipTimes),
        netlinkDeleteMs: median(nl.delete),
        iprouteDeleteMs: median(ipTimes.delete),
        netlinkTotalMs: median(nl.total),
        iprouteTotalMs: median(ipTimes.total),
        fdsBefore,
        fdsAfter,
      },
      human,
    );
    if (fdsBefore !== fdsAfter) process.exitCode = 1;
  } finally {
    ip("netns", "delete", nsB);
  }
} finally {
  ip("netns", "delete", nsA);
}
