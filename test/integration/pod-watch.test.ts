// The node agent's pod watch, end to end through the installed binary: pods the cache holds
// cost no API request; plain pods never wait on an API server that cannot help (stopped,
// hung); a pod the API server does not know goes to the delegate; a stale uid is never used;
// the watch comes back after the API server does (410 Gone included); the original example
// pair links exactly as shipped, on one node and across two.
import { describe, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { waitFor } from "../support/child.ts";
import {
  annotatedPod,
  type CniRun,
  type Cluster,
  makeCluster,
  optInPod,
  type Pod,
  plainPod,
} from "../support/cluster.ts";
import { REPO } from "../support/env.ts";
import { readPodYaml } from "../support/pods.ts";

const EXAMPLE = join(REPO, "pod_specs", "example.yaml");

function expectOk(c: Cluster, r: CniRun, what: string): void {
  if (r.code !== 0) {
    const logs = c.nodes.map((n) => `--- ${n.name} ---\n${n.logTail(25)}`).join("\n");
    throw new Error(`${what}: exit ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}\n${logs}`);
  }
}

/** Starts every node's agent (a STATUS) and waits until each watches its pods. */
async function agentsWatching(c: Cluster): Promise<void> {
  for (const n of c.nodes) expectOk(c, await n.status(), `STATUS on ${n.name}`);
  await waitFor("every node's pod watch", () => c.api.watchCount === c.nodes.length);
}

/**
 * API reads from `mark` on (the index into api.requests), as "METHOD path". What the agent
 * reports back in the background (Events, the network-status annotation) are writes.
 */
function since(c: Cluster, mark: number): string[] {
  return c.api.requests
    .slice(mark)
    .filter((r) => r.method === "GET")
    .map((r) => `${r.method} ${r.path}`);
}

async function stopAll(c: Cluster, pods: Pod[]): Promise<void> {
  for (const p of pods) expectOk(c, await p.del(), `DEL ${p.name}`);
  for (const p of pods) await p.removeNetns();
  await c.assertClean();
}

describe("pods the cache holds", () => {
  test("ADD and DEL, plain and ratchet pods, make no API read at all", async () => {
    await using c = await makeCluster({ nodes: 1 });
    const n = c.node(1);
    c.loadPods(EXAMPLE);
    c.putPod(plainPod("web"));
    const pods = [await n.pod("web"), await n.pod("primary-pod"), await n.pod("pair-pod")];
    await agentsWatching(c);
    const mark = c.api.requests.length;
    for (const p of pods) expectOk(c, await p.add(), `ADD ${p.name}`);
    expect(await c.ping(pods[1] as Pod, "192.168.2.101")).toBe(true);
    for (const p of pods) expectOk(c, await p.del(), `DEL ${p.name}`);
    expect(since(c, mark)).toEqual([]);
    for (const p of pods) await p.removeNetns();
    await c.assertClean();
  }, 60_000);
});

describe("an opt-in pod whose declarer runs on the node", () => {
  test("its ADD reads the declarations in its first etcd transaction: two round trips, the link built", async () => {
    await using c = await makeCluster({ nodes: 1 });
    const n = c.node(1);
    c.putPod(
      annotatedPod("decl", [
        {
          peer: "opt",
          local_ifname: "h0",
          peer_ifname: "h1",
          local_ip: "10.93.0.1/30",
          peer_ip: "10.93.0.2/30",
        },
      ]),
    );
    c.putPod(optInPod("opt"));
    // A pod of the node that names "opt" in its annotation but never ran: a hint, not a
    // declaration (etcd's peer index does not name it), so nothing comes of it.
    c.putPod(annotatedPod("never", [{ peer: "opt", local_ifname: "z0", peer_ifname: "z1" }]));
    const decl = await n.pod("decl");
    const opt = await n.pod("opt");
    await agentsWatching(c);
    expectOk(c, await decl.add(), "ADD decl");
    expectOk(c, await opt.add(), "ADD opt");
    expect(await c.ping(decl, "10.93.0.2")).toBe(true);
    const attached = readFileSync(n.logFile, "utf8")
      .split("\n")
      .filter((l) => l.includes('"msg":"attached"') && l.includes('"default/opt"'))
      .map((l) => JSON.parse(l) as { etcdRoundTrips: number; built: string[] });
    expect(attached).toHaveLength(1);
    expect(attached[0]?.built).toEqual(["h1"]);
    expect(attached[0]?.etcdRoundTrips).toBe(2);
    expect(await c.ifaceNames(opt)).not.toContain("z1");
    await stopAll(c, [decl, opt]);
  }, 60_000);
});

describe("a plain pod's DEL asks nobody", () => {
  test("with etcd unreachable, a plain pod's DEL runs its delegate's DEL at once: nothing journaled, no etcd warning", async () => {
    await using c = await makeCluster({ nodes: 1 });
    const n = c.node(1);
    c.putPod(plainPod("web"));
    const web = await n.pod("web");
    await agentsWatching(c);
    expectOk(c, await web.add(), "ADD web");
    // The agent's node state says it never attached this container, and the cache knows the
    // pod without ratchet's label: no etcd request is needed to say "not ratchet's".
    const mark = c.api.requests.length;
    expectOk(c, await web.del({ etcd_endpoints: ["http://127.0.0.1:1"] }), "DEL web, etcd away");
    expect(since(c, mark)).toEqual([]);
    const log = readFileSync(n.logFile, "utf8");
    expect(log).not.toContain("etcd unreachable during DEL");
    expect(
      existsSync(`${n.socket}.deferred-del.jsonl`)
        ? readFileSync(`${n.socket}.deferred-del.jsonl`, "utf8")
        : "",
    ).toBe("");
    const ran = log
      .split("\n")
      .filter((l) => l.includes(web.containerId) && l.includes('"running plugin"'))
      .map((l) => (JSON.parse(l) as { plugin: string; command?: string }).plugin);
    expect(ran).toEqual(["loopback", "loopback"]);
    await web.removeNetns();
    await c.assertClean();
  }, 60_000);
});

describe("the API server away", () => {
  test("stopped: a plain pod passes, a ratchet pod it holds links, a pod it never saw gets 11; the watch resumes after", async () => {
    await using c = await makeCluster({ nodes: 1 });
    const n = c.node(1);
    c.loadPods(EXAMPLE);
    c.putPod(plainPod("web"));
    const [web, primary, pair] = [await n.pod("web"), await n.pod("primary-pod"), await n.pod("pair-pod")];
    await agentsWatching(c);
    await c.api.down();
    // Created while the agent's watch is down: the agent cannot know what it is.
    c.putPod(annotatedPod("late", []));
    const late = await n.pod("late");

    expectOk(c, await web.add(), "ADD web");
    expectOk(c, await primary.add(), "ADD primary-pod");
    expectOk(c, await pair.add(), "ADD pair-pod");
    expect(await c.ping(pair, "192.168.2.100")).toBe(true);
    const r = await late.add();
    expect(r.code).toBe(1);
    expect(r.json).toMatchObject({ code: 11, msg: expect.stringContaining("cannot read pod default/late") });
    expectOk(c, await web.del(), "DEL web");
    expectOk(c, await late.del(), "DEL late");

    // Back on the same port: the watch resumes and brings the pod created meanwhile.
    const mark = c.api.requests.length;
    c.api.up();
    await waitFor("the watch to resume", () => c.api.watchCount === 1, 20_000);
    expectOk(c, await late.add(), "ADD late after the API server is back");
    expect(since(c, mark).filter((q) => q.includes("/namespaces/"))).toEqual([]);
    expect(n.logTail(400)).toContain("pod watch failed; retrying with backoff");
    await stopAll(c, [late, primary, pair, web]);
  }, 90_000);

  test("hung (accepts, never answers): pods it holds pass; a pod it never saw gets 11 at the bound", async () => {
    await using c = await makeCluster({ nodes: 1 });
    const n = c.node(1);
    c.putPod(plainPod("web"));
    c.putPod(annotatedPod("solo", []));
    const [web, solo] = [await n.pod("web"), await n.pod("solo")];
    await agentsWatching(c);
    c.api.hang();
    try {
      c.putPod(plainPod("unseen"));
      const unseen = await n.pod("unseen");
      expectOk(c, await web.add(), "ADD web");
      expectOk(c, await solo.add(), "ADD solo");
      const r = await unseen.add();
      expect(r.code).toBe(1);
      expect(r.json).toMatchObject({ code: 11, msg: expect.stringContaining("no answer within") });
      expectOk(c, await web.del(), "DEL web");
      expectOk(c, await unseen.del(), "DEL unseen");
      expectOk(c, await solo.del(), "DEL solo");
    } finally {
      c.api.unhang();
    }
    for (const p of c.pods) await p.removeNetns();
    await c.assertClean();
  }, 90_000);

  test("410 Gone after the outage: the agent lists again and knows the pods created meanwhile", async () => {
    await using c = await makeCluster({ nodes: 1 });
    const n = c.node(1);
    await agentsWatching(c);
    await c.api.down();
    c.putPod(annotatedPod("after", []));
    const after = await n.pod("after");
    c.api.compact();
    const mark = c.api.requests.length;
    c.api.up();
    await waitFor("the watch to resume", () => c.api.watchCount === 1, 20_000);
    expectOk(c, await after.add(), "ADD after");
    expect(since(c, mark).filter((q) => q.includes("/namespaces/"))).toEqual([]);
    expect(n.logTail(400)).toContain("410 Gone");
    await stopAll(c, [after]);
  }, 90_000);
});

describe("pods the cache does not hold", () => {
  test("unknown to the API server (a static pod): the delegate serves it after one GET; DEL asks nothing", async () => {
    await using c = await makeCluster({ nodes: 1 });
    const n = c.node(1);
    await agentsWatching(c);
    const stat = await n.pod("kube-proxy-static");
    const mark = c.api.requests.length;
    const r = await stat.add();
    expectOk(c, r, "ADD of a static pod");
    expect(r.stdout).toContain('"lo"');
    expect(since(c, mark)).toEqual(["GET /api/v1/namespaces/default/pods/kube-proxy-static"]);
    const mark2 = c.api.requests.length;
    expectOk(c, await stat.del(), "DEL of a static pod");
    expect(since(c, mark2)).toEqual([]);
    await stat.removeNetns();
    await c.assertClean();
  }, 60_000);

  test("a stale uid is never used: the new pod is waited for; a uid that never comes gets 11", async () => {
    await using c = await makeCluster({ nodes: 1 });
    const n = c.node(1);
    const old = c.putPod(annotatedPod("u", []));
    const sandbox = await n.pod("u");
    await agentsWatching(c);
    const call = (uid: string) =>
      c.cni({
        command: "ADD",
        conf: n.conf(),
        containerId: sandbox.containerId,
        netns: sandbox.netns.path,
        ifname: sandbox.ifname,
        args: `K8S_POD_NAMESPACE=default;K8S_POD_NAME=u;K8S_POD_UID=${uid}`,
      });
    // The runtime runs the re-created pod (a new uid, now a plain pod) before the watch brings it.
    const fresh = crypto.randomUUID();
    const adding = call(fresh);
    await waitFor("the agent to wait for the new uid", () =>
      n.logTail(50).includes(`"cached":"${old.metadata.uid}"`),
    );
    c.putPod({ ...plainPod("u"), metadata: { ...plainPod("u").metadata, uid: fresh } });
    const r = await adding;
    expectOk(c, r, "ADD with the new uid");
    expect(r.stdout).toContain('"lo"');
    expect(c.api.count("GET", "/api/v1/namespaces/default/pods/u")).toBe(0);

    const never = await call(crypto.randomUUID());
    expect(never.code).toBe(1);
    expect(never.json).toMatchObject({
      code: 11,
      msg: expect.stringContaining(`the API server has uid ${fresh}`),
    });
    expectOk(c, await sandbox.del(), "DEL u");
    await sandbox.removeNetns();
    await c.assertClean();
  }, 60_000);

  test("DEL of a container ratchet never had, of a pod the synced cache never saw: only the delegate's DEL", async () => {
    await using c = await makeCluster({ nodes: 1 });
    const n = c.node(1);
    await agentsWatching(c);
    const gone = await n.pod("long-gone");
    const conf = { boot_network: { type: "ptp", ipam: { type: "host-local", subnet: "10.209.0.0/24" } } };
    const mark = c.api.requests.length;
    expectOk(c, await gone.del(conf), "DEL long-gone");
    expect(since(c, mark)).toEqual([]);
    const ran = readFileSync(n.logFile, "utf8")
      .split("\n")
      .filter((l) => l.includes(gone.containerId) && l.includes('"running plugin"'))
      .map((l) => (JSON.parse(l) as { plugin: string }).plugin);
    expect(ran).toEqual(["loopback"]);
    await gone.removeNetns();
    await c.assertClean();
  }, 60_000);
});

describe("the original example pair, exactly as shipped", () => {
  test("pair-pod carries only ratchet, pod_name and primary false (and app)", () => {
    const pair = readPodYaml(EXAMPLE).find((p) => p.metadata.name === "pair-pod");
    expect(pair?.metadata.labels).toEqual({
      app: "pair-pod",
      ratchet: "true",
      "ratchet.pod_name": "pair-pod",
      "ratchet.primary": "false",
    });
  });

  test.each([
    ["one node (veth)", 1, "veth"],
    ["two nodes (VXLAN)", 2, "vxlan"],
  ] as const)(
    "%s: in1 and in2 come up and ping, whichever pod comes first",
    async (_what, nodes, kind) => {
      await using c = await makeCluster({ nodes });
      for (const first of ["pair-pod", "primary-pod"]) {
        c.loadPods(EXAMPLE);
        const primary = await c.node(1).pod("primary-pod");
        const pair = await c.node(nodes).pod("pair-pod");
        const order = first === "pair-pod" ? [pair, primary] : [primary, pair];
        for (const p of order) expectOk(c, await p.add(), `ADD ${p.name}`);
        // Across nodes the other node's agent builds its end as soon as it hears of the link.
        await waitFor("in1", async () => (await c.iface(primary, "in1"))?.kind === kind);
        await waitFor("in2", async () => (await c.iface(pair, "in2"))?.kind === kind);
        await waitFor("in2's address", async () => (await c.addrs(pair, "in2")).includes("192.168.2.101/24"));
        expect(await c.addrs(primary, "in1")).toEqual(["192.168.2.100/24"]);
        expect(await c.ping(pair, "192.168.2.100")).toBe(true);
        for (const p of order) expectOk(c, await p.del(), `DEL ${p.name}`);
        for (const p of order) await p.removeNetns();
        c.deletePod("default", "primary-pod");
        c.deletePod("default", "pair-pod");
      }
      await c.assertClean();
    },
    90_000,
  );
});
