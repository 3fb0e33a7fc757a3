// Pods through containerd on two simulated nodes: each node's host netns runs its own
// containerd with its own filled-in config (host_netns, parent_interface ul0, child_socket);
// the nodes are joined by the bed's bridge, so links between them are VXLAN tunnels over ul0.
import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { plainPod } from "../support/cluster.ts";
import { CriBed } from "../support/cri/bed.ts";
import {
  expectEnd,
  expectEndpoint,
  expectEth0,
  expectPing,
  expectTunnel,
  linkRecords,
  waitGone,
} from "../support/cri/checks.ts";
import { waitFor } from "../support/child.ts";
import { REPO } from "../support/env.ts";

const EXAMPLE = join(REPO, "pod_specs", "example.yaml");
const MULTI = join(REPO, "pod_specs", "multi-link.yaml");
const IN1 = "192.168.2.100/24";
const IN2 = "192.168.2.101/24";

describe("containerd on two nodes", () => {
  test("the example pair across nodes over VXLAN, then pair-pod re-created on the first node (veth)", async () => {
    await using bed = await CriBed.make({ nodes: 2 });
    bed.cluster.loadPods(EXAMPLE);
    bed.cluster.putPod(plainPod("web"));
    const [n1, n2] = [bed.node(1), bed.node(2)];

    const primary = await n1.run("primary-pod");
    const web = await n2.run("web");
    const pair = await n2.run("pair-pod");
    const a = await expectEnd(bed, primary, "in1", { kind: "vxlan", ips: [IN1] });
    const b = await expectEnd(bed, pair, "in2", { kind: "vxlan", ips: [IN2] });
    expectTunnel(a, n1, b, n2);
    await expectPing(bed, primary, "192.168.2.101");
    await expectPing(bed, pair, "192.168.2.100");
    await expectEth0(web);
    expect(await web.ifaceNames()).toEqual(["eth0"]);
    await expectEndpoint(bed, primary);
    await expectEndpoint(bed, pair);
    const links = await linkRecords(bed);
    expect(links).toHaveLength(1);
    expect(links[0]?.kind).toBe("vxlan");
    expect(links[0]?.vni).toBe(a.vni as number);
    // The tunnel ends live in the pods' netns, none in the hosts'.
    for (const n of [n1, n2]) expect(await n.hostLinks("vxlan")).toEqual([]);

    // The kubelet moves pair-pod to node1: stop and remove on node2, run on node1.
    await pair.stop();
    await pair.remove();
    const moved = await n1.run("pair-pod");
    await expectEnd(bed, moved, "in2", { kind: "veth", ips: [IN2] });
    await waitFor(
      "in1 of primary-pod to become a veth",
      async () => (await primary.iface("in1"))?.kind === "veth",
    );
    await expectEnd(bed, primary, "in1", { kind: "veth", ips: [IN1] });
    await expectPing(bed, moved, "192.168.2.100");
    expect((await linkRecords(bed))[0]?.kind).toBe("veth");

    await primary.stop();
    await waitGone(moved, "in2");
    for (const s of [primary, moved, web]) {
      await s.stop();
      await s.remove();
    }
    await bed.assertClean();
  });

  test("the multi-link hub with one spoke on its node (veth) and one on the other (VXLAN)", async () => {
    await using bed = await CriBed.make({ nodes: 2 });
    bed.cluster.loadPods(MULTI);
    const [n1, n2] = [bed.node(1), bed.node(2)];
    const hub = await n1.run("hub");
    const spokeA = await n1.run("spoke-a");
    const spokeB = await n2.run("spoke-b");

    await expectEnd(bed, hub, "eth1", { kind: "veth", ips: ["10.10.1.1/30", "fd00:10:1::1/64"], mtu: 1400 });
    await expectEnd(bed, spokeA, "eth1", {
      kind: "veth",
      ips: ["10.10.1.2/30", "fd00:10:1::2/64"],
      mtu: 1400,
    });
    const h = await expectEnd(bed, hub, "eth2", {
      kind: "vxlan",
      ips: ["10.10.2.1/30", "fd00:10:2::1/64"],
      mtu: 1380,
      mac: "02:00:0a:0a:02:01",
    });
    const s = await expectEnd(bed, spokeB, "eth1", {
      kind: "vxlan",
      ips: ["10.10.2.2/30", "fd00:10:2::2/64"],
      mtu: 1380,
      mac: "02:00:0a:0a:02:02",
    });
    expectTunnel(h, n1, s, n2);
    await expectPing(bed, hub, "10.10.1.2");
    await expectPing(bed, hub, "10.10.2.2");
    await expectPing(bed, spokeB, "fd00:10:2::1");

    for (const p of [spokeB, hub, spokeA]) {
      await p.stop();
      await p.remove();
    }
    await bed.assertClean();
  });
});
