// The stand-in API server itself: what it serves, to whom, and its fault knobs.
import { describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { startApiServer, type ApiServer } from "../support/apiserver.ts";
import { waitFor } from "../support/child.ts";
import { REPO, tempDir } from "../support/env.ts";

const EXAMPLE = join(REPO, "pod_specs", "example.yaml");

function get(
  api: ApiServer,
  path: string,
  token: string | null = api.token,
  method = "GET",
): Promise<Response> {
  return fetch(`${api.url}${path}`, {
    method,
    headers: token ? { authorization: `Bearer ${token}` } : {},
    tls: { ca: api.pki.ca.cert },
  });
}

describe("stand-in API server", () => {
  test("serves pods, lists, /version and /healthz; 401 without a valid token", async () => {
    await using api = startApiServer({ podFiles: [EXAMPLE] });
    const pod = (await (await get(api, "/api/v1/namespaces/default/pods/pair-pod")).json()) as {
      metadata: { namespace: string; uid: string };
    };
    expect(pod.metadata.namespace).toBe("default");
    expect(pod.metadata.uid).toMatch(/^[0-9a-f-]{36}$/);

    api.putPod({ kind: "Pod", metadata: { name: "other", namespace: "lab" } });
    const list = (await (await get(api, "/api/v1/namespaces/default/pods")).json()) as {
      kind: string;
      items: Array<{ metadata: { name: string } }>;
    };
    expect(list.kind).toBe("PodList");
    expect(list.items.map((p) => p.metadata.name)).toEqual(["primary-pod", "pair-pod"]);
    const all = (await (await get(api, "/api/v1/pods")).json()) as { items: unknown[] };
    expect(all.items).toHaveLength(3);

    expect(((await (await get(api, "/version")).json()) as { gitVersion: string }).gitVersion).toStartWith(
      "v1.",
    );
    expect(await (await get(api, "/healthz", null)).text()).toBe("ok");

    const denied = await get(api, "/api/v1/namespaces/default/pods/pair-pod", "wrong");
    expect(denied.status).toBe(401);
    expect(((await denied.json()) as { reason: string }).reason).toBe("Unauthorized");
    expect((await get(api, "/api/v1/namespaces/default/pods/pair-pod", null)).status).toBe(401);
    expect((await get(api, "/api/v1/namespaces/default/pods/pair-pod", api.token, "DELETE")).status).toBe(
      405,
    );
    const missing = await get(api, "/api/v1/namespaces/default/pods/nope");
    expect(missing.status).toBe(404);
    expect(await missing.json()).toMatchObject({
      kind: "Status",
      reason: "NotFound",
      message: 'pods "nope" not found',
      code: 404,
    });
  });

  test("replace, delete, delay and fault", async () => {
    await using api = startApiServer({ podFiles: [EXAMPLE] });
    const before = api.getPod("default", "primary-pod");
    const after = api.putPod({
      kind: "Pod",
      metadata: { name: "primary-pod", labels: { ratchet: "false" } },
    });
    expect(Number(after.metadata.resourceVersion)).toBeGreaterThan(Number(before?.metadata.resourceVersion));
    expect(
      (
        (await (await get(api, "/api/v1/namespaces/default/pods/primary-pod")).json()) as {
          metadata: { labels: object };
        }
      ).metadata.labels,
    ).toEqual({ ratchet: "false" });
    expect(api.deletePod("default", "primary-pod")).toBe(true);
    expect(api.deletePod("default", "primary-pod")).toBe(false);
    expect(api.loadPods(EXAMPLE).map((p) => p.metadata.name)).toEqual(["primary-pod", "pair-pod"]);
    expect(api.getPod("default", "primary-pod")?.metadata.labels?.ratchet).toBe("true");

    api.setDelay(200);
    const t0 = performance.now();
    await get(api, "/healthz");
    expect(performance.now() - t0).toBeGreaterThanOrEqual(190);
    api.setDelay(0);

    api.setFault({ status: 500, message: "boom" });
    const failed = await get(api, "/api/v1/namespaces/default/pods/pair-pod");
    expect(failed.status).toBe(500);
    expect(await failed.json()).toMatchObject({ reason: "InternalError", message: "boom" });
  });

  test("stop removes the certificates and the files it wrote", async () => {
    using dir = tempDir();
    await using api = startApiServer({ dir: dir.path }); // stopped below; stop() is idempotent
    const kc = api.writeKubeconfig(dir.path, { auth: "token" });
    const sa = api.writeServiceAccount(dir.path);
    expect([kc, sa.tokenFile, sa.caFile, api.pki.ca.certFile].every((f) => existsSync(f))).toBe(true);
    await api.stop();
    expect([kc, sa.tokenFile, sa.caFile, api.pki.ca.certFile, api.pki.dir].some((f) => existsSync(f))).toBe(
      false,
    );
    expect(
      await fetch(`${api.url}/healthz`, { tls: { ca: api.pki.ca.cert } }).then(
        () => "answered",
        () => "refused",
      ),
    ).toBe("refused");
  });
});

/** Opens a watch; next() gives the following event (blank lines skipped), close() ends it. */
async function watch(api: ApiServer, query: string) {
  const ctl = new AbortController();
  const res = await fetch(`${api.url}/api/v1/pods?watch=1&${query}`, {
    headers: { authorization: `Bearer ${api.token}` },
    tls: { ca: api.pki.ca.cert },
    signal: ctl.signal,
  });
  expect(res.status).toBe(200);
  const reader = (res.body as ReadableStream<Uint8Array>).getReader();
  const dec = new TextDecoder();
  let buf = "";
  return {
    async next(): Promise<
      { type: string; object: { metadata: Record<string, unknown>; code?: number } } | "end"
    > {
      for (;;) {
        const nl = buf.indexOf("\n");
        if (nl >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (line.trim() !== "") return JSON.parse(line);
          continue;
        }
        const { value, done } = await reader.read();
        if (done) return "end";
        buf += dec.decode(value, { stream: true });
      }
    },
    close: () => ctl.abort(),
  };
}

const onNode = (name: string, node: string, labels: Record<string, string> = {}) => ({
  kind: "Pod",
  metadata: { name, namespace: "lab", labels },
  spec: { nodeName: node },
});

describe("stand-in API server: list and watch", () => {
  test("list by field selector carries a resourceVersion; a watch from it streams what changes on that node", async () => {
    await using api = startApiServer();
    api.putPod(onNode("a", "n1"));
    api.putPod(onNode("b", "n2"));
    const list = (await (await get(api, "/api/v1/pods?fieldSelector=spec.nodeName%3Dn1")).json()) as {
      metadata: { resourceVersion: string };
      items: Array<{ metadata: { name: string } }>;
    };
    expect(list.items.map((p) => p.metadata.name)).toEqual(["a"]);
    expect(list.metadata.resourceVersion).toBe(String(api.resourceVersion));
    expect((await get(api, "/api/v1/pods?fieldSelector=spec.foo%3Dx")).status).toBe(400);

    const w = await watch(
      api,
      `fieldSelector=spec.nodeName%3Dn1&resourceVersion=${list.metadata.resourceVersion}&allowWatchBookmarks=true`,
    );
    api.putPod(onNode("c", "n1"));
    api.putPod(onNode("b", "n1")); // moved here
    api.putPod(onNode("a", "n1", { x: "y" }));
    api.bindPod("lab", "c", "n2"); // moved away
    api.deletePod("lab", "a");
    api.bookmark();
    const seen: string[] = [];
    for (let i = 0; i < 6; i++) {
      const ev = await w.next();
      if (ev === "end") throw new Error("the watch ended early");
      seen.push(`${ev.type} ${ev.object.metadata.name ?? ev.object.metadata.resourceVersion}`);
    }
    expect(seen).toEqual([
      "ADDED c",
      "ADDED b",
      "MODIFIED a",
      "DELETED c",
      "DELETED a",
      `BOOKMARK ${api.resourceVersion}`,
    ]);
    w.close();
    // A watch from an old resourceVersion replays; one from before a compaction gets 410.
    const replay = await watch(
      api,
      `fieldSelector=spec.nodeName%3Dn1&resourceVersion=${list.metadata.resourceVersion}`,
    );
    expect(await replay.next()).toMatchObject({ type: "ADDED", object: { metadata: { name: "c" } } });
    replay.close();
    api.compact();
    const old = await watch(api, `resourceVersion=${list.metadata.resourceVersion}`);
    expect(await old.next()).toMatchObject({ type: "ERROR", object: { code: 410, reason: "Expired" } });
    expect(await old.next()).toBe("end");
    // timeoutSeconds ends a watch (with a bookmark when allowed).
    const short = await watch(
      api,
      `resourceVersion=${api.resourceVersion}&timeoutSeconds=1&allowWatchBookmarks=true`,
    );
    expect(await short.next()).toMatchObject({ type: "BOOKMARK" });
    expect(await short.next()).toBe("end");
    expect(api.count("GET", "/api/v1/pods")).toBe(6);
  });

  test("endWatches(true) sends 410 on open watches; down() and up() serve again on the same port", async () => {
    await using api = startApiServer();
    const w = await watch(api, `resourceVersion=${api.resourceVersion}`);
    expect(api.watchCount).toBe(1);
    api.endWatches(true);
    expect(await w.next()).toMatchObject({ type: "ERROR", object: { code: 410 } });
    expect(await w.next()).toBe("end");

    const open = await watch(api, `resourceVersion=${api.resourceVersion}`);
    await api.down();
    expect(await open.next().catch(() => "end")).toBe("end");
    const refused = await fetch(`${api.url}/healthz`, { tls: { ca: api.pki.ca.cert } }).then(
      () => "answered",
      () => "refused",
    );
    expect(refused).toBe("refused");
    api.putPod(onNode("while-down", "n1"));
    api.up();
    expect((await get(api, "/api/v1/namespaces/lab/pods/while-down")).status).toBe(200);
  });

  test("hang(): requests are taken (and counted) but not answered, watches hold their events, until unhang()", async () => {
    await using api = startApiServer();
    const w = await watch(api, `resourceVersion=${api.resourceVersion}`);
    api.hang();
    const before = api.requests.length;
    const pending = get(api, "/version");
    api.putPod(onNode("held", "n1"));
    await waitFor("the request to arrive", () => api.requests.length === before + 1);
    const raced = await Promise.race([pending.then(() => "answered"), Bun.sleep(300).then(() => "waiting")]);
    expect(raced).toBe("waiting");
    expect(api.requests.at(-1)).toMatchObject({ method: "GET", path: "/version", status: 0 });
    api.unhang();
    expect((await pending).status).toBe(200);
    expect(await w.next()).toMatchObject({ type: "ADDED", object: { metadata: { name: "held" } } });
    w.close();
  });
});

describe("stand-in API server: Events and pod patches", () => {
  const send = (api: ApiServer, method: string, path: string, body: unknown, type = "application/json") =>
    fetch(`${api.url}${path}`, {
      method,
      headers: { authorization: `Bearer ${api.token}`, "content-type": type },
      body: JSON.stringify(body),
      tls: { ca: api.pki.ca.cert },
    });

  test("POST and PATCH Events: recorded for tests to read", async () => {
    await using api = startApiServer();
    const ev = {
      metadata: { generateName: "pod-a." },
      involvedObject: { kind: "Pod", namespace: "lab", name: "pod-a" },
      reason: "LinkUp",
      message: "in1 is up",
      count: 1,
    };
    const created = await send(api, "POST", "/api/v1/namespaces/lab/events", ev);
    expect(created.status).toBe(201);
    const name = ((await created.json()) as { metadata: { name: string } }).metadata.name;
    expect(name).toStartWith("pod-a.");
    const patched = await send(
      api,
      "PATCH",
      `/api/v1/namespaces/lab/events/${name}`,
      { count: 2 },
      "application/strategic-merge-patch+json",
    );
    expect(patched.status).toBe(200);
    expect(api.events).toMatchObject([{ reason: "LinkUp", count: 2, metadata: { name, namespace: "lab" } }]);
    const dup = await send(api, "POST", "/api/v1/namespaces/lab/events", { ...ev, metadata: { name } });
    expect(dup.status).toBe(409);
    expect(
      (await send(api, "PATCH", "/api/v1/namespaces/lab/events/nope", {}, "application/merge-patch+json"))
        .status,
    ).toBe(404);
    expect(api.count("POST", "/api/v1/namespaces/lab/events")).toBe(2);
  });

  test("PATCH a pod's annotations (merge or strategic merge): applied, recorded, MODIFIED on the watch", async () => {
    await using api = startApiServer();
    api.putPod({
      ...onNode("p", "n1"),
      metadata: { name: "p", namespace: "lab", annotations: { keep: "1", drop: "2" } },
    });
    const w = await watch(api, `fieldSelector=spec.nodeName%3Dn1&resourceVersion=${api.resourceVersion}`);
    const path = "/api/v1/namespaces/lab/pods/p";
    const patch = { metadata: { annotations: { "k8s.v1.cni.cncf.io/network-status": "[]", drop: null } } };
    expect((await send(api, "PATCH", path, patch, "application/merge-patch+json")).status).toBe(200);
    const strategic = { metadata: { annotations: { more: "3" } } };
    expect((await send(api, "PATCH", path, strategic, "application/strategic-merge-patch+json")).status).toBe(
      200,
    );
    expect(api.getPod("lab", "p")?.metadata.annotations).toEqual({
      keep: "1",
      "k8s.v1.cni.cncf.io/network-status": "[]",
      more: "3",
    });
    expect(api.patches.map((p) => [p.kind, p.name, p.contentType])).toEqual([
      ["pods", "p", "application/merge-patch+json"],
      ["pods", "p", "application/strategic-merge-patch+json"],
    ]);
    expect(await w.next()).toMatchObject({
      type: "MODIFIED",
      object: { metadata: { annotations: { keep: "1" } } },
    });
    w.close();
    expect((await send(api, "PATCH", path, [], "application/json-patch+json")).status).toBe(415);
    expect(
      (await send(api, "PATCH", "/api/v1/namespaces/lab/pods/none", {}, "application/merge-patch+json"))
        .status,
    ).toBe(404);
  });
});
