// The two-node test bed itself (test/support/cluster.ts): its underlay works, its nodes run
// separate agents, its checks see leftovers, and dispose leaves nothing behind.
import { describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { childPids } from "../support/child.ts";
import { makeCluster, plainPod } from "../support/cluster.ts";
import { REPO, run } from "../support/env.ts";
import { ipIn, linkInfo } from "../support/netns.ts";

describe("test bed", () => {
  test("two hosts on one switch: ul0 up with its own address, hosts ping each other", async () => {
    await using c = await makeCluster({ nodes: 2 });
    const [n1, n2] = [c.node(1), c.node(2)];
    expect(n1.underlay).not.toBe(n2.underlay);
    for (const n of c.nodes) {
      const ul0 = await linkInfo(n.host.name, "ul0");
      expect(ul0?.operstate).toBe("UP");
      expect(await n.strayHostLinks()).toEqual([]);
      expect(n.conf().parent_address).toBe(n.underlay);
      expect(n.conf().host_netns).toBe(`/var/run/netns/${n.host.name}`);
    }
    expect(await c.ping(n1, n2.underlay)).toBe(true);
    expect(await c.ping(n2, n1.underlay)).toBe(true);
    // Nothing of the bed in the root netns.
    expect(await linkInfo(undefined, "ul0")).toBeUndefined();
  });

  test("each cluster has its own prefix, subnet, API server and per-node socket and log", async () => {
    await using a = await makeCluster({ nodes: 2 });
    await using b = await makeCluster({ nodes: 1, autoParentAddress: true });
    expect(a.etcdPrefix).not.toBe(b.etcdPrefix);
    expect(a.subnet).not.toBe(b.subnet);
    expect(a.api.url).not.toBe(b.api.url);
    const [c1, c2] = [a.node(1).conf(), a.node(2).conf()];
    expect(c1.child_socket).not.toBe(c2.child_socket);
    expect(c1.log_file).not.toBe(c2.log_file);
    expect(c1.etcd_prefix).toBe(c2.etcd_prefix);
    expect(b.node(1).conf().parent_address).toBe("");
    expect(a.node(1).conf({ cniVersion: "1.1.0" }).cniVersion).toBe("1.1.0");
    expect(() => a.node(3)).toThrow("not node 3");
  });

  test("a plain pod on each node passes through to loopback; one agent per node", async () => {
    await using c = await makeCluster({ nodes: 2 });
    c.putPod(plainPod("web-a"));
    c.putPod(plainPod("web-b"));
    const a = await c.node(1).pod("web-a");
    const b = await c.node(2).pod("web-b");
    expect(a.netns.path).not.toBe(b.netns.path);
    expect(a.containerId).not.toBe(b.containerId);
    for (const p of [a, b]) {
      const r = await p.add();
      expect(r.stderr).toBe("");
      expect(r.code).toBe(0);
      expect((r.json as { interfaces: Array<{ name: string }> }).interfaces.map((i) => i.name)).toEqual([
        "lo",
      ]);
      expect(await c.ifaceNames(p)).toEqual([]);
    }
    const agents1 = c.node(1).agents();
    const agents2 = c.node(2).agents();
    expect(agents1).toHaveLength(1);
    expect(agents2).toHaveLength(1);
    expect(agents1[0]).not.toBe(agents2[0]);
    for (const p of [a, b]) {
      const r = await p.stop();
      expect(r.code).toBe(0);
      expect(p.netnsExists).toBe(false);
    }
    await c.assertClean();
    expect(c.node(1).agents()).toEqual([]);
  });

  test("a running agent sees the pod netns made after it started, and their removal", async () => {
    await using c = await makeCluster({ nodes: 1 });
    c.putPod(plainPod("web-a"));
    const a = await c.node(1).pod("web-a");
    expect((await a.add()).code).toBe(0);
    const [agent] = c.node(1).agents();
    const fsType = async (path: string) =>
      (await run(["nsenter", "-t", String(agent), "-m", "stat", "-f", "-c", "%T", path])).stdout.trim();
    // The agent's mount namespace hides the checkout...
    expect(
      (await run(["nsenter", "-t", String(agent), "-m", "test", "-e", join(REPO, "package.json")])).code,
    ).toBe(1);
    // ...but follows `ip netns add` and `ip netns delete` done after it started.
    const later = await c.node(1).pod("web-b");
    expect(await fsType(later.netns.path)).toBe("nsfs");
    await later.removeNetns();
    expect(await fsType(later.netns.path)).not.toBe("nsfs");
    expect((await a.stop()).code).toBe(0);
    await c.assertClean();
  });

  test("hand-made veth and VXLAN (as ratchet's) work across the bed; iface, addrs read them", async () => {
    await using c = await makeCluster({ nodes: 2 });
    const [n1, n2] = [c.node(1), c.node(2)];
    const a = await n1.pod("a");
    const b = await n1.pod("b");
    const x = await n2.pod("x");
    // veth a:v0 <-> b:v1 on node 1, made straight in the pods' netns.
    await ipIn(a.netns.name, [
      "link",
      "add",
      "v0",
      "mtu",
      "1400",
      "address",
      "02:00:00:00:00:01",
      "type",
      "veth",
      "peer",
      "name",
      "v1",
      "netns",
      b.netns.name,
    ]);
    // VXLAN a:x0 (node 1) <-> x:x1 (node 2): made in the host netns on ul0, then moved.
    for (const [n, pod, name, remote] of [
      [n1, a, "x0", n2.underlay],
      [n2, x, "x1", n1.underlay],
    ] as const) {
      await ipIn(n.host.name, [
        "link",
        "add",
        name,
        "type",
        "vxlan",
        "id",
        "11",
        "remote",
        remote,
        "local",
        n.underlay,
        "dev",
        "ul0",
        "dstport",
        "4789",
      ]);
      await ipIn(n.host.name, ["link", "set", name, "netns", pod.netns.name]);
    }
    for (const [pod, dev, addr, addr6] of [
      [a, "v0", "10.90.1.1/24", "fd90:1::1/64"],
      [b, "v1", "10.90.1.2/24", "fd90:1::2/64"],
      [a, "x0", "10.90.2.1/24", "fd90:2::1/64"],
      [x, "x1", "10.90.2.2/24", "fd90:2::2/64"],
    ] as const) {
      await ipIn(pod.netns.name, ["addr", "add", addr, "dev", dev]);
      await ipIn(pod.netns.name, ["addr", "add", addr6, "dev", dev]);
      await ipIn(pod.netns.name, ["link", "set", dev, "up"]);
    }
    const v0 = await c.iface(a, "v0");
    expect(v0).toMatchObject({
      name: "v0",
      kind: "veth",
      mtu: 1400,
      mac: "02:00:00:00:00:01",
      up: true,
      vni: undefined,
    });
    const x0 = await c.iface(a, "x0");
    expect(x0).toMatchObject({
      kind: "vxlan",
      vni: 11,
      remote: n2.underlay,
      local: n1.underlay,
      mtu: 1450,
      up: true,
    });
    expect(await c.iface(a, "nope")).toBeUndefined();
    expect(await c.addrs(x, "x1")).toEqual(["10.90.2.2/24", "fd90:2::2/64"]);
    expect((await c.ifaceNames(a)).sort()).toEqual(["v0", "x0"]);
    expect(await c.ping(a, "10.90.1.2")).toBe(true);
    expect(await c.ping(a, "10.90.2.2")).toBe(true);
    expect(await c.ping(x, "10.90.2.1")).toBe(true);
    // IPv6 too, once duplicate address detection is done (ping retries meanwhile).
    expect(await c.ping(a, "fd90:1::2", 8000)).toBe(true);
    expect(await c.ping(a, "fd90:2::2", 8000)).toBe(true);
    expect(await c.ping(a, "10.90.3.9", 300)).toBe(false);
    // The devices live in the pods' netns: the hosts stay clean, and go with the pods.
    expect(await n1.strayHostLinks()).toEqual([]);
    for (const p of [a, b, x]) await p.removeNetns();
    await c.assertClean();
  });

  test("a recreated pod gets a new container id and netns; the old sandbox is kept", async () => {
    await using c = await makeCluster({ nodes: 2 });
    const a = await c.node(1).pod("web-a");
    const a2 = await a.recreate(c.node(2));
    expect(a2.name).toBe("web-a");
    expect(a2.node).toBe(c.node(2));
    expect(a2.containerId).not.toBe(a.containerId);
    expect(a2.netns.path).not.toBe(a.netns.path);
    expect(a.netnsExists).toBe(true);
    await expect(c.assertClean()).rejects.toThrow("still exists");
    await a.removeNetns();
    await a2.removeNetns();
    await c.assertClean();
  });

  test("assertClean reports leftover keys and stray host links", async () => {
    await using c = await makeCluster({ nodes: 2 });
    await c.etcdPut("v1/leftover", "x");
    expect(await c.etcdKeys()).toEqual([`${c.etcdPrefix}/v1/leftover`]);
    await ipIn(c.node(2).host.name, ["link", "add", "stray0", "type", "veth", "peer", "name", "stray1"]);
    const err = await c.assertClean({ etcdWaitMs: 200 }).then(
      () => undefined,
      (e: Error) => e,
    );
    expect(err?.message).toContain(`${c.etcdPrefix}/v1/leftover`);
    expect(err?.message).toContain("node2: stray links");
    expect(err?.message).toContain("stray0");
  });

  test("dispose removes netns, agents, keys, API server and files, even mid-test", async () => {
    let names: string[] = [];
    let logs: string[] = [];
    let dir = "";
    let prefix = "";
    let url = "";
    {
      await using c = await makeCluster({ nodes: 2 });
      c.putPod(plainPod("web-a"));
      const a = await c.node(1).pod("web-a");
      expect((await a.add()).code).toBe(0);
      await c.etcdPut("v1/endpoints/default/web-a", "{}");
      names = [c.switchName ?? "", ...c.nodes.map((n) => n.host.name), a.netns.name];
      logs = c.nodes.map((n) => n.logFile);
      dir = c.dir;
      prefix = c.etcdPrefix;
      url = c.api.url;
      expect(childPids(logs[0] as string)).toHaveLength(1);
    }
    for (const n of names) expect(existsSync(`/var/run/netns/${n}`)).toBe(false);
    for (const l of logs) expect(childPids(l)).toEqual([]);
    expect(existsSync(dir)).toBe(false);
    const res = await fetch(`${process.env.RATCHET_TEST_ETCD}/v3/kv/range`, {
      method: "POST",
      body: JSON.stringify({
        key: Buffer.from(`${prefix}/`).toString("base64"),
        range_end: Buffer.from(`${prefix}0`).toString("base64"),
        count_only: true,
      }),
    });
    expect(((await res.json()) as { count?: string }).count ?? "0").toBe("0");
    await expect(fetch(`${url}/healthz`, { tls: { rejectUnauthorized: false } })).rejects.toThrow();
  });
});
