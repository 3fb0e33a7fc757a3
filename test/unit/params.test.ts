// The agent's check of a request's params: the config is checked once per distinct JSON, the
// rest (env, boot, ...) on every request, and a bad value is refused whether or not its
// config was seen before.
import { describe, expect, test } from "bun:test";
import { checkParams } from "../../src/rpc/schemas.ts";

const conf = { cniVersion: "1.0.0", name: "t", type: "ratchet", etcd_endpoints: ["http://127.0.0.1:2379"] };
const env = (containerId: string) => ({
  command: "ADD",
  containerId,
  netns: "/var/run/netns/x",
  ifname: "eth0",
  path: ["/usr/lib/cni"],
  pod: { namespace: "default", name: "web" },
});

describe("checkParams", () => {
  test("a config seen before gives the same checked config; the env is still checked", () => {
    const first = checkParams("classify", { env: env("c1"), conf });
    const again = checkParams("classify", { env: env("c2"), conf: { ...conf } });
    expect(first.success && again.success).toBe(true);
    if (!first.success || !again.success) return;
    expect(again.output.conf).toEqual(first.output.conf);
    expect(again.output.env.containerId).toBe("c2");
    // Defaults filled in by the schema are there on the remembered config too.
    expect(again.output.conf.child_socket).toBe("/run/ratchet/child.sock");
    const badEnv = checkParams("classify", { env: { ...env("c3"), netns: "relative/path" }, conf });
    expect(badEnv.success).toBe(false);
  });

  test("a bad config is refused every time, naming the field", () => {
    for (let i = 0; i < 2; i++) {
      const r = checkParams("attach", { env: env("c4"), conf: { ...conf, child_socket: "relative.sock" } });
      expect(r.success).toBe(false);
      if (r.success) return;
      expect(JSON.stringify(r.issues[0]?.path?.map((p) => p.key))).toContain("child_socket");
    }
  });

  test("a config with a large prevResult is checked, not remembered, and still right", () => {
    const interfaces = Array.from({ length: 400 }, (_, i) => ({
      name: `net${i}`,
      sandbox: "/var/run/netns/x",
    }));
    const big = { ...conf, prevResult: { cniVersion: "1.0.0", interfaces, ips: [] } };
    const r = checkParams("check", { env: { ...env("c5"), command: "CHECK" }, conf: big });
    expect(r.success).toBe(true);
    if (r.success)
      expect((r.output.conf.prevResult as { interfaces: unknown[] }).interfaces).toHaveLength(400);
  });
});
