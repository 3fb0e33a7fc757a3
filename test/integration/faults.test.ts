// Faults a node sees: the agent killed at any moment, the plugin killed by its runtime,
// the underlay down, a log file that cannot be written, hostile configs. Each ends with
// the bed's clean check: no links, namespaces, records or stray agents left.
import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { childPids, waitFor } from "../support/child.ts";
import { cni, cniEnv } from "../support/cni.ts";
import { makeCluster, type Cluster, type Pod } from "../support/cluster.ts";
import { installedBin, REPO, tempDir, type RunResult } from "../support/env.ts";
import { ipIn, makeNetns } from "../support/netns.ts";
import { rng } from "../support/rng.ts";

const EXAMPLE = join(REPO, "pod_specs", "example.yaml");

/** pair-pod's DEL succeeded; with its netns removed, primary-pod's end goes too. */
async function expectPairGone(c: Cluster, primary: Pod, pair: Pod, del: RunResult): Promise<void> {
  expect({ code: del.code, stdout: del.stdout }).toEqual({ code: 0, stdout: "" });
  await pair.removeNetns();
  await waitFor("primary-pod's end to go", async () => (await c.iface(primary, "in1")) === undefined, 5000);
}

/** DEL of the last pod, then nothing is left. */
async function stopLast(c: Cluster, pod: Pod): Promise<void> {
  expect((await pod.del()).code).toBe(0);
  await pod.removeNetns();
  await c.assertClean();
}

describe("the node agent killed at random points", () => {
  test("50 times in ADD and DEL: after the runtime's retry every link is right, nothing leaks", async () => {
    await using c = await makeCluster({ nodes: 1 });
    c.loadPods(EXAMPLE);
    const n = c.node(1);
    const r = rng(Number(process.env.RATCHET_FUZZ_SEED ?? 7));
    let primary: Pod = await n.pod("primary-pod");
    expect((await primary.add()).code).toBe(0);
    for (let i = 0; i < 50; i++) {
      const pair = await n.pod("pair-pod");
      const delay = Math.floor(r() * 40);
      const adding = pair.add();
      await Bun.sleep(delay);
      for (const pid of n.agents()) process.kill(pid, "SIGKILL");
      let add = await adding;
      if (add.code !== 0) {
        // What kubelet does with a failed sandbox: DEL it, then ADD again.
        expect((add.json as { code: number }).code).toBe(11);
        expect((await pair.del()).code).toBe(0);
        add = await pair.add();
      }
      expect(add.code).toBe(0);
      expect(await c.ping(primary, "192.168.2.101", 5000)).toBe(true);
      // Now DEL with a kill in the middle: DEL must still succeed (or succeed when repeated).
      const deleting = pair.del();
      await Bun.sleep(Math.floor(r() * 20));
      for (const pid of n.agents()) process.kill(pid, "SIGKILL");
      let del = await deleting;
      if (del.code !== 0) del = await pair.del();
      // The veth goes with the DEL (or, at the latest, with pair-pod's netns, asynchronously).
      await expectPairGone(c, primary, pair, del);
      if (i % 10 === 9) {
        // Now and then the other side goes too, and comes back.
        expect((await primary.del()).code).toBe(0);
        await primary.removeNetns();
        primary = await n.pod("primary-pod");
        expect((await primary.add()).code).toBe(0);
      }
    }
    await stopLast(c, primary);
  }, 300_000);
});

describe("the plugin killed by its runtime", () => {
  test("mid-ADD: the runtime's DEL that follows cleans everything", async () => {
    await using c = await makeCluster({ nodes: 1 });
    c.loadPods(EXAMPLE);
    const n = c.node(1);
    const primary = await n.pod("primary-pod");
    expect((await primary.add()).code).toBe(0);
    for (const delay of [0, 5, 10, 20, 40]) {
      const pair = await n.pod("pair-pod");
      const proc = Bun.spawn({
        cmd: [installedBin()],
        env: cniEnv({
          command: "ADD",
          conf: n.conf(),
          containerId: pair.containerId,
          netns: pair.netns.path,
          ifname: pair.ifname,
          args: pair.args,
        }) as Record<string, string>,
        stdin: new TextEncoder().encode(JSON.stringify(n.conf())),
        stdout: "ignore",
        stderr: "ignore",
      });
      await Bun.sleep(delay);
      proc.kill("SIGKILL");
      await proc.exited;
      // Whatever the killed ADD got to build is gone with the DEL.
      await expectPairGone(c, primary, pair, await pair.del());
    }
    await stopLast(c, primary);
  }, 120_000);
});

describe("the underlay", () => {
  test("down while linking across nodes: ADD still succeeds; traffic flows once it is up again", async () => {
    await using c = await makeCluster({ nodes: 2 });
    c.loadPods(EXAMPLE);
    const primary = await c.node(1).pod("primary-pod");
    const pair = await c.node(2).pod("pair-pod");
    await ipIn(c.node(2).host.name, ["link", "set", "ul0", "down"]);
    expect((await primary.add()).code).toBe(0);
    const r = await pair.add();
    expect(r.stdout).toContain("in2");
    expect(r.code).toBe(0);
    expect(await c.ping(pair, "192.168.2.100", 1500)).toBe(false);
    await ipIn(c.node(2).host.name, ["link", "set", "ul0", "up"]);
    expect(await c.ping(pair, "192.168.2.100", 8000)).toBe(true);
    expect((await pair.del()).code).toBe(0);
    expect((await primary.del()).code).toBe(0);
    await pair.removeNetns();
    await primary.removeNetns();
    await c.assertClean();
  }, 120_000);
});

describe("logging that fails is not fatal", () => {
  test.each([
    ["a full disk (/dev/full)", "/dev/full"],
    ["a log path under a regular file (ENOTDIR)", "__FILE__/ratchet.log"],
  ])(
    "%s: ADD and DEL still work, agent included",
    async (_what, logFile) => {
      await using c = await makeCluster({ nodes: 1 });
      c.loadPods(EXAMPLE);
      const path = logFile.replace("__FILE__", join(REPO, "package.json"));
      const n = c.node(1);
      const conf = { log_file: path, log_level: "debug" };
      const primary = await n.pod("primary-pod");
      const pair = await n.pod("pair-pod");
      expect((await primary.add(conf)).code).toBe(0);
      const r = await pair.add(conf);
      expect(r.code).toBe(0);
      expect(await c.ping(primary, "192.168.2.101", 5000)).toBe(true);
      expect((await pair.del(conf)).code).toBe(0);
      expect((await primary.del(conf)).code).toBe(0);
      await pair.removeNetns();
      await primary.removeNetns();
      // The agent (whose output went nowhere) is still fine and answers.
      expect((await n.status(conf)).code).toBe(0);
      // Its agents log to an unusual place: stop them here rather than by log file.
      for (const pid of childPids(path)) process.kill(pid, "SIGKILL");
      await c.assertClean();
    },
    120_000,
  );
});

describe("hostile configs", () => {
  test("deeply nested JSON: code 6 or 7, exit 1, no stack trace", async () => {
    await using ns = await makeNetns();
    const deep = `${"[".repeat(200_000)}${"]".repeat(200_000)}`;
    const r = await cni({ command: "ADD", conf: deep, containerId: "deep", netns: ns.path, ifname: "eth0" });
    expect(r.code).toBe(1);
    expect([6, 7]).toContain((r.json as { code: number }).code);
    expect(r.stdout).not.toContain("    at ");
  });

  test("child_path that does not exist: code 11 naming it, quickly, nothing created", async () => {
    await using ns = await makeNetns();
    using dir = tempDir();
    const conf = {
      cniVersion: "1.0.0",
      name: "x",
      type: "ratchet",
      etcd_host: "127.0.0.1",
      child_path: "/nonexistent/ratchet-child",
      child_socket: join(dir.path, "run", "child.sock"),
      log_file: join(dir.path, "log"),
      delegate: { type: "loopback" },
    };
    const t0 = performance.now();
    const r = await cni({
      command: "ADD",
      conf,
      containerId: "nochild",
      netns: ns.path,
      ifname: "eth0",
      args: "K8S_POD_NAMESPACE=default;K8S_POD_NAME=p",
    });
    expect(r.code).toBe(1);
    expect(r.json).toMatchObject({ code: 11, msg: expect.stringContaining("/nonexistent/ratchet-child") });
    expect(performance.now() - t0).toBeLessThan(6000);
  });
});
