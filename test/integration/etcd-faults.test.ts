// Linking while etcd goes away: DEL still succeeds (records removed when etcd is back),
// and links that were pending when etcd restarted still complete. Each test has its own
// etcd, killed and restarted on the same port and data.
import { describe, expect, test } from "bun:test";
import { Etcd3 } from "etcd3";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { waitFor } from "../support/child.ts";
import { addExamplePair, makeCluster, type Cluster, type Pod } from "../support/cluster.ts";
import { REPO } from "../support/env.ts";
import { startEtcd, type TestEtcd } from "../support/etcd.ts";

const EXAMPLE = join(REPO, "pod_specs", "example.yaml");

async function records(etcd: TestEtcd, c: Cluster): Promise<string[]> {
  const client = new Etcd3(etcd.clientOptions());
  try {
    return (await client.getAll().prefix(`${c.etcdPrefix}/`).keys()).filter((k) => !k.endsWith("/vni-next"));
  } finally {
    client.close();
  }
}

/** Waits until the cluster's records are gone: a DEL's records leave etcd right after its answer. */
async function noRecords(etcd: TestEtcd, c: Cluster): Promise<void> {
  await waitFor("the records to go", async () => (await records(etcd, c)).length === 0, 10_000).catch(
    () => undefined,
  );
  expect(await records(etcd, c)).toEqual([]);
}

/** Waits until etcd no longer holds the pod's endpoint (a DEL's records gone). */
async function endpointGone(etcd: TestEtcd, c: Cluster, pod: string): Promise<void> {
  await waitFor(
    `${pod}'s records to be removed`,
    async () => !(await records(etcd, c)).some((k) => k.includes(`/endpoints/default/${pod}`)),
    20_000,
  );
}

/** The pod's DEL with etcd down: it succeeds, and the records' removal waits in the journal. */
async function delWithEtcdDown(etcd: TestEtcd, conf: Record<string, unknown>, pod: Pod): Promise<string> {
  await etcd.down();
  expect((await pod.del(conf)).code).toBe(0);
  const journal = `${pod.node.socket}.deferred-del.jsonl`;
  expect(readFileSync(journal, "utf8")).toContain(pod.containerId);
  return journal;
}

/** primary-pod and pair-pod of pod_specs/example.yaml on the cluster's node 1, both ADDed. */
async function examplePair(etcd: TestEtcd, c: Cluster) {
  const conf = etcd.conf();
  return { ...(await addExamplePair(c, conf)), conf };
}

describe("etcd faults", () => {
  test("DEL with etcd down succeeds and removes the ends now; the records go when etcd is back", async () => {
    await using etcd = await startEtcd();
    await using c = await makeCluster({ nodes: 1 });
    const { n, conf, primary, pair } = await examplePair(etcd, c);
    expect(await c.iface(primary, "in1")).toBeDefined();

    await etcd.down();
    const t0 = performance.now();
    const del = await primary.del(conf);
    expect({ code: del.code, stdout: del.stdout }).toEqual({ code: 0, stdout: "" });
    expect(performance.now() - t0).toBeLessThan(20_000);
    // Local cleanup happened now: the veth is gone from both pods.
    expect(await c.iface(primary, "in1")).toBeUndefined();
    expect(await c.iface(pair, "in2")).toBeUndefined();
    await primary.removeNetns();

    await etcd.up();
    // The agent retries the record removal by itself: primary-pod's endpoint disappears.
    await endpointGone(etcd, c, "primary-pod");
    // (the agent logs it right after the transaction that the wait above saw)
    await waitFor(
      "the agent's log line",
      async () => n.logTail(200).includes("removed the records of a DEL that happened while etcd was away"),
      5000,
    );
    expect((await pair.del(conf)).code).toBe(0);
    await pair.removeNetns();
    await noRecords(etcd, c);
  }, 120_000);

  test("a DEL deferred while etcd was away is dropped by a later ADD of the same container, not run after it", async () => {
    await using etcd = await startEtcd();
    await using c = await makeCluster({ nodes: 1 });
    const { n, conf, primary, pair } = await examplePair(etcd, c);
    // The DEL cannot reach etcd: it is journaled. The agent stops before etcd is back.
    const journal = await delWithEtcdDown(etcd, conf, primary);
    expect(await n.stopAgents("SIGTERM")).toEqual([]);
    await etcd.up();
    // The runtime ADDs the same container again: the agent it starts reads the journal, whose
    // first retry comes 2 s later; the ADD comes first and takes the DEL's place.
    expect((await primary.add(conf)).code).toBe(0);
    await waitFor(
      "the superseded DEL's log line",
      async () => n.logTail(200).includes("an ADD of the container supersedes its deferred DEL"),
      5000,
    );
    await Bun.sleep(3000); // past the journal's first retry round
    expect(await c.iface(primary, "in1")).toBeDefined();
    expect(await c.iface(pair, "in2")).toBeDefined();
    expect(await c.ping(pair, "192.168.2.100")).toBe(true);
    expect(await records(etcd, c)).toContain(`${c.etcdPrefix}/v1/endpoints/default/primary-pod`);
    expect(readFileSync(journal, "utf8")).toBe("");
    expect(n.logTail(200)).not.toContain("removed the records of a DEL that happened while etcd was away");
    for (const p of [primary, pair]) {
      expect((await p.del(conf)).code).toBe(0);
      await p.removeNetns();
    }
    await noRecords(etcd, c);
  }, 120_000);

  test("the agent killed after a DEL's answer, before its records went: the next agent removes them", async () => {
    await using etcd = await startEtcd();
    await using c = await makeCluster({ nodes: 1 });
    const { n, conf, primary, pair } = await examplePair(etcd, c);
    // etcd away holds the records where they are: the DEL's answer has come, its journal
    // line is written, and then the agent dies.
    const journal = await delWithEtcdDown(etcd, conf, primary);
    expect(await c.iface(pair, "in2")).toBeUndefined();
    expect(await n.stopAgents("SIGKILL")).toEqual([]);
    await primary.removeNetns();
    await etcd.up();
    expect(await records(etcd, c)).toContain(`${c.etcdPrefix}/v1/endpoints/default/primary-pod`);
    // The next CNI call starts an agent; it reads the journal and finishes the DEL.
    expect((await n.status(conf)).code).toBe(0);
    await endpointGone(etcd, c, "primary-pod");
    await waitFor("the journal to empty", () => readFileSync(journal, "utf8") === "", 5000);
    expect((await pair.del(conf)).code).toBe(0);
    await pair.removeNetns();
    await noRecords(etcd, c);
  }, 120_000);

  test("DEL to a restarted agent while etcd is down: the ends go at once, the records when etcd is back", async () => {
    await using etcd = await startEtcd();
    await using c = await makeCluster({ nodes: 1 });
    const { n, conf, primary, pair } = await examplePair(etcd, c);
    expect(await n.stopAgents("SIGTERM")).toEqual([]);
    await etcd.down();
    // The DEL starts a new agent, which knows the container from its node state file.
    expect((await primary.del(conf)).code).toBe(0);
    expect(await c.iface(primary, "in1")).toBeUndefined();
    expect(await c.iface(pair, "in2")).toBeUndefined();
    await primary.removeNetns();
    await etcd.up();
    await endpointGone(etcd, c, "primary-pod");
    expect((await pair.del(conf)).code).toBe(0);
    await pair.removeNetns();
    await noRecords(etcd, c);
  }, 120_000);

  test("etcd restarted while a link is pending: when the peer comes, both ends are built", async () => {
    await using etcd = await startEtcd();
    await using c = await makeCluster({ nodes: 2 });
    c.loadPods(EXAMPLE);
    const conf = etcd.conf();
    const primary = await c.node(1).pod("primary-pod");
    expect((await primary.add(conf)).code).toBe(0);
    await etcd.down();
    await etcd.up();
    const pair = await c.node(2).pod("pair-pod");
    const r = await pair.add(conf);
    expect(r.stdout).toContain("in2");
    expect(r.code).toBe(0);
    // Node 1's agent follows its node's entries again after the restart: it builds in1.
    const in1 = await waitFor("in1 on node 1", () => c.iface(primary, "in1"), 20_000);
    expect(in1?.kind).toBe("vxlan");
    expect(await c.ping(primary, "192.168.2.101", 8000)).toBe(true);
    expect((await pair.del(conf)).code).toBe(0);
    expect((await primary.del(conf)).code).toBe(0);
    await pair.removeNetns();
    await primary.removeNetns();
    await noRecords(etcd, c);
  }, 120_000);
});

describe("etcd over TLS with client certificates and a password", () => {
  test("pods link across two nodes through a TLS + auth etcd; the password is never logged", async () => {
    await using etcd = await startEtcd({
      tls: true,
      clientCerts: true,
      auth: { username: "ratchet", password: "s3cret-Pa55" },
    });
    await using c = await makeCluster({ nodes: 2 });
    c.loadPods(EXAMPLE);
    // The role only covers /ratchet: keep ratchet's keys there.
    const conf = { ...etcd.conf(), etcd_prefix: `/ratchet/${c.id}` };
    const primary = await c.node(1).pod("primary-pod");
    const pair = await c.node(2).pod("pair-pod");
    expect((await primary.add(conf)).code).toBe(0);
    const r = await pair.add(conf);
    expect(r.stdout).toContain("in2");
    expect(await waitFor("in1 on node 1", () => c.iface(primary, "in1"), 10_000)).toBeDefined();
    expect(await c.ping(pair, "192.168.2.100", 8000)).toBe(true);
    expect((await pair.del(conf)).code).toBe(0);
    expect((await primary.del(conf)).code).toBe(0);
    await pair.removeNetns();
    await primary.removeNetns();
    for (const n of c.nodes) expect(await n.logTail(10_000)).not.toContain("s3cret-Pa55");
    const client = new Etcd3(etcd.clientOptions());
    try {
      expect(
        (await client.getAll().prefix(`/ratchet/${c.id}/`).keys()).filter((k) => !k.endsWith("/vni-next")),
      ).toEqual([]);
    } finally {
      client.close();
    }
  }, 120_000);
});

describe("etcd down during ADD", () => {
  test("code 11, boot network undone, nothing left; the retry after etcd returns links the pod", async () => {
    await using etcd = await startEtcd();
    await using c = await makeCluster({ nodes: 1 });
    c.loadPods(EXAMPLE);
    const n = c.node(1);
    const dataDir = join(c.dir, "ipam");
    // A boot network with state to undo: ptp + host-local (an address, a host-side veth).
    const conf = {
      ...etcd.conf(),
      boot_network: { type: "ptp", ipam: { type: "host-local", subnet: "10.74.0.0/24", dataDir } },
    };
    const primary = await n.pod("primary-pod");
    expect((await primary.add(conf)).code).toBe(0);
    const pair = await n.pod("pair-pod");
    await etcd.down();
    const r = await pair.add(conf);
    expect(r.code).toBe(1);
    expect((r.json as { code: number; msg: string }).code).toBe(11);
    expect((r.json as { msg: string }).msg).toContain("etcd");
    // Nothing of the failed ADD is left: no eth0, no address taken, no link end.
    expect(await c.ifaceNames(pair)).toEqual([]);
    const { readdirSync } = await import("node:fs");
    const taken = readdirSync(join(dataDir, "ratchet-bed")).filter((f) => /^\d/.test(f));
    expect(taken).toHaveLength(1); // primary-pod's only
    await etcd.up();
    // What kubelet does next: DEL the failed sandbox, ADD again.
    expect((await pair.del(conf)).code).toBe(0);
    const again = await pair.add(conf);
    expect(again.code).toBe(0);
    expect(again.stdout).toContain("in2");
    expect(await c.ping(primary, "192.168.2.101", 5000)).toBe(true);
    for (const p of [pair, primary]) {
      expect((await p.del(conf)).code).toBe(0);
      await p.removeNetns();
    }
    await noRecords(etcd, c);
  }, 120_000);
});
