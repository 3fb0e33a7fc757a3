// The store at the limits, against the run's etcd (default limits: 128 operations and 1.5 MiB
// per transaction): a pod with 4096 links to 512 peers registers, records VXLAN links to
// all of them and goes, each step within the limits (ratchet refuses to send a transaction
// beyond them, and etcd would refuse it), in round trips that grow with the number of
// peers, not of links; a link costs the same bytes at any count.
import { describe, expect, test } from "bun:test";
import { Etcd3 } from "etcd3";
import { plan } from "../../src/links/planner.ts";
import type { LinkSpec } from "../../src/links/spec.ts";
import { stats } from "../../src/store/etcd-ops.ts";
import { LinkStore } from "../../src/store/link-store.ts";
import { BadRecords, type EndpointRecord } from "../../src/store/records.ts";
import { etcdEndpoints, uniqueName } from "../support/env.ts";

const PEERS = 512;
const PER_PEER = 8;

function endpoint(pod: string, node: string): EndpointRecord {
  return {
    namespace: "lab",
    pod,
    containerId: `c-${pod}`,
    ifname: "eth0",
    node,
    vtep: node,
    createdAt: new Date().toISOString(),
  };
}

function links(from: string, peers: string[], per: number): LinkSpec[] {
  return peers.flatMap((p, i) =>
    Array.from({ length: per }, (_, k) => {
      const n = (i * per + k) * 4;
      const net = `10.${64 + (n >> 16)}.${(n >> 8) & 255}.${n & 255}`;
      const ip = (d: number) => `${net.split(".").slice(0, 3).join(".")}.${(n & 255) + d}/30`;
      return {
        local: { namespace: "lab", pod: from, ifname: `e${i}x${k}`, ips: [ip(1)] },
        peer: { namespace: "lab", pod: p, ifname: `e${k}`, ips: [ip(2)] },
        source: "annotation" as const,
      };
    }),
  );
}

async function bytesUnder(etcd: Etcd3, prefix: string): Promise<{ keys: number; bytes: number }> {
  const kvs = await etcd.getAll().prefix(prefix).exec();
  let bytes = 0;
  for (const kv of kvs.kvs) bytes += kv.key.length + kv.value.length;
  return { keys: kvs.kvs.length, bytes };
}

describe("the store with thousands of links", () => {
  test(`${PEERS * PER_PEER} links to ${PEERS} peers on another node: register, commit, remove, within etcd's limits`, async () => {
    const etcd = new Etcd3({ hosts: etcdEndpoints() });
    const prefix = `/rt-test/${uniqueName("s")}`;
    const bad: string[] = [];
    const store = new LinkStore(etcd, prefix, new BadRecords((k, p) => bad.push(`${k}: ${p}`)));
    try {
      const peers = Array.from({ length: PEERS }, (_, i) => `peer${i}`);
      // The peers, on node 10.0.0.2, registered first (opt-in only).
      for (const p of peers) await store.register(endpoint(p, "10.0.0.2"), []);
      const hub = endpoint("hub", "10.0.0.1");
      const declared = links("hub", peers, PER_PEER);

      let before = stats.roundTrips;
      const reg = await store.register(hub, declared);
      const registerTrips = stats.roundTrips - before;
      expect(reg.peers.size).toBe(PEERS);
      const p = plan({
        id: "lab/hub",
        containerId: hub.containerId,
        cniIfname: "eth0",
        node: hub.node,
        vtep: hub.vtep,
        declared,
        ...reg,
      });
      expect(p.builds).toHaveLength(PEERS * PER_PEER);
      expect(p.builds.every((b) => b.kind === "vxlan")).toBe(true);

      before = stats.roundTrips;
      const { committed } = await store.commit(hub, reg, p.builds, p.stale);
      const commitTrips = stats.roundTrips - before;
      expect(committed).toHaveLength(PEERS); // one chunk per pair of pods
      // One block of VNIs per chunk, so every link has its own VNI.
      const vnis = committed.flatMap((c) => c.links.map((l) => l.vni));
      expect(new Set(vnis).size).toBe(PEERS * PER_PEER);

      // Round trips grow with the peers (a transaction holds about 20), not the links.
      expect(registerTrips).toBeLessThanOrEqual(Math.ceil(PEERS / 20) + 2);
      expect(commitTrips).toBeLessThanOrEqual(Math.ceil(PEERS / 25) + 1);

      // Bytes per link: the declaration, the built-link chunk and two tunnel entries.
      const { bytes } = await bytesUnder(etcd, `${prefix}/v1/`);
      const perLink = bytes / (PEERS * PER_PEER);
      expect(perLink).toBeLessThan(1000);
      console.log(
        `${PEERS * PER_PEER} links, ${PEERS} peers: register ${registerTrips} round trips, commit ${commitTrips}; ` +
          `${Math.round(perLink)} bytes per VXLAN link (endpoints and peer index included)`,
      );

      // The hub goes: its records, the pairs' chunks (the peers stay registered: their
      // index entries of the hub stay as markers until they go too), then the peers.
      const own = await store.own("lab/hub");
      await store.removeRecords(hub, own.rev, own.peers, new Set(peers.map((x) => `lab/${x}`)));
      expect((await store.own("lab/hub")).endpoint).toBeUndefined();
      for (const x of peers) {
        const o = await store.own(`lab/${x}`);
        await store.removeRecords(o.endpoint as EndpointRecord, o.rev, o.peers, new Set());
      }
      const left = await bytesUnder(etcd, `${prefix}/v1/`);
      expect(
        (await etcd.getAll().prefix(`${prefix}/v1/`).keys()).filter((k) => !k.endsWith("vni-next")),
      ).toEqual([]);
      expect(left.keys).toBeLessThanOrEqual(1);
      expect(bad).toEqual([]);
    } finally {
      await etcd.delete().prefix(`${prefix}/`);
      etcd.close();
    }
  }, 300_000);

  test("32 pods record a VXLAN link each at the same moment: every commit succeeds, every VNI once", async () => {
    // All of them read the same VNI hint at registration, so all ask for the same block
    // first; the ones that lose must not keep colliding until they give up (code 11).
    const etcd = new Etcd3({ hosts: etcdEndpoints() });
    const prefix = `/rt-test/${uniqueName("v")}`;
    const bad: string[] = [];
    const store = new LinkStore(etcd, prefix, new BadRecords((k, p) => bad.push(`${k}: ${p}`)));
    const PODS = 32;
    try {
      const jobs = [];
      for (let i = 0; i < PODS; i++) {
        await store.register(endpoint(`far${i}`, "10.0.0.2"), []);
        const me = endpoint(`near${i}`, "10.0.0.1");
        const declared = links(`near${i}`, [`far${i}`], 1);
        const reg = await store.register(me, declared);
        const p = plan({
          id: `lab/near${i}`,
          containerId: me.containerId,
          cniIfname: "eth0",
          node: me.node,
          vtep: me.vtep,
          declared,
          ...reg,
        });
        expect(p.builds.map((b) => b.kind)).toEqual(["vxlan"]);
        jobs.push({ me, reg, p });
      }
      expect(new Set(jobs.map((j) => j.reg.vniNext)).size).toBe(1);
      const results = await Promise.allSettled(
        jobs.map((j) => store.commit(j.me, j.reg, j.p.builds, j.p.stale)),
      );
      const failed = results.flatMap((r) => (r.status === "rejected" ? [(r.reason as Error).message] : []));
      expect(failed).toEqual([]);
      const vnis = results.flatMap((r) =>
        r.status === "fulfilled" ? r.value.committed.flatMap((c) => c.links.map((l) => l.vni)) : [],
      );
      expect(vnis).toHaveLength(PODS);
      expect(new Set(vnis).size).toBe(PODS);
      expect(bad).toEqual([]);
    } finally {
      await etcd.delete().prefix(`${prefix}/`);
      etcd.close();
    }
  }, 120_000);
});
