// The CNI protocol through the compiled binary, against Debian's reference plugins, in real
// network namespaces, for every supported spec version, standalone and chained.
import { afterAll, describe, expect, test } from "bun:test";
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { compareVersions, specOf } from "../../src/cni/versions.ts";
import { assertValidResult, cni, CNI_PATH, VERSIONS, type CniResultJson } from "../support/cni.ts";
import { etcdEndpoint, run, tempDir, uniqueName } from "../support/env.ts";
import { addresses, linkInfo, makeNetns } from "../support/netns.ts";
import { killChildren } from "../support/child.ts";
import { startApiServer } from "../support/apiserver.ts";

const scratch = tempDir("ratchet-cni-");
/** The newest version Debian's bridge plugin speaks. */
const BRIDGE_MAX = "1.0.0";
// Scheduled to the node the agent watches (node_name below).
const api = startApiServer({ node: "cni-test-node" });
api.putPod({
  kind: "Pod",
  metadata: { name: "plain-pod", namespace: "default", labels: { app: "plain" } },
  spec: {},
});
const kubeconfig = api.writeKubeconfig(scratch.path, { auth: "token" });
afterAll(async () => {
  await killChildren(join(scratch.path, "ratchet.log"));
  await api.stop();
  scratch[Symbol.dispose]();
});
let subnetCounter = 10;

/** A bridge + host-local delegate on its own bridge and subnet; the bridge is removed on dispose. */
function bridgeNet(tag = "b") {
  const bridge = uniqueName(tag);
  const n = subnetCounter++;
  const plugin = {
    type: "bridge",
    bridge,
    isGateway: true,
    ipam: { type: "host-local", subnet: `10.201.${n}.0/24`, dataDir: join(scratch.path, `ipam-${bridge}`) },
  };
  return {
    bridge,
    plugin,
    gateway: `10.201.${n}.1`,
    dataDir: plugin.ipam.dataDir,
    async [Symbol.asyncDispose]() {
      await run(["ip", "link", "delete", bridge]);
    },
  };
}

function ratchetConf(version: string, extra: Record<string, unknown>): Record<string, unknown> {
  return {
    cniVersion: version,
    name: "ratchet-test",
    type: "ratchet",
    etcd_host: "127.0.0.1",
    log_file: join(scratch.path, "ratchet.log"),
    child_socket: join(scratch.path, "run", "child.sock"),
    kubeconfig,
    node_name: "cni-test-node",
    ...extra,
  };
}

describe.each(VERSIONS)("cniVersion %s", (version) => {
  test("standalone passthrough to bridge+host-local: ADD, CHECK, DEL, DEL again", async () => {
    await using net = bridgeNet();
    await using ns = await makeNetns();
    const conf = ratchetConf(version, { delegate: net.plugin, boot_network: { type: "loopback" } });
    const ids = {
      containerId: `ctr-${ns.name}`,
      netns: ns.path,
      ifname: "eth0",
      args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=plain-pod;K8S_POD_INFRA_CONTAINER_ID=abc",
    };

    const add = await cni({ command: "ADD", conf, ...ids });
    expect(add.stderr).toBe("");
    expect(add.code).toBe(0);
    const result = assertValidResult(add.json, version);
    const eth0 = result.interfaces?.findIndex((i) => i.name === "eth0" && i.sandbox === ns.path) ?? -1;
    expect(eth0).toBeGreaterThanOrEqual(0);
    expect(result.ips?.[0]?.interface).toBe(eth0);
    expect(result.ips?.[0]?.gateway).toBe(net.gateway);
    expect(await addresses(ns.name, "eth0")).toEqual([result.ips?.[0]?.address as string]);
    if (version === "1.1.0") expect(Object.keys(result.interfaces?.[0] ?? {})).not.toContain("version");

    if (specOf(version).commands.includes("CHECK")) {
      const check = await cni({ command: "CHECK", conf: { ...conf, prevResult: result }, ...ids });
      expect({ code: check.code, stdout: check.stdout }).toEqual({ code: 0, stdout: "" });
    }

    const del = await cni({ command: "DEL", conf: { ...conf, prevResult: result }, ...ids });
    expect({ code: del.code, stdout: del.stdout }).toEqual({ code: 0, stdout: "" });
    expect(await linkInfo(ns.name, "eth0")).toBeUndefined();
    // host-local released the address: only its bookkeeping files are left.
    expect(readdirSync(join(net.dataDir, "ratchet-test")).filter((f) => /^\d/.test(f))).toEqual([]);

    const again = await cni({ command: "DEL", conf, ...ids });
    expect({ code: again.code, stdout: again.stdout }).toEqual({ code: 0, stdout: "" });
  });

  test("chained after bridge in a conflist: prevResult comes back as is, in the asked version", async () => {
    await using net = bridgeNet();
    await using ns = await makeNetns();
    const ids = { containerId: `ctr-${ns.name}`, netns: ns.path, ifname: "eth0" };
    // What libcni does for a list: run the first plugin, then hand its result to the next.
    const first = await run([join(CNI_PATH, "bridge")], {
      env: {
        CNI_COMMAND: "ADD",
        CNI_CONTAINERID: ids.containerId,
        CNI_NETNS: ns.path,
        CNI_IFNAME: "eth0",
        CNI_PATH,
      },
      stdin: JSON.stringify({
        cniVersion: compareVersions(version, BRIDGE_MAX) > 0 ? BRIDGE_MAX : version,
        name: "chain",
        ...net.plugin,
      }),
    });
    expect(first.code).toBe(0);
    const prev = JSON.parse(first.stdout) as CniResultJson;

    const conf = ratchetConf(version, { name: "chain", prevResult: prev });
    const add = await cni({ command: "ADD", conf, ...ids });
    expect(add.code).toBe(0);
    const result = assertValidResult(add.json, version);
    expect(result.interfaces).toEqual(prev.interfaces);
    expect(result.ips?.map((i) => [i.address, i.interface, i.gateway])).toEqual(
      prev.ips?.map((i) => [i.address, i.interface, i.gateway]),
    );

    const del = await cni({ command: "DEL", conf, ...ids });
    expect({ code: del.code, stdout: del.stdout }).toEqual({ code: 0, stdout: "" });
    // Chained ratchet owns nothing of bridge's: its interface stays until bridge's own DEL.
    expect(await linkInfo(ns.name, "eth0")).toBeDefined();
  });
});

describe("other reference plugins as delegate", () => {
  test("ptp + host-local", async () => {
    await using ns = await makeNetns();
    const dataDir = join(scratch.path, `ipam-${ns.name}`);
    const conf = ratchetConf("1.0.0", {
      delegate: { type: "ptp", ipam: { type: "host-local", subnet: "10.202.0.0/24", dataDir } },
    });
    const ids = { containerId: `ctr-${ns.name}`, netns: ns.path, ifname: "eth0" };
    const add = await cni({ command: "ADD", conf, ...ids });
    expect(add.code).toBe(0);
    const result = assertValidResult(add.json, "1.0.0");
    expect(await addresses(ns.name, "eth0")).toEqual([result.ips?.[0]?.address as string]);
    const ping = await run([
      "ip",
      "netns",
      "exec",
      ns.name,
      "ping",
      "-c1",
      "-W2",
      result.ips?.[0]?.gateway as string,
    ]);
    expect(ping.code).toBe(0);
    const del = await cni({ command: "DEL", conf, ...ids });
    expect(del.code).toBe(0);
    expect(await linkInfo(ns.name, "eth0")).toBeUndefined();
  });

  test("loopback", async () => {
    await using ns = await makeNetns();
    const conf = ratchetConf("0.4.0", { delegate: { type: "loopback" } });
    const add = await cni({ command: "ADD", conf, containerId: "lo1", netns: ns.path, ifname: "lo" });
    expect(add.code).toBe(0);
    const result = assertValidResult(add.json, "0.4.0");
    expect(result.interfaces).toEqual([{ name: "lo", mac: "00:00:00:00:00:00", sandbox: ns.path }]);
    expect((await linkInfo(ns.name, "lo"))?.operstate).toBe("UNKNOWN");
  });

  test("macvlan on a host link", async () => {
    // This kernel has no dummy driver: a veth end serves as the master link.
    const master = uniqueName("m");
    await run(["ip", "link", "add", master, "type", "veth", "peer", "name", `${master}p`]);
    try {
      await using ns = await makeNetns();
      const conf = ratchetConf("1.1.0", {
        delegate: {
          type: "macvlan",
          master,
          mode: "bridge",
          ipam: { type: "static", addresses: [{ address: "10.203.0.5/24" }] },
        },
      });
      const ids = { containerId: `ctr-${ns.name}`, netns: ns.path, ifname: "net1" };
      const add = await cni({ command: "ADD", conf, ...ids });
      expect(add.stderr).toBe("");
      expect(add.code).toBe(0);
      const result = assertValidResult(add.json, "1.1.0");
      expect(result.ips?.[0]?.address).toBe("10.203.0.5/24");
      expect((await linkInfo(ns.name, "net1"))?.linkinfo).toMatchObject({ info_kind: "macvlan" });
      expect((await cni({ command: "DEL", conf, ...ids })).code).toBe(0);
      expect(await linkInfo(ns.name, "net1")).toBeUndefined();
    } finally {
      await run(["ip", "link", "delete", master]);
    }
  });

  test("STATUS and GC (1.1.0) pass through; plugins older than 1.1.0 are treated as ready", async () => {
    await using net = bridgeNet();
    // STATUS asks the node agent whether etcd and the API server answer: give it both.
    const conf = ratchetConf("1.1.0", {
      delegate: net.plugin,
      etcd_endpoints: [etcdEndpoint()],
      etcd_prefix: `/rt-test/${uniqueName("s")}`,
      parent_address: "10.0.0.1",
      "cni.dev/valid-attachments": [{ containerID: "a", ifname: "eth0" }],
    });
    const status = await cni({ command: "STATUS", conf });
    expect({ code: status.code, stdout: status.stdout }).toEqual({ code: 0, stdout: "" });
    const gc = await cni({ command: "GC", conf });
    expect({ code: gc.code, stdout: gc.stdout }).toEqual({ code: 0, stdout: "" });
  });

  test("DEL succeeds when the netns is already gone", async () => {
    await using net = bridgeNet();
    const ns = await makeNetns();
    const conf = ratchetConf("1.0.0", { delegate: net.plugin });
    const ids = { containerId: `ctr-${ns.name}`, netns: ns.path, ifname: "eth0" };
    expect((await cni({ command: "ADD", conf, ...ids })).code).toBe(0);
    await ns[Symbol.asyncDispose]();
    const del = await cni({ command: "DEL", conf, ...ids });
    expect({ code: del.code, stdout: del.stdout }).toEqual({ code: 0, stdout: "" });
    const noNetns = await cni({ command: "DEL", conf, containerId: ids.containerId, ifname: "eth0" });
    expect({ code: noNetns.code, stdout: noNetns.stdout }).toEqual({ code: 0, stdout: "" });
  });

  test("a delegate's failure keeps its code and message, and nothing is left", async () => {
    await using ns = await makeNetns();
    // host-local refuses a range outside its subnet: the plugin's own error.
    const conf = ratchetConf("1.0.0", {
      delegate: {
        type: "ptp",
        ipam: {
          type: "host-local",
          subnet: "10.204.0.0/24",
          rangeStart: "10.9.9.9",
          dataDir: join(scratch.path, "bad"),
        },
      },
    });
    const add = await cni({ command: "ADD", conf, containerId: "bad1", netns: ns.path, ifname: "eth0" });
    expect(add.code).toBe(1);
    const err = add.json as { cniVersion: string; code: number; msg: string; details: string };
    expect(err.cniVersion).toBe("1.0.0");
    expect(err.code).toBe(999); // the Go plugins' generic code, kept as it is
    expect(err.msg).toContain("10.9.9.9");
    expect(err.details).toContain("from plugin ptp ADD");
    expect(await linkInfo(ns.name, "eth0")).toBeUndefined();
  });
});
