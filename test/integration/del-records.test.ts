// A DEL of a container this node's agent attached answers once its link ends are gone; its
// records leave etcd right after, in the pod's turn, from a journal written before the answer.
import { describe, expect, test } from "bun:test";
import { mkdirSync, readFileSync, rmSync } from "node:fs";
import { waitFor } from "../support/child.ts";
import { addExamplePair, makeCluster } from "../support/cluster.ts";

describe("a DEL's records", () => {
  test("go before the pod's next ADD, which they never undo", async () => {
    await using c = await makeCluster({ nodes: 1 });
    const { n, primary, pair: first } = await addExamplePair(c);
    expect(await c.ping(first, "192.168.2.100")).toBe(true);

    // The pair's sandbox goes and a new one comes at once, as a restarted pod's does.
    expect((await first.del()).code).toBe(0);
    expect(await c.iface(primary, "in1")).toBeUndefined();
    await first.removeNetns();
    const again = await n.pod("pair-pod");
    expect((await again.add()).code).toBe(0);

    // The link is back, and etcd names the new container, not the old one.
    expect(await c.iface(again, "in2")).toBeDefined();
    expect(await c.ping(again, "192.168.2.100")).toBe(true);
    const entries = await c.etcdEntries();
    const endpoint = entries.get(`${c.etcdPrefix}/v1/endpoints/default/pair-pod`);
    expect(JSON.parse(endpoint ?? "{}").containerId).toBe(again.containerId);
    for (const [k, value] of entries) expect(`${k} ${value}`).not.toContain(first.containerId);
    // Nothing is left in the journal once the records went.
    await waitFor(
      "the journal to empty",
      () => readFileSync(`${n.socket}.deferred-del.jsonl`, "utf8") === "",
    );
    await c.stopAllAndAssertClean();
  });

  test("go before the answer when the journal cannot be written: an answered DEL never leaves them behind", async () => {
    await using c = await makeCluster({ nodes: 1 });
    const { n, pair } = await addExamplePair(c);
    // A directory where the journal's temporary file goes: the journal cannot be written.
    const blocker = `${n.socket}.deferred-del.jsonl.tmp`;
    mkdirSync(blocker);
    try {
      expect((await pair.del()).code).toBe(0);
      // Read at once, no waiting: the records went before the answer.
      const keys = await c.recordKeys();
      expect(keys.filter((k) => k.includes("/endpoints/default/pair-pod"))).toEqual([]);
      expect(keys.some((k) => k.includes("/endpoints/default/primary-pod"))).toBe(true);
      expect(n.logTail(100)).toContain("could not save the deferred DEL journal");
    } finally {
      rmSync(blocker, { recursive: true, force: true });
    }
    await pair.removeNetns();
    await c.stopAllAndAssertClean();
  });
});
