// Pods through a real container runtime: the two-node bed of cluster.ts (host netns per
// node joined by a bridge, one stand-in API server, one etcd prefix) with a containerd in
// each node's host netns. Each containerd execs the plugin from a CNI bin dir made by
// scripts/install.sh (plus Debian's reference plugins beside it) and reads the project's
// sample config from its conf dir, filled in for this node. The plugin and its node agent run
// in that netns too, so etcd and the API server are forwarded to its loopback. Pods are named
// as in the API server, so containerd's CNI_ARGS (K8S_POD_NAMESPACE/NAME/UID) find them.
import { mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { waitFor } from "../child.ts";
import { makeCluster, type Cluster, type Node } from "../cluster.ts";
import { BIN, etcdEndpoint, REPO, run } from "../env.ts";
import type { CriError, PodSandboxConfig } from "./client.ts";
import { Containerd } from "./containerd.ts";
import { Forward } from "./forward.ts";
import { Sandbox } from "./sandbox.ts";

/** Which network config the node's containerd loads. */
export type NetKind =
  /** conf/10-ratchet.conf: ratchet alone, bridge as delegate and boot network. */
  | "standalone"
  /** conf/20-ratchet-chained.conflist: bridge, then ratchet. */
  | "chained"
  /** The bridge plugin alone, configured as the standalone sample's delegate (the reference). */
  | "bridge";

const REF_PLUGINS = "/usr/lib/cni";

function readJson(file: string): Record<string, unknown> {
  return JSON.parse(readFileSync(file, "utf8")) as Record<string, unknown>;
}

/** Gives a bridge config's host-local IPAM a data dir of this node (not the machine's /var/lib/cni). */
function withIpamDir(plugin: unknown, dataDir: string): Record<string, unknown> {
  const p = { ...(plugin as Record<string, unknown>) };
  p.ipam = { ...(p.ipam as Record<string, unknown>), dataDir };
  return p;
}

/** The fields of a sample that name this machine: etcd, the API server, paths, the node. */
function fillRatchet(conf: Record<string, unknown>, node: Node, binDir: string): Record<string, unknown> {
  const etcd = new URL(etcdEndpoint());
  const out: Record<string, unknown> = { ...conf };
  if ("etcd_endpoints" in out || !("etcd_host" in out)) out.etcd_endpoints = [etcd.origin];
  else {
    out.etcd_host = etcd.hostname;
    out.etcd_port = etcd.port;
  }
  Object.assign(out, {
    etcd_prefix: node.cluster.etcdPrefix,
    kubeconfig: node.cluster.kubeconfig,
    child_path: join(binDir, "ratchet-child"),
    child_socket: node.socket,
    log_file: node.logFile,
    log_level: "debug",
    host_netns: node.host.path,
    parent_interface: "ul0",
    parent_address: node.parentAddress,
    // The agent watches the pods scheduled to this node; run() binds each pod to it.
    node_name: node.name,
  });
  return out;
}

/** Writes the node's network config into confDir; returns the file written. */
function writeNetConf(kind: NetKind, node: Node, binDir: string, confDir: string, ipamDir: string): string {
  if (kind === "chained") {
    const list = readJson(join(REPO, "conf", "20-ratchet-chained.conflist"));
    const plugins = list.plugins as Array<Record<string, unknown>>;
    list.plugins = plugins.map((p) =>
      p.type === "ratchet" ? fillRatchet(p, node, binDir) : withIpamDir(p, ipamDir),
    );
    const file = join(confDir, "20-ratchet-chained.conflist");
    writeFileSync(file, JSON.stringify(list, null, 2));
    return file;
  }
  const sample = readJson(join(REPO, "conf", "10-ratchet.conf"));
  const conf = fillRatchet(sample, node, binDir);
  conf.delegate = withIpamDir(conf.delegate, ipamDir);
  conf.boot_network = withIpamDir(conf.boot_network, ipamDir);
  if (kind === "standalone") {
    const file = join(confDir, "10-ratchet.conf");
    writeFileSync(file, JSON.stringify(conf, null, 2));
    return file;
  }
  const bridge = { cniVersion: conf.cniVersion, name: conf.name, ...(conf.delegate as object) };
  const file = join(confDir, "10-bridge.conf");
  writeFileSync(file, JSON.stringify(bridge, null, 2));
  return file;
}

/** Installs the plugin as scripts/install.sh does, with the reference plugins beside it. */
async function makeBinDir(binDir: string): Promise<void> {
  const r = await run([join(REPO, "scripts", "install.sh"), binDir], {
    env: { ...process.env, RATCHET_BINARY: BIN } as Record<string, string>,
  });
  if (r.code !== 0) throw new Error(`scripts/install.sh ${binDir} failed (${r.code}): ${r.stderr}`);
  for (const p of readdirSync(REF_PLUGINS)) symlinkSync(join(REF_PLUGINS, p), join(binDir, p));
}

/** A cluster node with its containerd. */
export class CriNode implements AsyncDisposable {
  readonly sandboxes: Sandbox[] = [];

  private constructor(
    readonly node: Node,
    readonly kind: NetKind,
    readonly containerd: Containerd,
    readonly binDir: string,
    readonly confFile: string,
    readonly ipamDir: string,
  ) {}

  static async start(node: Node, kind: NetKind): Promise<CriNode> {
    const dir = join(node.dir, "cri");
    const [binDir, confDir, ipamDir] = ["bin", "net.d", "ipam"].map((d) => join(dir, d)) as [
      string,
      string,
      string,
    ];
    for (const d of [confDir, ipamDir]) mkdirSync(d, { recursive: true });
    await makeBinDir(binDir);
    const confFile = writeNetConf(kind, node, binDir, confDir, ipamDir);
    const containerd = new Containerd({
      dir: join(dir, "c"),
      netns: node.host.path,
      cniBinDir: binDir,
      cniConfDir: confDir,
    });
    const n = new CriNode(node, kind, containerd, binDir, confFile, ipamDir);
    try {
      await containerd.start();
      await containerd.importPause();
    } catch (err) {
      await n[Symbol.asyncDispose]();
      throw err;
    }
    return n;
  }

  get name(): string {
    return this.node.name;
  }

  /**
   * Runs the sandbox of a pod the API server serves (or, if it does not, of a pod with this
   * name and a fresh uid). Throws the CriError when containerd refuses.
   */
  async run(name: string, namespace = "default", attempt = 0): Promise<Sandbox> {
    // As the scheduler would have before the kubelet runs it: the pod is bound to this node.
    const api = this.node.cluster.api;
    if (api.getPod(namespace, name) && api.getPod(namespace, name)?.spec?.nodeName !== this.node.name)
      api.bindPod(namespace, name, this.node.name);
    const id = await this.containerd.cri.runPodSandbox(this.sandboxConfig(name, namespace, attempt));
    return this.sandbox(id);
  }

  /** The sandbox config the kubelet would send for a pod: metadata, labels and annotations. */
  sandboxConfig(name: string, namespace = "default", attempt = 0): PodSandboxConfig {
    const pod = this.node.cluster.api.getPod(namespace, name);
    const uid = pod?.metadata.uid ?? crypto.randomUUID();
    return {
      metadata: { name, namespace, uid, attempt },
      hostname: name,
      log_directory: join(this.containerd.opts.dir, "logs", `${namespace}_${name}_${uid}`),
      labels: pod?.metadata.labels ?? {},
      annotations: pod?.metadata.annotations ?? {},
      linux: {},
    };
  }

  /** A running sandbox by id, with its netns and pause pid from containerd's verbose status. */
  async sandbox(id: string): Promise<Sandbox> {
    const st = await this.containerd.cri.podSandboxStatus(id, true);
    const name = st.status.metadata.name;
    const namespace = st.status.metadata.namespace;
    const info = JSON.parse(st.info.info ?? "{}") as {
      pid?: number;
      runtimeSpec?: { linux?: { namespaces?: Array<{ type: string; path?: string }> } };
    };
    const netns = info.runtimeSpec?.linux?.namespaces?.find((n) => n.type === "network")?.path;
    if (!netns || !info.pid)
      throw new Error(`sandbox ${id}: no netns path or pid in its status: ${st.info.info}`);
    const s = new Sandbox(this, id, name, namespace, netns, info.pid);
    this.sandboxes.push(s);
    return s;
  }

  /** RunPodSandbox that is expected to fail: the CriError (throws if it succeeded). */
  async runFails(name: string, namespace = "default"): Promise<CriError> {
    let s: Sandbox;
    try {
      s = await this.run(name, namespace);
    } catch (err) {
      if ((err as Error).name === "CriError") return err as CriError;
      throw err;
    }
    throw new Error(
      `RunPodSandbox of ${namespace}/${name} on ${this.name} succeeded (${s.id}); expected an error`,
    );
  }

  /** Names of the links of one kind (vxlan, veth, ...) in the node's host netns. */
  async hostLinks(kind: string): Promise<string[]> {
    const r = await run(["ip", "-n", this.node.host.name, "-j", "link", "show", "type", kind]);
    if (r.code !== 0)
      throw new Error(`ip link show type ${kind} in ${this.node.host.name}: ${r.stderr.trim()}`);
    return (JSON.parse(r.stdout || "[]") as Array<{ ifname: string }>).map((l) => l.ifname);
  }

  /** IPs host-local still holds for this node's network (besides its bookkeeping files). */
  ipamLeases(): string[] {
    const out: string[] = [];
    for (const net of readdirSync(this.ipamDir))
      for (const f of readdirSync(join(this.ipamDir, net)))
        if (!f.startsWith("last_reserved_ip") && f !== "lock") out.push(`${net}/${f}`);
    return out;
  }

  /** Problems left on this node after every pod is gone (empty: clean). */
  async leftovers(): Promise<string[]> {
    const problems: string[] = [];
    if (this.containerd.running) {
      const left = await this.containerd.cri.listPodSandbox();
      if (left.length > 0)
        problems.push(
          `${this.name}: sandboxes left: ${left.map((s) => `${s.metadata.name} ${s.id}`).join(", ")}`,
        );
    }
    const mounts = this.containerd.netnsMounts();
    if (mounts.length > 0) problems.push(`${this.name}: netns still mounted: ${mounts.join(", ")}`);
    const leases = this.ipamLeases();
    if (leases.length > 0) problems.push(`${this.name}: host-local leases left: ${leases.join(", ")}`);
    // The bridge plugin leaves its bridge; nothing may be attached to it any more.
    const ports = await run(["ip", "-n", this.node.host.name, "-j", "link", "show", "master", "cni0"]);
    const attached = ports.code === 0 && ports.stdout.trim() ? (JSON.parse(ports.stdout) as unknown[]) : [];
    if (attached.length > 0) problems.push(`${this.name}: ${attached.length} ports still on cni0`);
    try {
      await waitFor(`${this.name}: shims to exit`, () => this.containerd.shims().length === 0, 10_000);
    } catch {
      problems.push(`${this.name}: shims still running: ${this.containerd.shims().join(", ")}`);
    }
    return problems;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.containerd[Symbol.asyncDispose]();
  }
}

/**
 * etcd and the API server as seen from each node's host netns: 127.0.0.1 on the same ports,
 * carried to the root netns's loopback through unix sockets in the cluster's dir.
 */
async function forwardLoopback(cluster: Cluster, forwards: Forward[]): Promise<void> {
  const ports = [new URL(etcdEndpoint()).port, new URL(cluster.api.url).port];
  const socks = ports.map((p) => join(cluster.dir, `fwd-${p}.sock`));
  const pairs = (a: string[], b: string[]) => a.flatMap((x, i) => [x, b[i] as string]);
  forwards.push(await Forward.start(["unix-to-tcp", ...pairs(socks, ports)]));
  for (const n of cluster.nodes)
    forwards.push(await Forward.start(["tcp-to-unix", ...pairs(ports, socks)], n.host.path));
}

/** A cluster with a containerd on each node; dispose removes all of it. */
export class CriBed implements AsyncDisposable {
  private constructor(
    readonly cluster: Cluster,
    readonly nodes: CriNode[],
    private readonly forwards: Forward[],
  ) {}

  static async make(opts: { nodes?: number; kind?: NetKind | NetKind[] } = {}): Promise<CriBed> {
    const cluster = await makeCluster({ nodes: opts.nodes ?? 1 });
    const nodes: CriNode[] = [];
    const forwards: Forward[] = [];
    const bed = new CriBed(cluster, nodes, forwards);
    try {
      await forwardLoopback(cluster, forwards);
      for (const [i, n] of cluster.nodes.entries()) {
        const kind = Array.isArray(opts.kind) ? opts.kind[i] : opts.kind;
        nodes.push(await CriNode.start(n, kind ?? "standalone"));
      }
    } catch (err) {
      await bed[Symbol.asyncDispose]();
      throw err;
    }
    return bed;
  }

  node(i: number): CriNode {
    const n = this.nodes[i - 1];
    if (!n) throw new Error(`the bed has ${this.nodes.length} nodes, not node ${i}`);
    return n;
  }

  /** The tail of every node's ratchet and containerd logs (for failure messages). */
  logs(): string {
    return this.nodes
      .map(
        (n) =>
          `--- ${n.name} ratchet log ---\n${n.node.logTail(30)}\n--- ${n.name} containerd log ---\n${n.containerd.logTail(15)}`,
      )
      .join("\n");
  }

  /**
   * Asserts every pod is gone and nothing is left: no sandbox, netns mount, IPAM lease,
   * bridge port or shim on any node, then the cluster's own checks (etcd records, host
   * links other than the bridge plugin's cni0, node agents).
   */
  async assertClean(): Promise<void> {
    const problems: string[] = [];
    for (const n of this.nodes) problems.push(...(await n.leftovers()));
    try {
      await this.cluster.assertClean({ allowHostLinks: ["cni0"] });
    } catch (err) {
      problems.push((err as Error).message);
    }
    if (problems.length > 0) throw new Error(`the containerd bed is not clean:\n  ${problems.join("\n  ")}`);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    for (const n of [...this.nodes].reverse()) await n[Symbol.asyncDispose]();
    // The cluster first: its agents may still talk to etcd while they are stopped.
    await this.cluster[Symbol.asyncDispose]();
    for (const f of this.forwards) await f[Symbol.asyncDispose]();
  }
}
