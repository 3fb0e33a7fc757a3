// The parent asks the node agent about each Kubernetes pod: ordinary pods pass through (from
// the agent's pod cache), a pod the API server does not know goes to the delegate, failures to
// read a pod the cache lacks or bad ratchet labels stop the ADD before anything is created.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { startApiServer, type ApiServer } from "../support/apiserver.ts";
import { killChildren, waitFor } from "../support/child.ts";
import { cni } from "../support/cni.ts";
import { REPO, tempDir } from "../support/env.ts";
import { linkInfo, makeNetns } from "../support/netns.ts";

const scratch = tempDir("ratchet-classify-");
const NODE = "classify-node";
let api: ApiServer;
let conf: Record<string, unknown>;

beforeAll(() => {
  api = startApiServer({ podFiles: [join(REPO, "pod_specs", "example.yaml")] });
  api.putPod({
    kind: "Pod",
    metadata: { name: "web", namespace: "default", labels: { app: "web" } },
    spec: { nodeName: NODE },
  });
  api.putPod({
    kind: "Pod",
    metadata: {
      name: "bad-labels",
      namespace: "default",
      labels: {
        ratchet: "true",
        "ratchet.pair_name": "x",
        "ratchet.local_ifname": "much-too-long-name",
        "ratchet.pair_ifname": "in2",
      },
    },
    spec: { nodeName: NODE },
  });
  conf = {
    cniVersion: "1.0.0",
    name: "classify",
    type: "ratchet",
    etcd_host: "127.0.0.1",
    kubeconfig: api.writeKubeconfig(scratch.path, { auth: "token" }),
    node_name: NODE,
    log_file: join(scratch.path, "ratchet.log"),
    child_socket: join(scratch.path, "run", "child.sock"),
    delegate: { type: "loopback" },
    boot_network: { type: "loopback" },
  };
});
afterAll(async () => {
  await killChildren(join(scratch.path, "ratchet.log"));
  await api.stop();
  scratch[Symbol.dispose]();
});

const args = (ns: string, name: string) =>
  `IgnoreUnknown=1;K8S_POD_NAMESPACE=${ns};K8S_POD_NAME=${name};K8S_POD_INFRA_CONTAINER_ID=c`;

describe("classification through the node agent", () => {
  test("a pod without the ratchet label passes through to the delegate, from the agent's pod cache", async () => {
    await using ns = await makeNetns();
    const add = (id: string) =>
      cni({
        command: "ADD",
        conf,
        containerId: id,
        netns: ns.path,
        ifname: "lo",
        args: args("default", "web"),
      });
    const first = await add("web-1");
    expect(first.stderr).toBe("");
    expect(first.code).toBe(0);
    expect((first.json as { interfaces: Array<{ name: string }> }).interfaces.map((i) => i.name)).toEqual([
      "lo",
    ]);
    // Once the agent watches this node's pods, it reads them from memory: no GET at all.
    await waitFor("the agent's pod watch", () => api.watchCount === 1);
    const mark = api.requests.length;
    expect((await add("web-1b")).code).toBe(0);
    expect(api.requests.slice(mark)).toEqual([]);
  });

  test("a pod the API does not know (a static pod): the delegate serves it, after one GET", async () => {
    await using ns = await makeNetns();
    const r = await cni({
      command: "ADD",
      conf,
      containerId: "ghost-1",
      netns: ns.path,
      ifname: "eth0",
      args: args("default", "ghost"),
      env: {},
    });
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect((r.json as { interfaces: Array<{ name: string }> }).interfaces.map((i) => i.name)).toEqual(["lo"]);
    expect(api.requests.filter((q) => q.path === "/api/v1/namespaces/default/pods/ghost")).toMatchObject([
      { method: "GET", status: 404 },
    ]);
  });

  test("bad ratchet labels: code 103 naming pod, label, value and problem; nothing created", async () => {
    await using ns = await makeNetns();
    const r = await cni({
      command: "ADD",
      conf: {
        ...conf,
        boot_network: {
          type: "ptp",
          ipam: { type: "host-local", subnet: "10.207.0.0/24", dataDir: join(scratch.path, "ipam") },
        },
      },
      containerId: "bad-1",
      netns: ns.path,
      ifname: "eth0",
      args: args("default", "bad-labels"),
    });
    expect(r.code).toBe(1);
    const err = r.json as { code: number; msg: string };
    expect(err.code).toBe(103);
    expect(err.msg).toContain("default/bad-labels");
    expect(err.msg).toContain("ratchet.local_ifname");
    expect(err.msg).toContain('"much-too-long-name"');
    expect(await linkInfo(ns.name, "eth0")).toBeUndefined();
  });

  test("API server failing: a cached pod passes; one the cache lacks gets code 11, nothing created", async () => {
    await using ns = await makeNetns();
    api.setFault({ status: 503, message: "etcdserver: leader changed" });
    try {
      const cached = await cni({
        command: "ADD",
        conf,
        containerId: "web-2",
        netns: ns.path,
        ifname: "lo",
        args: args("default", "web"),
      });
      expect(cached.code).toBe(0);
      const r = await cni({
        command: "ADD",
        conf,
        containerId: "new-2",
        netns: ns.path,
        ifname: "lo",
        args: args("default", "not-cached"),
      });
      expect(r.code).toBe(1);
      expect(r.json).toMatchObject({ code: 11, msg: expect.stringContaining("503") });
    } finally {
      api.setFault(undefined);
    }
  });

  test("API server too slow: for a pod the cache lacks, code 11 after the pod read deadline (10 s), not a hang", async () => {
    await using ns = await makeNetns();
    api.setDelay(15_000);
    try {
      const t0 = performance.now();
      const r = await cni({
        command: "ADD",
        conf,
        containerId: "new-3",
        netns: ns.path,
        ifname: "lo",
        args: args("default", "not-cached"),
      });
      expect(r.code).toBe(1);
      expect(r.json).toMatchObject({ code: 11, msg: expect.stringContaining("no answer within") });
      expect(performance.now() - t0).toBeLessThan(14_000);
    } finally {
      api.setDelay(0);
    }
  });
});
