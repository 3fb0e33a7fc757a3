// A two-node (or more) test bed on one machine: a "switch" netns with a Linux bridge, one
// "host" netns per node joined to it by a veth whose host end is `ul0` (the node's
// parent_interface, with an underlay address of its own), one stand-in API server, and a
// per-cluster prefix in the run's etcd. Pods are netns driven through the installed binary
// exactly as a container runtime drives it (env + stdin). Tests may use iproute2 and ping to
// build and to look; the product may not. Traffic never leaves these namespaces.
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { startApiServer, type ApiServer } from "./apiserver.ts";
import { childPids, waitFor } from "./child.ts";
import { cni, type Invocation } from "./cni.ts";
import {
  etcdEndpoint,
  etcdEndpoints,
  hiddenCheckout,
  installedBin,
  REPO,
  run,
  tempDir,
  uniqueName,
  type RunResult,
} from "./env.ts";
import { addresses, ipIn, makeNetns, type TestNetns } from "./netns.ts";
import type { PodObject } from "./pods.ts";

export type CniRun = RunResult & { json: unknown };

export interface ClusterOptions {
  /** Number of nodes; default 2. */
  nodes?: number;
  /** Leave parent_address "" in every node's config, so the agent takes ul0's first IPv4. */
  autoParentAddress?: boolean;
}

/** One link of a pod netns, from `ip -j -d link show`. */
export interface IfaceInfo {
  name: string;
  kind: string | undefined;
  /** VXLAN only. */
  vni: number | undefined;
  remote: string | undefined;
  local: string | undefined;
  mtu: number;
  mac: string;
  /** operstate: UP, DOWN, UNKNOWN, LOWERLAYERDOWN. */
  state: string;
  /** IFF_UP set (administratively up). */
  up: boolean;
  raw: Record<string, unknown>;
}

/** One link of a `ratchet/links` annotation (README, "Annotation ratchet/links"). */
export interface AnnotationLink {
  peer: string;
  peer_namespace?: string;
  local_ifname: string;
  peer_ifname: string;
  local_ip?: string | string[];
  peer_ip?: string | string[];
  local_mac?: string;
  peer_mac?: string;
  mtu?: number;
  primary?: boolean;
  state?: "up" | "down";
  netem?: Record<string, number> | null;
  local_netem?: Record<string, number> | null;
  peer_netem?: Record<string, number> | null;
}

/** A ratchet pod (`ratchet: "true"`) whose links come from the annotation. */
export function annotatedPod(name: string, links: AnnotationLink[], namespace = "default"): PodObject {
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: {
      name,
      namespace,
      uid: crypto.randomUUID(),
      labels: { ratchet: "true" },
      annotations: { "ratchet/links": JSON.stringify(links) },
    },
    spec: {},
  };
}

/** A pod ratchet passes through to the delegate. */
export function plainPod(name: string, namespace = "default"): PodObject {
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name, namespace, uid: crypto.randomUUID(), labels: { app: name } },
    spec: {},
  };
}

/** A ratchet pod that only opts in (`ratchet: "true"`): its peers declare its links. */
export function optInPod(name: string, namespace = "default"): PodObject {
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name, namespace, uid: crypto.randomUUID(), labels: { ratchet: "true" } },
    spec: {},
  };
}

/** The ifindex of `dev` in netns `ns` (by name), or undefined when there is none. */
export async function ifindexIn(ns: string, dev: string): Promise<number | undefined> {
  try {
    const out = JSON.parse(await ipIn(ns, ["-j", "link", "show", "dev", dev])) as Array<{ ifindex: number }>;
    return out[0]?.ifindex;
  } catch {
    return undefined;
  }
}

function b64(s: string): string {
  return Buffer.from(s).toString("base64");
}

/** The key just after every key starting with prefix (etcd's range_end for a prefix). */
function prefixEnd(prefix: string): string {
  const bytes = Buffer.from(prefix);
  let i = bytes.length - 1;
  while (i >= 0 && bytes[i] === 0xff) i--;
  if (i < 0) return "\0";
  const end = Buffer.from(bytes.subarray(0, i + 1));
  end[i] = (end[i] as number) + 1;
  return end.toString("latin1");
}

/** etcd's v3 HTTP/JSON gateway (etcd 3.4: /v3/kv/...): no gRPC client in the test process. */
async function etcdCall(path: string, body: Record<string, unknown>): Promise<Record<string, unknown>> {
  const res = await fetch(`${etcdEndpoint()}/v3/kv/${path}`, {
    method: "POST",
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(5000),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`etcd ${path} failed: HTTP ${res.status}: ${text}`);
  return JSON.parse(text) as Record<string, unknown>;
}

let clusterCount = 0;

export class Node {
  readonly dir: string;
  readonly logFile: string;
  readonly socket: string;
  readonly parentAddress: string;

  constructor(
    readonly cluster: Cluster,
    readonly index: number,
    readonly host: TestNetns,
    /** The underlay address on ul0, e.g. 10.250.7.1 */
    readonly underlay: string,
  ) {
    this.dir = join(cluster.dir, `node${index}`);
    mkdirSync(this.dir, { recursive: true });
    this.logFile = join(this.dir, "ratchet.log");
    this.socket = join(this.dir, "run", "child.sock");
    this.parentAddress = cluster.autoParentAddress ? "" : underlay;
  }

  get name(): string {
    return `node${this.index}`;
  }

  /** A complete ratchet network config for this node; `extra` overrides any field. */
  conf(extra: Record<string, unknown> = {}): Record<string, unknown> {
    return {
      cniVersion: "1.0.0",
      name: "ratchet-bed",
      type: "ratchet",
      etcd_endpoints: etcdEndpoints(),
      etcd_prefix: this.cluster.etcdPrefix,
      kubeconfig: this.cluster.kubeconfig,
      node_name: this.name,
      child_socket: this.socket,
      log_file: this.logFile,
      child_idle_seconds: 600,
      log_level: "debug",
      host_netns: this.host.path,
      parent_interface: "ul0",
      parent_address: this.parentAddress,
      delegate: { type: "loopback" },
      boot_network: { type: "loopback" },
      ...extra,
    };
  }

  /** A pod sandbox on this node: a fresh netns and container id (nothing is run yet). */
  async pod(name: string, namespace = "default"): Promise<Pod> {
    return this.cluster.makePod(this, name, namespace);
  }

  /** Runs a command without a container (GC, STATUS) through this node's config. */
  async nodeCommand(command: "GC" | "STATUS", extra: Record<string, unknown> = {}): Promise<CniRun> {
    return this.cluster.cni({ command, conf: this.conf({ cniVersion: "1.1.0", ...extra }) });
  }

  /** GC (cniVersion 1.1.0) keeping exactly these pods' attachments. */
  async gc(keep: Pod[], extra: Record<string, unknown> = {}): Promise<CniRun> {
    const valid = keep.map((p) => ({ containerID: p.containerId, ifname: p.ifname }));
    return this.nodeCommand("GC", { "cni.dev/valid-attachments": valid, ...extra });
  }

  async status(extra: Record<string, unknown> = {}): Promise<CniRun> {
    return this.nodeCommand("STATUS", extra);
  }

  /** The node agents running for this node (those logging to its log file). */
  agents(): number[] {
    return childPids(this.logFile);
  }

  /** Signals this node's agents and waits for them to exit; the pids it had to SIGKILL after 10 s. */
  stopAgents(signal: "SIGTERM" | "SIGKILL"): Promise<number[]> {
    return stopAgents(this.logFile, signal, 10_000);
  }

  /** The last lines of this node's log (for failure messages). */
  logTail(lines = 40): string {
    if (!existsSync(this.logFile)) return "(no log)";
    return readFileSync(this.logFile, "utf8").trimEnd().split("\n").slice(-lines).join("\n");
  }

  /** Links in the host netns other than lo, ul0 and `allowed`. */
  async strayHostLinks(allowed: string[] = []): Promise<string[]> {
    const out = await ipIn(this.host.name, ["-j", "link", "show"]);
    const list = JSON.parse(out) as Array<{ ifname: string }>;
    return list.map((l) => l.ifname).filter((n) => n !== "lo" && n !== "ul0" && !allowed.includes(n));
  }
}

let podSeq = 0;

/** A pod sandbox: a Kubernetes pod name, a container id and a netns on one node. */
export class Pod {
  constructor(
    readonly node: Node,
    readonly name: string,
    readonly namespace: string,
    readonly containerId: string,
    readonly netns: TestNetns,
    /** CNI_IFNAME; the loopback boot network works on lo whatever this says. */
    readonly ifname = "eth0",
  ) {}

  /** CNI_ARGS as a runtime passes them, with the pod's current uid when the API server has the pod. */
  get args(): string {
    const uid = this.node.cluster.api.getPod(this.namespace, this.name)?.metadata.uid;
    const pod = `K8S_POD_NAMESPACE=${this.namespace};K8S_POD_NAME=${this.name}`;
    const ids = `K8S_POD_INFRA_CONTAINER_ID=${this.containerId}${uid ? `;K8S_POD_UID=${uid}` : ""}`;
    return `IgnoreUnknown=1;${pod};${ids}`;
  }

  /** Runs one CNI command for this container with this node's config (plus `conf` overrides). */
  async cni(command: "ADD" | "DEL" | "CHECK", conf: Record<string, unknown> = {}): Promise<CniRun> {
    return this.node.cluster.cni({
      command,
      conf: this.node.conf(conf),
      containerId: this.containerId,
      netns: this.netns.path,
      ifname: this.ifname,
      args: this.args,
    });
  }

  add(conf: Record<string, unknown> = {}): Promise<CniRun> {
    return this.cni("ADD", conf);
  }

  del(conf: Record<string, unknown> = {}): Promise<CniRun> {
    return this.cni("DEL", conf);
  }

  check(prevResult: unknown, conf: Record<string, unknown> = {}): Promise<CniRun> {
    return this.cni("CHECK", { prevResult, ...conf });
  }

  get netnsExists(): boolean {
    return existsSync(this.netns.path);
  }

  /** Deletes the pod's netns (what a runtime does after DEL; or a sandbox that vanished). */
  async removeNetns(): Promise<void> {
    await this.netns[Symbol.asyncDispose]();
  }

  /** DEL, then remove the netns, as a runtime stops a sandbox. Returns the DEL's outcome. */
  async stop(): Promise<CniRun> {
    const r = await this.del();
    await this.removeNetns();
    return r;
  }

  /**
   * The same Kubernetes pod in a new sandbox: new container id, new netns, on `node`
   * (default the same one). This sandbox is left as it is (its netns too).
   */
  recreate(node: Node = this.node): Promise<Pod> {
    return node.pod(this.name, this.namespace);
  }
}

export class Cluster implements AsyncDisposable {
  readonly nodes: Node[] = [];
  readonly pods: Pod[] = [];
  readonly api: ApiServer;
  readonly etcdPrefix: string;
  readonly kubeconfig: string;
  /** Runs the installed binary in a mount namespace that hides the checkout (see runner). */
  private readonly runner: string;
  private switchNs: TestNetns | undefined;
  private disposed = false;

  constructor(
    readonly id: string,
    readonly dir: string,
    private readonly removeDir: () => void,
    /** The underlay is 10.250.<subnet>.0/24. */
    readonly subnet: number,
    readonly autoParentAddress: boolean,
  ) {
    this.etcdPrefix = `/rt-test/${id}`;
    this.api = startApiServer({ dir });
    this.kubeconfig = this.api.writeKubeconfig(dir, { auth: "token" });
    // One program a runtime can exec: the installed binary, the checkout hidden.
    this.runner = join(dir, "ratchet-hidden");
    const q = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;
    writeFileSync(this.runner, `#!/bin/sh\nexec ${hiddenCheckout([installedBin()]).map(q).join(" ")} "$@"\n`);
    chmodSync(this.runner, 0o755);
  }

  get switchName(): string | undefined {
    return this.switchNs?.name;
  }

  /** Builds the switch and the nodes' host namespaces. */
  async build(nodes: number): Promise<void> {
    this.switchNs = await makeNetns("s");
    const sw = this.switchNs.name;
    await ipIn(sw, ["link", "add", "br0", "type", "bridge"]);
    await ipIn(sw, ["link", "set", "br0", "up"]);
    for (let i = 1; i <= nodes; i++) {
      const host = await makeNetns("h");
      // Track it at once, so dispose removes it even if the rest of the setup fails.
      const underlay = `10.250.${this.subnet}.${i}`;
      const node = new Node(this, i, host, underlay);
      this.nodes.push(node);
      await ipIn(host.name, ["link", "add", "ul0", "type", "veth", "peer", "name", `port${i}`, "netns", sw]);
      await ipIn(sw, ["link", "set", `port${i}`, "master", "br0", "up"]);
      await ipIn(host.name, ["addr", "add", `${underlay}/24`, "dev", "ul0"]);
      await ipIn(host.name, ["link", "set", "ul0", "up"]);
    }
  }

  node(i: number): Node {
    const n = this.nodes[i - 1];
    if (!n) throw new Error(`the cluster has ${this.nodes.length} nodes, not node ${i}`);
    return n;
  }

  /** A sandbox for the pod on `node`; the pod (if the API server has it yet) is bound to that node. */
  async makePod(node: Node, name: string, namespace: string): Promise<Pod> {
    const netns = await makeNetns("p");
    const pod = new Pod(node, name, namespace, `${this.id}-${name}-${(podSeq++).toString(36)}`, netns);
    this.pods.push(pod);
    const obj = this.api.getPod(namespace, name);
    if (obj && obj.spec?.nodeName !== node.name) this.api.bindPod(namespace, name, node.name);
    return pod;
  }

  /** Runs the installed binary as a runtime does, the checkout hidden. */
  cni(
    inv: Pick<Invocation, "command" | "conf" | "containerId" | "netns" | "ifname" | "args" | "env">,
  ): Promise<CniRun> {
    return cni({ ...inv, bin: this.runner, visible: true });
  }

  /**
   * Adds or updates a pod in the API server. As the scheduler would have, it is bound to the
   * node of its latest sandbox (if it has one and the object names no node).
   */
  putPod(pod: unknown): PodObject {
    return this.bind(this.api.putPod(pod));
  }

  loadPods(file: string): PodObject[] {
    return this.api.loadPods(file).map((p) => this.bind(p));
  }

  private bind(p: PodObject): PodObject {
    if (p.spec?.nodeName) return p;
    const sandbox = this.pods.findLast(
      (s) => s.namespace === p.metadata.namespace && s.name === p.metadata.name,
    );
    return sandbox ? this.api.bindPod(p.metadata.namespace, p.metadata.name, sandbox.node.name) : p;
  }

  deletePod(namespace: string, name: string): boolean {
    return this.api.deletePod(namespace, name);
  }

  // --- looking -------------------------------------------------------------------------------

  /**
   * Pings ip from a pod's netns (or a node's host netns) until one echo comes back (true) or
   * timeoutMs passes (false).
   */
  async ping(from: Pod | Node, ip: string, timeoutMs = 5000): Promise<boolean> {
    const ns = from instanceof Pod ? from.netns.name : from.host.name;
    const until = Date.now() + timeoutMs;
    for (;;) {
      const r = await run(["ip", "netns", "exec", ns, "ping", "-n", "-c1", "-W1", ip], { timeoutMs: 5000 });
      if (r.code === 0) return true;
      if (Date.now() >= until) return false;
    }
  }

  /** A link in the pod's netns, or undefined when it is not there. */
  async iface(pod: Pod, ifname: string): Promise<IfaceInfo | undefined> {
    const r = await run(["ip", "-n", pod.netns.name, "-j", "-d", "link", "show", "dev", ifname]);
    if (r.code !== 0) return undefined;
    const raw = (JSON.parse(r.stdout) as Array<Record<string, unknown>>)[0];
    if (!raw) return undefined;
    const info = (raw.linkinfo ?? {}) as { info_kind?: string; info_data?: Record<string, unknown> };
    const data = info.info_data ?? {};
    const flags = (raw.flags ?? []) as string[];
    return {
      name: String(raw.ifname),
      kind: info.info_kind,
      vni: typeof data.id === "number" ? data.id : undefined,
      remote: typeof data.remote === "string" ? data.remote : undefined,
      local: typeof data.local === "string" ? data.local : undefined,
      mtu: Number(raw.mtu),
      mac: String(raw.address),
      state: String(raw.operstate),
      up: flags.includes("UP"),
      raw,
    };
  }

  /** Names of the links in the pod's netns other than lo. */
  async ifaceNames(pod: Pod): Promise<string[]> {
    const out = await ipIn(pod.netns.name, ["-j", "link", "show"]);
    return (JSON.parse(out) as Array<{ ifname: string }>).map((l) => l.ifname).filter((n) => n !== "lo");
  }

  /** Global addresses ("ip/prefix") of a link in the pod's netns. */
  addrs(pod: Pod, ifname: string): Promise<string[]> {
    return addresses(pod.netns.name, ifname);
  }

  // --- etcd ----------------------------------------------------------------------------------

  /** Every key (and value) under this cluster's prefix. */
  async etcdEntries(): Promise<Map<string, string>> {
    const from = `${this.etcdPrefix}/`;
    const res = await etcdCall("range", { key: b64(from), range_end: b64(prefixEnd(from)) });
    const kvs = (res.kvs ?? []) as Array<{ key: string; value?: string }>;
    return new Map(
      kvs.map((kv) => [
        Buffer.from(kv.key, "base64").toString(),
        Buffer.from(kv.value ?? "", "base64").toString(),
      ]),
    );
  }

  async etcdKeys(): Promise<string[]> {
    return [...(await this.etcdEntries()).keys()];
  }

  /** The keys that record pods and links: all but the VNI allocation hint (cluster state). */
  async recordKeys(): Promise<string[]> {
    return (await this.etcdKeys()).filter((k) => k !== `${this.etcdPrefix}/v1/vni-next`);
  }

  /** Writes a key under the prefix (bed self-tests only: the product owns its keys). */
  async etcdPut(suffix: string, value: string): Promise<void> {
    await etcdCall("put", { key: b64(`${this.etcdPrefix}/${suffix}`), value: b64(value) });
  }

  async deleteEtcdPrefix(): Promise<void> {
    const from = `${this.etcdPrefix}/`;
    await etcdCall("deleterange", { key: b64(from), range_end: b64(prefixEnd(from)) });
  }

  // --- checks and cleanup --------------------------------------------------------------------

  /**
   * Asserts the cluster is back to empty: every pod sandbox stopped (its netns removed), no
   * key left under the prefix (waited for a little: a peer node's agent cleans up
   * asynchronously), only lo and ul0 (and `allowHostLinks`) in each host netns, at most one
   * agent per node, and every agent exits on SIGTERM. Throws one error listing everything found.
   */
  /** DEL and remove every pod sandbox still there (a DEL that fails throws), then assertClean. */
  async stopAllAndAssertClean(): Promise<void> {
    for (const p of this.pods) {
      if (!p.netnsExists) continue;
      const r = await p.del();
      if (r.code !== 0) throw new Error(`DEL of ${p.namespace}/${p.name}: ${r.stdout}`);
      await p.removeNetns();
    }
    await this.assertClean();
  }

  async assertClean(opts: { etcdWaitMs?: number; allowHostLinks?: string[] } = {}): Promise<void> {
    const problems: string[] = [];
    for (const p of this.pods)
      if (p.netnsExists)
        problems.push(
          `pod ${p.namespace}/${p.name} (${p.containerId}) on ` +
            `${p.node.name}: netns ${p.netns.name} still exists`,
        );
    try {
      const until = Date.now() + (opts.etcdWaitMs ?? 5000);
      let keys = await this.recordKeys();
      while (keys.length > 0 && Date.now() < until) {
        await Bun.sleep(100);
        keys = await this.recordKeys();
      }
      if (keys.length > 0) problems.push(`etcd keys left under ${this.etcdPrefix}/: ${keys.join(", ")}`);
    } catch (err) {
      problems.push(`etcd could not be read: ${(err as Error).message}`);
    }
    for (const n of this.nodes) {
      const stray = await n.strayHostLinks(opts.allowHostLinks);
      if (stray.length > 0)
        problems.push(`${n.name}: stray links in host netns ${n.host.name}: ${stray.join(", ")}`);
      const agents = n.agents();
      if (agents.length > 1)
        problems.push(
          `${n.name}: ${agents.length} node agents running (${agents.join(", ")}), expected at most one`,
        );
      const stubborn = await stopAgents(n.logFile, "SIGTERM", 5000);
      if (stubborn.length > 0)
        problems.push(
          `${n.name}: node agents ${stubborn.join(", ")} still running 5 s after SIGTERM (killed)`,
        );
      const left = n.agents();
      if (left.length > 0)
        problems.push(`${n.name}: processes still logging to ${n.logFile}: ${left.join(", ")}`);
    }
    if (problems.length > 0) throw new Error(`cluster ${this.id} is not clean:\n  ${problems.join("\n  ")}`);
  }

  /**
   * Stops every agent, removes every netns (pods, hosts, switch), the API server, the etcd
   * prefix and the temp files. Never throws: cleanup must not hide the test's own failure;
   * what fails is reported on stderr.
   */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    const step = async (what: string, fn: () => Promise<unknown> | unknown) => {
      try {
        await fn();
      } catch (err) {
        console.error(`cluster ${this.id}: cleanup: ${what}: ${(err as Error).message}`);
      }
    };
    for (const n of this.nodes)
      await step(`stop agents of ${n.name}`, () => stopAgents(n.logFile, "SIGKILL", 5000));
    for (const p of this.pods) await step(`netns of ${p.containerId}`, () => p.removeNetns());
    for (const n of this.nodes) await step(`host netns of ${n.name}`, () => n.host[Symbol.asyncDispose]());
    if (this.switchNs) await step("switch netns", () => this.switchNs?.[Symbol.asyncDispose]());
    await step("etcd prefix", () => this.deleteEtcdPrefix());
    await step("API server", () => this.api.stop());
    await step("temp dir", () => this.removeDir());
  }
}

/** Signals every process logging to logFile; SIGKILLs what is left after waitMs. Returns those. */
async function stopAgents(logFile: string, signal: "SIGTERM" | "SIGKILL", waitMs: number): Promise<number[]> {
  const pids = childPids(logFile);
  for (const pid of pids) {
    try {
      process.kill(pid, signal);
    } catch {
      // already gone
    }
  }
  try {
    await waitFor("node agents to exit", () => childPids(logFile).length === 0, waitMs);
    return [];
  } catch {
    const left = childPids(logFile);
    for (const pid of left) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // gone meanwhile
      }
    }
    await waitFor("node agents to die", () => childPids(logFile).length === 0, 5000);
    return left;
  }
}

/**
 * primary-pod and pair-pod of pod_specs/example.yaml, both on node 1 and ADDed with `conf`
 * (a veth between them); throws with the plugin's output when an ADD fails.
 */
export async function addExamplePair(c: Cluster, conf: Record<string, unknown> = {}) {
  c.loadPods(join(REPO, "pod_specs", "example.yaml"));
  const n = c.node(1);
  const primary = await n.pod("primary-pod");
  const pair = await n.pod("pair-pod");
  for (const p of [primary, pair]) {
    const r = await p.add(conf);
    if (r.code !== 0) throw new Error(`ADD ${p.name}: code ${r.code}: ${r.stdout}`);
  }
  return { n, primary, pair };
}

/** A cluster of `nodes` nodes; dispose (await using) removes everything it made. */
export async function makeCluster(opts: ClusterOptions = {}): Promise<Cluster> {
  const id = uniqueName("c");
  const dir = tempDir("ratchet-cluster-");
  // 10.250.X.0/24, X different for each cluster of this process (and likely across processes).
  const subnet = ((process.pid + clusterCount++) % 254) + 1;
  let cluster: Cluster | undefined;
  try {
    cluster = new Cluster(id, dir.path, () => dir[Symbol.dispose](), subnet, opts.autoParentAddress ?? false);
    await cluster.build(opts.nodes ?? 2);
    return cluster;
  } catch (err) {
    if (cluster) await cluster[Symbol.asyncDispose]();
    else dir[Symbol.dispose]();
    throw err;
  }
}
