// The Kubernetes manifests (conf/kubernetes/), the sample pods and etcd (pod_specs/) and the
// sample network configs (conf/): they parse, have the kinds and fields an install needs, and
// pass ratchet's own schema. The DaemonSet's install script is run for real, in temp dirs.
import { describe, expect, test } from "bun:test";
import {
  lstatSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  statSync,
  writeFileSync,
  mkdirSync,
} from "node:fs";
import { join } from "node:path";
import { load, loadAll } from "js-yaml";
import { loadConfigFile } from "../../src/cni/config-file.ts";
import { parseNetConf, type NetConf } from "../../src/cni/config.ts";
import { podLinks, type PodMeta } from "../../src/pods/podspec.ts";
import { REPO, tempDir } from "../support/env.ts";

type Obj = Record<string, unknown>;

function isObj(x: unknown): x is Obj {
  return typeof x === "object" && x !== null && !Array.isArray(x);
}
/** A field that must be an object. */
function o(x: unknown, what: string): Obj {
  if (!isObj(x)) throw new Error(`${what} is not an object: ${JSON.stringify(x)}`);
  return x;
}
/** A field that must be a list of objects. */
function list(x: unknown, what: string): Obj[] {
  if (!Array.isArray(x)) throw new Error(`${what} is not a list: ${JSON.stringify(x)}`);
  return x.map((e, i) => o(e, `${what}[${i}]`));
}
function str(x: unknown, what: string): string {
  if (typeof x !== "string") throw new Error(`${what} is not a string: ${JSON.stringify(x)}`);
  return x;
}

interface Doc {
  file: string;
  doc: Obj;
  kind: string;
  name: string;
}

function yamlFiles(dir: string): string[] {
  return readdirSync(dir)
    .filter((f) => f.endsWith(".yaml") || f.endsWith(".yml"))
    .map((f) => join(dir, f));
}

function readDocs(file: string): Doc[] {
  return loadAll(readFileSync(file, "utf8"))
    .filter((d) => d !== null && d !== undefined)
    .map((d, i) => {
      const doc = o(d, `${file} document ${i + 1}`);
      const metadata = o(doc.metadata, `${file} document ${i + 1} metadata`);
      return { file, doc, kind: str(doc.kind, "kind"), name: str(metadata.name, "metadata.name") };
    });
}

const K8S_DIR = join(REPO, "conf", "kubernetes");
const PODS_DIR = join(REPO, "pod_specs");
const k8sDocs = yamlFiles(K8S_DIR).flatMap(readDocs);
const podDirDocs = yamlFiles(PODS_DIR).flatMap(readDocs);

function one(docs: Doc[], kind: string, name: string): Obj {
  const found = docs.filter((d) => d.kind === kind && d.name === name);
  expect(found.map((d) => `${d.kind}/${d.name}`)).toEqual([`${kind}/${name}`]);
  return (found[0] as Doc).doc;
}

const API_VERSIONS: Record<string, string> = {
  Namespace: "v1",
  ServiceAccount: "v1",
  ConfigMap: "v1",
  Service: "v1",
  Pod: "v1",
  ClusterRole: "rbac.authorization.k8s.io/v1",
  ClusterRoleBinding: "rbac.authorization.k8s.io/v1",
  DaemonSet: "apps/v1",
  StatefulSet: "apps/v1",
  Deployment: "apps/v1",
};

const NS = "ratchet-system";

describe("every manifest", () => {
  test("has a known kind with its apiVersion, and a namespace where it is namespaced", () => {
    const all = [...k8sDocs, ...podDirDocs];
    expect(all.length).toBeGreaterThan(8);
    for (const d of all) {
      expect(`${d.file}: ${d.kind} ${String(d.doc.apiVersion)}`).toBe(
        `${d.file}: ${d.kind} ${API_VERSIONS[d.kind] ?? "(unexpected kind)"}`,
      );
      const namespaced = !["Namespace", "ClusterRole", "ClusterRoleBinding"].includes(d.kind);
      const ns = o(d.doc.metadata, "metadata").namespace;
      // Pods in pod_specs/ go to the namespace kubectl is pointed at; everything of ours to ratchet-system.
      if (d.kind === "Pod") expect(ns).toBeUndefined();
      else if (namespaced)
        expect(`${d.kind}/${d.name} in ${String(ns)}`).toBe(`${d.kind}/${d.name} in ${NS}`);
      else expect(ns).toBeUndefined();
    }
  });

  test("conf/kubernetes/ holds exactly the install: namespace, RBAC, config, DaemonSet", () => {
    expect(k8sDocs.map((d) => `${d.kind}/${d.name}`).sort()).toEqual(
      [
        "ClusterRole/ratchet",
        "ClusterRoleBinding/ratchet",
        "ConfigMap/ratchet-config",
        "DaemonSet/ratchet",
        `Namespace/${NS}`,
        "ServiceAccount/ratchet",
      ].sort(),
    );
    // kubectl apply -f DIR goes by file name: the namespace must come first.
    const files = yamlFiles(K8S_DIR).sort();
    expect(readDocs(files[0] as string)[0]?.kind).toBe("Namespace");
  });
});

describe("RBAC", () => {
  test("the ClusterRole grants get, list, watch and patch on pods, create and patch on events, nothing else", () => {
    const role = one(k8sDocs, "ClusterRole", "ratchet");
    const rules = list(role.rules, "rules");
    expect(rules).toEqual([
      { apiGroups: [""], resources: ["pods"], verbs: ["get", "list", "watch"] },
      { apiGroups: [""], resources: ["pods"], verbs: ["patch"] },
      { apiGroups: [""], resources: ["events"], verbs: ["create", "patch"] },
    ]);
    expect(role.aggregationRule).toBeUndefined();
  });

  test("the binding gives that role to the ratchet service account", () => {
    expect(one(k8sDocs, "ServiceAccount", "ratchet").metadata).toEqual({ name: "ratchet", namespace: NS });
    const binding = one(k8sDocs, "ClusterRoleBinding", "ratchet");
    expect(binding.roleRef).toEqual({
      apiGroup: "rbac.authorization.k8s.io",
      kind: "ClusterRole",
      name: "ratchet",
    });
    expect(binding.subjects).toEqual([{ kind: "ServiceAccount", name: "ratchet", namespace: NS }]);
  });
});

// --- the ConfigMap's network config ---------------------------------------------------------

const configMap = one(k8sDocs, "ConfigMap", "ratchet-config");
const configText = str(o(configMap.data, "data")["10-ratchet.conf"], "data.10-ratchet.conf");

describe("the ConfigMap's 10-ratchet.conf", () => {
  // Parsed inside each test: a config that fails the schema fails a test, not the file's loading.
  const parsed = (): NetConf => parseNetConf(JSON.parse(configText));

  test("passes ratchet's schema with the paths the DaemonSet provides", () => {
    const conf = parsed();
    expect(conf.type).toBe("ratchet");
    expect(conf.kubeconfig).toBe("/etc/cni/net.d/ratchet-kubeconfig");
    expect(conf.child_path).toBe("/opt/cni/bin/ratchet-child");
    expect(conf.child_socket).toBe("/run/ratchet/child.sock");
    expect(conf.log_file).toBe("/var/log/ratchet/ratchet.log");
    expect(conf.parent_interface).toBeString();
    expect(conf.delegate?.type).toBeString();
    expect(conf.boot_network?.type).toBeString();
  });

  test("points at the etcd Service of pod_specs/etcd.yaml", () => {
    const conf = parsed();
    const svc = one(podDirDocs, "Service", "ratchet-etcd");
    const port = list(o(svc.spec, "spec").ports, "ports")[0]?.port;
    expect(conf.etcd_endpoints).toEqual([`http://ratchet-etcd.${NS}.svc.cluster.local:${port}`]);
  });

  test("a config that breaks the schema is refused (the check can fail)", () => {
    const bad = { ...JSON.parse(configText), kubeconfig: "etc/cni/net.d/ratchet-kubeconfig" };
    expect(() => parseNetConf(bad)).toThrow(/kubeconfig must be an absolute path/);
  });
});

// --- the DaemonSet --------------------------------------------------------------------------

const ds = one(k8sDocs, "DaemonSet", "ratchet");
const podSpec = o(o(o(ds.spec, "spec").template, "template").spec, "template.spec");
const initContainers = list(podSpec.initContainers, "initContainers");
const containers = list(podSpec.containers, "containers");
const byName = (cs: Obj[], name: string): Obj => {
  const c = cs.find((x) => x.name === name);
  if (!c) throw new Error(`no container ${name}: ${cs.map((x) => x.name).join(", ")}`);
  return c;
};
const agent = byName(containers, "agent");
const install = byName(initContainers, "install");
const tokenSync = byName(containers, "token-sync");

/** The container's mounts as mountPath -> {volume's host path, propagation, readOnly}. */
function mounts(
  c: Obj,
): Map<
  string,
  { hostPath: string | undefined; configMap: string | undefined; propagation: unknown; readOnly: unknown }
> {
  const volumes = list(podSpec.volumes, "volumes");
  const out = new Map<
    string,
    { hostPath: string | undefined; configMap: string | undefined; propagation: unknown; readOnly: unknown }
  >();
  for (const m of list(c.volumeMounts, `${String(c.name)}.volumeMounts`)) {
    const vol = volumes.find((v) => v.name === m.name);
    if (!vol) throw new Error(`mount ${String(m.name)} has no volume`);
    const hp = isObj(vol.hostPath) ? str(vol.hostPath.path, "hostPath.path") : undefined;
    const cm = isObj(vol.configMap) ? str(vol.configMap.name, "configMap.name") : undefined;
    out.set(str(m.mountPath, "mountPath"), {
      hostPath: hp,
      configMap: cm,
      propagation: m.mountPropagation,
      readOnly: m.readOnly,
    });
  }
  return out;
}

/** The script of a `/bin/sh -c SCRIPT` container. */
function script(c: Obj): string {
  const cmd = c.command;
  if (!Array.isArray(cmd) || cmd.length !== 3 || cmd[0] !== "/bin/sh" || cmd[1] !== "-c")
    throw new Error(`${String(c.name)}: not /bin/sh -c SCRIPT`);
  return str(cmd[2], "script");
}

describe("the DaemonSet", () => {
  test("runs on every node in the host network as the ratchet service account", () => {
    expect(podSpec.serviceAccountName).toBe("ratchet");
    expect(podSpec.hostNetwork).toBe(true);
    expect(podSpec.hostPID).toBe(true);
    expect(podSpec.dnsPolicy).toBe("ClusterFirstWithHostNet");
    expect(podSpec.automountServiceAccountToken).not.toBe(false);
    // One toleration that matches every taint.
    expect(podSpec.tolerations).toEqual([{ operator: "Exists" }]);
    const selector = o(o(ds.spec, "spec").selector, "selector").matchLabels;
    expect(o(o(o(ds.spec, "spec").template, "template").metadata, "metadata").labels).toEqual(selector);
  });

  test("the agent runs the installed binary in child mode with the installed config, privileged", () => {
    expect(agent.command).toEqual([
      "/opt/cni/bin/ratchet",
      "--mode=child",
      "--config",
      "/etc/cni/net.d/10-ratchet.conf",
    ]);
    expect(agent.args).toBeUndefined();
    expect(o(agent.securityContext, "agent.securityContext").privileged).toBe(true);
    expect(o(install.securityContext, "install.securityContext").privileged).toBe(true);
    // The token-sync sidecar needs no privilege.
    expect(o(tokenSync.securityContext, "token-sync.securityContext").privileged).toBeUndefined();
    for (const c of [...initContainers, ...containers]) expect(c.image).toBe("ratchet:latest");
  });

  test("probes and the metrics port follow the config's metrics_address", () => {
    const conf = parseNetConf(JSON.parse(configText));
    const port = Number(conf.metrics_address.split(":").pop());
    expect(port).toBeGreaterThan(0);
    expect(list(agent.ports, "agent.ports")).toEqual([
      { name: "metrics", containerPort: port, protocol: "TCP" },
    ]);
    const get = (probe: string) => o(o(agent[probe], probe).httpGet, `${probe}.httpGet`);
    expect(get("readinessProbe")).toEqual({ path: "/readyz", port: "metrics" });
    expect(get("livenessProbe")).toEqual({ path: "/healthz", port: "metrics" });
    // Host network: kubelet probes the node's address, so the agent must listen on it.
    expect(conf.metrics_address.startsWith("0.0.0.0:")).toBe(true);
    const annotations = o(o(o(ds.spec, "spec").template, "template").metadata, "metadata").annotations;
    expect(o(annotations, "annotations")["prometheus.io/port"]).toBe(String(port));
  });

  test("the install and agent containers know the node's name (NODE_NAME from spec.nodeName)", () => {
    for (const c of [install, agent])
      expect(c.env).toContainEqual({
        name: "NODE_NAME",
        valueFrom: { fieldRef: { fieldPath: "spec.nodeName" } },
      });
  });

  test("the agent mounts the host paths it shares with the plugin, netns with HostToContainer", () => {
    const m = mounts(agent);
    expect([...m.keys()].sort()).toEqual([
      "/etc/cni/net.d",
      "/opt/cni/bin",
      "/run/ratchet",
      "/var/log/ratchet",
      "/var/run/netns",
    ]);
    // Same path on the host and in the container: the config, the kubeconfig and the socket name host paths.
    for (const [path, v] of m) expect(`${path} <- ${v.hostPath}`).toBe(`${path} <- ${path}`);
    expect(m.get("/var/run/netns")?.propagation).toBe("HostToContainer");
    for (const p of ["/opt/cni/bin", "/etc/cni/net.d", "/run/ratchet", "/var/log/ratchet"])
      expect(m.get(p)?.propagation).toBeUndefined();
    // The agent writes its socket, lock and journal in /run/ratchet and must not be read-only there.
    expect(m.get("/run/ratchet")?.readOnly).not.toBe(true);
  });

  test("the install container mounts the host directories it writes and the ConfigMap", () => {
    const m = mounts(install);
    for (const p of ["/opt/cni/bin", "/etc/cni/net.d", "/run/ratchet", "/var/log/ratchet"]) {
      expect(m.get(p)?.hostPath).toBe(p);
      expect(m.get(p)?.readOnly).not.toBe(true);
    }
    const cm = [...m.values()].filter((v) => v.configMap !== undefined);
    expect(cm.map((v) => v.configMap)).toEqual(["ratchet-config"]);
    expect(script(install)).toContain(
      `${[...m.entries()].find(([, v]) => v.configMap)?.[0]}/10-ratchet.conf`,
    );
    expect(mounts(tokenSync).get("/run/ratchet")?.hostPath).toBe("/run/ratchet");
  });

  test("the install script writes temp files beside their targets and renames them", () => {
    const s = script(install);
    expect(s.startsWith("set -eu")).toBe(true);
    // The one writer: a temp file in DEST's directory, then mv over DEST.
    expect(s).toMatch(/tmp="\$\(dirname "\$1"\)\/\.\$\(basename "\$1"\)\.tmp\.\$\$"/);
    expect(s).toMatch(/mv -f "\$tmp" "\$1"/);
    expect(s).toContain('write_atomic "$CNI_BIN_DIR/ratchet" 0755');
    expect(s).toMatch(/ln -s ratchet "\$CNI_BIN_DIR\/\.ratchet-child\.tmp\.\$\$"/);
    expect(s).not.toMatch(/cp [^\n]*"\$CNI_BIN_DIR\/ratchet"/);
  });
});

// --- running the install script -------------------------------------------------------------

interface Sandbox {
  root: string;
  env: Record<string, string>;
  binBody: string;
}

function sandbox(root: string): Sandbox {
  const d = (p: string) => join(root, p);
  for (const p of ["image", "cm", "sa"]) mkdirSync(d(p));
  const binBody = "#!/bin/sh\necho fake ratchet v1\n";
  writeFileSync(d("image/ratchet"), binBody, { mode: 0o755 });
  writeFileSync(d("cm/10-ratchet.conf"), configText);
  writeFileSync(d("sa/token"), "token-one\n");
  writeFileSync(d("sa/ca.crt"), "-----BEGIN CERTIFICATE-----\nfake\n-----END CERTIFICATE-----\n");
  return {
    root,
    binBody,
    env: {
      PATH: process.env.PATH ?? "/usr/bin:/bin",
      RATCHET_IMAGE_BINARY: d("image/ratchet"),
      RATCHET_CONFIG_SOURCE: d("cm/10-ratchet.conf"),
      CNI_BIN_DIR: d("host/opt/cni/bin"),
      CNI_CONF_DIR: d("host/etc/cni/net.d"),
      RATCHET_RUN_DIR: d("host/run/ratchet"),
      RATCHET_LOG_DIR: d("host/var/log/ratchet"),
      SERVICE_ACCOUNT_DIR: d("sa"),
      KUBERNETES_SERVICE_HOST: "10.96.0.1",
      KUBERNETES_SERVICE_PORT: "443",
      RATCHET_ETCD_SERVICE_HOST: "10.96.23.45",
      RATCHET_ETCD_SERVICE_PORT: "2379",
      NODE_NAME: "node-7.example",
    },
  };
}

function runScript(s: string, env: Record<string, string>): { code: number; stderr: string } {
  const r = Bun.spawnSync(["/bin/sh", "-c", s], { env, stdout: "pipe", stderr: "pipe" });
  return { code: r.exitCode ?? -1, stderr: r.stderr.toString() };
}

describe("the install script, run in a temp dir", () => {
  test("installs the binary, the symlink, the token, the kubeconfig and the config", () => {
    using dir = tempDir("ratchet-k8s-install-");
    const sb = sandbox(dir.path);
    const e = sb.env as Required<typeof sb.env> & Record<string, string>;
    const r = runScript(script(install), sb.env);
    expect(r.stderr).toContain("installed");
    expect(r.code).toBe(0);

    const bin = join(e.CNI_BIN_DIR as string, "ratchet");
    expect(readFileSync(bin, "utf8")).toBe(sb.binBody);
    expect(statSync(bin).mode & 0o777).toBe(0o755);
    const child = join(e.CNI_BIN_DIR as string, "ratchet-child");
    expect(lstatSync(child).isSymbolicLink()).toBe(true);
    expect(readlinkSync(child)).toBe("ratchet");
    expect(readFileSync(child, "utf8")).toBe(sb.binBody);
    // No temp file left behind anywhere.
    for (const k of ["CNI_BIN_DIR", "CNI_CONF_DIR", "RATCHET_RUN_DIR"]) {
      expect(readdirSync(e[k] as string).filter((f) => f.includes(".tmp"))).toEqual([]);
    }
    expect(readdirSync(e.CNI_BIN_DIR as string).sort()).toEqual(["ratchet", "ratchet-child"]);
    expect(readdirSync(e.CNI_CONF_DIR as string).sort()).toEqual(["10-ratchet.conf", "ratchet-kubeconfig"]);
    expect(statSync(e.RATCHET_RUN_DIR as string).mode & 0o777).toBe(0o700);

    // The token and CA copied, private.
    const token = join(e.RATCHET_RUN_DIR as string, "token");
    expect(readFileSync(token, "utf8")).toBe("token-one\n");
    expect(statSync(token).mode & 0o777).toBe(0o600);

    // The config: the schema passes, etcd is the Service's cluster IP.
    const conf = loadConfigFile(join(e.CNI_CONF_DIR as string, "10-ratchet.conf"));
    expect(conf.etcd_endpoints).toEqual(["http://10.96.23.45:2379"]);
    expect(conf.kubeconfig).toBe("/etc/cni/net.d/ratchet-kubeconfig");
    expect(conf.node_name).toBe("node-7.example");

    // The kubeconfig: the API server, the CA and token files on the host path.
    const kcPath = join(e.CNI_CONF_DIR as string, "ratchet-kubeconfig");
    expect(statSync(kcPath).mode & 0o777).toBe(0o600);
    const kc = o(load(readFileSync(kcPath, "utf8")), "kubeconfig");
    const ctxName = str(kc["current-context"], "current-context");
    const ctx = o(list(kc.contexts, "contexts").find((c) => c.name === ctxName)?.context, "context");
    const cluster = o(list(kc.clusters, "clusters").find((c) => c.name === ctx.cluster)?.cluster, "cluster");
    const user = o(list(kc.users, "users").find((u) => u.name === ctx.user)?.user, "user");
    expect(cluster).toEqual({
      server: "https://10.96.0.1:443",
      "certificate-authority": join(e.RATCHET_RUN_DIR as string, "ca.crt"),
    });
    expect(user).toEqual({ "token-file": token, tokenFile: token });
  });

  test("a second run changes nothing; a new binary replaces the old one by rename", () => {
    using dir = tempDir("ratchet-k8s-install-");
    const sb = sandbox(dir.path);
    const binDir = sb.env.CNI_BIN_DIR as string;
    expect(runScript(script(install), sb.env).code).toBe(0);
    const first = statSync(join(binDir, "ratchet")).ino;
    const again = runScript(script(install), sb.env);
    expect(again.code).toBe(0);
    expect(again.stderr).toContain("is up to date");
    expect(again.stderr).not.toContain("linked");
    expect(statSync(join(binDir, "ratchet")).ino).toBe(first);

    writeFileSync(sb.env.RATCHET_IMAGE_BINARY as string, "#!/bin/sh\necho fake ratchet v2\n");
    const third = runScript(script(install), sb.env);
    expect(third.code).toBe(0);
    expect(readFileSync(join(binDir, "ratchet"), "utf8")).toContain("v2");
    // A new inode: the old file (which a running agent may be executing) was never written to.
    expect(statSync(join(binDir, "ratchet")).ino).not.toBe(first);
    expect(readdirSync(binDir).sort()).toEqual(["ratchet", "ratchet-child"]);
  });

  test("an IPv6 API server and etcd Service get brackets; a ratchet-child file becomes the link", () => {
    using dir = tempDir("ratchet-k8s-install-");
    const sb = sandbox(dir.path);
    const binDir = sb.env.CNI_BIN_DIR as string;
    mkdirSync(binDir, { recursive: true });
    // The original ratchet-cni installed ratchet-child as a second binary.
    writeFileSync(join(binDir, "ratchet-child"), "old go binary");
    const env = {
      ...sb.env,
      KUBERNETES_SERVICE_HOST: "fd00:96::1",
      RATCHET_ETCD_SERVICE_HOST: "fd00:96::17",
    };
    const r = runScript(script(install), env);
    expect(r.code).toBe(0);
    expect(readlinkSync(join(binDir, "ratchet-child"))).toBe("ratchet");
    expect(loadConfigFile(join(sb.env.CNI_CONF_DIR as string, "10-ratchet.conf")).etcd_endpoints).toEqual([
      "http://[fd00:96::17]:2379",
    ]);
    expect(readFileSync(join(sb.env.CNI_CONF_DIR as string, "ratchet-kubeconfig"), "utf8")).toContain(
      'server: "https://[fd00:96::1]:443"',
    );
  });

  test("a config that names its node keeps it; a NODE_NAME that is not a node name is refused", () => {
    using dir = tempDir("ratchet-k8s-install-");
    const sb = sandbox(dir.path);
    writeFileSync(sb.env.RATCHET_CONFIG_SOURCE as string, configText.replace("{", '{"node_name": "fixed",'));
    expect(runScript(script(install), sb.env).code).toBe(0);
    expect(loadConfigFile(join(sb.env.CNI_CONF_DIR as string, "10-ratchet.conf")).node_name).toBe("fixed");
    writeFileSync(sb.env.RATCHET_CONFIG_SOURCE as string, configText);
    const bad = runScript(script(install), { ...sb.env, NODE_NAME: 'x", "evil": "1' });
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toContain("is not a node name");
  });

  test("without a service account token it fails before writing any config", () => {
    using dir = tempDir("ratchet-k8s-install-");
    const sb = sandbox(dir.path);
    writeFileSync(join(dir.path, "sa", "token"), "");
    const r = runScript(script(install), sb.env);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain("no service account token");
    expect(readdirSync(sb.env.CNI_CONF_DIR as string)).toEqual([]);
  });
});

describe("the token-sync container", () => {
  test("copies a rotated token over the host copy, through a rename", async () => {
    using dir = tempDir("ratchet-k8s-sync-");
    const sb = sandbox(dir.path);
    const run = sb.env.RATCHET_RUN_DIR as string;
    mkdirSync(run, { recursive: true, mode: 0o700 });
    writeFileSync(join(run, "token"), "stale\n", { mode: 0o600 });
    const proc = Bun.spawn(["/bin/sh", "-c", script(tokenSync)], {
      env: { ...sb.env, SYNC_SECONDS: "0.2" },
      stdout: "ignore",
      stderr: "pipe",
    });
    try {
      const waitFor = async (want: string) => {
        for (let i = 0; i < 100 && readFileSync(join(run, "token"), "utf8") !== want; i++)
          await Bun.sleep(50);
        return readFileSync(join(run, "token"), "utf8");
      };
      expect(await waitFor("token-one\n")).toBe("token-one\n");
      const ino = statSync(join(run, "token")).ino;
      writeFileSync(join(dir.path, "sa", "token"), "token-two\n");
      expect(await waitFor("token-two\n")).toBe("token-two\n");
      expect(statSync(join(run, "token")).ino).not.toBe(ino);
      expect(statSync(join(run, "token")).mode & 0o777).toBe(0o600);
      expect(readFileSync(join(run, "ca.crt"), "utf8")).toContain("BEGIN CERTIFICATE");
    } finally {
      proc.kill("SIGTERM");
      expect(await proc.exited).toBe(0);
    }
    expect(readdirSync(run).sort()).toEqual(["ca.crt", "token"]);
  });
});

// --- sample network configs -----------------------------------------------------------------

describe("sample network configs in conf/", () => {
  const files = readdirSync(join(REPO, "conf")).filter((f) => /\.(conf|conflist|json)$/.test(f));

  test("include the standalone, chained and TLS samples", () => {
    expect(files).toEqual(
      expect.arrayContaining(["10-ratchet.conf", "20-ratchet-chained.conflist", "30-ratchet-tls.conf"]),
    );
  });

  for (const f of files) {
    test(`${f} passes ratchet's schema and gives eth0 an address`, () => {
      const path = join(REPO, "conf", f);
      const conf = loadConfigFile(path);
      expect(conf.type).toBe("ratchet");
      const raw = o(JSON.parse(readFileSync(path, "utf8")), f);
      if (Array.isArray(raw.plugins)) {
        // Chained: the plugin before ratchet makes eth0 and its address.
        const plugins = list(raw.plugins, "plugins");
        const at = plugins.findIndex((p) => p.type === "ratchet");
        expect(at).toBeGreaterThan(0);
        expect(o(plugins[0]?.ipam, "plugins[0].ipam").type).toBeString();
        expect(conf.name).toBe(str(raw.name, "name"));
        expect(conf.cniVersion).toBe(str(raw.cniVersion, "cniVersion"));
      } else {
        // Standalone: boot_network must not be loopback alone (containerd needs an IP on eth0).
        expect(conf.boot_network?.type).not.toBe("loopback");
        expect(o(conf.boot_network?.ipam, "boot_network.ipam").type).toBe("host-local");
        expect(conf.delegate).toBeDefined();
      }
    });
  }

  test("the TLS sample names every TLS, auth, kubeconfig and logging field", () => {
    const conf = loadConfigFile(join(REPO, "conf", "30-ratchet-tls.conf"));
    expect(conf.etcd_endpoints?.length).toBeGreaterThan(0);
    for (const u of conf.etcd_endpoints ?? []) expect(u).toStartWith("https://");
    for (const k of [
      "etcd_ca_file",
      "etcd_cert_file",
      "etcd_key_file",
      "etcd_username",
      "etcd_password_file",
      "kubeconfig",
      "parent_interface",
      "log_file",
    ] as const) {
      expect(`${k}=${String(conf[k])}`).not.toBe(`${k}=undefined`);
    }
    expect(conf.log_level).toBe("info");
    // The schema ties cert and key together: dropping one must fail.
    const raw = JSON.parse(readFileSync(join(REPO, "conf", "30-ratchet-tls.conf"), "utf8")) as Obj;
    delete raw.etcd_key_file;
    expect(() => parseNetConf(raw)).toThrow(/etcd_cert_file and etcd_key_file go together/);
  });
});

// --- sample pods and etcd -------------------------------------------------------------------

function podMetaOf(d: Doc): PodMeta {
  const m = o(d.doc.metadata, "metadata");
  return {
    namespace: typeof m.namespace === "string" ? m.namespace : "default",
    name: d.name,
    labels: m.labels as Record<string, string> | undefined,
    annotations: m.annotations as Record<string, string> | undefined,
  };
}

describe("pod_specs/", () => {
  const pods = podDirDocs.filter((d) => d.kind === "Pod");

  test("every pod's labels and annotation parse", () => {
    expect(pods.length).toBeGreaterThanOrEqual(5);
    for (const p of pods) {
      const labels = o(o(p.doc.metadata, "metadata").labels ?? {}, "labels");
      for (const [k, v] of Object.entries(labels)) expect(`${k}: ${typeof v}`).toBe(`${k}: string`);
      const r = podLinks(podMetaOf(p), { defaultPrefix: 24 });
      expect(`${p.name} eligible=${r.eligible}`).toBe(`${p.name} eligible=true`);
    }
  });

  test("the multi-link hub declares two dual-stack links with MTU and MACs; the spokes only opt in", () => {
    const docs = readDocs(join(PODS_DIR, "multi-link.yaml"));
    const [hub, a, b] = docs.map((d) => podLinks(podMetaOf(d), { defaultPrefix: 24 }));
    expect(docs.map((d) => d.name)).toEqual(["hub", "spoke-a", "spoke-b"]);
    expect(hub).toEqual({
      eligible: true,
      links: [
        {
          local: {
            namespace: "default",
            pod: "hub",
            ifname: "eth1",
            ips: ["10.10.1.1/30", "fd00:10:1::1/64"],
          },
          peer: {
            namespace: "default",
            pod: "spoke-a",
            ifname: "eth1",
            ips: ["10.10.1.2/30", "fd00:10:1::2/64"],
          },
          mtu: 1400,
          primary: true,
          source: "annotation",
        },
        {
          local: {
            namespace: "default",
            pod: "hub",
            ifname: "eth2",
            ips: ["10.10.2.1/30", "fd00:10:2::1/64"],
            mac: "02:00:0a:0a:02:01",
          },
          peer: {
            namespace: "default",
            pod: "spoke-b",
            ifname: "eth1",
            ips: ["10.10.2.2/30", "fd00:10:2::2/64"],
            mac: "02:00:0a:0a:02:02",
          },
          mtu: 1380,
          primary: true,
          source: "annotation",
        },
      ],
    });
    expect(a).toEqual({ eligible: true, links: [] });
    expect(b).toEqual({ eligible: true, links: [] });
    for (const d of docs.slice(1))
      expect(o(d.doc.metadata, "metadata").labels).toEqual({ app: d.name, ratchet: "true" });
  });

  test("the original pair still gives in1/in2", () => {
    const docs = readDocs(join(PODS_DIR, "example.yaml"));
    const primary = podLinks(podMetaOf(docs[0] as Doc), { defaultPrefix: 24 });
    expect(
      primary.links.map(
        (l) => `${l.local.pod}/${l.local.ifname}=${l.local.ips} ${l.peer.pod}/${l.peer.ifname}=${l.peer.ips}`,
      ),
    ).toEqual(["primary-pod/in1=192.168.2.100/24 pair-pod/in2=192.168.2.101/24"]);
  });

  test("etcd.yaml: one etcd member behind a Service on 2379 in ratchet-system", () => {
    const docs = readDocs(join(PODS_DIR, "etcd.yaml"));
    expect(docs.map((d) => `${d.kind}/${d.name}`)).toEqual([
      `Namespace/${NS}`,
      "Service/ratchet-etcd",
      "StatefulSet/ratchet-etcd",
    ]);
    const sts = one(docs, "StatefulSet", "ratchet-etcd");
    const tpl = o(o(sts.spec, "spec").template, "template");
    const spec = o(tpl.spec, "template.spec");
    expect(spec.hostNetwork).toBeUndefined();
    const [etcd] = list(spec.containers, "containers");
    expect(str(etcd?.image, "image")).toMatch(
      /^(quay\.io\/coreos\/etcd:v3\.5\.\d+|registry\.k8s\.io\/etcd:3\.5\.\d+-\d+)$/,
    );
    const cmd = ((etcd?.command ?? []) as string[]).join(" ");
    expect(cmd).toContain("--listen-client-urls=http://0.0.0.0:2379");
    expect(list(etcd?.ports, "ports")).toEqual([{ name: "client", containerPort: 2379, protocol: "TCP" }]);
    const svc = one(docs, "Service", "ratchet-etcd");
    const svcSpec = o(svc.spec, "spec");
    expect(svcSpec.selector).toEqual(o(tpl.metadata, "metadata").labels);
    expect(list(svcSpec.ports, "ports")[0]).toMatchObject({ port: 2379, targetPort: "client" });
    // The warning is there for whoever copies it.
    expect(readFileSync(join(PODS_DIR, "etcd.yaml"), "utf8")).toMatch(/production use TLS/);
  });
});
