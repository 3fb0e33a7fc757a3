// A ratchet pod's DEL: the boot network's DEL starts as soon as the agent says it attached
// the container, beside the removal of the links (as at ADD, neither needs the other). Run
// in-process with a stand-in agent; the boot network is Debian's ptp + host-local.
import { expect, test } from "bun:test";
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { CniError, Code } from "../../src/cni/errors.ts";
import type { Agent } from "../../src/parent/classify.ts";
import { tempDir } from "../support/env.ts";
import { runInProcess, stubAgent } from "../support/in-process.ts";
import { linkInfo, makeNetns } from "../support/netns.ts";

function conf(dir: string): Record<string, unknown> {
  return {
    cniVersion: "1.0.0",
    name: "db",
    type: "ratchet",
    etcd_host: "127.0.0.1",
    log_file: join(dir, "log"),
    delegate: { type: "loopback" },
    boot_network: {
      type: "ptp",
      ipam: { type: "host-local", subnet: "10.207.0.0/24", dataDir: join(dir, "ipam") },
    },
  };
}

const ARGS = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=db";
const call = (command: "ADD" | "DEL", c: Record<string, unknown>, netns: string, agent: Partial<Agent>) =>
  runInProcess(command, c, { containerId: "db1", netns, args: ARGS }, stubAgent(agent));

const leases = (dir: string) => readdirSync(join(dir, "ipam", "db")).filter((f) => /^\d/.test(f));

/** A detach that says it owns the container, then waits (bounded) for eth0 to go. */
function slowDetach(netnsName: string, then: () => Promise<boolean>) {
  const seen = { bootGoneFirst: false };
  const detach: Agent["detach"] = async (_env, _conf, onOwned) => {
    onOwned?.();
    for (let i = 0; i < 100 && !seen.bootGoneFirst; i++) {
      if ((await linkInfo(netnsName, "eth0")) === undefined) seen.bootGoneFirst = true;
      else await Bun.sleep(20);
    }
    return then();
  };
  return { seen, detach };
}

test("the boot network's DEL runs while the agent removes the links", async () => {
  using dir = tempDir();
  await using ns = await makeNetns();
  const c = conf(dir.path);
  expect(await call("ADD", c, ns.path, {})).toMatchObject({ code: 0 });
  expect(await linkInfo(ns.name, "eth0")).toBeDefined();
  expect(leases(dir.path)).toHaveLength(1);

  const { seen, detach } = slowDetach(ns.name, async () => true);
  const { code, out } = await call("DEL", c, ns.path, { detach });
  expect({ code, out }).toEqual({ code: 0, out: "" });
  // Gone while the agent was still at work, not after its answer.
  expect(seen.bootGoneFirst).toBe(true);
  expect(await linkInfo(ns.name, "eth0")).toBeUndefined();
  expect(leases(dir.path)).toEqual([]);
});

test("the agent failing after it said so: its error is reported, the boot network is released once", async () => {
  using dir = tempDir();
  await using ns = await makeNetns();
  const c = conf(dir.path);
  expect(await call("ADD", c, ns.path, {})).toMatchObject({ code: 0 });
  const { seen, detach } = slowDetach(ns.name, async () => {
    throw new CniError(Code.TryAgainLater, "etcd unreachable (test)");
  });
  const { code, out } = await call("DEL", c, ns.path, { detach });
  expect(code).toBe(1);
  expect(JSON.parse(out)).toMatchObject({ code: 11, msg: "etcd unreachable (test)" });
  expect(seen.bootGoneFirst).toBe(true);
  expect(leases(dir.path)).toEqual([]);
});

test("an agent that never says it owns the container: the plugins' DEL waits for its answer", async () => {
  using dir = tempDir();
  await using ns = await makeNetns();
  const c = conf(dir.path);
  expect(await call("ADD", c, ns.path, {})).toMatchObject({ code: 0 });
  let presentAtAnswer = false;
  const detach: Agent["detach"] = async () => {
    await Bun.sleep(100);
    presentAtAnswer = (await linkInfo(ns.name, "eth0")) !== undefined;
    return true;
  };
  expect((await call("DEL", c, ns.path, { detach })).code).toBe(0);
  expect(presentAtAnswer).toBe(true);
  expect(await linkInfo(ns.name, "eth0")).toBeUndefined();
  expect(leases(dir.path)).toEqual([]);
});
