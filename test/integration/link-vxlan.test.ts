// The example pair on two simulated nodes: each node a "host" netns with an underlay
// (ul0) on a shared veth, its own agent (socket, log) and host_netns. VXLAN, same VNI.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { Etcd3 } from "etcd3";
import { join } from "node:path";
import { startApiServer, type ApiServer } from "../support/apiserver.ts";
import { killChildren, waitFor } from "../support/child.ts";
import { cni } from "../support/cni.ts";
import { etcdEndpoint, REPO, run, tempDir, uniqueName } from "../support/env.ts";
import { addresses, ipIn, linkInfo, makeNetns, type TestNetns } from "../support/netns.ts";

const scratch = tempDir("ratchet-vxlan-");
let api: ApiServer;
const prefix = `/rt-test/${uniqueName("x")}`;
let hostA: TestNetns;
let hostB: TestNetns;

function nodeConf(node: "a" | "b", host: TestNetns, addr: string): Record<string, unknown> {
  return {
    cniVersion: "1.0.0",
    name: "vx",
    type: "ratchet",
    etcd_endpoints: [etcdEndpoint()],
    etcd_prefix: prefix,
    host_netns: host.path,
    parent_interface: "ul0",
    parent_address: node === "a" ? addr : "", // b finds its address on ul0
    kubeconfig: join(scratch.path, "kubeconfig"),
    log_file: join(scratch.path, `${node}.log`),
    child_socket: join(scratch.path, node, "child.sock"),
    delegate: { type: "loopback" },
    boot_network: { type: "loopback" },
  };
}

beforeAll(async () => {
  api = startApiServer({ podFiles: [join(REPO, "pod_specs", "example.yaml")] });
  const { renameSync } = await import("node:fs");
  renameSync(api.writeKubeconfig(scratch.path, { auth: "token" }), join(scratch.path, "kubeconfig"));
  hostA = await makeNetns("h");
  hostB = await makeNetns("h");
  await ipIn(hostA.name, ["link", "add", "ul0", "type", "veth", "peer", "name", "ul0", "netns", hostB.name]);
  await ipIn(hostA.name, ["addr", "add", "10.252.0.1/24", "dev", "ul0"]);
  await ipIn(hostB.name, ["addr", "add", "10.252.0.2/24", "dev", "ul0"]);
  await ipIn(hostA.name, ["link", "set", "ul0", "up"]);
  await ipIn(hostB.name, ["link", "set", "ul0", "up"]);
});
afterAll(async () => {
  await killChildren(join(scratch.path, "a.log"));
  await killChildren(join(scratch.path, "b.log"));
  await hostA[Symbol.asyncDispose]();
  await hostB[Symbol.asyncDispose]();
  await api.stop();
  const etcd = new Etcd3({ hosts: etcdEndpoint() });
  await etcd.delete().prefix(`${prefix}/`);
  etcd.close();
  scratch[Symbol.dispose]();
});

const args = (name: string, cid: string) => `IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=${name};K8S_POD_INFRA_CONTAINER_ID=${cid}`;

test("example pair across two nodes: VXLAN with one VNI, remote = the other node, ping, DEL cleans", async () => {
  await using podA = await makeNetns();
  await using podB = await makeNetns();
  const confA = nodeConf("a", hostA, "10.252.0.1");
  const confB = nodeConf("b", hostB, "");
  const a = await cni({ command: "ADD", conf: confA, containerId: "ca", netns: podA.path, ifname: "lo", args: args("primary-pod", "ca") });
  expect(a.stdout).toContain('"cniVersion"');
  expect(a.code).toBe(0);
  const b = await cni({ command: "ADD", conf: confB, containerId: "cb", netns: podB.path, ifname: "lo", args: args("pair-pod", "cb") });
  expect(b.code).toBe(0);
  expect((b.json as { interfaces: Array<{ name: string }> }).interfaces.map((i) => i.name)).toEqual(["lo", "in2"]);
  // Node a's agent builds its end when it sees node b's entry.
  const in1 = (await waitFor("in1 on node a", () => linkInfo(podA.name, "in1"), 10_000)) as Record<string, unknown>;
  const in2 = await linkInfo(podB.name, "in2");
  const dataA = (in1.linkinfo as { info_kind: string; info_data: { id: number; remote: string } });
  const dataB = (in2?.linkinfo as { info_kind: string; info_data: { id: number; remote: string } });
  expect(dataA.info_kind).toBe("vxlan");
  expect(dataB.info_kind).toBe("vxlan");
  expect(dataA.info_data.id).toBe(dataB.info_data.id);
  expect(dataA.info_data.id).toBeGreaterThanOrEqual(11);
  expect(dataA.info_data.remote).toBe("10.252.0.2");
  expect(dataB.info_data.remote).toBe("10.252.0.1");
  expect(await addresses(podA.name, "in1")).toEqual(["192.168.2.100/24"]);
  const ping = await run(["ip", "netns", "exec", podB.name, "ping", "-c1", "-W3", "192.168.2.100"]);
  expect(ping.code).toBe(0);

  expect((await cni({ command: "DEL", conf: confB, containerId: "cb", netns: podB.path, ifname: "lo", args: args("pair-pod", "cb") })).code).toBe(0);
  expect((await cni({ command: "DEL", conf: confA, containerId: "ca", netns: podA.path, ifname: "lo", args: args("primary-pod", "ca") })).code).toBe(0);
  const etcd = new Etcd3({ hosts: etcdEndpoint() });
  try {
    // Only the VNI allocation hint stays: it is cluster state, not a record of these pods.
    expect(await etcd.getAll().prefix(`${prefix}/`).keys()).toEqual([`${prefix}/v1/vni-next`]);
  } finally {
    etcd.close();
  }
  // No tunnel device was left in the host namespaces.
  const left = JSON.parse(await ipIn(hostA.name, ["-j", "link"])) as Array<{ ifname: string }>;
  expect(left.map((l) => l.ifname).sort()).toEqual(["lo", "ul0"]);
});
