// Benchmark (not a test): a live change of a link's root qdisc (tbf 1000 <-> 2000 kbit, in
// place) and reading it back, through src/netlink and through iproute2's tc, on one veth
// between two fresh namespaces. tbf because this machine's kernel may lack sch_netem; the
// request path is the same for netem. tc runs in the namespace through `nsenter --net`, the
// cheapest way: `tc -n NS` costs some 20 ms more, as it remounts /sys for the namespace.
// Run as root: node_modules/.bin/bun scripts/bench/qdisc.ts [ROUNDS]
import { addVethPair, getRootQdisc, setRootQdisc, tbfSizes } from "../../src/netlink/index.ts";
import { ARGS, median, report } from "./support.ts";

const ROUNDS = Number(ARGS[0] ?? 200);
const tag = `rtq${process.pid.toString(36).slice(-4)}`;
const nsA = `${tag}a`;
const nsB = `${tag}b`;
const pathA = `/var/run/netns/${nsA}`;
const TC = ["nsenter", `--net=${pathA}`, "tc"];

function cmd(...args: string[]): void {
  const r = Bun.spawnSync({ cmd: args, stdout: "ignore", stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`${args.join(" ")}: ${r.stderr.toString().trim()}`);
}

function time(fn: (i: number) => void): number[] {
  const out: number[] = [];
  for (let i = 0; i < ROUNDS; i++) {
    const t0 = Bun.nanoseconds();
    fn(i);
    out.push((Bun.nanoseconds() - t0) / 1e6);
  }
  return out;
}

const rate = (i: number) => (i % 2 ? 2000 : 1000);

cmd("ip", "netns", "add", nsA);
try {
  cmd("ip", "netns", "add", nsB);
  try {
    addVethPair({ a: { name: "eth1", ns: pathA }, b: { name: "eth1", ns: `/var/run/netns/${nsB}` } });
    const nlChange = time((i) => setRootQdisc("eth1", { kind: "tbf", rateKbit: rate(i) }, pathA));
    const nlGet = time((i) => {
      const q = getRootQdisc("eth1", pathA);
      if (q?.impairment?.kind !== "tbf" || q.impairment.rateKbit !== rate(ROUNDS - 1))
        throw new Error(`unexpected root qdisc ${JSON.stringify(q)} in round ${i}`);
    });
    const tcChange = time((i) => {
      const kbit = rate(i);
      const burst = String(tbfSizes(kbit, 1500).burst);
      cmd(
        ...TC,
        "qdisc",
        "replace",
        "dev",
        "eth1",
        "root",
        "tbf",
        "rate",
        `${kbit}kbit`,
        "burst",
        burst,
        "latency",
        "25ms",
      );
    });
    const tcGet = time(() => cmd(...TC, "-j", "qdisc", "show", "dev", "eth1"));
    const f = {
      rounds: ROUNDS,
      netlinkChangeMs: median(nlChange),
      tcChangeMs: median(tcChange),
      netlinkGetMs: median(nlGet),
      tcGetMs: median(tcGet),
    };
    const cell = (x: number, digits: number) => x.toFixed(digits).padStart(8);
    const row = (what: string, nl: number, tc: number) =>
      `| ${what.padEnd(34)} | ${cell(nl, 3)} | ${cell(tc, 3)} | ${cell(tc / nl, 1).slice(3)}x |`;
    report(f, [
      `${ROUNDS} rounds on one veth; median ms`,
      "| operation                          |  netlink |       tc |  ratio |",
      "|------------------------------------|----------|----------|--------|",
      row("change root tbf in place (replace)", f.netlinkChangeMs, f.tcChangeMs),
      row("read the root qdisc back", f.netlinkGetMs, f.tcGetMs),
    ]);
  } finally {
    cmd("ip", "netns", "delete", nsB);
  }
} finally {
  cmd("ip", "netns", "delete", nsA);
}
