// Regenerates test/fixtures/qdisc/*.json: the exact RTM_NEWQDISC requests iproute2's tc sends
// for a table of tbf and netem settings, captured with strace, beside the command line that
// made them and the impairment it declares. tc builds and sends its whole request before the
// kernel answers, so netem requests are captured even on a kernel without sch_netem.
// The reference is tc from iproute2 6.15 (bookworm-backports, unpacked into a temporary
// directory, not installed): since 6.9 tc sends netem's delay as TCA_NETEM_LATENCY64 in ns,
// as ratchet does. Debian 12's own tc (6.1) is captured too for a few cases.
// For tbf, the kernel's answer to `tc qdisc show` is kept as well (its dump of the qdisc).
// Run as root: node_modules/.bin/bun scripts/qdisc-fixtures.ts
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Impairment, tbfSizes } from "../src/netlink/tc.ts";

const OUT = join(import.meta.dir, "..", "test", "fixtures", "qdisc");
const MTU = 1500; // the capture veth's, which tbf's burst depends on
const NS = `rqfx${process.pid.toString(36)}`;

interface Case {
  name: string;
  args: string[];
  declared: Impairment;
  /** "old": Debian 12's tc 6.1 (decoded only; see its note). */
  tc?: "old";
  note?: string;
}

const tbf = (kbit: number): Case => ({
  name: `tbf-${kbit}kbit`,
  args: ["tbf", "rate", `${kbit}kbit`, "burst", String(tbfSizes(kbit, MTU).burst), "latency", "25ms"],
  declared: { kind: "tbf", rateKbit: kbit },
  note: "burst is ratchet's choice for the rate and a 1500-byte MTU; limit comes from tc's `latency 25ms`",
});

const CASES: Case[] = [
  { name: "netem-empty", args: ["netem"], declared: { kind: "netem" } },
  { name: "netem-delay", args: ["netem", "delay", "10ms"], declared: { kind: "netem", delayMs: 10 } },
  {
    name: "netem-delay-jitter-loss",
    args: ["netem", "delay", "10ms", "2ms", "loss", "1%"],
    declared: { kind: "netem", delayMs: 10, jitterMs: 2, lossPercent: 1 },
  },
  { name: "netem-loss", args: ["netem", "loss", "0.5%"], declared: { kind: "netem", lossPercent: 0.5 } },
  {
    name: "netem-duplicate",
    args: ["netem", "duplicate", "2.5%"],
    declared: { kind: "netem", duplicatePercent: 2.5 },
  },
  {
    name: "netem-corrupt",
    args: ["netem", "corrupt", "0.1%"],
    declared: { kind: "netem", corruptPercent: 0.1 },
  },
  {
    name: "netem-reorder",
    args: ["netem", "delay", "5ms", "reorder", "25%"],
    declared: { kind: "netem", delayMs: 5, reorderPercent: 25 },
  },
  { name: "netem-rate", args: ["netem", "rate", "1000kbit"], declared: { kind: "netem", rateKbit: 1000 } },
  { name: "netem-rate-min", args: ["netem", "rate", "8kbit"], declared: { kind: "netem", rateKbit: 8 } },
  {
    name: "netem-rate-64bit",
    args: ["netem", "rate", "40gbit"],
    declared: { kind: "netem", rateKbit: 40_000_000 },
    note: "5e9 bytes/s does not fit 32 bits: TCA_NETEM_RATE64, and ~0 in tc_netem_rate",
  },
  {
    name: "netem-all",
    args: [
      ...["netem", "delay", "20ms", "5ms", "loss", "3%", "duplicate", "1%"],
      ...["corrupt", "0.2%", "reorder", "10%", "rate", "50mbit"],
    ],
    declared: {
      kind: "netem",
      delayMs: 20,
      jitterMs: 5,
      lossPercent: 3,
      duplicatePercent: 1,
      corruptPercent: 0.2,
      reorderPercent: 10,
      rateKbit: 50_000,
    },
  },
  {
    name: "netem-max",
    args: [
      ...["netem", "delay", "60s", "60s", "loss", "100%", "duplicate", "100%"],
      ...["corrupt", "100%", "reorder", "100%", "rate", "100gbit"],
    ],
    declared: {
      kind: "netem",
      delayMs: 60_000,
      jitterMs: 60_000,
      lossPercent: 100,
      duplicatePercent: 100,
      corruptPercent: 100,
      reorderPercent: 100,
      rateKbit: 100_000_000,
    },
  },
  {
    name: "netem-fractions",
    args: [
      ...["netem", "delay", "1us", "12345us", "loss", "0.0001%", "duplicate", "33.333333%"],
      ...["corrupt", "99.9999999%", "reorder", "0.0000001%"],
    ],
    declared: {
      kind: "netem",
      delayMs: 0.001,
      jitterMs: 12.345,
      lossPercent: 0.0001,
      duplicatePercent: 33.333333,
      corruptPercent: 99.9999999,
      reorderPercent: 0.0000001,
    },
    note: "times given to tc in us: tc truncates ms * 1e6 to whole ns (10.001ms would become 10000999 ns)",
  },
  {
    name: "netem-zeros",
    args: ["netem", "delay", "0ms", "loss", "0%", "corrupt", "0%"],
    declared: { kind: "netem", delayMs: 0, lossPercent: 0, corruptPercent: 0 },
    note: "explicit zeros are sent (LATENCY64 0, CORRUPT 0); the kernel's dump reads back as no impairment",
  },
  tbf(8),
  tbf(1000),
  tbf(2000),
  tbf(1_000_000),
  { ...tbf(40_000_000), note: `${tbf(0).note}; 5e9 bytes/s: TCA_TBF_RATE64, and ~0 in tc_ratespec` },
  tbf(100_000_000),
  {
    name: "old-netem-delay-jitter-loss",
    args: ["netem", "delay", "10ms", "2ms", "loss", "1%"],
    declared: { kind: "netem", delayMs: 10, jitterMs: 2, lossPercent: 1 },
    tc: "old",
    note:
      "iproute2 before 6.9 puts delay and jitter in tc_netem_qopt as 64 ns ticks and sends no " +
      "LATENCY64/JITTER64; the kernel reads both (the 64-bit attributes win). Ratchet sends the " +
      "64-bit form, exact to the ns; this fixture proves the decoder reads the tick form too.",
  },
  {
    ...tbf(1000),
    name: "old-tbf-1000kbit",
    tc: "old",
    note:
      "tc 6.1 computes a few rate-table entries one tick apart from tc 6.15 (floating-point " +
      "order); kernels since 3.13 do not read the table when the ratespec names the link layer",
  },
];

function run(cmd: string[], check = true): { code: number; out: string; err: string } {
  const r = Bun.spawnSync({ cmd, stdout: "pipe", stderr: "pipe" });
  const res = { code: r.exitCode ?? -1, out: r.stdout.toString(), err: r.stderr.toString() };
  if (check && res.code !== 0) throw new Error(`${cmd.join(" ")} failed (${res.code}): ${res.err.trim()}`);
  return res;
}

/** The buffers strace printed with -e write=3 / -e read=3, as byte arrays. */
function hexBlocks(text: string): Uint8Array[] {
  const blocks: number[][] = [];
  for (const line of text.split("\n")) {
    if (/^ \* \d+ bytes in buffer/.test(line)) blocks.push([]);
    else if (/^ \| [0-9a-f]{5} {2}/.test(line)) {
      const hex = line.slice(10, 59).trim().split(/\s+/);
      blocks[blocks.length - 1]?.push(...hex.map((h) => Number.parseInt(h, 16)));
    }
  }
  return blocks.map((b) => Uint8Array.from(b));
}

const u16 = (b: Uint8Array, o: number) => b[o]! | (b[o + 1]! << 8);
const u32 = (b: Uint8Array, o: number) => (u16(b, o) | (u16(b, o + 2) << 16)) >>> 0;
const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");

/** The one RTM_NEWQDISC request tc sent. */
function request(tc: string, args: string[]): Uint8Array {
  const r = run(
    ["ip", "netns", "exec", NS, "strace", "-f", "-e", "trace=sendmsg", "-e", "write=3", tc, ...args],
    false,
  );
  const found = hexBlocks(r.err).filter((b) => b.byteLength >= 16 && u16(b, 4) === 36);
  if (found.length !== 1)
    throw new Error(`${tc} ${args.join(" ")}: ${found.length} RTM_NEWQDISC sent\n${r.err}`);
  return found[0]!;
}

/** The kernel's RTM_NEWQDISC for the root qdisc of q0, out of `tc qdisc show`'s dump. */
function rootDump(tc: string): Uint8Array {
  const r = run([
    "ip",
    "netns",
    "exec",
    NS,
    "strace",
    "-e",
    "trace=recvmsg",
    "-e",
    "read=3",
    tc,
    "qdisc",
    "show",
    "dev",
    "q0",
  ]);
  for (const block of hexBlocks(r.err)) {
    for (let o = 0; o + 36 <= block.byteLength; ) {
      const len = u32(block, o);
      if (len < 16 || o + len > block.byteLength) break;
      if (u16(block, o + 4) === 36 && u32(block, o + 28) === 0xffffffff) return block.slice(o, o + len);
      o += (len + 3) & ~3;
    }
  }
  throw new Error(`no root qdisc in the dump of tc qdisc show:\n${r.err}`);
}

/** tc from iproute2 in bookworm-backports, unpacked (not installed) under `dir`. */
function newTc(dir: string): { path: string; version: string } {
  const apt = [
    ...["-o", `Dir::Etc::sourcelist=${dir}/sources.list`, "-o", "Dir::Etc::sourceparts=-"],
    ...["-o", `Dir::State::Lists=${dir}/lists`, "-o", "Debug::NoLocking=1"],
  ];
  mkdirSync(join(dir, "lists", "partial"), { recursive: true });
  writeFileSync(join(dir, "sources.list"), "deb http://deb.debian.org/debian bookworm-backports main\n");
  run(["apt-get", ...apt, "update", "-qq"]);
  const dl = Bun.spawnSync({ cmd: ["apt-get", ...apt, "download", "iproute2/bookworm-backports"], cwd: dir });
  if (dl.exitCode !== 0) throw new Error(`apt-get download iproute2: ${dl.stderr.toString()}`);
  const deb = readdirSync(dir).find((f) => f.startsWith("iproute2_") && f.endsWith(".deb"));
  if (!deb) throw new Error("apt-get download left no iproute2 .deb");
  run(["dpkg", "-x", join(dir, deb), join(dir, "root")]);
  const path = join(dir, "root", "sbin", "tc");
  return { path, version: run([path, "-V"]).out.trim() };
}

if (process.getuid?.() !== 0) throw new Error("run as root: it creates a netns and captures tc with strace");
if (run(["sh", "-c", "command -v strace"], false).code !== 0)
  run(["apt-get", "install", "-y", "-qq", "strace"]);
const work = mkdtempSync(join(tmpdir(), "ratchet-qdisc-fixtures-"));
try {
  const fresh = newTc(work);
  const old = { path: "/usr/sbin/tc", version: run(["tc", "-V"]).out.trim() };
  run(["ip", "netns", "add", NS]);
  try {
    run(["ip", "-n", NS, "link", "add", "q0", "mtu", String(MTU), "type", "veth", "peer", "name", "q1"]);
    run(["ip", "-n", NS, "link", "set", "q0", "up"]);
    mkdirSync(OUT, { recursive: true });
    for (const c of CASES) {
      const tc = c.tc === "old" ? old : fresh;
      const argv = ["qdisc", "replace", "dev", "q0", "root", ...c.args];
      const fixture: Record<string, unknown> = {
        command: `tc ${argv.join(" ")}`,
        tc: tc.version,
        compare: c.tc === "old" ? "decode" : "bytes",
        declared: c.declared,
        mtu: MTU,
        ...(c.note ? { note: c.note } : {}),
        request: hex(request(tc.path, argv)),
      };
      if (c.declared.kind === "tbf") fixture.kernelDump = hex(rootDump(tc.path));
      writeFileSync(join(OUT, `${c.name}.json`), `${JSON.stringify(fixture, null, 2)}\n`);
      console.log(`${c.name}: ${fixture.command}`);
    }
  } finally {
    run(["ip", "netns", "delete", NS], false);
  }
} finally {
  rmSync(work, { recursive: true, force: true });
}
