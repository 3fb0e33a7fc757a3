// A node without parent_interface and parent_address: `ratchet-child --check`, the agent's
// start and the ADD of a ratchet pod say what that means; pods that are not ratchet pods
// pass through as usual, and no log line blames etcd or the agent for it.
import { describe, expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { annotatedPod, makeCluster, plainPod } from "../support/cluster.ts";
import { etcdEndpoint, requireBinary, run, tempDir } from "../support/env.ts";

const SENTENCE = "parent_interface and parent_address are not set: this node has no VXLAN endpoint (VTEP)";

async function check(fields: Record<string, unknown>) {
  using dir = tempDir();
  const conf = join(dir.path, "ratchet.conf");
  writeFileSync(
    conf,
    JSON.stringify({
      cniVersion: "1.0.0",
      name: "t",
      type: "ratchet",
      etcd_endpoints: [etcdEndpoint()],
      ...fields,
    }),
  );
  const r = await run([requireBinary(), "--mode=child", "--check", "--config", conf]);
  return { ...r, out: JSON.parse(r.stdout) as { etcd: { ok: boolean }; vxlan: Record<string, unknown> } };
}

describe("a node without a VXLAN endpoint", () => {
  test("--check says so in its JSON (etcd decides the exit code)", async () => {
    const missing = await check({});
    expect(missing.stderr).toBe("");
    expect(missing.code).toBe(0);
    expect(missing.out.etcd.ok).toBe(true);
    expect(missing.out.vxlan).toEqual({ ok: false, problem: expect.stringContaining(SENTENCE) });
    expect(String(missing.out.vxlan.problem)).toContain("pods without ratchet labels pass through");
    expect((await check({ parent_address: "10.9.9.9" })).out.vxlan).toEqual({ ok: true, vtep: "10.9.9.9" });
    const noAddr = await check({ parent_interface: "lo", host_netns: "/proc/self/ns/net" });
    expect(noAddr.out.vxlan).toEqual({ ok: true, vtep: "127.0.0.1" });
  });

  test("the agent says it at start; plain pods pass, and pods on this node are linked", async () => {
    await using c = await makeCluster({ nodes: 1 });
    const n = c.node(1);
    const conf = { parent_interface: undefined, parent_address: "" };
    c.putPod(plainPod("web"));
    c.putPod(
      annotatedPod("lab", [
        {
          peer: "lab2",
          local_ifname: "l0",
          peer_ifname: "l1",
          local_ip: "10.87.0.1/30",
          peer_ip: "10.87.0.2/30",
        },
      ]),
    );
    c.putPod(annotatedPod("lab2", []));
    const [web, lab, lab2] = [await n.pod("web"), await n.pod("lab"), await n.pod("lab2")];
    expect((await web.add(conf)).code).toBe(0);
    expect((await lab.add(conf)).code).toBe(0);
    const r = await lab2.add(conf);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('"l1"');
    expect(await c.ping(lab, "10.87.0.2")).toBe(true);
    // The node is named without a VTEP: by NODE_NAME or the host name.
    expect((await c.etcdKeys()).some((k) => k.includes("/v1/nodes/") && !k.includes("/v1/nodes/10."))).toBe(
      true,
    );
    for (const p of [web, lab, lab2]) expect((await p.del(conf)).code).toBe(0);
    await lab2.removeNetns();
    const log = readFileSync(n.logFile, "utf8");
    expect(log).toContain(SENTENCE);
    expect(log).not.toContain("etcd not reachable");
    expect(log).not.toContain("node agent unreachable");
    await web.removeNetns();
    await lab.removeNetns();
    await c.assertClean();
  }, 60_000);
});
