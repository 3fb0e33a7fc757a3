// The original pair on one node through the installed binary: a veth with in1/in2.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { Etcd3 } from "etcd3";
import { join } from "node:path";
import { startApiServer, type ApiServer } from "../support/apiserver.ts";
import { killChildren } from "../support/child.ts";
import { cni } from "../support/cni.ts";
import { etcdEndpoint, REPO, run, tempDir, uniqueName } from "../support/env.ts";
import { addresses, linkInfo, makeNetns } from "../support/netns.ts";

const scratch = tempDir("ratchet-link-");
let api: ApiServer;
let conf: Record<string, unknown>;
const prefix = `/rt-test/${uniqueName("l")}`;

beforeAll(() => {
  api = startApiServer({ podFiles: [join(REPO, "pod_specs", "example.yaml")] });
  conf = {
    cniVersion: "1.0.0",
    name: "link",
    type: "ratchet",
    etcd_endpoints: [etcdEndpoint()],
    etcd_prefix: prefix,
    parent_address: "10.251.0.1",
    kubeconfig: api.writeKubeconfig(scratch.path, { auth: "token" }),
    log_file: join(scratch.path, "ratchet.log"),
    child_socket: join(scratch.path, "run", "child.sock"),
    delegate: { type: "loopback" },
    boot_network: { type: "loopback" },
  };
});
afterAll(async () => {
  await killChildren(join(scratch.path, "ratchet.log"));
  await api.stop();
  const etcd = new Etcd3({ hosts: etcdEndpoint() });
  await etcd.delete().prefix(`${prefix}/`);
  etcd.close();
  scratch[Symbol.dispose]();
});

const args = (name: string, cid: string) => `IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=${name};K8S_POD_INFRA_CONTAINER_ID=${cid}`;

async function etcdKeys(): Promise<string[]> {
  const etcd = new Etcd3({ hosts: etcdEndpoint() });
  try {
    return await etcd.getAll().prefix(`${prefix}/`).keys();
  } finally {
    etcd.close();
  }
}

test.each([["primary first", ["primary-pod", "pair-pod"]], ["pair first", ["pair-pod", "primary-pod"]]] as const)(
  "example pair on one node, %s: in1 and in2 over a veth, ping, DEL cleans",
  async (_what, order) => {
    await using nsA = await makeNetns();
    await using nsB = await makeNetns();
    const netns: Record<string, string> = { [order[0]]: nsA.path, [order[1]]: nsB.path };
    const nsName: Record<string, string> = { [order[0]]: nsA.name, [order[1]]: nsB.name };
    const first = await cni({ command: "ADD", conf, containerId: `c-${order[0]}`, netns: netns[order[0]], ifname: "lo", args: args(order[0], `c-${order[0]}`) });
    expect(first.stderr).toBe("");
    expect(first.code).toBe(0);
    // The peer is not there yet: only the boot network in the result.
    expect((first.json as { interfaces: Array<{ name: string }> }).interfaces.map((i) => i.name)).toEqual(["lo"]);
    const second = await cni({ command: "ADD", conf, containerId: `c-${order[1]}`, netns: netns[order[1]], ifname: "lo", args: args(order[1], `c-${order[1]}`) });
    expect(second.code).toBe(0);
    const mineName = order[1] === "primary-pod" ? "in1" : "in2";
    const res = second.json as { interfaces: Array<{ name: string; mac: string; sandbox: string }>; ips: Array<{ interface: number; address: string }> };
    expect(res.interfaces.map((i) => i.name)).toEqual(["lo", mineName]);
    expect(res.interfaces[1]?.sandbox).toBe(netns[order[1]] as string);
    expect(res.ips.find((i) => i.interface === 1)?.address).toBe(mineName === "in1" ? "192.168.2.100/24" : "192.168.2.101/24");

    expect(await addresses(nsName["primary-pod"], "in1")).toEqual(["192.168.2.100/24"]);
    expect(await addresses(nsName["pair-pod"], "in2")).toEqual(["192.168.2.101/24"]);
    expect((await linkInfo(nsName["primary-pod"], "in1"))?.linkinfo).toMatchObject({ info_kind: "veth" });
    const ping = await run(["ip", "netns", "exec", nsName["primary-pod"] as string, "ping", "-c1", "-W2", "192.168.2.101"]);
    expect(ping.code).toBe(0);

    for (const pod of order) {
      const del = await cni({ command: "DEL", conf, containerId: `c-${pod}`, netns: netns[pod], ifname: "lo", args: args(pod, `c-${pod}`) });
      expect({ code: del.code, stdout: del.stdout }).toEqual({ code: 0, stdout: "" });
    }
    expect(await linkInfo(nsName["primary-pod"], "in1")).toBeUndefined();
    expect(await etcdKeys()).toEqual([]);
  },
);
