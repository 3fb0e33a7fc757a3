// The node's pod cache (src/pods/cache.ts) through the real PodReader (Bun's fetch with the
// kubeconfig's private CA) against the stand-in API server: list, watch, resume, 410 Gone,
// the server going away and coming back on the same port.
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { PodCache } from "../../src/pods/cache.ts";
import { PodReader } from "../../src/pods/kube.ts";
import { Logger } from "../../src/log.ts";
import { startApiServer, type ApiServer } from "../support/apiserver.ts";
import { waitFor } from "../support/child.ts";
import { tempDir } from "../support/env.ts";

function pod(name: string, node: string | undefined, labels: Record<string, string> = {}) {
  return { kind: "Pod", metadata: { name, namespace: "lab", labels }, spec: node ? { nodeName: node } : {} };
}

/** A started cache of node n1 and what it needs; everything goes with dispose. */
async function setup(api: ApiServer, auth: "token" | "cert" = "token") {
  const dir = tempDir();
  const logFile = join(dir.path, "cache.log");
  const log = new Logger("test", "debug", logFile);
  const reader = new PodReader({
    kubeconfig: api.writeKubeconfig(dir.path, { auth, inline: auth === "token" }),
  });
  const cache = new PodCache(reader, "n1", log);
  cache.start();
  await waitFor("the cache to list and watch", () => cache.synced && cache.watching && api.watchCount === 1);
  return {
    cache,
    log: () => readFileSync(logFile, "utf8"),
    [Symbol.dispose]() {
      cache.close();
      reader.close();
      log.close();
      dir[Symbol.dispose]();
    },
  };
}

/** The list and watch requests the server has seen, in order: "list" or "watch@<resourceVersion>". */
function podRequests(api: ApiServer): string[] {
  return api.requests
    .filter((r) => r.path === "/api/v1/pods")
    .map((r) => {
      const q = new URLSearchParams(r.query);
      expect(q.get("fieldSelector")).toBe("spec.nodeName=n1");
      return q.get("watch") ? `watch@${q.get("resourceVersion")}` : "list";
    });
}

describe("the pod cache", () => {
  test.each(["token", "cert"] as const)(
    "lists this node's pods, then follows one watch (%s auth)",
    async (auth) => {
      await using api = startApiServer({ clientCert: auth === "cert" });
      api.putPod(pod("a", "n1", { ratchet: "true" }));
      api.putPod(pod("b", "n2"));
      api.putPod(pod("c", undefined));
      using s = await setup(api, auth);
      const { cache } = s;
      expect(cache.size).toBe(1);
      expect(cache.get("lab", "a")?.labels).toEqual({ ratchet: "true" });

      api.putPod(pod("d", "n1"));
      await waitFor("d to arrive", () => cache.get("lab", "d"));
      api.putPod(pod("c", "n1")); // scheduled here
      await waitFor("c to arrive", () => cache.get("lab", "c"));
      api.putPod(pod("a", "n1", { ratchet: "false" }));
      await waitFor("a's new labels", () => cache.get("lab", "a")?.labels.ratchet === "false");
      api.bindPod("lab", "d", "n2"); // moved away: gone from this node
      await waitFor("d to leave", () => cache.get("lab", "d") === undefined);
      expect(cache.deleted("lab", "d")?.name).toBe("d");
      expect(api.deletePod("lab", "c")).toBe(true);
      await waitFor("c to go", () => cache.get("lab", "c") === undefined);
      expect(cache.deleted("lab", "c")?.name).toBe("c");
      expect(cache.get("lab", "b")).toBeUndefined();
      // One list and one watch for all of it; never a GET of a pod.
      expect(podRequests(api)).toEqual(["list", expect.stringMatching(/^watch@\d+$/)]);
      expect(api.requests.length).toBe(2);
    },
  );

  test("a watch that ends is resumed from the last resourceVersion (a bookmark's too), without a list", async () => {
    await using api = startApiServer();
    api.putPod(pod("a", "n1"));
    using s = await setup(api);
    api.putPod(pod("elsewhere", "n2")); // not this node's: only a bookmark tells the cache it happened
    api.bookmark();
    const rv = api.resourceVersion;
    await waitFor("the bookmark to be read", () => s.cache.version === String(rv));
    api.endWatches();
    await waitFor("a new watch", () => podRequests(api).length === 3 && api.watchCount === 1);
    expect(podRequests(api)[2]).toBe(`watch@${rv}`);
    api.putPod(pod("b", "n1"));
    await waitFor("b through the new watch", () => s.cache.get("lab", "b"));
    expect(podRequests(api).filter((r) => r === "list")).toHaveLength(1);
  });

  test("410 Gone: the cache lists again and has what changed while it was away", async () => {
    await using api = startApiServer();
    api.putPod(pod("a", "n1"));
    api.putPod(pod("b", "n1"));
    using s = await setup(api);
    await api.down();
    await waitFor("the watch to break", () => !s.cache.watching);
    api.putPod(pod("new", "n1"));
    api.deletePod("lab", "b");
    api.compact(); // the cache's resourceVersion is now too old
    api.up();
    await waitFor("the new pod", () => s.cache.get("lab", "new"), 15_000);
    expect(s.cache.get("lab", "b")).toBeUndefined();
    expect(s.cache.deleted("lab", "b")?.name).toBe("b");
    expect(s.log()).toContain("410 Gone");
    expect(podRequests(api).filter((r) => r === "list")).toHaveLength(2);
  });

  test("a 410 ERROR on an open watch: listed again at once", async () => {
    await using api = startApiServer();
    api.putPod(pod("a", "n1"));
    using s = await setup(api);
    api.endWatches(true);
    await waitFor("a second list and watch", () => podRequests(api).length === 4 && api.watchCount === 1);
    expect(podRequests(api).slice(2, 3)).toEqual(["list"]);
    expect(s.cache.get("lab", "a")).toBeDefined();
  });

  test("the API server down: the pods stay in memory; back on the same port, the watch resumes", async () => {
    await using api = startApiServer();
    api.putPod(pod("a", "n1", { ratchet: "true" }));
    using s = await setup(api);
    await api.down();
    await waitFor("the watch to break", () => !s.cache.watching);
    expect(s.cache.synced).toBe(true);
    expect(s.cache.get("lab", "a")?.labels.ratchet).toBe("true");
    api.putPod(pod("while-down", "n1"));
    api.up();
    await waitFor("the pod created while the watch was down", () => s.cache.get("lab", "while-down"), 15_000);
    expect(s.log()).toContain("pod watch failed; retrying with backoff");
    // Resumed from where it was: no second list.
    expect(podRequests(api).filter((r) => r === "list")).toHaveLength(1);
  });

  test("waitFor returns as soon as the pod comes, or the pod as it is at the bound", async () => {
    await using api = startApiServer();
    using s = await setup(api);
    const waiting = s.cache.waitFor("lab", "late", (p) => p !== undefined, 10_000);
    api.putPod(pod("late", "n1"));
    expect((await waiting)?.name).toBe("late");
    const uid = s.cache.get("lab", "late")?.uid;
    expect(await s.cache.waitFor("lab", "late", (p) => p?.uid === "other", 50)).toMatchObject({ uid });
  });
});
