// Benchmark (not a test): live link changes, from the API server to the kernel (as root, etcd
// at $RATCHET_TEST_ETCD). On one node of the test bed, 10 pods a0..a9 each declare 10 veth
// links, one to each of 10 opt-in pods p0..p9, with netem {rate_kbit} on both ends (a tbf root
// qdisc: this kernel may lack sch_netem). (10 x 10, not one pod with 100 links: a default
// etcd takes at most 128 operations in a transaction, fewer than such a pod's ADD writes.)
// A round changes all 100 rates at once (1000 <-> 2000 kbit), the 10 annotations put back to
// back as `kubectl annotate` would (same uid), and times each link from the moment the
// stand-in API server stores its pod to the moment the kernel holds the new rate on both ends,
// read back with src/netlink's qdisc dump, one per netns, every ~2 ms. The floor, in the same
// run: the same 200 root qdisc changes made directly with setRootQdisc in one loop, each link
// timed from the loop's start. Then a pod with a single link, and one of a0's 10 links alone.
//   node_modules/.bin/bun scripts/bench/live.ts [ROUNDS] [SINGLE_ROUNDS]   (poll: $RATCHET_BENCH_POLL_MS)
import { listLinks, listRootQdiscs, setRootQdisc } from "../../src/netlink/index.ts";
import {
  type AnnotationLink,
  annotatedPod,
  type Cluster,
  makeCluster,
  type Pod,
} from "../../test/support/cluster.ts";
import { removeInstalledBin } from "../../test/support/env.ts";
import { ARGS, ETCD, median, report, table } from "./support.ts";

const ROUNDS = Number(ARGS[0] ?? 5);
const SINGLE_ROUNDS = Number(ARGS[1] ?? 20);
const PODS = 10; // a0..a9 declare, p0..p9 agree; link (j, k) joins aj and pk
const LINKS = PODS * PODS;
const POLL_MS = Number(process.env.RATCHET_BENCH_POLL_MS ?? 2);
process.env.RATCHET_TEST_ETCD ??= ETCD;

/** One end of a link: its pod's netns path and its interface's name and index there. */
interface End {
  ns: string;
  ifname: string;
  index: number;
}
type Ends = [End, End];

/** Pods whose annotations a round changes, and the links it then watches in the kernel. */
interface Changed {
  name: string;
  declare: (kbit: number) => AnnotationLink[];
  watched: Ends[];
}

function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))] as number;
}

const stats = (xs: number[]) => ({ median: median(xs), p99: quantile(xs, 0.99), max: Math.max(...xs) });

const other = (kbit: number) => (kbit === 1000 ? 2000 : 1000);

function optIn(name: string) {
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name, namespace: "default", uid: crypto.randomUUID(), labels: { ratchet: "true" } },
    spec: {},
  };
}

/** Link (j, k): a<j>'s l<k> to p<k>'s h<j>, on its own /30. */
function meshLink(j: number, k: number, kbit: number): AnnotationLink {
  const base = (j * PODS + k) * 4;
  const ip = (host: number) => `10.90.${base >> 8}.${(base & 255) + host}/30`;
  return {
    peer: `p${k}`,
    local_ifname: `l${k}`,
    peer_ifname: `h${j}`,
    local_ip: ip(1),
    peer_ip: ip(2),
    netem: { rate_kbit: kbit },
  };
}

const linksOf = (j: number, kbit: number) => Array.from({ length: PODS }, (_, k) => meshLink(j, k, kbit));

const soloLink = (kbit: number): AnnotationLink => ({
  peer: "solo-peer",
  local_ifname: "s0",
  peer_ifname: "s1",
  local_ip: "10.91.0.1/30",
  peer_ip: "10.91.0.2/30",
  netem: { rate_kbit: kbit },
});

/** Changes a running pod's links as `kubectl annotate --overwrite` does; returns when it was stored. */
function setLinks(c: Cluster, name: string, links: AnnotationLink[]): number {
  const pod = c.api.getPod("default", name);
  if (!pod) throw new Error(`no pod ${name}`);
  const annotations = { ...pod.metadata.annotations, "ratchet/links": JSON.stringify(links) };
  const t0 = performance.now();
  c.putPod({ ...pod, metadata: { ...pod.metadata, annotations } });
  return t0;
}

const indexes = new Map<string, Map<string, number>>();
/** An end with its ifindex, looked up once per netns, so a poll is one qdisc dump per netns. */
function end(p: Pod, ifname: string): End {
  const ns = p.netns.path;
  let m = indexes.get(ns);
  if (!m) {
    m = new Map(listLinks(ns).map((l) => [l.name, l.index]));
    indexes.set(ns, m);
  }
  const index = m.get(ifname);
  if (index === undefined) throw new Error(`${p.name} has no ${ifname}`);
  return { ns, ifname, index };
}

const pollRounds: number[] = [];

/**
 * Polls the ends' namespaces until every link holds `kbit` on both ends; per link, ms from its
 * t0 to the dump that first showed it. Yields between polls: the API server is in this process.
 */
async function waitApplied(links: Ends[], kbit: number, t0: number[], log: () => string): Promise<number[]> {
  const out = links.map(() => Number.NaN);
  const start = Math.min(...t0);
  let pending = links.length;
  let last = performance.now();
  while (pending > 0) {
    await Bun.sleep(Math.max(0, POLL_MS - (performance.now() - last)));
    last = performance.now();
    const seen = new Map<string, { kbit: number | undefined; at: number }>();
    // Only the namespaces of links still pending: a poll costs the agent less CPU.
    const namespaces = new Set(links.flatMap((l, i) => (Number.isNaN(out[i]) ? l.map((e) => e.ns) : [])));
    for (const ns of namespaces) {
      const roots = listRootQdiscs(ns);
      const at = performance.now();
      for (const q of roots) {
        const imp = q.impairment;
        seen.set(`${ns} ${q.ifindex}`, { kbit: imp?.kind === "tbf" ? imp.rateKbit : undefined, at });
      }
    }
    pollRounds.push(performance.now() - last);
    for (const [i, l] of links.entries()) {
      if (!Number.isNaN(out[i])) continue;
      const [a, b] = l.map((e) => seen.get(`${e.ns} ${e.index}`));
      if (a?.kbit !== kbit || b?.kbit !== kbit) continue;
      out[i] = Math.max(a.at, b.at) - (t0[i] as number);
      pending--;
    }
    if (pending > 0 && performance.now() - start > 20_000)
      throw new Error(`${pending} links still without ${kbit} kbit after 20 s; the agent's log:\n${log()}`);
  }
  return out;
}

/** The floor: the same changes by setRootQdisc in one loop; per link, ms from the loop's start. */
function directLoop(links: Ends[], kbit: number): number[] {
  const t0 = performance.now();
  return links.map((l) => {
    for (const e of l) setRootQdisc(e.ifname, { kind: "tbf", rateKbit: kbit }, e.ns);
    return performance.now() - t0;
  });
}

/**
 * `n` rounds of live changes (after one warm-up round, not kept), the rate alternating from
 * `kbit`; after each, the floor twice: away and back, so the kernel matches the declarations.
 */
async function rounds(c: Cluster, pods: Changed[], n: number, kbit: number) {
  const live: number[] = [];
  const floor: number[] = [];
  const watched = pods.flatMap((p) => p.watched);
  for (let r = -1; r < n; r++) {
    kbit = other(kbit);
    const t0 = pods.flatMap((p) => {
      const at = setLinks(c, p.name, p.declare(kbit));
      return p.watched.map(() => at);
    });
    const got = await waitApplied(watched, kbit, t0, () => c.node(1).logTail(20));
    const away = directLoop(watched, other(kbit));
    const back = directLoop(watched, kbit);
    if (r < 0) continue;
    live.push(...got);
    floor.push(...away, ...back);
  }
  return { live: stats(live), floor: stats(floor), last: kbit };
}

async function measure() {
  await using c = await makeCluster({ nodes: 1 });
  const n = c.node(1);
  for (let k = 0; k < PODS; k++) c.putPod(optIn(`p${k}`));
  for (let j = 0; j < PODS; j++) c.putPod(annotatedPod(`a${j}`, linksOf(j, 1000)));
  c.putPod(optIn("solo-peer"));
  c.putPod(annotatedPod("solo", [soloLink(1000)]));
  const p: Pod[] = [];
  const a: Pod[] = [];
  for (let k = 0; k < PODS; k++) p.push(await n.pod(`p${k}`));
  for (let j = 0; j < PODS; j++) a.push(await n.pod(`a${j}`));
  const soloPeer = await n.pod("solo-peer");
  const solo = await n.pod("solo");
  for (const pod of [...p, ...a, soloPeer, solo]) {
    const r = await pod.add();
    if (r.code !== 0) throw new Error(`ADD ${pod.name}: ${JSON.stringify(r.json)}\n${n.logTail(20)}`);
  }
  const mesh: Changed[] = a.map((aj, j) => ({
    name: aj.name,
    declare: (kbit) => linksOf(j, kbit),
    watched: p.map((pk, k) => [end(aj, `l${k}`), end(pk, `h${j}`)]),
  }));
  const all = await rounds(c, mesh, ROUNDS, 1000);
  const single = await rounds(
    c,
    [
      {
        name: "solo",
        declare: (kbit) => [soloLink(kbit)],
        watched: [[end(solo, "s0"), end(soloPeer, "s1")]],
      },
    ],
    SINGLE_ROUNDS,
    1000,
  );
  // One of a0's links changes; its other 9 keep the rate the mesh rounds left them at.
  const rest = all.last;
  const first = mesh[0] as Changed;
  const oneOfTen = await rounds(
    c,
    [
      {
        name: first.name,
        declare: (kbit) => [meshLink(0, 0, kbit), ...linksOf(0, rest).slice(1)],
        watched: first.watched.slice(0, 1),
      },
    ],
    SINGLE_ROUNDS,
    rest,
  );

  for (const pod of c.pods) {
    const r = await pod.stop();
    if (r.code !== 0) throw new Error(`DEL ${pod.name}: ${JSON.stringify(r.json)}`);
  }
  await c.assertClean();
  return {
    links: LINKS,
    rounds: ROUNDS,
    singleRounds: SINGLE_ROUNDS,
    manyMedianMs: all.live.median,
    manyP99Ms: all.live.p99,
    manyMaxMs: all.live.max,
    floorManyMedianMs: all.floor.median,
    floorManyP99Ms: all.floor.p99,
    floorManyMaxMs: all.floor.max,
    singleMedianMs: single.live.median,
    singleP99Ms: single.live.p99,
    singleMaxMs: single.live.max,
    floorSingleMedianMs: single.floor.median,
    floorSingleP99Ms: single.floor.p99,
    floorSingleMaxMs: single.floor.max,
    oneOfTenMedianMs: oneOfTen.live.median,
    pollMedianMs: median(pollRounds),
  };
}

let f: Awaited<ReturnType<typeof measure>>;
try {
  f = await measure();
} finally {
  removeInstalledBin();
}

const row = (what: string, x: number[], floor: number[]) => ({
  change: what,
  "median ms": x[0] as number,
  "p99 ms": x[1] as number,
  "max ms": x[2] as number,
  "floor median": floor[0] as number,
  "floor p99": floor[1] as number,
  "floor max": floor[2] as number,
  ratio: `${((x[0] as number) / (floor[0] as number)).toFixed(1)}x`,
});
report(f, [
  `${f.links} veth links of ${PODS} pods, rate on both ends, ${f.rounds} rounds; ` +
    `one link, ${f.singleRounds} rounds. Per link: from the API server storing its pod`,
  "to the kernel holding the rate on both ends; floor: the same changes by setRootQdisc in one loop.",
  `A poll (one qdisc dump per netns) took ${f.pollMedianMs.toFixed(2)} ms.`,
  table([
    row(
      `all ${f.links} links at once`,
      [f.manyMedianMs, f.manyP99Ms, f.manyMaxMs],
      [f.floorManyMedianMs, f.floorManyP99Ms, f.floorManyMaxMs],
    ),
    row(
      "one pod, one link",
      [f.singleMedianMs, f.singleP99Ms, f.singleMaxMs],
      [f.floorSingleMedianMs, f.floorSingleP99Ms, f.floorSingleMaxMs],
    ),
  ]),
  `one of a pod's ${PODS} links changing alone: median ${f.oneOfTenMedianMs.toFixed(1)} ms`,
]);
