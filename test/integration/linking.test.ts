// End to end: pods linked by veth (one node) or VXLAN (two nodes), whatever order and
// however late they come; DEL, CHECK, GC and STATUS. Black-box: every step goes through the
// installed binary as a container runtime runs it (env + stdin, K8S_POD_* in CNI_ARGS), pods
// are served by the stand-in API server, and outcomes are read from the kernel (ip, ping)
// and from etcd (nothing left under the cluster's prefix). Every test ends with
// cluster.assertClean(); the cluster's dispose cleans up when one fails. DEL with etcd
// stopped, and an etcd restart while links are pending, are in etcd-faults.test.ts.
import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { killChildren, waitFor } from "../support/child.ts";
import { assertValidResult, VERSIONS, type CniResultJson } from "../support/cni.ts";
import {
  annotatedPod,
  makeCluster,
  plainPod,
  type AnnotationLink,
  type CniRun,
  type Cluster,
  type IfaceInfo,
  type Node,
  type Pod,
} from "../support/cluster.ts";
import { REPO } from "../support/env.ts";
import { ipIn } from "../support/netns.ts";

const EXAMPLE = join(REPO, "pod_specs", "example.yaml");
/** Default VXLAN overhead over an IPv4 underlay of MTU 1500. */
const MAX_VXLAN_MTU = 1450;

// --- helpers -----------------------------------------------------------------------------------

function logs(c: Cluster): string {
  return c.nodes.map((n) => `--- ${n.name} log ---\n${n.logTail(30)}`).join("\n");
}

/** The ADD result, or an error carrying the CNI error and the nodes' logs. */
function ok(c: Cluster, r: CniRun, what: string, version = "1.0.0"): CniResultJson {
  if (r.code !== 0)
    throw new Error(`${what}: exit ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}\n${logs(c)}`);
  return assertValidResult(r.json, version);
}

/** Asserts a DEL (or CHECK) succeeded. */
function done(c: Cluster, r: CniRun, what: string): void {
  if (r.code !== 0)
    throw new Error(`${what}: exit ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}\n${logs(c)}`);
}

/** The ratchet interfaces a result lists for this pod (not the boot network's lo). */
function linkIfaces(result: CniResultJson, pod: Pod): string[] {
  return (result.interfaces ?? [])
    .filter((i) => i.sandbox === pod.netns.path && i.name !== "lo")
    .map((i) => i.name);
}

/** The addresses a result gives one of its interfaces. */
function resultIps(result: CniResultJson, ifname: string): string[] {
  const idx = (result.interfaces ?? []).findIndex((i) => i.name === ifname);
  return (result.ips ?? []).filter((ip) => ip.interface === idx).map((ip) => ip.address);
}

/** The boot network (loopback) is still in an eligible pod's result. */
function expectBoot(result: CniResultJson, pod: Pod): void {
  expect(result.interfaces?.some((i) => i.name === "lo" && i.sandbox === pod.netns.path)).toBe(true);
  expect(result.ips?.map((i) => i.address)).toContain("127.0.0.1/8");
}

/**
 * Asserts the result lists exactly `ifname` as ratchet interface, with the kernel's MAC and the addresses.
 */
async function expectResultIface(
  c: Cluster,
  result: CniResultJson,
  pod: Pod,
  ifname: string,
  ips: string[],
): Promise<void> {
  expect(linkIfaces(result, pod)).toEqual([ifname]);
  const entry = result.interfaces?.find((i) => i.name === ifname);
  const real = await c.iface(pod, ifname);
  expect(real).toBeDefined();
  expect(entry?.mac).toBe(real?.mac);
  expect(entry?.sandbox).toBe(pod.netns.path);
  expect(resultIps(result, ifname).sort()).toEqual([...ips].sort());
}

async function waitIface(c: Cluster, pod: Pod, ifname: string, timeoutMs = 10_000): Promise<IfaceInfo> {
  try {
    const i = await waitFor(
      `${ifname} in ${pod.namespace}/${pod.name} on ${pod.node.name}`,
      () => c.iface(pod, ifname),
      timeoutMs,
    );
    if (i === undefined) throw new Error("waitFor returned nothing");
    return i;
  } catch (err) {
    throw new Error(`${(err as Error).message}\n${logs(c)}`);
  }
}

async function waitGone(c: Cluster, pod: Pod, ifname: string, timeoutMs = 10_000): Promise<void> {
  await waitFor(
    `${ifname} gone from ${pod.name}`,
    async () => (await c.iface(pod, ifname)) === undefined,
    timeoutMs,
  );
}

/** An end that is up, with these addresses (and MTU / MAC when given). */
async function expectEnd(
  c: Cluster,
  pod: Pod,
  ifname: string,
  want: { kind: "veth" | "vxlan"; ips: string[]; mtu?: number; mac?: string },
): Promise<IfaceInfo> {
  await waitIface(c, pod, ifname);
  // Operstate follows a moment after the link comes up (the kernel's linkwatch), and a VXLAN
  // end gets its addresses just after it appears: wait for both, then assert on what is there.
  const wantIps = JSON.stringify([...want.ips].sort());
  const settled = async () => {
    const x = await c.iface(pod, ifname);
    const up = x?.up && (x.state === "UP" || (want.kind === "vxlan" && x.state === "UNKNOWN"));
    return up && JSON.stringify((await c.addrs(pod, ifname)).sort()) === wantIps;
  };
  await waitFor(`${ifname} of ${pod.name} up with its addresses`, settled, 3000).catch(() => undefined);
  const i = await waitIface(c, pod, ifname);
  expect(i.kind).toBe(want.kind);
  expect(i.up).toBe(true);
  expect(["UP", "UNKNOWN"]).toContain(i.state);
  if (want.kind === "veth") expect(i.state).toBe("UP");
  expect((await c.addrs(pod, ifname)).sort()).toEqual([...want.ips].sort());
  if (want.mtu !== undefined) expect(i.mtu).toBe(want.mtu);
  if (want.mac !== undefined) expect(i.mac).toBe(want.mac);
  return i;
}

/** Both VXLAN ends of a link: one VNI (>= 11), each remote the other node's underlay. */
function expectTunnel(a: IfaceInfo, aNode: Node, b: IfaceInfo, bNode: Node): void {
  expect(a.kind).toBe("vxlan");
  expect(b.kind).toBe("vxlan");
  expect(a.vni).toBeDefined();
  expect(a.vni).toBe(b.vni as number);
  expect(a.vni as number).toBeGreaterThanOrEqual(11);
  expect(a.remote).toBe(bNode.underlay);
  expect(b.remote).toBe(aNode.underlay);
  if (a.local !== undefined) expect(a.local).toBe(aNode.underlay);
  if (b.local !== undefined) expect(b.local).toBe(bNode.underlay);
  const port = (i: IfaceInfo) =>
    (i.raw.linkinfo as { info_data?: { port?: number } } | undefined)?.info_data?.port;
  expect(port(a)).toBe(port(b) as number);
  expect(a.mtu).toBe(b.mtu);
  expect(a.mtu).toBeLessThanOrEqual(MAX_VXLAN_MTU);
}

async function expectPing(c: Cluster, from: Pod, ip: string, timeoutMs = 8000): Promise<void> {
  if (!(await c.ping(from, ip, timeoutMs))) {
    const names = await c.ifaceNames(from);
    throw new Error(
      `no ping from ${from.name} (${from.node.name}) to ${ip}; ` +
        `links in its netns: ${names.join(", ")}\n${logs(c)}`,
    );
  }
}

/** DEL (which must succeed and remove the pod's ratchet links), then the netns, as a runtime does. */
async function stop(c: Cluster, pod: Pod, ifnames: string[] = []): Promise<void> {
  done(c, await pod.del(), `DEL ${pod.name}`);
  for (const n of ifnames) expect(await c.iface(pod, n)).toBeUndefined();
  await pod.removeNetns();
}

async function hostsClean(c: Cluster): Promise<void> {
  for (const n of c.nodes) expect(await n.strayHostLinks()).toEqual([]);
}

/** A pair of pods, each declaring the same link (mirrored annotation). */
function mirroredPair(c: Cluster, a: string, b: string, link: Omit<AnnotationLink, "peer">): void {
  c.putPod(annotatedPod(a, [{ peer: b, ...link }]));
  const mirror: AnnotationLink = { peer: a, local_ifname: link.peer_ifname, peer_ifname: link.local_ifname };
  if (link.peer_ip !== undefined) mirror.local_ip = link.peer_ip;
  if (link.local_ip !== undefined) mirror.peer_ip = link.local_ip;
  if (link.peer_mac !== undefined) mirror.local_mac = link.peer_mac;
  if (link.local_mac !== undefined) mirror.peer_mac = link.local_mac;
  if (link.mtu !== undefined) mirror.mtu = link.mtu;
  c.putPod(annotatedPod(b, [mirror]));
}

const IN1 = "192.168.2.100/24";
const IN2 = "192.168.2.101/24";
/** The example's link end in each pod. */
const IFNAME: Record<string, string> = { "primary-pod": "in1", "pair-pod": "in2" };

/** The example pair in the order a test adds it: first and second pod, their ends, the second's address. */
function inOrder(first: "primary-pod" | "pair-pod", primary: Pod, pair: Pod) {
  return first === "primary-pod"
    ? { p1: primary, p2: pair, if1: "in1", if2: "in2", ip2: IN2 }
    : { p1: pair, p2: primary, if1: "in2", if2: "in1", ip2: IN1 };
}

/** in1 and in2 carry traffic both ways. */
async function expectPairPings(c: Cluster, primary: Pod, pair: Pod): Promise<void> {
  await expectPing(c, primary, "192.168.2.101");
  await expectPing(c, pair, "192.168.2.100");
}

/** DEL of both example pods in this order (each must remove its end), then nothing is left. */
async function stopPair(c: Cluster, first: Pod, second: Pod): Promise<void> {
  await stop(c, first, [IFNAME[first.name] as string]);
  await stop(c, second, [IFNAME[second.name] as string]);
  await c.assertClean();
}

// --- 1, 2: the original pair ----------------------------------------------------------------------

describe("the example pair on one node (veth)", () => {
  for (const first of ["primary-pod", "pair-pod"] as const) {
    test(`${first} first: in1 and in2 exist with their addresses, ping each other; DEL cleans`, async () => {
      await using c = await makeCluster({ nodes: 2 });
      c.loadPods(EXAMPLE);
      const n = c.node(1);
      const primary = await n.pod("primary-pod");
      const pair = await n.pod("pair-pod");
      const { p1, p2, if1, if2, ip2 } = inOrder(first, primary, pair);

      const r1 = ok(c, await p1.add(), `ADD ${p1.name}`);
      expectBoot(r1, p1);
      expect(linkIfaces(r1, p1)).toEqual([]); // the peer is absent: nothing yet
      expect(await c.ifaceNames(p1)).toEqual([]);

      const r2 = ok(c, await p2.add(), `ADD ${p2.name}`);
      expectBoot(r2, p2);
      await expectResultIface(c, r2, p2, if2, [ip2]);

      await expectEnd(c, primary, "in1", { kind: "veth", ips: [IN1] });
      await expectEnd(c, pair, "in2", { kind: "veth", ips: [IN2] });
      expect(await c.ifaceNames(p1)).toEqual([if1]);
      await expectPairPings(c, primary, pair);
      await hostsClean(c);
      await stopPair(c, p1, p2);
    });
  }
});

describe("ADD results in every CNI version, standalone and chained", () => {
  test("each version: the second pod's result lists its end (name, kernel MAC, sandbox, IPs)", async () => {
    await using c = await makeCluster({ nodes: 2 });
    const n = c.node(1);
    for (const [i, version] of VERSIONS.entries()) {
      const [an, bn] = [`ver-a-${i}`, `ver-b-${i}`];
      mirroredPair(c, an, bn, {
        local_ifname: "w0",
        peer_ifname: "w1",
        local_ip: ["10.65.0.1/24", "fd65::1/64"],
        peer_ip: ["10.65.0.2/24", "fd65::2/64"],
      });
      const a = await n.pod(an);
      const b = await n.pod(bn);
      const ra = ok(c, await a.add({ cniVersion: version }), `ADD ${an} (${version})`, version);
      expect(linkIfaces(ra, a)).toEqual([]);
      const rb = ok(c, await b.add({ cniVersion: version }), `ADD ${bn} (${version})`, version);
      expectBoot(rb, b);
      await expectResultIface(c, rb, b, "w1", ["10.65.0.2/24", "fd65::2/64"]);
      await expectEnd(c, a, "w0", { kind: "veth", ips: ["10.65.0.1/24", "fd65::1/64"] });
      await expectPing(c, a, "10.65.0.2");
      if (version !== "0.3.0" && version !== "0.3.1") {
        done(c, await a.check(ra, { cniVersion: version }), `CHECK ${an} (${version})`);
        done(c, await b.check(rb, { cniVersion: version }), `CHECK ${bn} (${version})`);
      }
      done(c, await a.del({ cniVersion: version }), `DEL ${an} (${version})`);
      done(c, await b.del({ cniVersion: version }), `DEL ${bn} (${version})`);
      expect(await c.iface(b, "w1")).toBeUndefined();
      await a.removeNetns();
      await b.removeNetns();
    }
    await c.assertClean();
  });

  test("chained (no delegate, prevResult from the plugin before): prevResult plus the link end", async () => {
    await using c = await makeCluster({ nodes: 2 });
    mirroredPair(c, "ch-a", "ch-b", {
      local_ifname: "k0",
      peer_ifname: "k1",
      local_ip: "10.66.0.1/24",
      peer_ip: "10.66.0.2/24",
    });
    const [n1, n2] = [c.node(1), c.node(2)];
    const a = await n1.pod("ch-a");
    const b = await n2.pod("ch-b");
    // What a main plugin (e.g. ptp) would have returned for eth0.
    const prev = (p: Pod, ip: string) => ({
      cniVersion: "1.0.0",
      interfaces: [{ name: "eth0", mac: "0a:58:0a:f4:00:05", sandbox: p.netns.path }],
      ips: [{ interface: 0, address: ip, gateway: "10.244.0.1" }],
      routes: [{ dst: "0.0.0.0/0" }],
      dns: {},
    });
    const chained = (p: Pod, ip: string) => ({
      delegate: undefined,
      boot_network: undefined,
      prevResult: prev(p, ip),
    });
    const ra = ok(c, await a.add(chained(a, "10.244.0.5/24")), "ADD ch-a (chained)");
    expect(ra.interfaces?.[0]).toEqual({ name: "eth0", mac: "0a:58:0a:f4:00:05", sandbox: a.netns.path });
    expect(ra.ips).toEqual([{ interface: 0, address: "10.244.0.5/24", gateway: "10.244.0.1" }]);
    expect(linkIfaces(ra, a).filter((x) => x !== "eth0")).toEqual([]);
    const rb = ok(c, await b.add(chained(b, "10.244.1.5/24")), "ADD ch-b (chained)");
    expect(rb.interfaces?.[0]).toEqual({ name: "eth0", mac: "0a:58:0a:f4:00:05", sandbox: b.netns.path });
    expect(rb.ips?.[0]).toEqual({ interface: 0, address: "10.244.1.5/24", gateway: "10.244.0.1" });
    expect(rb.routes).toEqual([{ dst: "0.0.0.0/0" }]);
    expect(linkIfaces(rb, b)).toEqual(["eth0", "k1"]);
    expect(resultIps(rb, "k1")).toEqual(["10.66.0.2/24"]);
    await expectEnd(c, a, "k0", { kind: "vxlan", ips: ["10.66.0.1/24"] });
    await expectPing(c, a, "10.66.0.2");
    done(
      c,
      await a.del({ delegate: undefined, boot_network: undefined, prevResult: ra }),
      "DEL ch-a (chained)",
    );
    done(
      c,
      await b.del({ delegate: undefined, boot_network: undefined, prevResult: rb }),
      "DEL ch-b (chained)",
    );
    await a.removeNetns();
    await b.removeNetns();
    await c.assertClean();
  });
});

describe("the example pair on two nodes (VXLAN)", () => {
  for (const first of ["primary-pod", "pair-pod"] as const) {
    test(`${first} first: one VNI on both ends, remotes are the other node, ping; DEL cleans`, async () => {
      await using c = await makeCluster({ nodes: 2 });
      c.loadPods(EXAMPLE);
      const primary = await c.node(1).pod("primary-pod");
      const pair = await c.node(2).pod("pair-pod");
      const { p1, p2, if1, if2, ip2 } = inOrder(first, primary, pair);

      const r1 = ok(c, await p1.add(), `ADD ${p1.name}`);
      expect(linkIfaces(r1, p1)).toEqual([]);
      const r2 = ok(c, await p2.add(), `ADD ${p2.name}`);
      expectBoot(r2, p2);
      await expectResultIface(c, r2, p2, if2, [ip2]);

      // The first pod's end is made by its own node's agent, after the second ADD.
      const a = await expectEnd(c, primary, "in1", { kind: "vxlan", ips: [IN1] });
      const b = await expectEnd(c, pair, "in2", { kind: "vxlan", ips: [IN2] });
      expectTunnel(a, c.node(1), b, c.node(2));
      expect(a.vni).toBe(11); // the first VNI of a fresh cluster, as in the original
      expect(await c.ifaceNames(p1)).toEqual([if1]);
      await expectPairPings(c, primary, pair);
      await hostsClean(c);
      await stopPair(c, p1, p2);
    });
  }

  test("parent_address empty: each node's VTEP is the first IPv4 of ul0", async () => {
    await using c = await makeCluster({ nodes: 2, autoParentAddress: true });
    c.loadPods(EXAMPLE);
    expect(c.node(1).conf().parent_address).toBe("");
    const primary = await c.node(1).pod("primary-pod");
    const pair = await c.node(2).pod("pair-pod");
    ok(c, await primary.add(), "ADD primary-pod");
    ok(c, await pair.add(), "ADD pair-pod");
    const a = await expectEnd(c, primary, "in1", { kind: "vxlan", ips: [IN1] });
    const b = await expectEnd(c, pair, "in2", { kind: "vxlan", ips: [IN2] });
    expectTunnel(a, c.node(1), b, c.node(2));
    await expectPing(c, primary, "192.168.2.101");
    await stopPair(c, primary, pair);
  });
});

// --- 3: three links ------------------------------------------------------------------------------

describe("one pod, three links to peers on both nodes", () => {
  test("IPv4 and IPv6, custom MTU and MAC, veth and two VXLANs with distinct VNIs; all ping", async () => {
    await using c = await makeCluster({ nodes: 2 });
    const [n1, n2] = [c.node(1), c.node(2)];
    const toA: AnnotationLink = {
      peer: "sat-a",
      local_ifname: "a0",
      peer_ifname: "h0",
      local_ip: ["10.61.1.1/30", "fd61:1::1/64"],
      peer_ip: ["10.61.1.2/30", "fd61:1::2/64"],
      local_mac: "02:61:00:00:01:01",
      peer_mac: "02:61:00:00:01:02",
      mtu: 1400,
    };
    const toB: AnnotationLink = {
      peer: "sat-b",
      local_ifname: "b0",
      peer_ifname: "h0",
      local_ip: ["10.61.2.1/30", "fd61:2::1/64"],
      peer_ip: ["10.61.2.2/30", "fd61:2::2/64"],
      local_mac: "02:61:00:00:02:01",
      peer_mac: "02:61:00:00:02:02",
      mtu: 1350,
    };
    const toC: AnnotationLink = {
      peer: "sat-c",
      local_ifname: "c0",
      peer_ifname: "h0",
      local_ip: ["10.61.3.1/30", "fd61:3::1/64"],
      peer_ip: ["10.61.3.2/30", "fd61:3::2/64"],
    };
    c.putPod(annotatedPod("hub", [toA, toB, toC]));
    // sat-a mirrors its link in full; sat-b only opts in; sat-c mirrors without MTU or MAC.
    c.putPod(
      annotatedPod("sat-a", [
        {
          peer: "hub",
          local_ifname: "h0",
          peer_ifname: "a0",
          local_ip: toA.peer_ip,
          peer_ip: toA.local_ip,
          local_mac: toA.peer_mac,
          peer_mac: toA.local_mac,
          mtu: 1400,
        },
      ]),
    );
    c.putPod({
      kind: "Pod",
      metadata: { name: "sat-b", namespace: "default", labels: { ratchet: "true" } },
      spec: {},
    });
    c.putPod(
      annotatedPod("sat-c", [
        { peer: "hub", local_ifname: "h0", peer_ifname: "c0", local_ip: toC.peer_ip, peer_ip: toC.local_ip },
      ]),
    );

    const hub = await n1.pod("hub");
    const satA = await n1.pod("sat-a");
    const satB = await n2.pod("sat-b");
    const satC = await n2.pod("sat-c");

    const rh = ok(c, await hub.add(), "ADD hub");
    expect(linkIfaces(rh, hub)).toEqual([]); // no peer yet

    const ra = ok(c, await satA.add(), "ADD sat-a");
    await expectResultIface(c, ra, satA, "h0", ["10.61.1.2/30", "fd61:1::2/64"]);
    const rb = ok(c, await satB.add(), "ADD sat-b");
    await expectResultIface(c, rb, satB, "h0", ["10.61.2.2/30", "fd61:2::2/64"]);
    const rc = ok(c, await satC.add(), "ADD sat-c");
    await expectResultIface(c, rc, satC, "h0", ["10.61.3.2/30", "fd61:3::2/64"]);

    // veth on node 1, MTU 1400 and the given MACs on both ends.
    await expectEnd(c, hub, "a0", {
      kind: "veth",
      ips: ["10.61.1.1/30", "fd61:1::1/64"],
      mtu: 1400,
      mac: "02:61:00:00:01:01",
    });
    await expectEnd(c, satA, "h0", {
      kind: "veth",
      ips: ["10.61.1.2/30", "fd61:1::2/64"],
      mtu: 1400,
      mac: "02:61:00:00:01:02",
    });
    // VXLAN to node 2, MTU 1350 and MACs from the hub's side only.
    const hb = await expectEnd(c, hub, "b0", {
      kind: "vxlan",
      ips: ["10.61.2.1/30", "fd61:2::1/64"],
      mtu: 1350,
      mac: "02:61:00:00:02:01",
    });
    const bh = await expectEnd(c, satB, "h0", {
      kind: "vxlan",
      ips: ["10.61.2.2/30", "fd61:2::2/64"],
      mtu: 1350,
      mac: "02:61:00:00:02:02",
    });
    expectTunnel(hb, n1, bh, n2);
    // VXLAN to node 2 with defaults.
    const hc = await expectEnd(c, hub, "c0", { kind: "vxlan", ips: ["10.61.3.1/30", "fd61:3::1/64"] });
    const ch = await expectEnd(c, satC, "h0", { kind: "vxlan", ips: ["10.61.3.2/30", "fd61:3::2/64"] });
    expectTunnel(hc, n1, ch, n2);
    expect(hb.vni).not.toBe(hc.vni as number);
    // Each pair of pods takes a block of 64 VNIs: the first of blocks 0 and 1.
    expect([hb.vni, hc.vni].sort()).toEqual([11, 75]);
    expect((await c.ifaceNames(hub)).sort()).toEqual(["a0", "b0", "c0"]);

    for (const [sat, n] of [
      [satA, 1],
      [satB, 2],
      [satC, 3],
    ] as const) {
      await expectPing(c, hub, `10.61.${n}.2`);
      await expectPing(c, hub, `fd61:${n}::2`);
      await expectPing(c, sat, `10.61.${n}.1`);
      await expectPing(c, sat, `fd61:${n}::1`);
    }
    await hostsClean(c);

    await stop(c, hub, ["a0", "b0", "c0"]);
    // The veth went with the hub's end (a VXLAN end on node 2 may stay until its own DEL).
    expect(await c.iface(satA, "h0")).toBeUndefined();
    await stop(c, satA, ["h0"]);
    await stop(c, satB, ["h0"]);
    await stop(c, satC, ["h0"]);
    await c.assertClean();
  });
});

// --- 4: late peer --------------------------------------------------------------------------------

/** Seconds between the first pod and its peer; 180 with RATCHET_TEST_LATE_PEER_SECONDS=180. */
const LATE_S = Number(process.env.RATCHET_TEST_LATE_PEER_SECONDS ?? 5);

describe("the peer comes late", () => {
  test(
    `${LATE_S} s later, on one node and across nodes, with agents that idle out after 1 s: links complete`,
    async () => {
      await using c = await makeCluster({ nodes: 2 });
      const [n1, n2] = [c.node(1), c.node(2)];
      const idle = { child_idle_seconds: 1 };
      mirroredPair(c, "early-v", "late-v", {
        local_ifname: "v0",
        peer_ifname: "v1",
        local_ip: "10.62.1.1/24",
        peer_ip: "10.62.1.2/24",
      });
      mirroredPair(c, "early-x", "late-x", {
        local_ifname: "x0",
        peer_ifname: "x1",
        local_ip: "10.62.2.1/24",
        peer_ip: "10.62.2.2/24",
      });
      const earlyV = await n1.pod("early-v");
      const earlyX = await n1.pod("early-x");
      ok(c, await earlyV.add(idle), "ADD early-v");
      ok(c, await earlyX.add(idle), "ADD early-x");

      // No time limit: the pending links outlive the gap, and the agent stays to watch them.
      await Bun.sleep(LATE_S * 1000);
      expect(await c.ifaceNames(earlyV)).toEqual([]);
      expect(await c.ifaceNames(earlyX)).toEqual([]);
      expect(n1.agents()).toHaveLength(1);

      const lateV = await n1.pod("late-v");
      const lateX = await n2.pod("late-x");
      const rv = ok(c, await lateV.add(idle), "ADD late-v");
      await expectResultIface(c, rv, lateV, "v1", ["10.62.1.2/24"]);
      const rx = ok(c, await lateX.add(idle), "ADD late-x");
      await expectResultIface(c, rx, lateX, "x1", ["10.62.2.2/24"]);

      await expectEnd(c, earlyV, "v0", { kind: "veth", ips: ["10.62.1.1/24"] });
      // Made by node 1's agent on its own: no CNI call on node 1 after late-x's ADD.
      const a = await expectEnd(c, earlyX, "x0", { kind: "vxlan", ips: ["10.62.2.1/24"] });
      const b = await expectEnd(c, lateX, "x1", { kind: "vxlan", ips: ["10.62.2.2/24"] });
      expectTunnel(a, n1, b, n2);
      await expectPing(c, earlyV, "10.62.1.2");
      await expectPing(c, earlyX, "10.62.2.2");
      await expectPing(c, lateX, "10.62.2.1");

      for (const p of [earlyV, lateV, earlyX, lateX]) await stop(c, p);
      // Nothing pending any more: the agents idle out.
      await waitFor(
        "idle agents to exit",
        () => n1.agents().length === 0 && n2.agents().length === 0,
        10_000,
      );
      await c.assertClean();
    },
    120_000 + LATE_S * 1000,
  );
});

// --- 5: simultaneous ADDs ------------------------------------------------------------------------

const ROUNDS = Number(process.env.RATCHET_TEST_RACE_ROUNDS ?? 100);

describe("both pods of a pair ADD at the same instant", () => {
  for (const across of [false, true]) {
    test(`${ROUNDS} rounds ${across ? "across nodes" : "on one node"}: one link that works`, async () => {
      await using c = await makeCluster({ nodes: 2 });
      const [na, nb] = across ? [c.node(1), c.node(2)] : [c.node(1), c.node(1)];
      const vnis = new Set<number>();
      for (let i = 0; i < ROUNDS; i++) {
        const [an, bn] = [`ra-${i}`, `rb-${i}`];
        mirroredPair(c, an, bn, {
          local_ifname: "r0",
          peer_ifname: "r1",
          local_ip: "10.63.0.1/30",
          peer_ip: "10.63.0.2/30",
        });
        const a = await na.pod(an);
        const b = await nb.pod(bn);
        const [ra, rb] = await Promise.all([a.add(), b.add()]);
        const resA = ok(c, ra, `round ${i}: ADD ${an}`);
        const resB = ok(c, rb, `round ${i}: ADD ${bn}`);
        // Exactly one ADD found its peer registered and built the link (and lists its own end).
        const listed = linkIfaces(resA, a).length + linkIfaces(resB, b).length;
        if (listed !== 1)
          throw new Error(
            `round ${i}: ${listed} ADD results list a link interface, ` +
              `expected exactly 1:\n${ra.stdout}\n${rb.stdout}\n${logs(c)}`,
          );
        const ea = await expectEnd(c, a, "r0", { kind: across ? "vxlan" : "veth", ips: ["10.63.0.1/30"] });
        const eb = await expectEnd(c, b, "r1", { kind: across ? "vxlan" : "veth", ips: ["10.63.0.2/30"] });
        if (across) {
          expectTunnel(ea, na, eb, nb);
          vnis.add(ea.vni as number);
        }
        expect(await c.ifaceNames(a)).toEqual(["r0"]);
        expect(await c.ifaceNames(b)).toEqual(["r1"]);
        await expectPing(c, a, "10.63.0.2");
        const [da, db] = await Promise.all([a.del(), b.del()]);
        done(c, da, `round ${i}: DEL ${an}`);
        done(c, db, `round ${i}: DEL ${bn}`);
        await a.removeNetns();
        await b.removeNetns();
        c.deletePod("default", an);
        c.deletePod("default", bn);
        await waitFor(`round ${i}: no records left`, async () => (await c.recordKeys()).length === 0, 5000);
        await hostsClean(c);
      }
      // Every round's VNI was >= 11 (expectTunnel) and its record left with the link (no keys).
      if (across) expect(vnis.size).toBeGreaterThan(0);
      await c.assertClean();
    }, 300_000);
  }
});

// --- 6: DEL ------------------------------------------------------------------------------------

describe("DEL", () => {
  for (const across of [false, true]) {
    test(`${across ? "across nodes" : "one node"}: DEL a pod, re-ADD, new container: link back`, async () => {
      await using c = await makeCluster({ nodes: 2 });
      c.loadPods(EXAMPLE);
      const primary = await c.node(1).pod("primary-pod");
      const pair = await c.node(across ? 2 : 1).pod("pair-pod");
      const kind = across ? "vxlan" : "veth";
      ok(c, await primary.add(), "ADD primary-pod");
      ok(c, await pair.add(), "ADD pair-pod");
      await expectPing(c, primary, "192.168.2.101");

      await stop(c, pair, ["in2"]);
      if (!across) expect(await c.iface(primary, "in1")).toBeUndefined(); // the veth went with its peer

      const pair2 = await pair.recreate();
      expect(pair2.containerId).not.toBe(pair.containerId);
      const r = ok(c, await pair2.add(), "re-ADD pair-pod");
      await expectResultIface(c, r, pair2, "in2", [IN2]);
      const a = await expectEnd(c, primary, "in1", { kind, ips: [IN1] });
      const b = await expectEnd(c, pair2, "in2", { kind, ips: [IN2] });
      if (across) expectTunnel(a, c.node(1), b, c.node(2));
      await expectPairPings(c, primary, pair2);

      await stopPair(c, primary, pair2);
    });
  }

  test("DEL twice, DEL with the netns gone, DEL of a container never added: all succeed, clean", async () => {
    await using c = await makeCluster({ nodes: 2 });
    c.loadPods(EXAMPLE);
    const primary = await c.node(1).pod("primary-pod");
    const pair = await c.node(2).pod("pair-pod");
    ok(c, await primary.add(), "ADD primary-pod");
    ok(c, await pair.add(), "ADD pair-pod");
    await waitIface(c, primary, "in1");

    done(c, await pair.del(), "DEL pair-pod");
    expect(await c.iface(pair, "in2")).toBeUndefined();
    done(c, await pair.del(), "second DEL pair-pod");
    await pair.removeNetns();
    done(c, await pair.del(), "DEL pair-pod after its netns is gone");

    // The sandbox vanished before its DEL (node reboot, runtime crash).
    await primary.removeNetns();
    done(c, await primary.del(), "DEL primary-pod, netns gone");
    done(c, await primary.del(), "second DEL primary-pod, netns gone");

    const never = await c.node(1).pod("primary-pod");
    done(c, await never.del(), "DEL of a container never added");
    await never.removeNetns();
    await c.assertClean();
  });

  test("a late DEL of an old container id leaves the newer container's link and record", async () => {
    await using c = await makeCluster({ nodes: 2 });
    c.loadPods(EXAMPLE);
    const primary = await c.node(1).pod("primary-pod");
    const pair = await c.node(1).pod("pair-pod");
    ok(c, await primary.add(), "ADD primary-pod");
    ok(c, await pair.add(), "ADD pair-pod");
    await expectPing(c, primary, "192.168.2.101");

    // The runtime starts a new sandbox for pair-pod before the old one's DEL arrives.
    const pair2 = await pair.recreate();
    const r2 = ok(c, await pair2.add(), "ADD pair-pod, new container");
    await expectEnd(c, pair2, "in2", { kind: "veth", ips: [IN2] });
    await expectPing(c, primary, "192.168.2.101");

    done(c, await pair.del(), "late DEL of the old container");
    await pair.removeNetns();
    await expectEnd(c, primary, "in1", { kind: "veth", ips: [IN1] });
    await expectEnd(c, pair2, "in2", { kind: "veth", ips: [IN2] });
    await expectPing(c, primary, "192.168.2.101");
    done(c, await pair2.check(r2), "CHECK pair-pod, new container");

    // The newer record is still registered: primary's next sandbox links to it.
    await stop(c, primary);
    const primary2 = await primary.recreate();
    ok(c, await primary2.add(), "re-ADD primary-pod");
    await expectEnd(c, primary2, "in1", { kind: "veth", ips: [IN1] });
    await expectPing(c, primary2, "192.168.2.101");

    await stopPair(c, primary2, pair2);
  });
});

// --- 7: a peer that moves ----------------------------------------------------------------------

describe("a peer recreated on another node", () => {
  test("veth becomes VXLAN, VXLAN follows the peer to a third node, and back to veth", async () => {
    await using c = await makeCluster({ nodes: 3 });
    c.loadPods(EXAMPLE);
    const [n1, n2, n3] = [c.node(1), c.node(2), c.node(3)];
    const primary = await n1.pod("primary-pod");
    let pair = await n1.pod("pair-pod");
    ok(c, await primary.add(), "ADD primary-pod");
    ok(c, await pair.add(), "ADD pair-pod on node1");
    await expectEnd(c, primary, "in1", { kind: "veth", ips: [IN1] });
    await expectPing(c, primary, "192.168.2.101");

    for (const [to, kind] of [
      [n2, "vxlan"],
      [n3, "vxlan"],
      [n1, "veth"],
    ] as const) {
      await stop(c, pair, ["in2"]);
      pair = await pair.recreate(to);
      ok(c, await pair.add(), `ADD pair-pod on ${to.name}`);
      const b = await expectEnd(c, pair, "in2", { kind, ips: [IN2] });
      const a = await waitFor(`in1 of primary-pod to be a ${kind} to ${to.name}`, async () => {
        const i = await c.iface(primary, "in1");
        if (i?.kind !== kind) return undefined;
        return kind === "veth" || i.remote === to.underlay ? i : undefined;
      }).catch((err: Error) => {
        throw new Error(`${err.message}\n${logs(c)}`);
      });
      if (a === undefined) throw new Error("waitFor returned nothing");
      if (kind === "vxlan") expectTunnel(a, n1, b, to);
      await expectEnd(c, primary, "in1", { kind, ips: [IN1] });
      await expectPairPings(c, primary, pair);
      await hostsClean(c);
    }
    await stopPair(c, primary, pair);
  });
});

// --- 8: agent killed ---------------------------------------------------------------------------

describe("kill -9 of the node agent while links are pending", () => {
  test("same node: the peer's ADD starts a new agent, which builds the veth from etcd", async () => {
    await using c = await makeCluster({ nodes: 2 });
    c.loadPods(EXAMPLE);
    const n1 = c.node(1);
    const primary = await n1.pod("primary-pod");
    ok(c, await primary.add(), "ADD primary-pod");
    const [old] = n1.agents();
    await killChildren(n1.logFile);

    const pair = await n1.pod("pair-pod");
    const r = ok(c, await pair.add(), "ADD pair-pod after kill -9");
    expect(n1.agents()).toHaveLength(1);
    expect(n1.agents()[0]).not.toBe(old as number);
    await expectResultIface(c, r, pair, "in2", [IN2]);
    await expectEnd(c, primary, "in1", { kind: "veth", ips: [IN1] });
    await expectPing(c, primary, "192.168.2.101");

    await stopPair(c, primary, pair);
  });

  test("across nodes: the pending side's new agent (any call starts it) builds its end", async () => {
    await using c = await makeCluster({ nodes: 2 });
    c.loadPods(EXAMPLE);
    c.putPod(plainPod("bystander"));
    const [n1, n2] = [c.node(1), c.node(2)];
    const primary = await n1.pod("primary-pod");
    ok(c, await primary.add(), "ADD primary-pod");
    await killChildren(n1.logFile);

    const pair = await n2.pod("pair-pod");
    ok(c, await pair.add(), "ADD pair-pod while node1 has no agent");
    await expectEnd(c, pair, "in2", { kind: "vxlan", ips: [IN2] });

    // Any call on node 1 starts an agent, which reconciles this node's links with etcd.
    const bystander = await n1.pod("bystander");
    ok(c, await bystander.add(), "ADD bystander on node1");
    const a = await expectEnd(c, primary, "in1", { kind: "vxlan", ips: [IN1] });
    const b = await expectEnd(c, pair, "in2", { kind: "vxlan", ips: [IN2] });
    expectTunnel(a, n1, b, n2);
    await expectPing(c, primary, "192.168.2.101");

    await stop(c, bystander);
    await stopPair(c, primary, pair);
  });

  test("across nodes: kill -9 of both agents after the link is built loses nothing", async () => {
    await using c = await makeCluster({ nodes: 2 });
    c.loadPods(EXAMPLE);
    const [n1, n2] = [c.node(1), c.node(2)];
    const primary = await n1.pod("primary-pod");
    const pair = await n2.pod("pair-pod");
    const r1 = ok(c, await primary.add(), "ADD primary-pod");
    const r2 = ok(c, await pair.add(), "ADD pair-pod");
    await waitIface(c, primary, "in1");
    await killChildren(n1.logFile);
    await killChildren(n2.logFile);
    // New agents (started by CHECK) reconcile: the link is still there and checks out.
    done(c, await primary.check(r1), "CHECK primary-pod");
    done(c, await pair.check(r2), "CHECK pair-pod");
    const a = await expectEnd(c, primary, "in1", { kind: "vxlan", ips: [IN1] });
    const b = await expectEnd(c, pair, "in2", { kind: "vxlan", ips: [IN2] });
    expectTunnel(a, n1, b, n2);
    await expectPing(c, primary, "192.168.2.101");
    await stopPair(c, primary, pair);
  });
});

// --- 9: CHECK, GC, STATUS ----------------------------------------------------------------------

function expectCheckError(c: Cluster, r: CniRun, mentions: string[]): void {
  if (r.code !== 1)
    throw new Error(`CHECK should fail, got exit ${r.code}: ${r.stdout}${r.stderr}\n${logs(c)}`);
  const err = r.json as { code: number; msg: string; details?: string };
  expect(err.code).toBe(104);
  const text = `${err.msg} ${err.details ?? ""}`;
  for (const m of mentions) expect(text).toContain(m);
}

describe("CHECK", () => {
  test("ok while every link is in place; names what is missing or different after hand changes", async () => {
    await using c = await makeCluster({ nodes: 2 });
    const MTU = 1400;
    mirroredPair(c, "primary-pod", "pair-pod", {
      local_ifname: "in1",
      peer_ifname: "in2",
      local_ip: IN1,
      peer_ip: IN2,
      mtu: MTU,
    });
    const primary = await c.node(1).pod("primary-pod");
    const pair = await c.node(2).pod("pair-pod");
    const r1 = ok(c, await primary.add(), "ADD primary-pod");
    // The peer is not registered: nothing is expected yet, CHECK passes.
    done(c, await primary.check(r1), "CHECK primary-pod, peer absent");
    const r2 = ok(c, await pair.add(), "ADD pair-pod");
    await expectEnd(c, primary, "in1", { kind: "vxlan", ips: [IN1], mtu: MTU });
    done(c, await primary.check(r1), "CHECK primary-pod");
    done(c, await pair.check(r2), "CHECK pair-pod");

    await ipIn(primary.netns.name, ["addr", "del", IN1, "dev", "in1"]);
    expectCheckError(c, await primary.check(r1), ["in1", "192.168.2.100"]);
    await ipIn(primary.netns.name, ["addr", "add", IN1, "dev", "in1"]);
    done(c, await primary.check(r1), "CHECK primary-pod, address back");

    await ipIn(primary.netns.name, ["link", "set", "in1", "mtu", String(MTU - 100)]);
    expectCheckError(c, await primary.check(r1), ["in1"]);
    await ipIn(primary.netns.name, ["link", "set", "in1", "mtu", String(MTU)]);
    done(c, await primary.check(r1), "CHECK primary-pod, MTU back");

    await ipIn(primary.netns.name, ["link", "set", "in1", "down"]);
    expectCheckError(c, await primary.check(r1), ["in1"]);
    await ipIn(primary.netns.name, ["link", "set", "in1", "up"]);
    done(c, await primary.check(r1), "CHECK primary-pod, up again");

    await ipIn(primary.netns.name, ["link", "del", "in1"]);
    expectCheckError(c, await primary.check(r1), ["in1"]);
    done(c, await pair.check(r2), "CHECK pair-pod: its own end is intact");

    await stop(c, primary);
    await stop(c, pair, ["in2"]);
    await c.assertClean();
  });

  test("a veth deleted by hand fails CHECK on both pods of one node", async () => {
    await using c = await makeCluster({ nodes: 2 });
    c.loadPods(EXAMPLE);
    const primary = await c.node(1).pod("primary-pod");
    const pair = await c.node(1).pod("pair-pod");
    const r1 = ok(c, await primary.add(), "ADD primary-pod");
    const r2 = ok(c, await pair.add(), "ADD pair-pod");
    done(c, await primary.check(r1), "CHECK primary-pod");
    done(c, await pair.check(r2), "CHECK pair-pod");
    await ipIn(pair.netns.name, ["link", "del", "in2"]);
    expectCheckError(c, await primary.check(r1), ["in1"]);
    expectCheckError(c, await pair.check(r2), ["in2"]);
    await stop(c, primary);
    await stop(c, pair);
    await c.assertClean();
  });
});

describe("GC", () => {
  test("removes the node's endpoints not in cni.dev/valid-attachments, their links, no others", async () => {
    await using c = await makeCluster({ nodes: 2 });
    const [n1, n2] = [c.node(1), c.node(2)];
    mirroredPair(c, "keep-a", "keep-b", {
      local_ifname: "k0",
      peer_ifname: "k1",
      local_ip: "10.64.1.1/24",
      peer_ip: "10.64.1.2/24",
    });
    mirroredPair(c, "gone-c", "far-d", {
      local_ifname: "g0",
      peer_ifname: "g1",
      local_ip: "10.64.2.1/24",
      peer_ip: "10.64.2.2/24",
    });
    const a = await n1.pod("keep-a");
    const b = await n1.pod("keep-b");
    const gone = await n1.pod("gone-c");
    const far = await n2.pod("far-d");
    for (const p of [a, b, gone]) ok(c, await p.add(), `ADD ${p.name}`);
    const rFar = ok(c, await far.add(), "ADD far-d");
    await waitIface(c, gone, "g0");
    await waitIface(c, b, "k1");

    // Everything listed: nothing changes.
    done(c, await n1.gc([a, b, gone]), "GC node1, all listed");
    done(c, await n2.gc([far]), "GC node2, all listed");
    await expectPing(c, gone, "10.64.2.2");
    await expectPing(c, a, "10.64.1.2");

    // gone-c's sandbox is no longer known to the runtime.
    done(c, await n1.gc([a, b]), "GC node1 without gone-c");
    expect(await c.iface(gone, "g0")).toBeUndefined();
    // keep-a/keep-b untouched; far-d is node 2's and stays registered. (Its VXLAN end may
    // stay, as a surviving end does after its peer's DEL: it is updated when the peer comes
    // back.)
    await expectEnd(c, a, "k0", { kind: "veth", ips: ["10.64.1.1/24"] });
    await expectPing(c, a, "10.64.1.2");
    done(c, await far.check(rFar), "CHECK far-d: peer no longer registered");

    // The older key name is accepted too.
    done(
      c,
      await n1.nodeCommand("GC", {
        "cni.dev/attachments": [{ containerID: a.containerId, ifname: a.ifname }],
      }),
      "GC node1 (cni.dev/attachments) without keep-b",
    );
    await waitGone(c, a, "k0");

    await gone.removeNetns();
    await b.removeNetns();
    await stop(c, a);
    await stop(c, far);
    await c.assertClean();
  });
});

describe("STATUS", () => {
  test("ready with etcd and the API server reachable", async () => {
    await using c = await makeCluster({ nodes: 1 });
    const r = await c.node(1).status();
    expect(r.stdout).toBe("");
    expect(r.code).toBe(0);
    await c.assertClean();
  });

  test("code 50 when etcd cannot be reached", async () => {
    await using c = await makeCluster({ nodes: 1 });
    // A port nothing listens on.
    const s = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
    const port = s.port;
    s.stop(true);
    const r = await c.node(1).status({ etcd_endpoints: [`http://127.0.0.1:${port}`] });
    expect(r.code).toBe(1);
    expect((r.json as { code: number }).code).toBe(50);
    await c.assertClean();
  });

  test("code 50 when the API server cannot be reached", async () => {
    await using c = await makeCluster({ nodes: 1 });
    await c.api.stop();
    const r = await c.node(1).status();
    expect(r.code).toBe(1);
    expect((r.json as { code: number }).code).toBe(50);
    await c.assertClean();
  });
});
