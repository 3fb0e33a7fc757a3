// Network labs: two "routers" joined by many links, on one node (veth) and across two (VXLAN),
// through the installed binary. RATCHET_TEST_LAB_LINKS sets how many (default 300; the
// benchmark runs 1500). And a pod with the most links a pod may have (4096) against etcd with
// its default limits (128 operations, 1.5 MiB per transaction).
import { describe, expect, test } from "bun:test";
import { waitFor } from "../support/child.ts";
import type { CniResultJson } from "../support/cni.ts";
import {
  annotatedPod,
  type AnnotationLink,
  type Cluster,
  makeCluster,
  type Pod,
} from "../support/cluster.ts";
import { ipIn } from "../support/netns.ts";

const LINKS = Number(process.env.RATCHET_TEST_LAB_LINKS ?? 300);
const MAX_LINKS = 4096;
const CONF = { log_level: "info" };

/** Link i's addresses: a /30 of 10.96.0.0/12, .1 on the router, .2 on its peer. */
function addrs(i: number): [string, string] {
  const n = i * 4;
  const base = `10.${96 + (n >> 16)}.${(n >> 8) & 255}`;
  return [`${base}.${(n & 255) + 1}/30`, `${base}.${(n & 255) + 2}/30`];
}

/** r1 declares n links to r2 (eN <-> eN); r2 only opts in. */
function routers(c: Cluster, n: number, withIps = true): void {
  const links: AnnotationLink[] = Array.from({ length: n }, (_, i) => ({
    peer: "r2",
    local_ifname: `e${i}`,
    peer_ifname: `e${i}`,
    ...(withIps ? { local_ip: addrs(i)[0], peer_ip: addrs(i)[1] } : {}),
  }));
  c.putPod(annotatedPod("r1", links));
  c.putPod({
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name: "r2", namespace: "default", uid: crypto.randomUUID(), labels: { ratchet: "true" } },
    spec: {},
  });
}

async function ok(c: Cluster, what: string, p: Promise<{ code: number; stdout: string; json: unknown }>) {
  const r = await p;
  if (r.code !== 0) {
    const logs = c.nodes.map((n) => `--- ${n.name}\n${n.logTail(20)}`).join("\n");
    throw new Error(`${what}: exit ${r.code}: ${r.stdout.slice(0, 500)}\n${logs}`);
  }
  return r.json as CniResultJson;
}

interface IpLink {
  ifname: string;
  flags: string[];
  linkinfo?: { info_kind?: string; info_data?: { id?: number } };
}
interface IpAddr {
  ifname: string;
  addr_info: Array<{ family: string; local: string; prefixlen: number }>;
}

/** The pod's links (lo aside) by name, and its IPv4 addresses by link, read once. */
async function kernelView(p: Pod): Promise<{ links: Map<string, IpLink>; v4: Map<string, string[]> }> {
  const links = JSON.parse(await ipIn(p.netns.name, ["-d", "-j", "link", "show"])) as IpLink[];
  const addr = JSON.parse(await ipIn(p.netns.name, ["-j", "addr", "show"])) as IpAddr[];
  return {
    links: new Map(links.filter((l) => l.ifname !== "lo").map((l) => [l.ifname, l])),
    v4: new Map(
      addr.map((a) => [
        a.ifname,
        a.addr_info.filter((x) => x.family === "inet").map((x) => `${x.local}/${x.prefixlen}`),
      ]),
    ),
  };
}

/** Every link up, with carrier, of `kind`, with its address. */
async function expectLinks(p: Pod, side: 0 | 1, kind: string, n: number, withIps = true) {
  const v = await kernelView(p);
  expect(v.links.size).toBe(n);
  const wrong: string[] = [];
  for (let i = 0; i < n; i++) {
    const l = v.links.get(`e${i}`);
    if (!l) wrong.push(`e${i} missing`);
    else if (l.linkinfo?.info_kind !== kind) wrong.push(`e${i} is ${l.linkinfo?.info_kind}`);
    else if (!l.flags.includes("UP") || !l.flags.includes("LOWER_UP")) wrong.push(`e${i} is not up`);
    else if (withIps && v.v4.get(`e${i}`)?.[0] !== addrs(i)[side])
      wrong.push(`e${i} lacks ${addrs(i)[side]}`);
  }
  expect(wrong.slice(0, 5)).toEqual([]);
  return v;
}

/** The keys under the cluster's prefix: few, and a few per chunk of links, never per link. */
async function expectChunkedRecords(c: Cluster, n: number, kind: "veth" | "vxlan"): Promise<void> {
  const chunks = Math.ceil(n / 64);
  // endpoints, node index entries, the peer index entry, declaration chunks of 128, link
  // chunks of 64, for VXLAN one VNI block and two tunnel entries per link chunk, and each
  // router's observed ends in chunks of 512 (the far node writes its own once built).
  const expected =
    2 + 2 + 1 + Math.ceil(n / 128) + chunks + (kind === "vxlan" ? 3 * chunks : 0) + 2 * Math.ceil(n / 512);
  let keys: string[] = [];
  await waitFor("the records", async () => {
    keys = await c.recordKeys();
    return keys.length === expected;
  }).catch(() => undefined);
  expect(keys.length).toBe(expected);
}

describe(`a lab: two routers joined by ${LINKS} links`, () => {
  test(`on one node: ${LINKS} veth pairs, all up and addressed; CHECK; ping; DEL removes everything`, async () => {
    await using c = await makeCluster({ nodes: 1 });
    routers(c, LINKS);
    const n = c.node(1);
    const r1 = await n.pod("r1");
    const r2 = await n.pod("r2");
    const first = await ok(c, "ADD r1", r1.add(CONF));
    expect((first.interfaces ?? []).filter((i) => i.name !== "lo")).toEqual([]);
    const second = await ok(c, "ADD r2", r2.add(CONF));
    // The second pod's result lists all its ends, each with its address.
    const ends = (second.interfaces ?? []).filter((i) => i.name !== "lo");
    expect(ends).toHaveLength(LINKS);
    expect(new Set(second.ips?.map((ip) => ip.address))).toContain(addrs(LINKS - 1)[1]);
    await expectLinks(r1, 0, "veth", LINKS);
    await expectLinks(r2, 1, "veth", LINKS);
    await expectChunkedRecords(c, LINKS, "veth");
    expect((await r1.check(first, CONF)).code).toBe(0);
    expect((await r2.check(second, CONF)).code).toBe(0);
    for (const i of [0, LINKS >> 1, LINKS - 1]) {
      expect(await c.ping(r1, (addrs(i)[1] as string).split("/")[0] as string)).toBe(true);
      expect(await c.ping(r2, (addrs(i)[0] as string).split("/")[0] as string)).toBe(true);
    }
    // DEL of the pod that built them takes every veth pair along, in one kernel call.
    await ok(c, "DEL r2", r2.del(CONF));
    expect((await kernelView(r1)).links.size).toBe(0);
    await ok(c, "DEL r1", r1.del(CONF));
    for (const p of [r1, r2]) await p.removeNetns();
    await c.assertClean();
  }, 300_000);

  test(`across two nodes: ${LINKS} VXLAN links, both ends built, one VNI each, distinct; ping`, async () => {
    await using c = await makeCluster({ nodes: 2 });
    routers(c, LINKS);
    const r1 = await c.node(1).pod("r1");
    const r2 = await c.node(2).pod("r2");
    await ok(c, "ADD r1", r1.add(CONF));
    const second = await ok(c, "ADD r2", r2.add(CONF));
    expect((second.interfaces ?? []).filter((i) => i.name !== "lo")).toHaveLength(LINKS);
    // Node 1's agent builds its ends from the entries r2's ADD wrote: wait for the last one.
    await waitFor(
      "node 1's ends up",
      async () => {
        const v = await kernelView(r1);
        return [...v.links.values()].filter((l) => l.flags.includes("UP")).length === LINKS;
      },
      120_000,
      100,
    );
    const a = await expectLinks(r1, 0, "vxlan", LINKS);
    const b = await expectLinks(r2, 1, "vxlan", LINKS);
    const vnis = new Set<number>();
    for (let i = 0; i < LINKS; i++) {
      const vni = a.links.get(`e${i}`)?.linkinfo?.info_data?.id as number;
      expect(b.links.get(`e${i}`)?.linkinfo?.info_data?.id).toBe(vni);
      vnis.add(vni);
    }
    expect(vnis.size).toBe(LINKS);
    await expectChunkedRecords(c, LINKS, "vxlan");
    for (const i of [0, LINKS >> 1, LINKS - 1])
      expect(await c.ping(r1, (addrs(i)[1] as string).split("/")[0] as string, 10_000)).toBe(true);
    await ok(c, "DEL r1", r1.del(CONF));
    await ok(c, "DEL r2", r2.del(CONF));
    for (const p of [r1, r2]) await p.removeNetns();
    await c.assertClean({ etcdWaitMs: 10_000 });
  }, 300_000);
});

describe("etcd's default limits", () => {
  test(`a pod with ${MAX_LINKS} links (the most a pod may have): ADD, CHECK and DEL through etcd with default limits`, async () => {
    await using c = await makeCluster({ nodes: 1 });
    routers(c, MAX_LINKS, false); // without addresses: 4096 links then fit the 256 KiB annotation
    const n = c.node(1);
    const r1 = await n.pod("r1");
    const r2 = await n.pod("r2");
    await ok(c, "ADD r1", r1.add(CONF));
    const second = await ok(c, "ADD r2", r2.add(CONF));
    expect((second.interfaces ?? []).filter((i) => i.name !== "lo")).toHaveLength(MAX_LINKS);
    await expectLinks(r1, 0, "veth", MAX_LINKS, false);
    expect((await r2.check(second, CONF)).stdout).toBe("");
    // Every transaction stayed within the limits, or etcd (or ratchet's own check) would have
    // refused it: the ADDs succeeded. The agent says how many round trips each took.
    const trips = n
      .logTail(50)
      .split("\n")
      .filter((l) => l.includes('"msg":"attached"'))
      .map((l) => (JSON.parse(l) as { etcdRoundTrips: number }).etcdRoundTrips);
    expect(Math.max(...trips)).toBeLessThan(12);
    await ok(c, "DEL r1", r1.del(CONF));
    await ok(c, "DEL r2", r2.del(CONF));
    for (const p of [r1, r2]) await p.removeNetns();
    await c.assertClean();
  }, 300_000);
});
