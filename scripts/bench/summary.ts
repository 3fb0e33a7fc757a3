// Reads the figures the benchmarks wrote with --json (and the load test's report) from DIR
// and prints them as one table. Used by scripts/bench.sh:
//   node_modules/.bin/bun scripts/bench/summary.ts DIR
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { table } from "./support.ts";

const dir = process.argv[2];
if (!dir) throw new Error("usage: summary.ts DIR");

type Figures = Record<string, number | string | number[]>;
function load(name: string): Figures | undefined {
  const file = join(dir as string, `${name}.json`);
  if (!existsSync(file)) return undefined;
  const text = readFileSync(file, "utf8").trim().split("\n").pop() ?? "";
  try {
    return JSON.parse(text) as Figures;
  } catch {
    return undefined;
  }
}
const num = (f: Figures | undefined, k: string): number =>
  f && typeof f[k] === "number" ? (f[k] as number) : NaN;
const ms = (x: number) => (Number.isNaN(x) ? "failed" : `${x.toFixed(2)} ms`);
const mib = (x: number) => (Number.isNaN(x) ? "failed" : `${x.toFixed(1)} MiB`);
const ratio = (a: number, b: number) => (Number.isNaN(a) || Number.isNaN(b) ? "" : `${(a / b).toFixed(2)}x`);
const over = (a: number, b: number, unit = "ms") =>
  Number.isNaN(a) || Number.isNaN(b) ? "" : `${a < b ? "-" : "+"}${Math.abs(a - b).toFixed(1)} ${unit}`;

/** "median (p99 .., max ..)" of figures named <k>MedianMs, <k>P99Ms, <k>MaxMs. */
const spread = (f: Figures | undefined, k: string) =>
  `${ms(num(f, `${k}MedianMs`))} (p99 ${ms(num(f, `${k}P99Ms`))}, max ${ms(num(f, `${k}MaxMs`))})`;

const p = load("passthrough");
const a = load("agent");
const n = load("netlink");
const l = load("link");
const c = load("cri");
const L = load("load");
const q = load("qdisc");
const v = load("live");
const m = load("metrics");
const t = load("topology");
const fl = load("floor");

/** "median (p95 ..)" of a floor figure <k>Ms. */
const flMs = (k: string) => `${ms(num(fl, `${k}Ms`))} (p95 ${ms(num(fl, `${k}P95Ms`))})`;
/** The target a floor row was held to and whether it was met, as floor.ts judged it. */
const flTarget = (k: string) => (fl && typeof fl[k] === "string" ? `target ${fl[k]}` : "failed");

type Row = {
  src: string;
  benchmark: string;
  ratchet: string;
  reference: string;
  ratio: string;
  "diff / note": string;
};
const rows: Row[] = [
  {
    benchmark: "passthrough ADD (delegate bridge)",
    src: "passthrough",
    ratchet: ms(num(p, "ratchetAddMs")),
    reference: `${ms(num(p, "bridgeAddMs"))} bridge alone`,
    ratio: ratio(num(p, "ratchetAddMs"), num(p, "bridgeAddMs")),
    "diff / note": over(num(p, "ratchetAddMs"), num(p, "bridgeAddMs")),
  },
  {
    benchmark: "passthrough DEL (delegate bridge)",
    src: "passthrough",
    ratchet: ms(num(p, "ratchetDelMs")),
    reference: `${ms(num(p, "bridgeDelMs"))} bridge alone`,
    ratio: ratio(num(p, "ratchetDelMs"), num(p, "bridgeDelMs")),
    "diff / note": over(num(p, "ratchetDelMs"), num(p, "bridgeDelMs")),
  },
  ...(
    [
      ["floor: ratchet --version", "version", "hello", "Bun hello-world"],
      ["floor: plain pod ADD (delegate bridge)", "plainAdd", "bridgeAdd", "bridge alone"],
      ["floor: plain pod DEL (delegate bridge)", "plainDel", "bridgeDel", "bridge alone"],
      ["floor: second pod's ADD (builds the veth)", "secondAdd", "ptpAdd", "ptp + host-local"],
      ["floor: first pod's ADD (peer not there yet)", "firstAdd", "ptpAdd", "ptp + host-local"],
      ["floor: DEL of a linked pod (removes the veth)", "linkedDel", "ptpDel", "ptp DEL"],
      ["floor: cross-node ADD (builds the VXLAN end)", "crossAdd", "secondAdd", "same-node 2nd ADD"],
    ] as const
  ).map(([benchmark, k, ref, refName]) => ({
    src: "floor",
    benchmark,
    ratchet: flMs(k),
    reference: `${flMs(ref)} ${refName}`,
    ratio: ratio(num(fl, `${k}Ms`), num(fl, `${ref}Ms`)),
    "diff / note": `${over(num(fl, `${k}Ms`), num(fl, `${ref}Ms`))}; ${flTarget(`${k}Target`)}`,
  })),
  {
    benchmark: "floor: ratchet --version peak RSS",
    src: "floor",
    ratchet: mib(num(fl, "versionRssMiB")),
    reference: `${mib(num(fl, "helloRssMiB"))} Bun hello-world`,
    ratio: "",
    "diff / note": `${over(num(fl, "versionRssMiB"), num(fl, "helloRssMiB"), "MiB")}; ${flTarget("versionRssTarget")}`,
  },
  {
    benchmark: `floor: agent RSS idle / after ${num(fl, "load")} pairs + ${num(fl, "load")} plain pods`,
    src: "floor",
    ratchet: `${mib(num(fl, "agentIdleMiB"))} / ${mib(num(fl, "agentLoadedMiB"))}`,
    reference: "",
    ratio: "",
    "diff / note": `peak ${mib(num(fl, "agentPeakMiB"))}; ${flTarget("agentTarget")}`,
  },
  {
    benchmark: "Kubernetes API requests per ADD+DEL",
    src: "passthrough",
    ratchet: Number.isNaN(num(p, "apiRequestsPerAddDel"))
      ? "failed"
      : num(p, "apiRequestsPerAddDel").toFixed(2),
    reference: "",
    ratio: "",
    "diff / note": "pods the agent's pod cache holds",
  },
  {
    benchmark: "K8s pod ADD, warm agent (ineligible)",
    src: "agent",
    ratchet: ms(num(a, "warmAddMs")),
    reference: `${ms(num(a, "delegateAddMs"))} loopback alone`,
    ratio: ratio(num(a, "warmAddMs"), num(a, "delegateAddMs")),
    "diff / note": over(num(a, "warmAddMs"), num(a, "delegateAddMs")),
  },
  {
    benchmark: "cold start (first call starts the agent)",
    src: "agent",
    ratchet: ms(num(a, "coldAddMs")),
    reference: `${ms(num(a, "delegateAddMs"))} loopback alone`,
    ratio: ratio(num(a, "coldAddMs"), num(a, "delegateAddMs")),
    "diff / note": over(num(a, "coldAddMs"), num(a, "delegateAddMs")),
  },
  {
    benchmark: "second pod's ADD (builds the veth)",
    src: "link",
    ratchet: ms(num(l, "secondAddMs")),
    reference: `${ms(num(l, "ptpAddMs"))} ptp + host-local`,
    ratio: ratio(num(l, "secondAddMs"), num(l, "ptpAddMs")),
    "diff / note": over(num(l, "secondAddMs"), num(l, "ptpAddMs")),
  },
  ...(
    [
      ["plain pod RunPodSandbox (containerd)", "plainRun", "bridgeRun", 1.15],
      ["plain pod StopPodSandbox (containerd)", "plainStop", "bridgeStop", 1.15],
      ["linked pod RunPodSandbox (2nd of a pair)", "linkedRun", "bridgeRun", 1.5],
      ["linked pod StopPodSandbox (2nd of a pair)", "linkedStop", "bridgeStop", 1.5],
    ] as const
  ).map(([benchmark, k, ref, goal]) => ({
    src: "cri",
    benchmark,
    ratchet: `${ms(num(c, `${k}Ms`))} (p95 ${ms(num(c, `${k}P95Ms`))})`,
    reference: `${ms(num(c, `${ref}Ms`))} bridge alone (p95 ${ms(num(c, `${ref}P95Ms`))})`,
    ratio: ratio(num(c, `${k}Ms`), num(c, `${ref}Ms`)),
    "diff / note": `goal <= ${goal}x`,
  })),
  {
    benchmark: "veth pair create+address+get",
    src: "netlink",
    ratchet: ms(num(n, "netlinkNoDeleteMs")),
    reference: `${ms(num(n, "iprouteNoDeleteMs"))} iproute2`,
    ratio: ratio(num(n, "netlinkNoDeleteMs"), num(n, "iprouteNoDeleteMs")),
    "diff / note": `iproute2 ${ratio(num(n, "iprouteNoDeleteMs"), num(n, "netlinkNoDeleteMs"))} slower`,
  },
  {
    benchmark: "veth pair delete",
    src: "netlink",
    ratchet: ms(num(n, "netlinkDeleteMs")),
    reference: `${ms(num(n, "iprouteDeleteMs"))} iproute2`,
    ratio: ratio(num(n, "netlinkDeleteMs"), num(n, "iprouteDeleteMs")),
    "diff / note": "kernel-bound",
  },
  {
    benchmark: "root qdisc change in place (tbf)",
    src: "qdisc",
    ratchet: ms(num(q, "netlinkChangeMs")),
    reference: `${ms(num(q, "tcChangeMs"))} nsenter tc replace`,
    ratio: ratio(num(q, "netlinkChangeMs"), num(q, "tcChangeMs")),
    "diff / note": `tc ${ratio(num(q, "tcChangeMs"), num(q, "netlinkChangeMs"))} slower`,
  },
  {
    benchmark: "root qdisc read back",
    src: "qdisc",
    ratchet: ms(num(q, "netlinkGetMs")),
    reference: `${ms(num(q, "tcGetMs"))} nsenter tc show`,
    ratio: ratio(num(q, "netlinkGetMs"), num(q, "tcGetMs")),
    "diff / note": `tc ${ratio(num(q, "tcGetMs"), num(q, "netlinkGetMs"))} slower`,
  },
  {
    benchmark: `live change, ${num(v, "links")} links at once (per link)`,
    src: "live",
    ratchet: spread(v, "many"),
    reference: `${spread(v, "floorMany")} setRootQdisc loop`,
    ratio: ratio(num(v, "manyMedianMs"), num(v, "floorManyMedianMs")),
    "diff / note": "API server stores the pod -> tbf rate on both ends; 10 pods x 10 links",
  },
  {
    benchmark: "live change, one link",
    src: "live",
    ratchet: `${ms(num(v, "singleMedianMs"))} (p99 ${ms(num(v, "singleP99Ms"))})`,
    reference: `${ms(num(v, "floorSingleMedianMs"))} setRootQdisc x2`,
    ratio: ratio(num(v, "singleMedianMs"), num(v, "floorSingleMedianMs")),
    "diff / note": `one of a pod's 10 links alone: ${ms(num(v, "oneOfTenMedianMs"))}`,
  },
  {
    benchmark: "second pod's ADD, metrics on vs off",
    src: "metrics",
    ratchet: ms(num(m, "addOnMs")),
    reference: `${ms(num(m, "addOffMs"))} metrics off`,
    ratio: ratio(num(m, "addOnMs"), num(m, "addOffMs")),
    "diff / note": `/metrics scraped every 200 ms meanwhile (${num(m, "scrapesDuringAdds")} scrapes)`,
  },
  {
    benchmark: `scrape of ${num(m, "ends")} link ends`,
    src: "metrics",
    ratchet: ms(num(m, "scrapeMs")),
    reference: "",
    ratio: "",
    "diff / note": m
      ? `${num(m, "podNetns")} pod netns; kernel reads ${ms(num(m, "collectMs"))}; longest event-loop stall ${ms(num(m, "stallMaxMs"))}`
      : "failed",
  },
  {
    benchmark: `lab: first pod's ADD (${num(t, "links")} links)`,
    src: "topology",
    ratchet: ms(num(t, "firstAddMs")),
    reference: "200 ms target",
    ratio: "",
    "diff / note": "the peer is not there yet",
  },
  {
    benchmark: `lab: second pod's ADD (${num(t, "links")} veth built)`,
    src: "topology",
    ratchet: ms(num(t, "secondAddMs")),
    reference: `${ms(num(t, "floorCreateMs"))} ip -batch`,
    ratio: ratio(num(t, "secondAddMs"), num(t, "floorCreateMs")),
    "diff / note": "target 1.5x",
  },
  {
    benchmark: "lab: DEL of the builder / the other pod",
    src: "topology",
    ratchet: `${ms(num(t, "delBuilderMs"))} / ${ms(num(t, "delOtherMs"))}`,
    reference: `${ms(num(t, "floorDeleteMs"))} ip link del group`,
    ratio: [num(t, "delBuilderMs"), num(t, "delOtherMs")]
      .map((x) => ratio(x, num(t, "floorDeleteMs")))
      .join(" / "),
    "diff / note": "target 1.5x",
  },
  {
    benchmark: `lab: ${num(t, "links")} VXLAN links, both ends up + ping`,
    src: "topology",
    ratchet: ms(num(t, "vxlanReadyMs")),
    reference: "3000 ms target",
    ratio: "",
    "diff / note": `second ADD ${ms(num(t, "vxlanSecondAddMs"))}`,
  },
  {
    benchmark: `lab: ${num(t, "ends")} ends on a node: RSS, restart, links`,
    src: "topology",
    ratchet: `${mib(num(t, "agentRssMiB"))}, ${ms(num(t, "restartReconcileMs"))}, ${ms(num(t, "linksCliMs"))}`,
    reference: "300 MiB, 10 s, 2 s",
    ratio: "",
    "diff / note": t ? `restart rebuilt ${num(t, "rebuilt") ? "something" : "nothing"}` : "failed",
  },
  {
    benchmark: "lab: etcd bytes per link (veth / VXLAN)",
    src: "topology",
    ratchet: `${num(t, "vethBytesPerLink").toFixed(0)} / ${num(t, "vxlanBytesPerLink").toFixed(0)}`,
    reference: "",
    ratio: "",
    "diff / note": `agents' observed reports ${num(t, "vethObservedBytesPerLink").toFixed(0)} / ${num(t, "vxlanObservedBytesPerLink").toFixed(0)} more; round trips per ADD: ${num(t, "firstAddRoundTrips")} / ${num(t, "secondAddRoundTrips")}`,
  },
  {
    benchmark: "parent peak RSS (passthrough)",
    src: "passthrough",
    ratchet: mib(num(p, "peakRssMedianMiB")),
    reference: "",
    ratio: "",
    "diff / note": `max ${mib(num(p, "peakRssMaxMiB"))}`,
  },
  {
    benchmark: "child RSS at rest / after requests",
    src: "agent",
    ratchet: `${mib(num(a, "agentRestMiB"))} / ${mib(num(a, "agentLoadedMiB"))}`,
    reference: "",
    ratio: "",
    "diff / note": `after ${num(a, "load")} more ADDs`,
  },
  {
    benchmark: "child RSS at rest / after the load run",
    src: "load",
    ratchet: `${mib(num(L, "restMiB"))} / ${mib(num(L, "afterMiB"))}`,
    reference: "",
    ratio: "",
    "diff / note": L
      ? `${num(L, "pairs")} pairs + ${num(L, "pairs")} ineligible pods in ${num(L, "seconds").toFixed(1)} s; fds ${String(L.fdsRest)} -> ${String(L.fdsAfter)}`
      : "failed",
  },
  {
    benchmark: "etcd round trips per ADD",
    src: "link",
    ratchet: `${num(l, "firstPodRoundTrips")} / ${num(l, "secondPodRoundTrips")}`,
    reference: "",
    ratio: "",
    "diff / note": `first pod / second pod (max ${num(l, "secondPodRoundTripsMax")})`,
  },
];
// Rows of benchmarks that did not run (./scripts/bench.sh NAME... runs a few) are left out;
// one that ran and failed shows "failed".
const ran = rows.filter((r) => existsSync(join(dir, `${r.src}.json`)));
console.log(table(ran.map(({ src: _src, ...r }) => r)));
