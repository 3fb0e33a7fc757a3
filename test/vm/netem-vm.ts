// Runs inside the test VM (scripts/kernel-vm.sh), as its init's one program, on a kernel that
// has sch_netem: applies netem through src/netlink between two namespaces joined by a veth and
// checks with iproute2's tc and with ping that the kernel does what was asked, and that the
// decoder reads the kernel's dump back to the declared values. Prints one line per check and
// exits non-zero if any failed. iproute2 is called by full path: busybox has its own ip/tc.
import {
  addAddress,
  addVethPair,
  deleteRootQdisc,
  getRootQdisc,
  type Impairment,
  type NetemImpairment,
  sameImpairment,
  setRootQdisc,
} from "../../src/netlink/index.ts";

const IP = "/usr/sbin/ip";
const TC = "/usr/sbin/tc";
const PING = "/bin/ping"; // busybox
const A = { name: "vma", path: "/var/run/netns/vma", addr: "10.210.0.1" };
const B = { name: "vmb", path: "/var/run/netns/vmb", addr: "10.210.0.2" };
let failures = 0;

function run(cmd: string[]): { code: number; out: string } {
  const r = Bun.spawnSync({ cmd, stdout: "pipe", stderr: "pipe", timeout: 20_000 });
  return { code: r.exitCode ?? -1, out: r.stdout.toString() + r.stderr.toString() };
}

function must(cmd: string[]): string {
  const r = run(cmd);
  if (r.code !== 0) throw new Error(`${cmd.join(" ")} failed (${r.code}): ${r.out.trim()}`);
  return r.out;
}

function check(name: string, fn: () => string | undefined): void {
  let problem: string | undefined;
  try {
    problem = fn();
  } catch (err) {
    problem = `threw ${(err as Error).stack ?? err}`;
  }
  if (problem === undefined) console.log(`ok - ${name}`);
  else {
    failures++;
    console.log(`not ok - ${name}: ${problem}`);
  }
}

/** The root qdisc as `tc -j qdisc show` prints it in a namespace. */
function tcRoot(ns: string): Record<string, unknown> & { options?: Record<string, unknown> } {
  const list = JSON.parse(must([IP, "netns", "exec", ns, TC, "-j", "qdisc", "show", "dev", "eth1"])) as Array<
    Record<string, unknown>
  >;
  const roots = list.filter((q) => q.root === true);
  if (roots.length !== 1) throw new Error(`tc shows ${roots.length} root qdiscs: ${JSON.stringify(list)}`);
  return roots[0] as Record<string, unknown>;
}

/** Pings B from A; the replies received and the smallest round trip (ms). */
function ping(count: number): { received: number; minMs: number; out: string } {
  const r = run([IP, "netns", "exec", A.name, PING, "-c", String(count), "-i", "0.2", "-W", "1", B.addr]);
  const received = Number(/(\d+) packets received/.exec(r.out)?.[1] ?? Number.NaN);
  const minMs = Number(/min\/avg\/max = ([\d.]+)\//.exec(r.out)?.[1] ?? Number.NaN);
  return { received, minMs, out: r.out.trim().split("\n").slice(-2).join(" | ") };
}

/** Read back exactly as declared, less the zero-valued fields (a dump does not tell 0 from absent). */
function same(got: Impairment | undefined, want: Impairment): string | undefined {
  const nonZero = Object.fromEntries(Object.entries(want).filter(([, v]) => v !== 0));
  return JSON.stringify(got) === JSON.stringify(nonZero) && sameImpairment(got, want)
    ? undefined
    : `read back ${JSON.stringify(got)}, declared ${JSON.stringify(want)}`;
}

/**
 * Whether tc's JSON for a netem root shows the declared values: times in seconds, chances as
 * fractions, printed with 6 significant digits; tc 6.1 shows times in whole microseconds,
 * truncated from the kernel's 64 ns ticks.
 */
function tcAgrees(imp: NetemImpairment, o: Record<string, unknown>): string | undefined {
  const field = (obj: string, key: string) => (o[obj] as Record<string, number> | undefined)?.[key] ?? 0;
  const pairs: Array<[string, number, number]> = [
    ["delay", field("delay", "delay"), (imp.delayMs ?? 0) / 1000],
    ["jitter", field("delay", "jitter"), (imp.jitterMs ?? 0) / 1000],
    ["loss", field("loss-random", "loss"), (imp.lossPercent ?? 0) / 100],
    ["duplicate", field("duplicate", "duplicate"), (imp.duplicatePercent ?? 0) / 100],
    ["reorder", field("reorder", "reorder"), (imp.reorderPercent ?? 0) / 100],
    ["corrupt", field("corrupt", "corrupt"), (imp.corruptPercent ?? 0) / 100],
    ["rate", field("rate", "rate"), (imp.rateKbit ?? 0) * 125],
  ];
  for (const [name, shown, want] of pairs)
    if (Math.abs(shown - want) > Math.max(1e-5 * want, name === "delay" || name === "jitter" ? 1.1e-6 : 1e-7))
      return `tc shows ${name} ${shown}, declared ${want}: ${JSON.stringify(o)}`;
  return undefined;
}

/** Sets netem on both ends, reads it back through our decoder; undefined when all agree. */
function applyBoth(imp: Impairment): string | undefined {
  for (const ns of [A, B]) {
    setRootQdisc("eth1", imp, ns.path);
    const problem = same(getRootQdisc("eth1", ns.path)?.impairment, imp);
    if (problem) return `${ns.name}: ${problem}`;
  }
  return undefined;
}

for (const ns of [A, B]) {
  must([IP, "netns", "add", ns.name]);
  must([IP, "-n", ns.name, "link", "set", "lo", "up"]);
}
addVethPair({ a: { name: "eth1", ns: A.path }, b: { name: "eth1", ns: B.path } });
addAddress("eth1", `${A.addr}/30`, A.path);
addAddress("eth1", `${B.addr}/30`, B.path);

check("no impairment: pings pass", () => {
  const p = ping(3);
  return p.received === 3 ? undefined : `received ${p.received} of 3: ${p.out}`;
});

let handle = 0;
check("delay 20 ms on both ends: read back, tc agrees, RTT >= 40 ms", () => {
  const problem = applyBoth({ kind: "netem", delayMs: 20 });
  if (problem) return problem;
  const q = getRootQdisc("eth1", A.path);
  handle = q?.handle ?? 0;
  const shown = tcRoot(A.name);
  if (shown.kind !== "netem") return `tc shows ${JSON.stringify(shown)}`;
  const tcProblem = tcAgrees({ kind: "netem", delayMs: 20 }, shown.options ?? {});
  if (tcProblem) return tcProblem;
  const p = ping(3);
  if (p.received !== 3) return `received ${p.received} of 3: ${p.out}`;
  return p.minMs >= 40 ? undefined : `min RTT ${p.minMs} ms < 40: ${p.out}`;
});

check("live change to 50 ms: same qdisc (handle), RTT >= 100 ms", () => {
  const problem = applyBoth({ kind: "netem", delayMs: 50 });
  if (problem) return problem;
  const q = getRootQdisc("eth1", A.path);
  if (q?.handle !== handle) return `handle ${q?.handle} != ${handle}: not changed in place`;
  const p = ping(3);
  if (p.received !== 3) return `received ${p.received} of 3: ${p.out}`;
  return p.minMs >= 100 ? undefined : `min RTT ${p.minMs} ms < 100: ${p.out}`;
});

check("loss 100%: every ping is dropped", () => {
  const problem = applyBoth({ kind: "netem", lossPercent: 100 });
  if (problem) return problem;
  const tcProblem = tcAgrees({ kind: "netem", lossPercent: 100 }, tcRoot(A.name).options ?? {});
  if (tcProblem) return tcProblem;
  const p = ping(3);
  return p.received === 0 ? undefined : `received ${p.received} of 3: ${p.out}`;
});

check("loss 0%: every ping passes", () => {
  const problem = applyBoth({ kind: "netem", lossPercent: 0 });
  if (problem) return problem;
  const p = ping(3);
  return p.received === 3 ? undefined : `received ${p.received} of 3: ${p.out}`;
});

const every: NetemImpairment[] = [
  {
    kind: "netem",
    delayMs: 10,
    jitterMs: 1,
    lossPercent: 0.5,
    duplicatePercent: 0.25,
    corruptPercent: 0.125,
    reorderPercent: 5,
    rateKbit: 100_000,
  },
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
  {
    kind: "netem",
    delayMs: 0.001,
    jitterMs: 12.345,
    lossPercent: 0.0001,
    duplicatePercent: 33.333333,
    corruptPercent: 99.9999999,
    reorderPercent: 0.0000001,
    rateKbit: 8,
  },
];
for (const imp of every) {
  check(`every field read back as declared: ${JSON.stringify(imp)}`, () => {
    setRootQdisc("eth1", imp, A.path);
    const problem = same(getRootQdisc("eth1", A.path)?.impairment, imp);
    if (problem) return problem;
    return tcAgrees(imp, tcRoot(A.name).options ?? {});
  });
}

check("a change in place to fewer fields leaves none of the previous ones behind", () => {
  const before = getRootQdisc("eth1", A.path)?.handle;
  const imp: Impairment = { kind: "netem", rateKbit: 40_000_000 };
  setRootQdisc("eth1", imp, A.path);
  const q = getRootQdisc("eth1", A.path);
  if (q?.handle !== before) return `handle ${q?.handle} != ${before}: not changed in place`;
  return same(q?.impairment, imp) ?? tcAgrees(imp, tcRoot(A.name).options ?? {});
});

check("netem -> tbf -> netem swap kinds at the root; delete returns to noqueue", () => {
  setRootQdisc("eth1", { kind: "tbf", rateKbit: 2000 }, A.path);
  let problem = same(getRootQdisc("eth1", A.path)?.impairment, { kind: "tbf", rateKbit: 2000 });
  if (problem) return problem;
  if (tcRoot(A.name).kind !== "tbf") return `tc shows ${JSON.stringify(tcRoot(A.name))}`;
  setRootQdisc("eth1", { kind: "netem", delayMs: 1 }, A.path);
  problem = same(getRootQdisc("eth1", A.path)?.impairment, { kind: "netem", delayMs: 1 });
  if (problem) return problem;
  if (!deleteRootQdisc("eth1", A.path)) return "delete found nothing";
  const q = getRootQdisc("eth1", A.path);
  return q?.kind === "noqueue" && tcRoot(A.name).kind === "noqueue" ? undefined : `root is ${q?.kind}`;
});

console.log(failures === 0 ? "all checks passed" : `${failures} checks failed`);
process.exit(failures === 0 ? 0 : 1);
