// Observability end to end, through the installed binary as a runtime drives it: the agent's
// /metrics against what the kernel holds (link ends by state, byte counters after pings, a
// link set down by hand), CNI requests by result, /healthz and /readyz with etcd stopped and
// back, Events at the stand-in API server (reasons, fields, aggregation), and the pod's
// network-status annotation against the CNI result, also when the peer comes later.
import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { waitFor } from "../support/child.ts";
import { assertValidResult, type CniResultJson } from "../support/cni.ts";
import { annotatedPod, type CniRun, type Cluster, makeCluster, type Pod } from "../support/cluster.ts";
import { REPO, run } from "../support/env.ts";
import { startEtcd } from "../support/etcd.ts";
import { freeAddress, get, type Scrape, scrape, value } from "../support/metrics.ts";
import { ipIn } from "../support/netns.ts";

const EXAMPLE = join(REPO, "pod_specs", "example.yaml");
const NETWORK_STATUS = "k8s.v1.cni.cncf.io/network-status";

function logs(c: Cluster): string {
  return c.nodes.map((n) => `--- ${n.name} log ---\n${n.logTail(30)}`).join("\n");
}

function ok(c: Cluster, r: CniRun, what: string): CniResultJson {
  if (r.code !== 0) throw new Error(`${what}: exit ${r.code}\nstdout: ${r.stdout}\n${logs(c)}`);
  return assertValidResult(r.json, "1.0.0");
}

/** waitFor for a value: resolves with it once `get` gives one. */
async function until<T>(
  what: string,
  get: () => T | undefined | Promise<T | undefined>,
  ms = 10_000,
): Promise<T> {
  return (await waitFor(what, get, ms)) as T;
}

/** The CNI error code of a failed call. */
function failed(r: CniRun): number {
  expect(r.code).toBe(1);
  return (r.json as { code: number }).code;
}

async function stopAll(c: Cluster, pods: Pod[], conf: Record<string, unknown> = {}): Promise<void> {
  for (const p of pods) {
    const r = await p.del(conf);
    if (r.code !== 0) throw new Error(`DEL ${p.name}: ${r.stdout}\n${logs(c)}`);
    await p.removeNetns();
  }
}

/** The labels of one link end in the metrics. */
const end = (pod: string, iface: string, peer: string) => ({
  namespace: "default",
  pod,
  interface: iface,
  peer_namespace: "default",
  peer_pod: peer,
});

/** The kernel's counters of a link (ip -s). */
async function kernelStats(
  pod: Pod,
  ifname: string,
): Promise<{ rx: { bytes: number }; tx: { bytes: number } }> {
  const out = await ipIn(pod.netns.name, ["-s", "-j", "link", "show", "dev", ifname]);
  return (JSON.parse(out) as Array<{ stats64: { rx: { bytes: number }; tx: { bytes: number } } }>)[0]
    ?.stats64 as { rx: { bytes: number }; tx: { bytes: number } };
}

async function waitScrape(
  addr: string,
  what: string,
  cond: (s: Scrape) => boolean,
  ms = 10_000,
): Promise<Scrape> {
  let last: Scrape | undefined;
  try {
    return await until(
      what,
      async () => {
        last = await scrape(addr);
        return cond(last) ? last : undefined;
      },
      ms,
    );
  } catch (err) {
    throw new Error(
      `${(err as Error).message}\nlast scrape:\n${last?.text
        .split("\n")
        .filter((l) => l.startsWith("ratchet_link"))
        .join("\n")}`,
    );
  }
}

describe("metrics", () => {
  test("link ends by state, counters after pings, a link set down by hand, requests by result", async () => {
    await using c = await makeCluster({ nodes: 1 });
    c.loadPods(EXAMPLE);
    const n = c.node(1);
    const addr = freeAddress();
    const conf = { metrics_address: addr };
    const primary = await n.pod("primary-pod");
    const pair = await n.pod("pair-pod");
    ok(c, await primary.add(conf), "ADD primary-pod");
    let s = await scrape(addr);
    expect(value(s, "ratchet_link_ends", { state: "waiting" })).toBe(1);
    expect(value(s, "ratchet_link_ends", { state: "up" })).toBe(0);
    expect(value(s, "ratchet_link_up", end("primary-pod", "in1", "pair-pod"))).toBeUndefined();

    ok(c, await pair.add(conf), "ADD pair-pod");
    s = await waitScrape(addr, "both ends up", (x) => value(x, "ratchet_link_ends", { state: "up" }) === 2);
    expect(value(s, "ratchet_link_ends", { state: "waiting" })).toBe(0);
    expect(value(s, "ratchet_link_up", end("primary-pod", "in1", "pair-pod"))).toBe(1);
    expect(value(s, "ratchet_link_up", end("pair-pod", "in2", "primary-pod"))).toBe(1);
    expect(value(s, "ratchet_link_build_duration_seconds_count", { kind: "veth" })).toBe(1);
    expect(value(s, "ratchet_cni_requests_total", { command: "ADD", result: "ok" })).toBe(2);
    expect(value(s, "ratchet_cni_request_duration_seconds_count", { command: "ADD" })).toBe(2);

    // Traffic: in1 sends and in2 receives at least the pings (98 bytes each on the wire).
    const tx = (x: Scrape) =>
      value(x, "ratchet_link_transmit_bytes_total", end("primary-pod", "in1", "pair-pod")) ?? -1;
    const rx = (x: Scrape) =>
      value(x, "ratchet_link_receive_bytes_total", end("pair-pod", "in2", "primary-pod")) ?? -1;
    const txp = (x: Scrape) =>
      value(x, "ratchet_link_transmit_packets_total", end("primary-pod", "in1", "pair-pod")) ?? -1;
    const before = s;
    const ping = await run([
      "ip",
      "netns",
      "exec",
      primary.netns.name,
      "ping",
      "-n",
      "-c3",
      "-i0.2",
      "-W1",
      "192.168.2.101",
    ]);
    expect(ping.code).toBe(0);
    const after = await scrape(addr);
    expect(tx(after)).toBeGreaterThanOrEqual(tx(before) + 3 * 98);
    expect(rx(after)).toBeGreaterThanOrEqual(rx(before) + 3 * 98);
    expect(txp(after)).toBeGreaterThanOrEqual(txp(before) + 3);
    // What the kernel says now is at least what the scrape saw (counters only grow).
    expect((await kernelStats(primary, "in1")).tx.bytes).toBeGreaterThanOrEqual(tx(after));
    expect(value(after, "ratchet_link_receive_drops_total", end("pair-pod", "in2", "primary-pod"))).toBe(0);

    // Down by hand in the pod's netns: that end is admin down, the other loses its carrier.
    await ipIn(pair.netns.name, ["link", "set", "in2", "down"]);
    s = await waitScrape(
      addr,
      "both ends down",
      (x) => value(x, "ratchet_link_ends", { state: "down" }) === 2,
    );
    expect(value(s, "ratchet_link_ends", { state: "up" })).toBe(0);
    expect(value(s, "ratchet_link_up", end("pair-pod", "in2", "primary-pod"))).toBe(0);
    expect(value(s, "ratchet_link_up", end("primary-pod", "in1", "pair-pod"))).toBe(0);
    await ipIn(pair.netns.name, ["link", "set", "in2", "up"]);
    s = await waitScrape(
      addr,
      "both ends up again",
      (x) => value(x, "ratchet_link_ends", { state: "up" }) === 2,
    );
    expect(value(s, "ratchet_link_up", end("primary-pod", "in1", "pair-pod"))).toBe(1);

    // A failed ADD counts under its CNI code.
    const badPod = annotatedPod("bad-pod", []);
    badPod.metadata.annotations = { "ratchet/links": "[not json" };
    c.putPod(badPod);
    const bad = await n.pod("bad-pod");
    expect(failed(await bad.add(conf))).toBe(103);
    s = await scrape(addr);
    expect(value(s, "ratchet_cni_requests_total", { command: "ADD", result: "103" })).toBe(1);
    expect(value(s, "ratchet_cni_requests_total", { command: "ADD", result: "ok" })).toBe(2);
    expect(value(s, "ratchet_cni_request_duration_seconds_count", { command: "ADD" })).toBe(3);

    // The kernel was read off the agent's main thread (the build embeds the worker).
    expect(n.logTail(10_000)).toContain("link counters are read in a worker thread");
    // The layers' request counters and the process.
    for (const name of [
      "ratchet_etcd_requests_total",
      "ratchet_netlink_requests_total",
      "ratchet_kube_requests_total",
    ])
      expect(value(s, name, { result: "ok" }) ?? 0).toBeGreaterThan(0);
    expect(value(s, "process_resident_memory_bytes") ?? 0).toBeGreaterThan(1 << 20);
    expect(value(s, "process_open_fds") ?? 0).toBeGreaterThan(3);
    expect(value(s, "process_cpu_seconds_total") ?? 0).toBeGreaterThan(0);
    const started = value(s, "process_start_time_seconds") ?? 0;
    expect(Math.abs(started - Date.now() / 1000)).toBeLessThan(600);
    expect(value(s, "ratchet_agent_start_time_seconds") ?? 0).toBeGreaterThanOrEqual(started - 1);
    // Conventions: every family has HELP and TYPE; counters end in _total.
    for (const [name, type] of s.types) {
      expect(s.help.get(name)?.length ?? 0).toBeGreaterThan(0);
      if (type === "counter") expect(name).toEndWith("_total");
    }

    await stopAll(c, [bad, pair, primary], conf);
    s = await scrape(addr);
    expect(value(s, "ratchet_cni_requests_total", { command: "DEL", result: "ok" })).toBe(3);
    expect(value(s, "ratchet_link_ends", { state: "up" })).toBe(0);
    await c.assertClean();
  });
});

describe("broken ends", () => {
  test("declarations that disagree across namespaces: the end waits as broken, with a LinkConflict", async () => {
    await using c = await makeCluster({ nodes: 1 });
    const n = c.node(1);
    const addr = freeAddress();
    const conf = { metrics_address: addr };
    const link = { local_ifname: "y0", peer_ifname: "y1", local_ip: "10.72.0.1/24" };
    c.putPod(
      annotatedPod("xa", [{ ...link, peer: "xb", peer_namespace: "ns-b", peer_ip: "10.72.0.2/24" }], "ns-a"),
    );
    c.putPod(
      annotatedPod(
        "xb",
        [
          {
            peer: "xa",
            peer_namespace: "ns-a",
            local_ifname: "y1",
            peer_ifname: "y0",
            local_ip: "10.72.0.9/24",
            peer_ip: "10.72.0.1/24",
          },
        ],
        "ns-b",
      ),
    );
    const a = await n.pod("xa", "ns-a");
    const b = await n.pod("xb", "ns-b");
    ok(c, await a.add(conf), "ADD xa");
    // Across namespaces a disagreement never fails the other pod's ADD: the link waits.
    ok(c, await b.add(conf), "ADD xb");
    const s = await scrape(addr);
    expect(value(s, "ratchet_link_ends", { state: "waiting" })).toBe(1); // xa's: its peer never agreed
    expect(value(s, "ratchet_link_ends", { state: "broken" })).toBe(1); // xb's: in conflict
    expect(value(s, "ratchet_link_ends", { state: "up" })).toBe(0);
    const [conflict] = await until("LinkConflict on xb", () => {
      const e = eventsOf(c, "xb", "LinkConflict");
      return e.length > 0 ? e : undefined;
    });
    expect(conflict?.metadata.namespace).toBe("ns-b");
    expect(conflict?.message).toContain("addresses of ns-b/xb/y1");
    await stopAll(c, [b, a], conf);
    await c.assertClean();
  });
});

describe("health", () => {
  test("/healthz answers; /readyz is 503 naming etcd while it is stopped, 200 again after", async () => {
    await using etcd = await startEtcd();
    await using c = await makeCluster({ nodes: 1 });
    c.loadPods(EXAMPLE);
    const addr = freeAddress();
    const conf = { ...etcd.conf(), metrics_address: addr };
    const primary = await c.node(1).pod("primary-pod");
    ok(c, await primary.add(conf), "ADD primary-pod");
    await waitFor("/readyz 200", async () => (await get(addr, "/readyz")).status === 200);
    expect(await get(addr, "/healthz")).toEqual({ status: 200, body: "ok\n" });
    expect((await get(addr, "/nothing")).status).toBe(404);

    await etcd.down();
    const down = await until("/readyz 503", async () => {
      const r = await get(addr, "/readyz");
      return r.status === 503 ? r : undefined;
    });
    expect(down.body).toContain("etcd is not reachable");
    expect(down.body).toContain(etcd.endpoint);
    expect((await get(addr, "/healthz")).status).toBe(200);

    await etcd.up();
    await waitFor("/readyz 200 again", async () => (await get(addr, "/readyz")).status === 200, 20_000);
    await stopAll(c, [primary], conf);
  });
});

interface KubeEvent {
  metadata: { name: string; namespace: string };
  involvedObject: { kind: string; apiVersion: string; name: string; namespace: string; uid?: string };
  reason: string;
  message: string;
  type: string;
  count: number;
  firstTimestamp: string;
  lastTimestamp: string;
  source: { component: string; host: string };
  reportingComponent: string;
  reportingInstance: string;
}

const eventsOf = (c: Cluster, pod: string, reason: string) =>
  (c.api.events as unknown as KubeEvent[]).filter(
    (e) => e.involvedObject.name === pod && e.reason === reason,
  );

describe("events", () => {
  test("LinkWaiting once, LinkFailed aggregated, LinkUp on both pods, LinkConflict naming the field", async () => {
    await using c = await makeCluster({ nodes: 1 });
    c.loadPods(EXAMPLE);
    const n = c.node(1);
    const primary = await n.pod("primary-pod");
    const pair = await n.pod("pair-pod");
    ok(c, await primary.add(), "ADD primary-pod");
    ok(c, await primary.add(), "ADD primary-pod again (a retry)");
    const [waiting] = await until("LinkWaiting", () => {
      const e = eventsOf(c, "primary-pod", "LinkWaiting");
      return e.length > 0 ? e : undefined;
    });
    const uid = c.api.getPod("default", "primary-pod")?.metadata.uid;
    expect(waiting?.involvedObject).toEqual({
      apiVersion: "v1",
      kind: "Pod",
      namespace: "default",
      name: "primary-pod",
      uid,
    });
    expect(waiting?.type).toBe("Normal");
    expect(waiting?.message).toContain("in1");
    expect(waiting?.message).toContain("default/pair-pod");
    expect(waiting?.source).toEqual({ component: "ratchet", host: "node1" });
    expect(waiting?.reportingComponent).toBe("ratchet.io/agent");
    expect(waiting?.reportingInstance).toBe("node1");
    expect(waiting?.metadata.namespace).toBe("default");

    // An interface of someone else's where in2 must go: the build fails, twice.
    await ipIn(pair.netns.name, ["link", "add", "in2", "type", "veth", "peer", "name", "fx0"]);
    expect(failed(await pair.add())).toBe(101);
    expect(failed(await pair.add())).toBe(101);
    const [fail] = await until("LinkFailed counted twice", () => {
      const e = eventsOf(c, "pair-pod", "LinkFailed");
      return e.length === 1 && e[0]?.count === 2 ? e : undefined;
    });
    expect(fail?.type).toBe("Warning");
    expect(fail?.message).toContain("was not built by ratchet");
    expect(c.api.patches.some((p) => p.kind === "events" && p.name === fail?.metadata.name)).toBe(true);
    expect(c.api.patches.find((p) => p.kind === "events")?.contentType).toBe("application/merge-patch+json");

    await ipIn(pair.netns.name, ["link", "delete", "in2"]);
    ok(c, await pair.add(), "ADD pair-pod");
    for (const [pod, msg] of [
      ["primary-pod", "in1 <-> default/pair-pod in2"],
      ["pair-pod", "in2 <-> default/primary-pod in1"],
    ] as const) {
      const [up] = await until(`LinkUp of ${pod}`, () => {
        const e = eventsOf(c, pod, "LinkUp");
        return e.length > 0 ? e : undefined;
      });
      expect(up?.type).toBe("Normal");
      expect(up?.message).toContain(msg);
    }
    // Retries did not add waiting Events.
    expect(eventsOf(c, "primary-pod", "LinkWaiting").map((e) => e.count)).toEqual([1]);

    // Two pods of one namespace declare a link differently: the second ADD is refused.
    c.putPod(
      annotatedPod("cf-a", [
        {
          peer: "cf-b",
          local_ifname: "x0",
          peer_ifname: "x1",
          local_ip: "10.71.0.1/24",
          peer_ip: "10.71.0.2/24",
        },
      ]),
    );
    c.putPod(
      annotatedPod("cf-b", [
        {
          peer: "cf-a",
          local_ifname: "x1",
          peer_ifname: "x0",
          local_ip: "10.71.0.9/24",
          peer_ip: "10.71.0.1/24",
        },
      ]),
    );
    const a = await n.pod("cf-a");
    const b = await n.pod("cf-b");
    ok(c, await a.add(), "ADD cf-a");
    expect(failed(await b.add())).toBe(103);
    const [conflict] = await until("LinkConflict", () => {
      const e = eventsOf(c, "cf-b", "LinkConflict");
      return e.length > 0 ? e : undefined;
    });
    expect(conflict?.type).toBe("Warning");
    expect(conflict?.message).toContain("addresses of default/cf-b/x1");

    await stopAll(c, [b, a, pair, primary]);
    await c.assertClean();
  });
});

type StatusEntry = { name: string; interface: string; ips: string[]; mac?: string; default?: boolean };

function statusOf(c: Cluster, pod: string): StatusEntry[] | undefined {
  const text = c.api.getPod("default", pod)?.metadata.annotations?.[NETWORK_STATUS];
  return text === undefined ? undefined : (JSON.parse(text) as StatusEntry[]);
}

/** The entry of one interface, once the annotation has it as `ready` wants. */
async function waitEntry(
  c: Cluster,
  pod: string,
  iface: string,
  ready: (e: StatusEntry | undefined) => boolean,
) {
  try {
    return await until(`${pod}'s network-status entry for ${iface}`, () => {
      const list = statusOf(c, pod);
      const e = list?.find((x) => x.interface === iface);
      return ready(e) ? (list as StatusEntry[]) : undefined;
    });
  } catch (err) {
    throw new Error(`${(err as Error).message}: ${JSON.stringify(statusOf(c, pod))}\n${logs(c)}`);
  }
}

/** The result's entry for one interface: MAC and addresses without prefix. */
function fromResult(r: CniResultJson, iface: string): { mac: string | undefined; ips: string[] } {
  const i = (r.interfaces ?? []).findIndex((x) => x.name === iface);
  const ips = (r.ips ?? [])
    .filter((ip) => ip.interface === i)
    .map((ip) => ip.address.split("/")[0] as string);
  return { mac: r.interfaces?.[i]?.mac, ips };
}

describe("network-status annotation", () => {
  for (const nodes of [1, 2]) {
    test(`${nodes === 1 ? "veth" : "VXLAN"}: entries match the results, the late peer's link is added, others' entries stay`, async () => {
      await using c = await makeCluster({ nodes: 2 });
      c.loadPods(EXAMPLE);
      const other = { name: "other/net9", interface: "net9", ips: ["10.9.9.9"], mac: "02:00:00:00:00:09" };
      const obj = c.api.getPod("default", "primary-pod");
      if (!obj) throw new Error("no primary-pod");
      c.putPod({
        ...obj,
        metadata: { ...obj.metadata, annotations: { [NETWORK_STATUS]: JSON.stringify([other]) } },
      });
      const primary = await c.node(1).pod("primary-pod");
      const pair = await c.node(nodes).pod("pair-pod");

      const r1 = ok(c, await primary.add(), "ADD primary-pod");
      const boot = fromResult(r1, "lo");
      let list = await waitEntry(c, "primary-pod", "lo", (e) => e?.default === true);
      expect(list).toEqual([
        {
          name: "ratchet-bed",
          interface: "lo",
          ips: boot.ips,
          ...(boot.mac ? { mac: boot.mac } : {}),
          default: true,
          dns: {},
        },
        other,
      ] as StatusEntry[]);

      const r2 = ok(c, await pair.add(), "ADD pair-pod");
      const in2 = fromResult(r2, "in2");
      // The link's entry and the boot entry come in separate background writes, in either order.
      await waitEntry(c, "pair-pod", "in2", (e) => e !== undefined);
      list = await waitEntry(c, "pair-pod", "lo", (e) => e?.default === true);
      expect(list.find((e) => e.interface === "in2")).toEqual({
        name: "ratchet/primary-pod",
        interface: "in2",
        ips: in2.ips,
        mac: in2.mac,
        dns: {},
      } as StatusEntry);
      expect(in2.ips).toEqual(["192.168.2.101"]);
      expect(list.find((e) => e.default)?.interface).toBe("lo");

      // The primary's end came after its own ADD: its annotation gets it then.
      list = await waitEntry(c, "primary-pod", "in1", (e) => e !== undefined);
      const in1 = await c.iface(primary, "in1");
      expect(list.find((e) => e.interface === "in1")).toEqual({
        name: "ratchet/pair-pod",
        interface: "in1",
        ips: ["192.168.2.100"],
        mac: in1?.mac,
        dns: {},
      } as StatusEntry);
      expect(list.find((e) => e.interface === "net9")).toEqual(other);
      for (const p of c.api.patches.filter((x) => x.kind === "pods"))
        expect(p.contentType).toBe("application/merge-patch+json");

      // The pair goes. A veth goes with it, and so does the primary's entry for in1; a VXLAN
      // end stays (until the peer comes back), and so does its entry. Others' entries stay.
      await stopAll(c, [pair]);
      const stays = (await c.iface(primary, "in1")) !== undefined;
      expect(stays).toBe(nodes === 2);
      list = await waitEntry(c, "primary-pod", "in1", (e) => (e !== undefined) === stays);
      expect(list.map((e) => e.interface)).toEqual(stays ? ["lo", "net9", "in1"] : ["lo", "net9"]);
      await stopAll(c, [primary]);
      await c.assertClean();
    });
  }

  test("network_status_annotation false: the pod is never patched", async () => {
    await using c = await makeCluster({ nodes: 1 });
    c.loadPods(EXAMPLE);
    const conf = { network_status_annotation: false };
    const primary = await c.node(1).pod("primary-pod");
    const pair = await c.node(1).pod("pair-pod");
    ok(c, await primary.add(conf), "ADD primary-pod");
    ok(c, await pair.add(conf), "ADD pair-pod");
    // LinkUp Events are sent after the links are built; by then a patch would be on its way too.
    await waitFor(
      "LinkUp on both pods",
      () => eventsOf(c, "primary-pod", "LinkUp").length + eventsOf(c, "pair-pod", "LinkUp").length === 2,
    );
    await stopAll(c, [pair, primary], conf);
    expect(c.api.patches.filter((p) => p.kind === "pods")).toEqual([]);
    await c.assertClean();
  });
});
