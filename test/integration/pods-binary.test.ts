// `ratchet-child --pod NS/NAME --config FILE` in the compiled binary, copied away from the
// checkout with the checkout hidden: the Kubernetes client, its TLS and the label parsing
// all work from inside the binary alone. Also the stand-in's fixture process.
import { describe, expect, test } from "bun:test";
import { readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { PodReader } from "../../src/pods/kube.ts";
import { show } from "../../src/cni/names.ts";
import { startApiServer, type ApiServer } from "../support/apiserver.ts";
import { EXAMPLE_LINKS } from "../support/pods.ts";
import { BIN, BUN, hiddenCheckout, installedChild, REPO, run, tempDir } from "../support/env.ts";

const EXAMPLE = join(REPO, "pod_specs", "example.yaml");

/** Runs `ratchet-child --pod <ref>` as a node does: the installed copy, the checkout hidden. */
async function classifyHidden(dir: string, api: ApiServer, ref: string, auth: "token" | "cert" = "token") {
  const kubeconfig = api.writeKubeconfig(dir, { auth, inline: auth === "token", name: `kubeconfig-${auth}` });
  const conf = join(dir, "ratchet.conf");
  writeFileSync(
    conf,
    JSON.stringify({
      cniVersion: "1.0.0",
      name: "t",
      type: "ratchet",
      etcd_endpoints: ["http://127.0.0.1:1"],
      kubeconfig,
      default_prefix: 24,
    }),
  );
  return run(hiddenCheckout([installedChild(), "--pod", ref, "--config", conf]));
}

describe("ratchet-child --pod in the compiled binary, checkout hidden", () => {
  test("primary-pod and pair-pod of the original example: the right links", async () => {
    await using api = startApiServer({ podFiles: [EXAMPLE] });
    using dir = tempDir();
    const primary = await classifyHidden(dir.path, api, "default/primary-pod");
    expect(primary.stderr).toBe("");
    expect(primary.code).toBe(0);
    expect(JSON.parse(primary.stdout)).toEqual({
      pod: "default/primary-pod",
      eligible: true,
      links: [EXAMPLE_LINKS["primary-pod"]],
    });
    const pair = await classifyHidden(dir.path, api, "default/pair-pod");
    expect(pair.code).toBe(0);
    // The original's pair pod only opts in: its primary's labels declare the link.
    expect(JSON.parse(pair.stdout)).toEqual({ pod: "default/pair-pod", eligible: true, links: [] });
    expect(api.requests.map((r) => [r.path, r.status])).toEqual([
      ["/api/v1/namespaces/default/pods/primary-pod", 200],
      ["/api/v1/namespaces/default/pods/pair-pod", 200],
    ]);
  });

  test("client-certificate auth (files) works from the binary too", async () => {
    await using api = startApiServer({ podFiles: [EXAMPLE], clientCert: true });
    using dir = tempDir();
    api.putPod({ kind: "Pod", metadata: { name: "plain", namespace: "apps" } });
    const r = await classifyHidden(dir.path, api, "apps/plain", "cert");
    expect(r.stderr).toBe("");
    expect(JSON.parse(r.stdout)).toEqual({ pod: "apps/plain", eligible: false, links: [] });
    expect(r.code).toBe(0);
  });

  test("errors are CNI error JSON on stdout, exit 1: not found (11), bad annotation (103)", async () => {
    await using api = startApiServer({ podFiles: [EXAMPLE] });
    using dir = tempDir();
    const missing = await classifyHidden(dir.path, api, "default/nope");
    expect(missing.code).toBe(1);
    expect(JSON.parse(missing.stdout)).toEqual({
      cniVersion: "1.0.0",
      code: 11,
      msg: `pod default/nope not found (404 from ${api.url})`,
      details: 'pods "nope" not found',
    });

    api.putPod({
      kind: "Pod",
      metadata: {
        name: "bad",
        labels: { ratchet: "true" },
        annotations: { "ratchet/links": '[{"peer":"x","local_ifname":"eth1","peer_ifname":"eth1","mtu":9}]' },
      },
    });
    const bad = await classifyHidden(dir.path, api, "default/bad");
    expect(bad.code).toBe(1);
    expect(JSON.parse(bad.stdout)).toEqual({
      cniVersion: "1.0.0",
      code: 103,
      msg: `pod default/bad: annotation ratchet/links[0].mtu ${show(9)} is out of range 68..65535`,
    });

    const malformed = await run([
      BIN,
      "--mode=child",
      "--pod",
      "no-slash",
      "--config",
      join(dir.path, "ratchet.conf"),
    ]);
    expect(malformed.code).toBe(1);
    expect(JSON.parse(malformed.stdout)).toMatchObject({
      code: 103,
      msg: '--pod "no-slash": expected NAMESPACE/NAME',
    });
  });
});

describe("apiserver-fixture", () => {
  test("prints {url, kubeconfig}, serves the pods to the real client, and cleans up on SIGTERM", async () => {
    using dir = tempDir();
    const proc = Bun.spawn({
      cmd: [BUN, join(REPO, "test", "support", "apiserver-fixture.ts"), "--pods", EXAMPLE, "--dir", dir.path],
      stdout: "pipe",
      stderr: "pipe",
    });
    try {
      const reader = proc.stdout.getReader();
      let text = "";
      while (!text.includes("\n")) {
        const { value, done } = await reader.read();
        if (done) break;
        text += new TextDecoder().decode(value);
      }
      reader.releaseLock();
      const info = JSON.parse(text) as { url: string; kubeconfig: string };
      expect(info.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
      expect(info.kubeconfig).toBe(join(dir.path, "kubeconfig"));

      using podReader = new PodReader({ kubeconfig: info.kubeconfig });
      expect((await podReader.readPod("default", "primary-pod", 5000)).labels["ratchet.pair_name"]).toBe(
        "pair-pod",
      );
      proc.kill("SIGTERM");
      expect(await proc.exited).toBe(0);
      expect(readdirSync(dir.path)).toEqual([]);
    } finally {
      proc.kill();
      await proc.exited;
    }
  });
});
