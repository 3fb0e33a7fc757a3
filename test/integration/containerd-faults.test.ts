// Faults under containerd: the runtime restarted (or killed) while pods run, the node agent
// killed while a link is pending and after links are up, and the Kubernetes API server
// stopped or hung while pods come and go.
import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { alive, waitFor } from "../support/child.ts";
import { plainPod } from "../support/cluster.ts";
import { CriBed, type CriNode } from "../support/cri/bed.ts";
import { expectEnd, expectEth0, expectPing, expectTunnel, waitGone } from "../support/cri/checks.ts";
import { REPO } from "../support/env.ts";

const EXAMPLE = join(REPO, "pod_specs", "example.yaml");
const IN1 = "192.168.2.100/24";
const IN2 = "192.168.2.101/24";

async function killAgents(n: CriNode): Promise<number[]> {
  const pids = n.node.agents();
  for (const pid of pids) process.kill(pid, "SIGKILL");
  await waitFor(`${n.name}'s agents to die`, () => pids.every((p) => !alive(p)), 5000);
  return pids;
}

describe("containerd restarted while pods run", () => {
  for (const signal of ["SIGTERM", "SIGKILL"] as const) {
    test(`${signal}: pods and links live on, the new containerd finds its sandboxes, stops and removes them`, async () => {
      await using bed = await CriBed.make();
      bed.cluster.loadPods(EXAMPLE);
      const n = bed.node(1);
      // Both scheduled to the node before it starts: the agent's first list holds them.
      for (const name of ["web", "web2"])
        bed.cluster.putPod({ ...plainPod(name), spec: { nodeName: n.name } });
      const pods = [await n.run("web"), await n.run("primary-pod"), await n.run("pair-pod")];
      const [web, primary, pair] = pods as [(typeof pods)[0], (typeof pods)[0], (typeof pods)[0]];
      await expectPing(bed, primary, "192.168.2.101");
      const shims = n.containerd.shims();
      expect(shims.length).toBeGreaterThanOrEqual(1);

      await n.containerd.stop(signal);
      // Without their runtime the pods run on, links and all.
      for (const s of pods) expect(alive(s.pid)).toBe(true);
      expect(n.containerd.shims().sort()).toEqual(shims.sort());
      await expectPing(bed, pair, "192.168.2.100");

      await n.containerd.start();
      const listed = await n.containerd.cri.listPodSandbox();
      expect(listed.map((s) => s.id).sort()).toEqual(pods.map((s) => s.id).sort());
      for (const s of pods) expect((await s.status()).status.state).toBe("SANDBOX_READY");
      await expectEth0(web);
      const web2 = await n.run("web2");
      await expectEth0(web2);

      // Teardown through the new containerd: CNI DEL reaches the same agent and records.
      await pair.stop();
      await waitGone(primary, "in1");
      for (const s of [...pods, web2]) {
        await s.stop();
        await s.remove();
      }
      await bed.assertClean();
    });
  }
});

describe("the node agent killed (kill -9) under containerd", () => {
  test("while a link is pending, and again once it is up: new agents finish the link and clean up", async () => {
    await using bed = await CriBed.make({ nodes: 2 });
    bed.cluster.loadPods(EXAMPLE);
    bed.cluster.putPod(plainPod("web"));
    const [n1, n2] = [bed.node(1), bed.node(2)];

    const primary = await n1.run("primary-pod"); // pair-pod is not there yet: in1 waits
    const [first] = await killAgents(n1);
    expect(first).toBeDefined();
    const pair = await n2.run("pair-pod");
    await expectEnd(bed, pair, "in2", { kind: "vxlan", ips: [IN2] });
    // Node1 has no agent to build its end; the next CNI call there starts one, which does.
    expect(await primary.iface("in1")).toBeUndefined();
    const web = await n1.run("web");
    const agents = n1.node.agents();
    expect(agents).toHaveLength(1);
    expect(agents).not.toContain(first as number);
    const a = await expectEnd(bed, primary, "in1", { kind: "vxlan", ips: [IN1] });
    const b = await expectEnd(bed, pair, "in2", { kind: "vxlan", ips: [IN2] });
    expectTunnel(a, n1, b, n2);
    await expectPing(bed, primary, "192.168.2.101");

    // Both agents die with the link up: the kernel keeps it; the DELs start new agents.
    await killAgents(n1);
    await killAgents(n2);
    await expectPing(bed, pair, "192.168.2.100");
    for (const s of [pair, primary, web]) {
      await s.stop();
      await s.remove();
    }
    await bed.assertClean();
  });
});

describe("the API server stopped or hung under containerd", () => {
  for (const fault of ["stopped", "hung"] as const) {
    // Pods the agent's cache holds are served from memory; a pod it never saw cannot be
    // classified while the API server is away, and gets an error (code 11) at the bound.
    test(`${fault}: a cached plain pod still runs, an unseen pod gets an error and leaves nothing`, async () => {
      await using bed = await CriBed.make();
      bed.cluster.loadPods(EXAMPLE);
      const n = bed.node(1);
      // Both scheduled to the node before it starts: the agent's first list holds them.
      for (const name of ["web", "web2"])
        bed.cluster.putPod({ ...plainPod(name), spec: { nodeName: n.name } });
      const web = await n.run("web"); // the agent is up and has read the API server

      if (fault === "stopped") await bed.cluster.api.stop();
      else bed.cluster.api.setDelay(120_000);
      const web2 = await n.run("web2");
      await expectEth0(web2);
      const err = await n.runFails("unseen-pod");
      expect(err.details).toContain('plugin type="ratchet"');
      expect((await n.containerd.cri.listPodSandbox()).map((s) => s.id).sort()).toEqual(
        [web.id, web2.id].sort(),
      );

      for (const s of [web, web2]) {
        await s.stop();
        await s.remove();
      }
      await bed.assertClean();
    });
  }
});
