// The DaemonSet's install script (conf/kubernetes/20-daemonset.yaml) makes a kubeconfig from
// the pod's service account: ratchet's own pod reader must read pods with it, and keep
// reading them after the token rotates and the token-sync container copies the new one.
// Runs the scripts in temp dirs against the stand-in API server (no root needed).
import { describe, expect, test } from "bun:test";
import { mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { loadAll } from "js-yaml";
import { loadConfigFile } from "../../src/cni/config-file.ts";
import { PodReader } from "../../src/pods/kube.ts";
import { podLinks } from "../../src/pods/podspec.ts";
import { startApiServer } from "../support/apiserver.ts";
import { REPO, tempDir } from "../support/env.ts";

type Obj = Record<string, unknown>;
const isObj = (x: unknown): x is Obj => typeof x === "object" && x !== null && !Array.isArray(x);

/** The DaemonSet's pod spec and the ConfigMap's config text. */
function manifests(): { containers: Obj[]; config: string } {
  const docs = [
    ...loadAll(readFileSync(join(REPO, "conf", "kubernetes", "20-daemonset.yaml"), "utf8")),
    ...loadAll(readFileSync(join(REPO, "conf", "kubernetes", "10-config.yaml"), "utf8")),
  ].filter(isObj);
  const ds = docs.find((d) => d.kind === "DaemonSet");
  const cm = docs.find((d) => d.kind === "ConfigMap");
  const spec = ((ds?.spec as Obj | undefined)?.template as Obj | undefined)?.spec as Obj | undefined;
  const containers = [
    ...((spec?.initContainers as Obj[] | undefined) ?? []),
    ...((spec?.containers as Obj[] | undefined) ?? []),
  ];
  const config = (cm?.data as Record<string, string> | undefined)?.["10-ratchet.conf"];
  if (!config || containers.length === 0)
    throw new Error("DaemonSet or ConfigMap not found in conf/kubernetes/");
  return { containers, config };
}

function script(containers: Obj[], name: string): string {
  const c = containers.find((x) => x.name === name);
  const cmd = c?.command as string[] | undefined;
  if (cmd?.[0] !== "/bin/sh" || cmd[1] !== "-c" || typeof cmd[2] !== "string")
    throw new Error(`container ${name}: no /bin/sh -c script`);
  return cmd[2];
}

describe("the DaemonSet's generated kubeconfig", () => {
  test("reads pods through ratchet's pod reader, also after the token rotates", async () => {
    await using api = startApiServer({
      podFiles: [join(REPO, "pod_specs", "multi-link.yaml")],
      tokens: ["sa-token-1"],
    });
    using dir = tempDir("ratchet-k8s-kubeconfig-");
    const { containers, config } = manifests();
    const d = (p: string) => join(dir.path, p);
    for (const p of ["image", "cm", "sa"]) mkdirSync(d(p));
    writeFileSync(d("image/ratchet"), "#!/bin/sh\n", { mode: 0o755 });
    writeFileSync(d("cm/10-ratchet.conf"), config);
    const sa = api.writeServiceAccount(d("sa"), "sa-token-1");
    const env: Record<string, string> = {
      PATH: process.env.PATH ?? "/usr/bin:/bin",
      RATCHET_IMAGE_BINARY: d("image/ratchet"),
      RATCHET_CONFIG_SOURCE: d("cm/10-ratchet.conf"),
      CNI_BIN_DIR: d("host/bin"),
      CNI_CONF_DIR: d("host/net.d"),
      RATCHET_RUN_DIR: d("host/run"),
      RATCHET_LOG_DIR: d("host/log"),
      SERVICE_ACCOUNT_DIR: sa.dir,
      ...sa.env,
    };
    const install = Bun.spawnSync(["/bin/sh", "-c", script(containers, "install")], { env, stderr: "pipe" });
    expect(install.stderr.toString()).toContain("wrote");
    expect(install.exitCode).toBe(0);

    // The kubeconfig path in the installed config is the host's; here it lives in the temp dir.
    const conf = loadConfigFile(join(env.CNI_CONF_DIR as string, "10-ratchet.conf"));
    expect(conf.kubeconfig).toBe("/etc/cni/net.d/ratchet-kubeconfig");
    using reader = new PodReader({ kubeconfig: join(env.CNI_CONF_DIR as string, "ratchet-kubeconfig") });
    const hub = await reader.readPod("default", "hub", 5000);
    expect(podLinks(hub, { defaultPrefix: 24 }).links.map((l) => `${l.local.ifname}->${l.peer.pod}`)).toEqual(
      ["eth1->spoke-a", "eth2->spoke-b"],
    );

    // Rotation: kubelet replaces the projected token, the API server stops accepting the old one.
    const sync = Bun.spawn(["/bin/sh", "-c", script(containers, "token-sync")], {
      env: { ...env, SYNC_SECONDS: "0.2" },
      stdout: "ignore",
      stderr: "pipe",
    });
    try {
      writeFileSync(`${sa.tokenFile}.new`, "sa-token-2");
      renameSync(`${sa.tokenFile}.new`, sa.tokenFile);
      api.setTokens(["sa-token-2"]);
      const hostToken = join(env.RATCHET_RUN_DIR as string, "token");
      for (let i = 0; i < 100 && readFileSync(hostToken, "utf8") !== "sa-token-2"; i++) await Bun.sleep(50);
      expect(readFileSync(hostToken, "utf8")).toBe("sa-token-2");
      // The same reader, no reload: it re-reads the token file per request.
      const spoke = await reader.readPod("default", "spoke-a", 5000);
      expect(spoke.name).toBe("spoke-a");
      expect(api.requests.at(-1)).toMatchObject({ token: "sa-token-2", status: 200 });
    } finally {
      sync.kill("SIGTERM");
      await sync.exited;
    }
  });
});
