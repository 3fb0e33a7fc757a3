// The stand-in API server itself: what it serves, to whom, and its fault knobs.
import { describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { startApiServer, type ApiServer } from "../support/apiserver.ts";
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
