// etcd as production runs it: a 3-member cluster (etcd_endpoints with three URLs). Its leader
// killed in the middle of a run of ADDs: no ADD is lost (it succeeds, or fails with 11 and the
// runtime's retry succeeds), no VNI is given twice, no link is built twice, nothing is left
// at the end. And an agent whose watch fell behind a compaction reads again and carries on.
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { childPids, waitFor } from "../support/child.ts";
import type { CniResultJson } from "../support/cni.ts";
import {
  annotatedPod,
  type AnnotationLink,
  type Cluster,
  type CniRun,
  makeCluster,
  type Node,
  type Pod,
} from "../support/cluster.ts";
import { startEtcdCluster, type TestEtcdCluster } from "../support/etcd-cluster.ts";
import { ipIn } from "../support/netns.ts";

const PAIRS = Number(process.env.RATCHET_TEST_LEADER_PAIRS ?? 24);
const LINKS_PER_PAIR = 3;
const PARALLEL = 8;

const b64 = (s: string) => Buffer.from(s).toString("base64");

/** Every key under the cluster's prefix, read from whichever member answers. */
async function keysUnder(etcd: TestEtcdCluster, c: Cluster): Promise<string[]> {
  const from = `${c.etcdPrefix}/`;
  const end = Buffer.from(from);
  end[end.length - 1] = (end[end.length - 1] as number) + 1;
  const r = (await etcd.call("kv/range", {
    key: b64(from),
    range_end: end.toString("base64"),
    keys_only: true,
  })) as {
    kvs?: Array<{ key: string }>;
  };
  return (r.kvs ?? []).map((kv) => Buffer.from(kv.key, "base64").toString());
}

/** Pair i: p<i>a declares LINKS_PER_PAIR links to p<i>b (addresses in 10.200.i.0/24). */
function pairPods(c: Cluster, i: number): void {
  const links: AnnotationLink[] = Array.from({ length: LINKS_PER_PAIR }, (_, k) => ({
    peer: `p${i}b`,
    local_ifname: `l${k}`,
    peer_ifname: `l${k}`,
    local_ip: `10.200.${i}.${k * 4 + 1}/30`,
    peer_ip: `10.200.${i}.${k * 4 + 2}/30`,
  }));
  c.putPod(annotatedPod(`p${i}a`, links));
  c.putPod({
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name: `p${i}b`, namespace: "default", uid: crypto.randomUUID(), labels: { ratchet: "true" } },
    spec: {},
  });
}

/** What a runtime does: the command until it succeeds; after a code 11, DEL first (for an ADD). */
async function retried(
  p: Pod,
  command: "ADD" | "DEL",
  conf: Record<string, unknown>,
  seen: number[],
): Promise<CniRun> {
  for (let attempt = 0; attempt < 30; attempt++) {
    const r = await p.cni(command, conf);
    if (r.code === 0) return r;
    const code = (r.json as { code?: number } | undefined)?.code;
    seen.push(code ?? -1);
    if (code !== 11) throw new Error(`${command} ${p.name}: exit ${r.code}: ${r.stdout}`);
    if (command === "ADD") await retried(p, "DEL", conf, seen);
    await Bun.sleep(100 * Math.min(attempt + 1, 10)); // the runtime's back-off
  }
  throw new Error(`${command} ${p.name}: still failing after 30 attempts`);
}

async function pool<T>(items: T[], n: number, fn: (x: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(n, items.length) }, async () => {
      while (next < items.length) await fn(items[next++] as T);
    }),
  );
}

interface IpLink {
  ifname: string;
  flags: string[];
  linkinfo?: { info_kind?: string; info_data?: { id?: number } };
}

describe("a 3-member etcd cluster", () => {
  test(`its leader killed during ${PAIRS * 2} ADDs: none lost, no VNI twice, no link built twice, nothing left`, async () => {
    await using etcd = await startEtcdCluster();
    await using c = await makeCluster({ nodes: 2 });
    const conf = { ...etcd.conf(), log_level: "info" };
    const pods: Array<{ a: Pod; b: Pod; across: boolean }> = [];
    for (let i = 0; i < PAIRS; i++) {
      pairPods(c, i);
      const across = i % 2 === 1;
      pods.push({ a: await c.node(1).pod(`p${i}a`), b: await c.node(across ? 2 : 1).pod(`p${i}b`), across });
    }
    const all = pods.flatMap((p) => [p.a, p.b]);
    const results = new Map<Pod, CniResultJson>();
    const codes: number[] = [];
    let done = 0;
    let killed: string | undefined;
    const killer = (async () => {
      await waitFor("a third of the ADDs", () => done >= all.length / 3, 120_000, 10);
      const leader = await etcd.leader();
      killed = leader.name;
      await leader.down();
    })();
    await pool(all, PARALLEL, async (p) => {
      results.set(p, (await retried(p, "ADD", conf, codes)).json as CniResultJson);
      done++;
    });
    await killer;
    expect(killed).toBeDefined();
    // Every code seen on the way was 11 (try again): nothing else failed.
    expect(codes.filter((x) => x !== 11)).toEqual([]);

    // Every link is there once on both sides, up, with one VNI per VXLAN link, all distinct.
    await waitFor(
      "every end built",
      async () => {
        for (const p of all) {
          const links = JSON.parse(await ipIn(p.netns.name, ["-j", "link", "show"])) as IpLink[];
          // Each end by its name, up (a retried ADD may still be finishing one).
          for (let k = 0; k < LINKS_PER_PAIR; k++)
            if (!links.some((l) => l.ifname === `l${k}` && l.flags.includes("UP"))) return false;
        }
        return true;
      },
      60_000,
      100,
    );
    const vnis = new Map<number, string>();
    for (const { a, b, across } of pods) {
      const la = JSON.parse(await ipIn(a.netns.name, ["-d", "-j", "link", "show"])) as IpLink[];
      const lb = JSON.parse(await ipIn(b.netns.name, ["-d", "-j", "link", "show"])) as IpLink[];
      for (let k = 0; k < LINKS_PER_PAIR; k++) {
        const ea = la.find((l) => l.ifname === `l${k}`);
        const eb = lb.find((l) => l.ifname === `l${k}`);
        expect(ea?.linkinfo?.info_kind).toBe(across ? "vxlan" : "veth");
        if (!across) continue;
        const vni = ea?.linkinfo?.info_data?.id as number;
        expect(eb?.linkinfo?.info_data?.id).toBe(vni);
        expect(vnis.get(vni)).toBeUndefined();
        vnis.set(vni, `${a.name}/l${k}`);
      }
    }
    expect(vnis.size).toBe((PAIRS / 2) * LINKS_PER_PAIR);
    // No link built twice: no agent met an interface of a wanted name it did not expect.
    for (const n of c.nodes) {
      expect(n.logTail(5000)).not.toContain("was not built by ratchet");
      expect(n.logTail(5000)).not.toContain("could not build a tunnel end");
    }
    for (const p of all) {
      const r = await p.check(results.get(p), conf);
      // On failure: what the agents logged of the pod.
      const logged = (n: Node) =>
        readFileSync(n.logFile, "utf8")
          .split("\n")
          .filter((l) => l.includes(`/${p.name}"`) || l.includes(`-${p.name}-`));
      const log = r.code === 0 ? [] : c.nodes.flatMap(logged);
      expect({ pod: p.name, code: r.code, stdout: r.code === 0 ? "" : r.stdout, log }).toEqual({
        log: [],
        pod: p.name,
        code: 0,
        stdout: "",
      });
    }
    for (const { a, b } of pods.slice(0, 4))
      expect(await c.ping(a, (await firstPeerIp(b)) as string)).toBe(true);

    // The old leader comes back; everything goes; nothing is left in etcd.
    await etcd.members.find((m) => m.name === killed)?.up();
    await pool(all, PARALLEL, async (p) => {
      await retried(p, "DEL", conf, codes);
      await p.removeNetns();
    });
    await waitFor(
      "no record left",
      async () => (await keysUnder(etcd, c)).filter((k) => !k.endsWith("/vni-next")).length === 0,
      20_000,
    );
  }, 600_000);

  test("a watch that falls behind a compaction reads its prefix again and carries on", async () => {
    await using etcd = await startEtcdCluster();
    await using c = await makeCluster({ nodes: 2 });
    const [m0, m1, m2] = etcd.members as [
      (typeof etcd.members)[number],
      (typeof etcd.members)[number],
      (typeof etcd.members)[number],
    ];
    // Node 1's agent talks to member 0 only, node 2's to the other two.
    const conf1 = { etcd_endpoints: [m0.endpoint], log_level: "info" };
    const conf2 = { etcd_endpoints: [m1.endpoint, m2.endpoint], log_level: "info" };
    pairPods(c, 0);
    const a = await c.node(1).pod("p0a");
    const b = await c.node(2).pod("p0b");
    expect((await a.add(conf1)).code).toBe(0);
    const [agent] = childPids(c.node(1).logFile);
    // Node 1's agent stops; its member goes; node 2 builds the tunnels (its entries for node 1
    // are written) and the keyspace is compacted past them; then all comes back.
    process.kill(agent as number, "SIGSTOP");
    try {
      await m0.down();
      const r = await b.add(conf2);
      expect(r.code).toBe(0);
      await etcd.compact();
      await m0.up();
    } finally {
      process.kill(agent as number, "SIGCONT");
    }
    // The resumed watch asks for revisions that are gone: etcd cancels it, the agent reads
    // its entries again, builds its ends and follows from there.
    await waitFor(
      "node 1's ends",
      async () => {
        const links = JSON.parse(await ipIn(a.netns.name, ["-j", "link", "show"])) as IpLink[];
        return links.filter((l) => l.ifname !== "lo" && l.flags.includes("UP")).length === LINKS_PER_PAIR;
      },
      30_000,
      100,
    );
    expect(c.node(1).logTail(200)).toContain("etcd canceled the watch: reading again");
    expect(await c.ping(a, "10.200.0.2", 10_000)).toBe(true);
    expect(childPids(c.node(1).logFile)).toEqual([agent as number]);
    // And it follows again: b re-created (new container) makes node 1 rebuild its ends.
    expect((await b.del(conf2)).code).toBe(0);
    await b.removeNetns();
    const b2 = await b.recreate();
    expect((await b2.add(conf2)).code).toBe(0);
    expect(await c.ping(a, "10.200.0.2", 10_000)).toBe(true);
    for (const [p, conf] of [
      [a, conf1],
      [b2, conf2],
    ] as const) {
      expect((await p.del(conf)).code).toBe(0);
      await p.removeNetns();
    }
    await waitFor(
      "no record left",
      async () => (await keysUnder(etcd, c)).filter((k) => !k.endsWith("/vni-next")).length === 0,
      20_000,
    );
  }, 300_000);
});

/** The first IPv4 address of the pod's first link. */
async function firstPeerIp(p: Pod): Promise<string | undefined> {
  const out = JSON.parse(await ipIn(p.netns.name, ["-j", "-4", "addr", "show", "dev", "l0"])) as Array<{
    addr_info: Array<{ local: string }>;
  }>;
  return out[0]?.addr_info[0]?.local;
}
