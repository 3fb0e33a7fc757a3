// Pods through a real container runtime, one node: containerd (Debian's) in the node's host
// netns, through CRI, with the plugin installed by scripts/install.sh and the sample config
// of conf/ filled in. Pods are served by the stand-in API server under the names containerd
// is given, so K8S_POD_* in CNI_ARGS find them. Outcomes are read from the kernel (links,
// addresses, pings inside each sandbox's netns), from containerd (sandbox state, pod IP) and
// from etcd; every test ends with bed.assertClean(); dispose cleans up when one fails.
import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { plainPod } from "../support/cluster.ts";
import { status as grpcStatus } from "@grpc/grpc-js";
import { CriBed } from "../support/cri/bed.ts";
import { CriError } from "../support/cri/client.ts";
import {
  expectEnd,
  endpointRecord,
  expectEndpoint,
  expectEth0,
  expectPing,
  linkRecords,
  waitGone,
} from "../support/cri/checks.ts";
import { REPO } from "../support/env.ts";

const EXAMPLE = join(REPO, "pod_specs", "example.yaml");
const MULTI = join(REPO, "pod_specs", "multi-link.yaml");
const IN1 = "192.168.2.100/24";
const IN2 = "192.168.2.101/24";

describe("containerd: a plain pod (not a ratchet pod)", () => {
  test("gets eth0 from the delegate, reaches its gateway and another pod; stop and remove leave nothing", async () => {
    await using bed = await CriBed.make();
    const n = bed.node(1);
    const v = await n.containerd.cri.version();
    expect(v.runtime_name).toBe("containerd");
    bed.cluster.putPod(plainPod("web"));
    bed.cluster.putPod(plainPod("db"));

    const web = await n.run("web");
    const db = await n.run("db");
    for (const s of [web, db]) {
      expect(await s.ifaceNames()).toEqual(["eth0"]);
      expect((await s.iface("eth0"))?.kind).toBe("veth");
    }
    const dbAddr = await expectEth0(db);
    await expectEth0(web);
    await expectPing(bed, web, "10.244.1.1"); // the bridge on the node
    await expectPing(bed, web, dbAddr.split("/")[0] as string);
    // A plain pod leaves no ratchet record.
    expect(await bed.cluster.recordKeys()).toEqual([]);
    const listed = await n.containerd.cri.listPodSandbox();
    expect(listed.map((s) => s.metadata.name).sort()).toEqual(["db", "web"]);

    await web.stop();
    expect((await web.status()).status.state).toBe("SANDBOX_NOTREADY");
    expect(n.containerd.netnsMounts()).not.toContain(web.netns);
    await web.remove();
    await db.stop();
    await db.remove();
    expect(await n.containerd.cri.listPodSandbox()).toEqual([]);
    await bed.assertClean();
  });
});

describe("containerd: the example pair on one node", () => {
  test("primary-pod and pair-pod get eth0 and in1/in2 over a veth, ping; records name the sandboxes", async () => {
    await using bed = await CriBed.make();
    bed.cluster.loadPods(EXAMPLE);
    const n = bed.node(1);

    const primary = await n.run("primary-pod");
    const pair = await n.run("pair-pod");
    await expectEnd(bed, primary, "in1", { kind: "veth", ips: [IN1] });
    await expectEnd(bed, pair, "in2", { kind: "veth", ips: [IN2] });
    expect((await primary.ifaceNames()).sort()).toEqual(["eth0", "in1"]);
    expect((await pair.ifaceNames()).sort()).toEqual(["eth0", "in2"]);
    await expectEth0(primary);
    await expectEth0(pair);
    await expectPing(bed, primary, "192.168.2.101");
    await expectPing(bed, pair, "192.168.2.100");
    await expectEndpoint(bed, primary);
    await expectEndpoint(bed, pair);
    const links = await linkRecords(bed);
    expect(links).toHaveLength(1);
    expect(links[0]?.kind).toBe("veth");
    expect(links[0]?.ends["default/primary-pod"]?.containerId).toBe(primary.id);
    expect(links[0]?.ends["default/pair-pod"]?.containerId).toBe(pair.id);

    await pair.stop();
    await waitGone(primary, "in1"); // the veth went with its peer's netns
    await primary.stop();
    await pair.remove();
    await primary.remove();
    await bed.assertClean();
  });

  test("chained (conf/20-ratchet-chained.conflist): the bridge's eth0 plus the link", async () => {
    await using bed = await CriBed.make({ kind: "chained" });
    bed.cluster.loadPods(EXAMPLE);
    const n = bed.node(1);
    bed.cluster.putPod(plainPod("web"));
    const web = await n.run("web");
    const primary = await n.run("primary-pod");
    const pair = await n.run("pair-pod");
    expect(await web.ifaceNames()).toEqual(["eth0"]);
    await expectEth0(web);
    await expectEth0(primary);
    await expectEnd(bed, primary, "in1", { kind: "veth", ips: [IN1] });
    await expectEnd(bed, pair, "in2", { kind: "veth", ips: [IN2] });
    await expectPing(bed, pair, "192.168.2.100");
    for (const s of [web, primary, pair]) {
      await s.stop();
      await s.remove();
    }
    await bed.assertClean();
  });
});

describe("containerd: the multi-link pod (pod_specs/multi-link.yaml)", () => {
  test("hub gets eth1 and eth2 to two spokes: IPv4 and IPv6, MTU and MAC as annotated; all ping", async () => {
    await using bed = await CriBed.make();
    bed.cluster.loadPods(MULTI);
    const n = bed.node(1);
    const spokeA = await n.run("spoke-a");
    const hub = await n.run("hub");
    const spokeB = await n.run("spoke-b");

    await expectEnd(bed, hub, "eth1", { kind: "veth", ips: ["10.10.1.1/30", "fd00:10:1::1/64"], mtu: 1400 });
    await expectEnd(bed, spokeA, "eth1", {
      kind: "veth",
      ips: ["10.10.1.2/30", "fd00:10:1::2/64"],
      mtu: 1400,
    });
    await expectEnd(bed, hub, "eth2", {
      kind: "veth",
      ips: ["10.10.2.1/30", "fd00:10:2::1/64"],
      mtu: 1380,
      mac: "02:00:0a:0a:02:01",
    });
    await expectEnd(bed, spokeB, "eth1", {
      kind: "veth",
      ips: ["10.10.2.2/30", "fd00:10:2::2/64"],
      mtu: 1380,
      mac: "02:00:0a:0a:02:02",
    });
    expect((await hub.ifaceNames()).sort()).toEqual(["eth0", "eth1", "eth2"]);
    await expectPing(bed, hub, "10.10.1.2");
    await expectPing(bed, hub, "10.10.2.2");
    await expectPing(bed, spokeA, "fd00:10:1::1");
    await expectPing(bed, spokeB, "fd00:10:2::1");
    expect(await linkRecords(bed)).toHaveLength(2);

    await hub.stop();
    await waitGone(spokeA, "eth1");
    await waitGone(spokeB, "eth1");
    expect(await spokeA.ifaceNames()).toEqual(["eth0"]);
    for (const s of [hub, spokeA, spokeB]) {
      await s.stop();
      await s.remove();
    }
    await bed.assertClean();
  });
});

describe("containerd: stop, remove, re-create", () => {
  test("double stop, re-create while the old sandbox is stopped, remove the old one, remove without stop", async () => {
    await using bed = await CriBed.make();
    bed.cluster.loadPods(EXAMPLE);
    const n = bed.node(1);
    const primary = await n.run("primary-pod");
    const pair = await n.run("pair-pod");
    await expectPing(bed, primary, "192.168.2.101");

    // Stop twice, as the kubelet may: the second is a no-op that succeeds.
    await pair.stop();
    await waitGone(primary, "in1");
    await pair.stop();
    expect((await pair.status()).status.state).toBe("SANDBOX_NOTREADY");
    expect(n.containerd.netnsMounts()).not.toContain(pair.netns);
    expect(await endpointRecord(bed, pair)).toBeUndefined();
    await expectEndpoint(bed, primary);

    // The kubelet's order: a new sandbox (next attempt) while the old one is only stopped.
    const pair2 = await n.run("pair-pod", "default", 1);
    expect(pair2.id).not.toBe(pair.id);
    await expectEnd(bed, primary, "in1", { kind: "veth", ips: [IN1] });
    await expectEnd(bed, pair2, "in2", { kind: "veth", ips: [IN2] });
    await expectPing(bed, pair2, "192.168.2.100");
    // Removing the old sandbox leaves the new one's link and records alone.
    await pair.remove();
    await expectEnd(bed, pair2, "in2", { kind: "veth", ips: [IN2] });
    await expectPing(bed, primary, "192.168.2.101");
    await expectEndpoint(bed, pair2);
    const links = await linkRecords(bed);
    expect(links).toHaveLength(1);
    expect(links[0]?.ends["default/pair-pod"]?.containerId).toBe(pair2.id);

    // Remove without stop: containerd stops the sandbox itself, and the network goes with it.
    await primary.remove();
    await waitGone(pair2, "in2");
    expect(await endpointRecord(bed, primary)).toBeUndefined();
    expect((await n.containerd.cri.listPodSandbox()).map((s) => s.id)).toEqual([pair2.id]);
    await pair2.stop();
    await pair2.remove();
    // A sandbox that is gone: remove is idempotent; stop says NOT_FOUND (the kubelet's cue).
    await pair2.remove();
    const gone = await pair2.stop().then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(gone).toBeInstanceOf(CriError);
    expect((gone as CriError).code).toBe(grpcStatus.NOT_FOUND);
    await bed.assertClean();
  });
});
