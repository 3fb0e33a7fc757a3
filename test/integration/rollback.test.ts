// An ADD that fails after its boot_network ADD succeeded must undo that ADD (bridge.go's
// "success" flag, here around the agent's attach). Run in-process with an agent that fails.
import { expect, test } from "bun:test";
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { CniError, Code } from "../../src/cni/errors.ts";
import type { Agent } from "../../src/parent/classify.ts";
import { run, tempDir, uniqueName } from "../support/env.ts";
import { runInProcess, stubAgent } from "../support/in-process.ts";
import { linkInfo, makeNetns } from "../support/netns.ts";

/** A standalone ratchet config (loopback delegate) logging under `dir`, with this boot network. */
function ratchetConf(dir: string, boot: Record<string, unknown>): Record<string, unknown> {
  return {
    cniVersion: "1.0.0",
    name: "rb",
    type: "ratchet",
    etcd_host: "127.0.0.1",
    log_file: join(dir, "log"),
    delegate: { type: "loopback" },
    boot_network: boot,
  };
}

/** One ADD through the plugin's code in this process, with `agent` behind it. */
const add = (conf: Record<string, unknown>, containerId: string, netns: string, agent: Agent) =>
  runInProcess("ADD", conf, { containerId, netns }, agent);

test("ADD failing after boot_network ADD runs boot_network DEL and reports the failure", async () => {
  using dir = tempDir();
  await using ns = await makeNetns();
  const bridge = uniqueName("b");
  const dataDir = join(dir.path, "ipam");
  const conf = ratchetConf(dir.path, {
    type: "bridge",
    bridge,
    ipam: { type: "host-local", subnet: "10.206.0.0/24", dataDir },
  });
  const agent = stubAgent({
    attach: async () => {
      throw new CniError(Code.TryAgainLater, "etcd unreachable (test)");
    },
  });
  try {
    const { code, out } = await add(conf, "rb1", ns.path, agent);
    expect(code).toBe(1);
    expect(JSON.parse(out)).toEqual({ cniVersion: "1.0.0", code: 11, msg: "etcd unreachable (test)" });
    // The boot network's interface and address are gone again.
    expect(await linkInfo(ns.name, "eth0")).toBeUndefined();
    expect(readdirSync(join(dataDir, "rb")).filter((f) => /^\d/.test(f))).toEqual([]);
  } finally {
    await run(["ip", "link", "delete", bridge]);
  }
});

test("boot_network ADD failing while the links were attached beside it: the links are detached, the plugin's failure reported", async () => {
  using dir = tempDir();
  await using ns = await makeNetns();
  // host-local refuses a range it cannot parse: the boot network fails after it started.
  const conf = ratchetConf(dir.path, { type: "ptp", ipam: { type: "host-local", subnet: "not-a-subnet" } });
  const calls: string[] = [];
  const agent = stubAgent({
    attach: async () => {
      calls.push("attach");
      return [{ iface: { name: "net1", sandbox: ns.path }, ips: [] }];
    },
    booted: async () => {
      calls.push("booted");
    },
    detach: async () => {
      calls.push("detach");
      return true;
    },
  });
  const { code, out } = await add(conf, "rb2", ns.path, agent);
  expect(code).toBe(1);
  const err = JSON.parse(out) as { code: number; msg: string };
  expect(err.msg).toContain("not-a-subnet");
  // ratchet's part was undone; the boot network's interface was never passed on.
  expect(calls).toEqual(["attach", "detach"]);
  expect(await linkInfo(ns.name, "eth0")).toBeUndefined();
});
