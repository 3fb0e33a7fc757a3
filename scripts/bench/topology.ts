// Lab scale, side by side with the kernel's floor in the same run (as root, etcd at
// $RATCHET_TEST_ETCD, the run's prefix in $RATCHET_TEST_PREFIX for the namespaces):
//  - LINKS veth links between two pods on one node: the first pod's ADD, the second pod's
//    ADD (builds them all, addressed and up) against `ip -batch` creating the same veth pairs
//    between two fresh netns with addresses and up; DEL of either pod against the kernel's
//    fastest delete of the same interfaces (`ip link del group`);
//  - LINKS VXLAN links between two pods on two nodes: from the second ADD until both ends
//    are built and a sample pings;
//  - ENDS link ends on one node (pods of 500 links, half veth pairs on the node, half VXLAN
//    to the other node): the agent's RSS, an agent restart's reconcile (and that it rebuilt
//    nothing), `ratchet links`;
//  - etcd: bytes per link, round trips per ADD, the largest transaction.
//   node_modules/.bin/bun scripts/bench/topology.ts [LINKS] [ENDS] [--json]
import { Etcd3 } from "etcd3";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { childPids, waitFor } from "../../test/support/child.ts";
import {
  annotatedPod,
  type Cluster,
  makeCluster,
  type Node,
  type Pod,
  plainPod,
} from "../../test/support/cluster.ts";
import { run } from "../../test/support/env.ts";
import { ARGS, ETCD, median, report, table } from "./support.ts";

const LINKS = Number(ARGS[0] ?? 1500);
const ENDS = Number(ARGS[1] ?? 10_000);
const PER_POD = 500;
const ROUNDS = 2;
const CONF = { log_level: "info" };

/** Link i's /30: 10.(64+i/16384).((i/64)%256).((i%64)*4); a gets .1, b .2. */
function net(i: number, base = 64): [string, string] {
  const p = `10.${base + (i >> 14)}.${(i >> 6) & 255}.${(i & 63) * 4}`;
  const [a, b, c, d] = p.split(".").map(Number) as [number, number, number, number];
  return [`${a}.${b}.${c}.${d + 1}`, `${a}.${b}.${c}.${d + 2}`];
}

function routerPods(c: Cluster, a: string, b: string, n: number, base = 64, ifx = "e"): void {
  const links = Array.from({ length: n }, (_, i) => {
    const [x, y] = net(i, base);
    return {
      peer: b,
      local_ifname: `${ifx}${i}`,
      peer_ifname: `${ifx}${i}`,
      local_ip: `${x}/30`,
      peer_ip: `${y}/30`,
    };
  });
  c.putPod(annotatedPod(a, links));
  c.putPod({
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name: b, namespace: "default", labels: { ratchet: "true" } },
    spec: {},
  });
}

async function timed<T>(fn: () => Promise<T>): Promise<{ ms: number; v: T }> {
  const t0 = performance.now();
  const v = await fn();
  return { ms: performance.now() - t0, v };
}

async function ok(what: string, p: Promise<{ code: number; stdout: string }>): Promise<void> {
  const r = await p;
  if (r.code !== 0) throw new Error(`${what}: exit ${r.code}: ${r.stdout.slice(0, 400)}`);
}

/** The kernel's floor: ip -batch makes the same veth pairs between two fresh netns. */
async function floor(tag: string): Promise<{ createMs: number; deleteMs: number }> {
  const dir = mkdtempSync(join(tmpdir(), "ratchet-bench-floor-"));
  const [a, b] = [`${tag}fa`, `${tag}fb`];
  try {
    for (const ns of [a, b]) await run(["ip", "netns", "add", ns]);
    const create: string[] = [];
    const fa: string[] = [];
    const fb: string[] = [];
    for (let i = 0; i < LINKS; i++) {
      const [x, y] = net(i);
      create.push(`link add e${i} netns ${a} group 7 type veth peer name e${i} netns ${b}`);
      fa.push(`addr add ${x}/30 dev e${i}`, `link set e${i} up`);
      fb.push(`addr add ${y}/30 dev e${i}`, `link set e${i} up`);
    }
    const files = { create, fa, fb };
    for (const [k, lines] of Object.entries(files)) writeFileSync(join(dir, k), `${lines.join("\n")}\n`);
    const t0 = performance.now();
    await ok("ip -batch create", run(["ip", "-batch", join(dir, "create")]));
    await ok("ip -batch a", run(["ip", "-n", a, "-batch", join(dir, "fa")]));
    await ok("ip -batch b", run(["ip", "-n", b, "-batch", join(dir, "fb")]));
    const createMs = performance.now() - t0;
    const t1 = performance.now();
    await ok("ip link del group", run(["ip", "-n", a, "link", "del", "group", "7"]));
    return { createMs, deleteMs: performance.now() - t1 };
  } finally {
    for (const ns of [a, b]) await run(["ip", "netns", "del", ns]);
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Every key and value under the cluster's prefix: bytes, count. */
/**
 * Bytes of the link records under the cluster's prefix (keys and values), apart from the
 * agents' reports of what their kernels hold (observed/, written in the background after an
 * ADD: counted once they are all there).
 */
async function etcdBytes(c: Cluster): Promise<{ keys: number; bytes: number; observed: number }> {
  // Each of the two routers' agents reports its ends in chunks of 512.
  const reports = 2 * Math.ceil(LINKS / 512);
  let e = await c.etcdEntries();
  const count = () => [...e.keys()].filter((k) => k.includes("/v1/observed/")).length;
  await waitFor(
    "the agents' observed reports",
    async () => {
      e = await c.etcdEntries();
      return count() === reports;
    },
    20_000,
    50,
  );
  let bytes = 0;
  let observed = 0;
  for (const [k, v] of e) {
    const n = Buffer.byteLength(k) + Buffer.byteLength(v);
    if (k.includes("/v1/observed/")) observed += n;
    else bytes += n;
  }
  return { keys: e.size, bytes, observed };
}

function attachedLines(n: Node): Array<{ pod: string; etcdRoundTrips: number; links: number }> {
  return readFileSync(n.logFile, "utf8")
    .split("\n")
    .filter((l) => l.includes('"msg":"attached"'))
    .map((l) => JSON.parse(l) as { pod: string; etcdRoundTrips: number; links: number });
}

const rssMiB = (pid: number) =>
  Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1]) / 1024;

async function sameNode(): Promise<Record<string, number>> {
  const first: number[] = [];
  const second: number[] = [];
  const delFirst: number[] = [];
  const delSecond: number[] = [];
  const floors: Array<{ createMs: number; deleteMs: number }> = [];
  let perLink = 0;
  let observedPerLink = 0;
  let trips = { first: 0, second: 0 };
  for (let round = 0; round < ROUNDS; round++) {
    await using c = await makeCluster({ nodes: 1 });
    const n = c.node(1);
    routerPods(c, "r1", "r2", LINKS);
    const r1 = await n.pod("r1");
    const r2 = await n.pod("r2");
    c.putPod(plainPod("warm"));
    await ok("warm", (await n.pod("warm")).add(CONF)); // the agent up, as on a running node
    floors.push(await floor(`${process.env.RATCHET_TEST_PREFIX ?? "rb"}${round}`));
    first.push((await timed(() => ok("ADD r1", r1.add(CONF)))).ms);
    second.push((await timed(() => ok("ADD r2", r2.add(CONF)))).ms);
    // Up and with carrier (the operstate follows a moment later, as for `ip`'s links).
    const up = JSON.parse((await run(["ip", "-n", r2.netns.name, "-j", "link"])).stdout) as Array<{
      ifname: string;
      flags: string[];
    }>;
    const ready = up.filter(
      (l) => l.ifname !== "lo" && l.flags.includes("UP") && l.flags.includes("LOWER_UP"),
    );
    if (ready.length !== LINKS) throw new Error(`${ready.length} of ${LINKS} links are up`);
    const b = await etcdBytes(c);
    perLink = b.bytes / LINKS;
    observedPerLink = b.observed / LINKS;
    const lines = attachedLines(n);
    trips = {
      first: lines.find((l) => l.pod === "default/r1")?.etcdRoundTrips ?? 0,
      second: lines.find((l) => l.pod === "default/r2")?.etcdRoundTrips ?? 0,
    };
    // Round 0 deletes the pod that built the links first, round 1 the other one.
    const [x, y] = round % 2 === 0 ? [r2, r1] : [r1, r2];
    const d = (await timed(() => ok("DEL", x.del(CONF)))).ms;
    (round % 2 === 0 ? delSecond : delFirst).push(d);
    await ok("DEL other", y.del(CONF));
  }
  return {
    floorCreateMs: median(floors.map((f) => f.createMs)),
    floorDeleteMs: median(floors.map((f) => f.deleteMs)),
    firstAddMs: median(first),
    secondAddMs: median(second),
    delBuilderMs: median(delSecond),
    delOtherMs: median(delFirst),
    vethBytesPerLink: perLink,
    vethObservedBytesPerLink: observedPerLink,
    firstAddRoundTrips: trips.first,
    secondAddRoundTrips: trips.second,
  };
}

async function acrossNodes(): Promise<Record<string, number>> {
  await using c = await makeCluster({ nodes: 2 });
  routerPods(c, "r1", "r2", LINKS);
  const r1 = await c.node(1).pod("r1");
  const r2 = await c.node(2).pod("r2");
  await ok("ADD r1", r1.add(CONF));
  const t0 = performance.now();
  await ok("ADD r2", r2.add(CONF));
  const addMs = performance.now() - t0;
  const upIn = async (p: Pod) =>
    (
      JSON.parse((await run(["ip", "-n", p.netns.name, "-j", "-br", "link"])).stdout) as Array<{
        operstate: string;
      }>
    ).filter((l) => l.operstate !== "DOWN" && l.operstate !== undefined).length;
  await waitFor("both ends of every link", async () => (await upIn(r1)) >= LINKS + 1, 60_000, 20);
  const sample = [0, LINKS >> 1, LINKS - 1];
  for (const i of sample) {
    if (!(await c.ping(r1, net(i)[1], 10_000))) throw new Error(`no ping over link ${i}`);
  }
  const readyMs = performance.now() - t0;
  const b = await etcdBytes(c);
  await ok("DEL r2", r2.del(CONF));
  await ok("DEL r1", r1.del(CONF));
  return {
    vxlanSecondAddMs: addMs,
    vxlanReadyMs: readyMs,
    vxlanBytesPerLink: b.bytes / LINKS,
    vxlanObservedBytesPerLink: b.observed / LINKS,
  };
}

async function manyEnds(): Promise<Record<string, number>> {
  await using c = await makeCluster({ nodes: 2 });
  const [n1, n2] = [c.node(1), c.node(2)];
  // Pods of PER_POD links on node 1: half in veth pairs with each other, half each with a
  // VXLAN peer on node 2.
  const onNode1 = Math.max(4, 2 * Math.round(ENDS / PER_POD / 2));
  const pairs: Array<[Pod, Pod]> = [];
  const local: Pod[] = [];
  for (let i = 0; i < onNode1; i++) {
    const veth = i < onNode1 / 2;
    if (veth && i % 2 === 1) continue;
    const peer = veth ? `m${i + 1}` : `x${i}`;
    routerPods(c, `m${i}`, peer, PER_POD, 64 + i, "m");
    const pair: [Pod, Pod] = [await n1.pod(`m${i}`), await (veth ? n1 : n2).pod(peer)];
    pairs.push(pair);
    local.push(...(veth ? pair : [pair[0]]));
  }
  for (const [a, b] of pairs) {
    await ok("ADD", a.add(CONF));
    await ok("ADD", b.add(CONF));
  }
  // Node 1's agent builds its ends of the VXLAN links after the peers' ADDs: wait for them.
  const allUp = async () => {
    for (const p of local) {
      const out = (await run(["ip", "-n", p.netns.name, "-o", "link"])).stdout;
      if ((out.match(/,UP/g) ?? []).length < PER_POD) return false;
    }
    return true;
  };
  await waitFor("every end on node 1 up", allUp, 60_000, 50);
  const [agent] = childPids(n1.logFile);
  const rss = rssMiB(agent as number);
  // What a rebuild would change: ifindex, MAC, alias (state may move from UNKNOWN to UP).
  const indexes = async () => {
    const out: string[] = [];
    for (const p of local) {
      const ls = JSON.parse((await run(["ip", "-n", p.netns.name, "-j", "link"])).stdout) as Array<
        Record<string, unknown>
      >;
      out.push(...ls.map((l) => `${l.ifindex} ${l.ifname} ${l.address} ${l.ifalias}`));
    }
    return out.join("\n");
  };
  const before = await indexes();
  process.kill(agent as number, "SIGKILL");
  await waitFor("the agent to die", () => childPids(n1.logFile).length === 0, 5000);
  // Any call starts a new agent, which reconciles the node at once (it logs how long).
  const seen = readFileSync(n1.logFile, "utf8").split("\n").length;
  c.putPod(plainPod("restart"));
  await ok("ADD", (await n1.pod("restart")).add(CONF));
  const line = await waitFor(
    "the reconcile line",
    () =>
      readFileSync(n1.logFile, "utf8")
        .split("\n")
        .slice(seen)
        .find((l) => l.includes("reconciled this node's links")),
    30_000,
  );
  const reconcile = JSON.parse(line as string) as { ms: number; tunnelEnds: number };
  const after = await indexes();
  if (before !== after && process.env.RATCHET_BENCH_DEBUG) {
    writeFileSync("/tmp/zz-before", before);
    writeFileSync("/tmp/zz-after", after);
  }
  const conf = join(c.dir, "links.conf");
  writeFileSync(conf, JSON.stringify(n1.conf(CONF)));
  const ls = await timed(() =>
    run([join(c.dir, "ratchet-hidden"), "links", "--config", conf, "--output", "json"], {
      timeoutMs: 60_000,
    }),
  );
  if (ls.v.code !== 0) throw new Error(`ratchet links: ${ls.v.stderr}`);
  const shown = (JSON.parse(ls.v.stdout) as { links: unknown[] }).links.length;
  for (const [a, b] of pairs) {
    await ok("DEL", a.del(CONF));
    await ok("DEL", b.del(CONF));
  }
  return {
    ends: onNode1 * PER_POD,
    agentRssMiB: rss,
    restartReconcileMs: reconcile.ms,
    reconciledTunnelEnds: reconcile.tunnelEnds,
    rebuilt: before === after ? 0 : 1,
    linksCliMs: ls.ms,
    linksShown: shown,
  };
}

const n0 = (x: number | undefined) => (x ?? Number.NaN).toFixed(0);

const etcd = new Etcd3({ hosts: ETCD });
try {
  const s = await sameNode();
  const x = await acrossNodes();
  const m = ENDS > 0 ? await manyEnds() : {};
  const f = { links: LINKS, ...s, ...x, ...m };
  report(f, [
    `topology: ${LINKS} links between two pods, medians of ${ROUNDS} rounds, floors measured in the same run`,
    table([
      { what: "first pod's ADD", ms: s.firstAddMs as number, floor: "", ratio: "" },
      {
        what: "second pod's ADD (builds all)",
        ms: s.secondAddMs as number,
        floor: `${(s.floorCreateMs as number).toFixed(0)} ip -batch`,
        ratio: `${((s.secondAddMs as number) / (s.floorCreateMs as number)).toFixed(2)}x`,
      },
      {
        what: "DEL of the pod that built them",
        ms: s.delBuilderMs as number,
        floor: `${(s.floorDeleteMs as number).toFixed(0)} ip link del group`,
        ratio: `${((s.delBuilderMs as number) / (s.floorDeleteMs as number)).toFixed(2)}x`,
      },
      {
        what: "DEL of the other pod",
        ms: s.delOtherMs as number,
        floor: `${(s.floorDeleteMs as number).toFixed(0)} ip link del group`,
        ratio: `${((s.delOtherMs as number) / (s.floorDeleteMs as number)).toFixed(2)}x`,
      },
      { what: "VXLAN: second ADD", ms: x.vxlanSecondAddMs as number, floor: "", ratio: "" },
      {
        what: "VXLAN: both ends built, sample pings",
        ms: x.vxlanReadyMs as number,
        floor: "3000 target",
        ratio: "",
      },
    ]),
    `etcd: ${n0(s.vethBytesPerLink)} bytes per veth link, ${n0(x.vxlanBytesPerLink)} per VXLAN link; ` +
      `observed reports ${n0(s.vethObservedBytesPerLink)} / ${n0(x.vxlanObservedBytesPerLink)} more; ` +
      `round trips per ADD: first ${s.firstAddRoundTrips}, second ${s.secondAddRoundTrips}`,
    ...(ENDS > 0
      ? [
          `${m.ends} link ends on one node: agent RSS ${n0(m.agentRssMiB)} MiB; ` +
            `restart reconcile ${n0(m.restartReconcileMs)} ms, rebuilt ${m.rebuilt ? "something" : "nothing"}; ` +
            `ratchet links ${n0(m.linksCliMs)} ms (${m.linksShown} links)`,
        ]
      : []),
  ]);
} finally {
  etcd.close();
}
