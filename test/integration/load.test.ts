// Issue 8, load: RATCHET_LOAD_PAIRS (default 500) linked pod pairs, half on one node (veth)
// and half across two nodes (VXLAN), plus as many ineligible pods, on the two-node bed.
// ADDs run 16 at a time in a seeded random order, then CHECK every eligible pod (with its
// ADD result as prevResult) and ping a sample of links of each kind, then DELs run 16 at a
// time in another random order. Throughout: every command succeeds and at most one agent
// runs per node (and it is the same one). After: nothing left (assertClean), the agents'
// fd counts did not grow and their RSS stays bounded (printed).
//   RATCHET_LOAD_PAIRS=20 RATCHET_TEST_ETCD=http://127.0.0.1:PORT bun test test/integration/load.test.ts
import { expect, test } from "bun:test";
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { waitFor } from "../support/child.ts";
import type { CniResultJson } from "../support/cni.ts";
import {
  makeCluster,
  plainPod,
  type AnnotationLink,
  type CniRun,
  type Cluster,
  type Node,
  type Pod,
} from "../support/cluster.ts";
import type { PodObject } from "../support/pods.ts";
import { rng } from "../support/rng.ts";

const PAIRS = Number(process.env.RATCHET_LOAD_PAIRS ?? 500);
const SEED = Number(process.env.RATCHET_LOAD_SEED ?? 8);
const PARALLEL = 16;
const PING_SAMPLE = 20;
const MAX_RSS_MIB = 150;
/**
 * fds an agent may gain over the run (a channel to each member of the 3-member etcd cluster,
 * the API server's connections for Events and patches), not one per pod.
 */
const FD_SLACK = 12;
const CONF = { log_level: "info" };

function shuffle<T>(xs: T[], rand: () => number): T[] {
  const a = [...xs];
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [a[i], a[j]] = [a[j] as T, a[i] as T];
  }
  return a;
}

/** Runs fn over items, `parallel` at a time. */
async function pool<T>(items: T[], parallel: number, fn: (x: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await fn(items[next++] as T);
  };
  await Promise.all(Array.from({ length: Math.min(parallel, items.length) }, worker));
}

function ratchetPod(name: string, links: AnnotationLink[]): PodObject {
  const annotations: Record<string, string> =
    links.length > 0 ? { "ratchet/links": JSON.stringify(links) } : {};
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: {
      name,
      namespace: "default",
      uid: crypto.randomUUID(),
      labels: { ratchet: "true" },
      annotations,
    },
    spec: {},
  };
}

/** Pair i's /30: 10.(100+i/64).((i%64)*4)/30; a gets .1, b .2. */
function pairNet(i: number): [string, string] {
  const base = `10.${100 + (i >> 6)}.${(i & 63) * 4}`;
  return [`${base}.1`, `${base}.2`];
}

interface AgentFigures {
  pid: number;
  fds: number;
  rssKiB: number;
}

function agentFigures(node: Node): AgentFigures {
  const pids = node.agents();
  if (pids.length !== 1)
    throw new Error(`${node.name}: ${pids.length} agents running (${pids.join(", ")}), expected one`);
  const pid = pids[0] as number;
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const rss = /^VmRSS:\s+(\d+) kB/m.exec(status);
  return { pid, fds: readdirSync(`/proc/${pid}/fd`).length, rssKiB: Number(rss?.[1] ?? 0) };
}

function logs(c: Cluster): string {
  return c.nodes.map((n) => `--- ${n.name} log ---\n${n.logTail(20)}`).join("\n");
}

function must(c: Cluster, r: CniRun, what: string): void {
  if (r.code !== 0)
    throw new Error(`${what}: exit ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}\n${logs(c)}`);
}

const mib = (kib: number) => (kib / 1024).toFixed(1);

test(
  `load: ${PAIRS} linked pairs (half veth, half VXLAN) and ${PAIRS} ineligible pods, 16 at a time`,
  async () => {
    const t0 = performance.now();
    const phase: Record<string, number> = {};
    const mark = (name: string, since: number) => {
      phase[name] = (performance.now() - since) / 1000;
    };
    await using c = await makeCluster({ nodes: 2 });
    const [n1, n2] = [c.node(1), c.node(2)];
    const rand = rng(SEED);

    // Pods: pair i < PAIRS/2 is veth on node (i%2)+1; the others are VXLAN, a on node1, b on node2.
    type Pair = { i: number; kind: "veth" | "vxlan"; a: Pod; b: Pod; ipA: string; ipB: string };
    const pairs: Pair[] = [];
    const plain: Pod[] = [];
    let t = performance.now();
    const veths = Math.floor(PAIRS / 2);
    const specs: Array<() => Promise<void>> = [];
    for (let i = 0; i < PAIRS; i++) {
      const kind = i < veths ? "veth" : "vxlan";
      const [ipA, ipB] = pairNet(i);
      c.putPod(
        ratchetPod(`a-${i}`, [
          {
            peer: `b-${i}`,
            local_ifname: "net1",
            peer_ifname: "net1",
            local_ip: `${ipA}/30`,
            peer_ip: `${ipB}/30`,
          },
        ]),
      );
      c.putPod(ratchetPod(`b-${i}`, []));
      c.putPod(plainPod(`p-${i}`));
      const nodeA = kind === "veth" ? c.node((i % 2) + 1) : n1;
      const nodeB = kind === "veth" ? nodeA : n2;
      specs.push(async () => {
        pairs.push({ i, kind, a: await nodeA.pod(`a-${i}`), b: await nodeB.pod(`b-${i}`), ipA, ipB });
        plain.push(await c.node((i % 2) + 1).pod(`p-${i}`));
      });
    }
    await pool(specs, PARALLEL, (f) => f());
    mark("netns", t);

    // Warm both agents (an ineligible ADD+DEL and a STATUS), then take their figures at rest.
    for (const n of [n1, n2]) {
      const warm = await n.pod(`warm-${n.index}`);
      c.putPod(plainPod(`warm-${n.index}`));
      must(c, await warm.add(CONF), `warm-up ADD on ${n.name}`);
      must(c, await warm.stop(), `warm-up DEL on ${n.name}`);
      must(c, await n.status(CONF), `STATUS on ${n.name}`);
    }
    const atRest = [agentFigures(n1), agentFigures(n2)];

    // At most one agent per node, the same one, throughout: sampled while the run goes on.
    const seenAgents = [new Set<number>(), new Set<number>()];
    let maxAgents = 0;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        c.nodes.forEach((n, k) => {
          const pids = n.agents();
          maxAgents = Math.max(maxAgents, pids.length);
          for (const p of pids) seenAgents[k]?.add(p);
        });
        await Bun.sleep(100);
      }
    })();

    const results = new Map<Pod, CniResultJson>();
    const failures: string[] = [];
    const eligible = pairs.flatMap((p) => [p.a, p.b]);
    try {
      // ADD, 16 at a time, random order.
      t = performance.now();
      await pool(shuffle([...eligible, ...plain], rand), PARALLEL, async (pod) => {
        const r = await pod.add(CONF);
        if (r.code !== 0)
          failures.push(`ADD ${pod.name} on ${pod.node.name}: exit ${r.code}: ${r.stdout.trim()}`);
        else results.set(pod, r.json as CniResultJson);
      });
      mark("ADD", t);
      if (failures.length > 0)
        throw new Error(`${failures.length} ADDs failed:\n${failures.slice(0, 10).join("\n")}\n${logs(c)}`);

      // CHECK every eligible pod with its ADD result.
      t = performance.now();
      await pool(eligible, PARALLEL, async (pod) => {
        const r = await pod.check(results.get(pod), CONF);
        if (r.code !== 0)
          failures.push(`CHECK ${pod.name} on ${pod.node.name}: exit ${r.code}: ${r.stdout.trim()}`);
      });
      mark("CHECK", t);
      if (failures.length > 0)
        throw new Error(`${failures.length} CHECKs failed:\n${failures.slice(0, 10).join("\n")}\n${logs(c)}`);

      // Ping a sample of each kind both ways; every VXLAN link has its own VNI.
      t = performance.now();
      for (const kind of ["veth", "vxlan"] as const) {
        const sample = shuffle(
          pairs.filter((p) => p.kind === kind),
          rand,
        ).slice(0, PING_SAMPLE);
        await pool(sample, 8, async (p) => {
          if (!(await c.ping(p.a, p.ipB)))
            failures.push(`no ping over ${kind} a-${p.i} -> b-${p.i} (${p.ipB})`);
          if (!(await c.ping(p.b, p.ipA)))
            failures.push(`no ping over ${kind} b-${p.i} -> a-${p.i} (${p.ipA})`);
        });
      }
      const vnis = [...(await c.etcdEntries()).entries()]
        .filter(([k]) => k.startsWith(`${c.etcdPrefix}/v1/vni/`))
        .map(([k]) => k);
      expect(vnis).toHaveLength(pairs.filter((p) => p.kind === "vxlan").length);
      mark("ping", t);
      if (failures.length > 0)
        throw new Error(`${failures.length} pings failed:\n${failures.slice(0, 10).join("\n")}\n${logs(c)}`);

      // DEL, 16 at a time, another random order; then the runtime removes the netns.
      t = performance.now();
      await pool(shuffle([...eligible, ...plain], rand), PARALLEL, async (pod) => {
        const r = await pod.del(CONF);
        if (r.code !== 0)
          failures.push(`DEL ${pod.name} on ${pod.node.name}: exit ${r.code}: ${r.stdout.trim()}`);
      });
      mark("DEL", t);
      if (failures.length > 0)
        throw new Error(`${failures.length} DELs failed:\n${failures.slice(0, 10).join("\n")}\n${logs(c)}`);
    } finally {
      sampling = false;
      await sampler;
    }

    // The last parents' connections close a moment after their DEL returns: let the fd
    // counts settle (bounded), then take the figures.
    await waitFor(
      "agents' fds to settle",
      () => [n1, n2].every((n, k) => agentFigures(n).fds <= (atRest[k] as AgentFigures).fds + 4),
      5000,
    ).catch(() => undefined);
    const after = [agentFigures(n1), agentFigures(n2)];
    t = performance.now();
    await pool([...eligible, ...plain], PARALLEL, (p) => p.removeNetns());
    mark("netns removal", t);

    const total = (performance.now() - t0) / 1000;
    console.log(
      `load: ${PAIRS} pairs (${veths} veth, ${PAIRS - veths} VXLAN) + ${plain.length} ` +
        `ineligible pods, seed ${SEED}, ${PARALLEL} at a time: ${total.toFixed(1)} s`,
    );
    console.log(
      `  phases (s): ${Object.entries(phase)
        .map(([k, v]) => `${k} ${v.toFixed(1)}`)
        .join(", ")}`,
    );
    c.nodes.forEach((n, k) => {
      const [r, a] = [atRest[k] as AgentFigures, after[k] as AgentFigures];
      console.log(
        `  ${n.name} agent ${r.pid}: RSS ${mib(r.rssKiB)} MiB at rest, ` +
          `${mib(a.rssKiB)} MiB after; fds ${r.fds} at rest, ${a.fds} after`,
      );
    });
    // scripts/bench.sh reads the figures from here.
    const reportFile = process.env.RATCHET_LOAD_REPORT;
    if (reportFile) {
      const rss = (xs: AgentFigures[]) => Math.max(...xs.map((x) => x.rssKiB)) / 1024;
      writeFileSync(
        reportFile,
        JSON.stringify({
          pairs: PAIRS,
          pods: eligible.length + plain.length,
          seconds: total,
          restMiB: rss(atRest),
          afterMiB: rss(after),
          fdsRest: atRest.map((x) => x.fds),
          fdsAfter: after.map((x) => x.fds),
          maxAgents,
          phases: phase,
        }),
      );
    }
    console.log(
      `  agents seen per node: ${seenAgents.map((s) => s.size).join(", ")}; ` +
        `most at once on a node: ${maxAgents}`,
    );

    expect(maxAgents).toBeLessThanOrEqual(1);
    for (let k = 0; k < 2; k++) {
      const [r, a] = [atRest[k] as AgentFigures, after[k] as AgentFigures];
      expect(a.pid).toBe(r.pid);
      expect([...(seenAgents[k] ?? [])]).toEqual([r.pid]);
      expect(a.fds).toBeLessThanOrEqual(r.fds + FD_SLACK);
      expect(a.rssKiB / 1024).toBeLessThan(MAX_RSS_MIB);
    }
    await c.assertClean({ etcdWaitMs: 15_000 });
  },
  Math.max(600_000, PAIRS * 1200),
);
