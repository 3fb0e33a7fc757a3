// The pod reader through the real @kubernetes/client-node against the stand-in API server,
// whose certificate is signed by a CA only the kubeconfig (or service account) knows.
import { describe, expect, test } from "bun:test";
import { renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { PodReader, TokenFile } from "../../src/pods/kube.ts";
import { CniError } from "../../src/cni/errors.ts";
import { startApiServer } from "../support/apiserver.ts";
import { makeCa } from "../support/certs.ts";
import { REPO, tempDir } from "../support/env.ts";

const EXAMPLE = join(REPO, "pod_specs", "example.yaml");

async function failure(p: Promise<unknown>): Promise<CniError> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(CniError);
    return err as CniError;
  }
  throw new Error("expected a CniError, the call succeeded");
}

/** Replaces a file the way kubelet does: write aside, rename over. */
function replaceFile(path: string, content: string): void {
  writeFileSync(`${path}.new`, content);
  renameSync(`${path}.new`, path);
}

describe("PodReader with a kubeconfig", () => {
  test.each([
    ["token, CA inline", "token", true],
    ["token, CA file", "token", false],
  ] as const)("%s: reads the pod", async (_what, auth, inline) => {
    await using api = startApiServer({ podFiles: [EXAMPLE] });
    using dir = tempDir();
    using reader = new PodReader({ kubeconfig: api.writeKubeconfig(dir.path, { auth, inline }) });
    const pod = await reader.readPod("default", "primary-pod", 5000);
    expect(pod).toEqual({
      namespace: "default",
      name: "primary-pod",
      uid: api.getPod("default", "primary-pod")?.metadata.uid as string,
      labels: expect.objectContaining({
        ratchet: "true",
        "ratchet.local_ifname": "in1",
        "ratchet.pair_name": "pair-pod",
      }),
      annotations: {},
      nodeName: undefined,
      resourceVersion: api.getPod("default", "primary-pod")?.metadata.resourceVersion as string,
    });
    expect(api.requests.at(-1)).toEqual({
      method: "GET",
      path: "/api/v1/namespaces/default/pods/primary-pod",
      query: "",
      token: api.token,
      status: 200,
    });
  });

  test.each([
    ["inline", true],
    ["files", false],
  ] as const)("client certificate (%s): the server requires one and accepts ours", async (_what, inline) => {
    await using api = startApiServer({ podFiles: [EXAMPLE], clientCert: true });
    using dir = tempDir();
    api.putPod({
      kind: "Pod",
      metadata: { name: "with-node", namespace: "lab", annotations: { "ratchet/links": "[]" } },
      spec: { nodeName: "node-1" },
    });
    using reader = new PodReader({ kubeconfig: api.writeKubeconfig(dir.path, { auth: "cert", inline }) });
    const pod = await reader.readPod("lab", "with-node", 5000);
    expect(pod).toMatchObject({
      namespace: "lab",
      name: "with-node",
      nodeName: "node-1",
      annotations: { "ratchet/links": "[]" },
    });
    expect(api.requests.at(-1)?.token).toBeUndefined();

    // The same server refuses a client that has only a token: the certificate is what let us in.
    using tokenOnly = new PodReader({
      kubeconfig: api.writeKubeconfig(dir.path, { auth: "token", name: "token-only" }),
    });
    const err = await failure(tokenOnly.readPod("lab", "with-node", 5000));
    expect(err.code).toBe(11);
    expect(err.message).toBe(
      `cannot read pod lab/with-node from ${api.url}: the TLS handshake ` +
        `failed (the server may require a client certificate) (EPROTO)`,
    );
  });

  test("a CA that did not sign the server's certificate: code 11, the message says certificate", async () => {
    await using api = startApiServer({ podFiles: [EXAMPLE] });
    using dir = tempDir();
    const other = makeCa(join(dir.path, "other"), "other", "some-other-ca");
    for (const inline of [true, false]) {
      using reader = new PodReader({
        kubeconfig: api.writeKubeconfig(dir.path, {
          auth: "token",
          caPem: other.cert,
          inline,
          name: `kc-${inline}`,
        }),
      });
      const err = await failure(reader.readPod("default", "primary-pod", 5000));
      expect(err.code).toBe(11);
      expect(err.message).toStartWith(`cannot read pod default/primary-pod from ${api.url}: `);
      expect(err.message).toMatch(/: TLS certificate verification failed: .*certificate/);
    }
    // Nothing reached the handler: the handshake failed.
    expect(api.requests).toEqual([]);
  });

  test("a wrong token: code 11 with the status", async () => {
    await using api = startApiServer({ podFiles: [EXAMPLE] });
    using dir = tempDir();
    using reader = new PodReader({
      kubeconfig: api.writeKubeconfig(dir.path, { auth: "token", token: "not-the-token" }),
    });
    const err = await failure(reader.readPod("default", "primary-pod", 5000));
    expect(err.code).toBe(11);
    expect(err.message).toBe(
      `cannot read pod default/primary-pod: the API server ${api.url} ` +
        `answered 401 Unauthorized (check the token or client certificate)`,
    );
    expect(api.requests.at(-1)).toMatchObject({ token: "not-the-token", status: 401 });
  });

  test("pod not found: code 11 naming the pod", async () => {
    await using api = startApiServer({ podFiles: [EXAMPLE] });
    using dir = tempDir();
    using reader = new PodReader({ kubeconfig: api.writeKubeconfig(dir.path, { auth: "token" }) });
    const err = await failure(reader.readPod("default", "no-such-pod", 5000));
    expect(err.code).toBe(11);
    expect(err.message).toBe(`pod default/no-such-pod not found (404 from ${api.url})`);
    expect(err.details).toBe('pods "no-such-pod" not found');

    // Deleted and re-added pods are seen as they are now.
    expect(api.deletePod("default", "primary-pod")).toBe(true);
    expect((await failure(reader.readPod("default", "primary-pod", 5000))).message).toStartWith(
      "pod default/primary-pod not found",
    );
    api.putPod({ kind: "Pod", metadata: { name: "primary-pod", labels: { ratchet: "false" } } });
    expect((await reader.readPod("default", "primary-pod", 5000)).labels).toEqual({ ratchet: "false" });
  });

  test("any other error status: code 11 with the status and the server's message", async () => {
    await using api = startApiServer({ podFiles: [EXAMPLE] });
    using dir = tempDir();
    using reader = new PodReader({ kubeconfig: api.writeKubeconfig(dir.path, { auth: "token" }) });
    api.setFault({ status: 503, message: "etcd is sad" });
    const err = await failure(reader.readPod("default", "primary-pod", 5000));
    expect(err).toMatchObject({
      code: 11,
      message:
        `cannot read pod default/primary-pod: the API server ` +
        `${api.url} answered 503 Service Unavailable: etcd is sad`,
    });
    api.setFault({
      status: 403,
      message: 'pods "primary-pod" is forbidden:\nUser "x" cannot get resource "pods"',
    });
    expect((await failure(reader.readPod("default", "primary-pod", 5000))).message).toBe(
      `cannot read pod default/primary-pod: the API server ${api.url} answered ` +
        `403 Forbidden (the node agent needs RBAC permission to get, list and watch pods): ` +
        `pods "primary-pod" is forbidden: User "x" cannot get resource "pods"`,
    );
    api.setFault(undefined);
    expect((await reader.readPod("default", "primary-pod", 5000)).name).toBe("primary-pod");
  });

  test("server down: code 11 well within the deadline", async () => {
    // stop() below; disposal stops it if the test fails first
    await using api = startApiServer({ podFiles: [EXAMPLE] });
    using dir = tempDir();
    using reader = new PodReader({
      kubeconfig: api.writeKubeconfig(dir.path, { auth: "token", name: "kc" }),
    });
    await reader.readPod("default", "primary-pod", 5000); // a pooled connection, then the server goes away
    const url = api.url;
    await api.stop();
    const t0 = performance.now();
    const err = await failure(reader.readPod("default", "primary-pod", 2000));
    expect(performance.now() - t0).toBeLessThan(2000);
    expect(err.code).toBe(11);
    expect(err.message).toMatch(
      new RegExp(
        `^cannot read pod default/primary-pod from ${url}: ` +
          `.*\\((ECONNREFUSED|ECONNRESET|ConnectionClosed)\\)$`,
      ),
    );
  });

  test("a server that does not answer: code 11 at the deadline", async () => {
    await using api = startApiServer({ podFiles: [EXAMPLE] });
    using dir = tempDir();
    using reader = new PodReader({ kubeconfig: api.writeKubeconfig(dir.path, { auth: "token" }) });
    api.setDelay(10_000);
    const t0 = performance.now();
    const err = await failure(reader.readPod("default", "primary-pod", 300));
    const took = performance.now() - t0;
    expect(took).toBeGreaterThanOrEqual(290);
    expect(took).toBeLessThan(1500);
    expect(err).toMatchObject({
      code: 11,
      message: `cannot read pod default/primary-pod from ${api.url}: no answer within 300 ms`,
    });
  });

  test("a kubeconfig token-file is re-read when it rotates", async () => {
    await using api = startApiServer({ podFiles: [EXAMPLE], tokens: ["first"] });
    using dir = tempDir();
    const tokenFile = join(dir.path, "token");
    writeFileSync(tokenFile, "first\n");
    const kc = api.writeKubeconfig(dir.path, { auth: "token" });
    // Point the user at the file instead of an inline token (relative to the kubeconfig).
    const config = JSON.parse(await Bun.file(kc).text()) as {
      users: Array<{ user: Record<string, string> }>;
    };
    config.users[0]!.user = { "token-file": "token" };
    writeFileSync(kc, JSON.stringify(config));
    using reader = new PodReader({ kubeconfig: kc });
    expect((await reader.readPod("default", "pair-pod", 5000)).name).toBe("pair-pod");
    api.setTokens(["second"]);
    replaceFile(tokenFile, "second");
    expect((await reader.readPod("default", "pair-pod", 5000)).name).toBe("pair-pod");
    expect(api.requests.map((r) => r.token)).toEqual(["first", "second"]);
  });

  test("an unreadable kubeconfig is a config error (7) naming the file", () => {
    using dir = tempDir();
    const path = join(dir.path, "missing");
    expect(() => new PodReader({ kubeconfig: path })).toThrow(
      expect.objectContaining({
        code: 7,
        message: expect.stringContaining(`cannot load kubeconfig "${path}"`),
      }),
    );
  });

  test("a bad pod name never reaches the API", async () => {
    await using api = startApiServer({ podFiles: [EXAMPLE] });
    using dir = tempDir();
    using reader = new PodReader({ kubeconfig: api.writeKubeconfig(dir.path, { auth: "token" }) });
    const err = await failure(reader.readPod("default", "../../secrets", 5000));
    expect(err.code).toBe(103);
    expect(err.message).toContain('"default/../../secrets"');
    expect(api.requests).toEqual([]);
  });
});

describe("PodReader in a cluster (service account)", () => {
  test("reads with the service account token and CA; a rotated token is used on the next read", async () => {
    await using api = startApiServer({ podFiles: [EXAMPLE], tokens: ["sa-1"] });
    using dir = tempDir();
    const sa = api.writeServiceAccount(dir.path, "sa-1");
    using reader = new PodReader({ env: sa.env, serviceAccountDir: sa.dir });
    expect(reader.server).toBe(api.url);
    expect((await reader.readPod("default", "primary-pod", 5000)).labels["ratchet.pair_name"]).toBe(
      "pair-pod",
    );

    // The server moves to a new token: until the file changes we are refused...
    api.setTokens(["sa-2"]);
    expect((await failure(reader.readPod("default", "primary-pod", 5000))).message).toContain("answered 401");
    // ...and as soon as it does, the next request uses it.
    replaceFile(sa.tokenFile, "sa-2\n");
    expect((await reader.readPod("default", "primary-pod", 5000)).name).toBe("primary-pod");
    expect(api.requests.map((r) => [r.token, r.status])).toEqual([
      ["sa-1", 200],
      ["sa-1", 401],
      ["sa-2", 200],
    ]);
  });

  test("without KUBERNETES_SERVICE_HOST and no kubeconfig: a config error (7)", () => {
    expect(() => new PodReader({ env: {} })).toThrow(
      expect.objectContaining({ code: 7, message: expect.stringContaining("KUBERNETES_SERVICE_HOST") }),
    );
  });

  test("the service account CA is what the server is checked against", async () => {
    await using api = startApiServer({ podFiles: [EXAMPLE] });
    using dir = tempDir();
    const sa = api.writeServiceAccount(dir.path);
    writeFileSync(sa.caFile, makeCa(join(dir.path, "other"), "other").cert);
    using reader = new PodReader({ env: sa.env, serviceAccountDir: sa.dir });
    const err = await failure(reader.readPod("default", "primary-pod", 5000));
    expect(err.code).toBe(11);
    expect(err.message).toMatch(/certificate/i);
  });
});

describe("TokenFile", () => {
  test("reads, trims, follows replacement, and keeps the last token through a brief gap", () => {
    using dir = tempDir();
    const path = join(dir.path, "token");
    const tf = new TokenFile(path, 60_000);
    expect(() => tf.read()).toThrow(`cannot read the token file ${path}`);
    writeFileSync(path, "abc\n");
    expect(tf.read()).toBe("abc");
    replaceFile(path, "def");
    expect(tf.read()).toBe("def");
    writeFileSync(path, "");
    expect(tf.read()).toBe("def");
    expect(() => new TokenFile(path, 0).read()).toThrow("the file is empty");
  });
});
