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
import { type Impairment, type NetemImpairment, tbfSizes } from "../src/netlink/tc.ts";

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

/**
 * The tc arguments that ask for what ratchet sends for a netem declaration: the declared
 * fields, and explicit zeros for loss, corrupt, reorder and rate (plus a 0% loss correlation,
 * which makes tc send TCA_NETEM_CORR), because a change of an existing netem keeps whatever
 * an absent attribute set before. Times in us: tc truncates ms * 1e6 to whole ns.
 */
function netemArgs(d: NetemImpairment): string[] {
  const us = (ms: number) => `${Math.round(ms * 1000)}us`;
  const args = ["netem"];
  if (d.delayMs !== undefined || d.jitterMs !== undefined)
    args.push("delay", us(d.delayMs ?? 0), ...(d.jitterMs === undefined ? [] : [us(d.jitterMs)]));
  args.push("loss", `${d.lossPercent ?? 0}%`, "0%");
  if (d.duplicatePercent !== undefined) args.push("duplicate", `${d.duplicatePercent}%`);
  args.push("corrupt", `${d.corruptPercent ?? 0}%`, "reorder", `${d.reorderPercent ?? 0}%`);
  args.push("rate", `${d.rateKbit ?? 0}kbit`);
  return args;
}

const NETEM_NOTE =
  "ratchet always sends TCA_NETEM_CORR, REORDER, CORRUPT and RATE (0 when not declared) so a " +
  "change in place leaves nothing of the previous settings: hence the explicit zeros";
const netem = (name: string, declared: NetemImpairment, note?: string): Case => ({
  name,
  args: netemArgs(declared),
  declared,
  note: note ? `${NETEM_NOTE}; ${note}` : NETEM_NOTE,
});

const CASES: Case[] = [
  netem("netem-empty", { kind: "netem" }),
  netem("netem-delay", { kind: "netem", delayMs: 10 }),
  netem("netem-delay-jitter-loss", { kind: "netem", delayMs: 10, jitterMs: 2, lossPercent: 1 }),
  netem("netem-jitter-only", { kind: "netem", jitterMs: 3 }, "a jitter alone goes with a delay of 0"),
  netem("netem-loss", { kind: "netem", lossPercent: 0.5 }),
  netem("netem-duplicate", { kind: "netem", duplicatePercent: 2.5 }),
  netem("netem-corrupt", { kind: "netem", corruptPercent: 0.1 }),
  netem("netem-reorder", { kind: "netem", delayMs: 5, reorderPercent: 25 }, "reorder needs a delay"),
  netem("netem-rate", { kind: "netem", rateKbit: 1000 }),
  netem("netem-rate-min", { kind: "netem", rateKbit: 8 }),
  netem(
    "netem-rate-64bit",
    { kind: "netem", rateKbit: 40_000_000 },
    "5e9 bytes/s does not fit 32 bits: TCA_NETEM_RATE64, and ~0 in tc_netem_rate",
  ),
  netem("netem-all", {
    kind: "netem",
    delayMs: 20,
    jitterMs: 5,
    lossPercent: 3,
    duplicatePercent: 1,
    corruptPercent: 0.2,
    reorderPercent: 10,
    rateKbit: 50_000,
  }),
  netem(
    "netem-max",
    {
      kind: "netem",
      delayMs: 60_000,
      jitterMs: 2147.483,
      lossPercent: 100,
      duplicatePercent: 100,
      corruptPercent: 100,
      reorderPercent: 100,
      rateKbit: 100_000_000,
    },
    "the kernel clamps jitter to 2^31 - 1 ns, so 2147.483 ms is the largest that reads back",
  ),
  netem("netem-fractions", {
    kind: "netem",
    delayMs: 0.001,
    jitterMs: 12.345,
    lossPercent: 0.0001,
    duplicatePercent: 33.333333,
    corruptPercent: 99.9999999,
    reorderPercent: 0.0000001,
  }),
  netem(
    "netem-zeros",
    { kind: "netem", delayMs: 0, lossPercent: 0, corruptPercent: 0 },
    "explicit zeros; the kernel's dump reads back as no impairment",
  ),
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
