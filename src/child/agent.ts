// The child's request handlers. Everything that needs etcd, the Kubernetes API or another
// pod happens here, in one long-lived process per node.
import type { Etcd3 } from "etcd3";
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import type { NetConf } from "../cni/config.ts";
import { CniError, Code, toCniError } from "../cni/errors.ts";
import type { Logger } from "../log.ts";
import type { CallParams, Hello, Methods, Request } from "../rpc/protocol.ts";
import { stats, storeError } from "../store/etcd-ops.ts";
import { describeEtcdError, openEtcd } from "../store/etcd.ts";
import type { NodeLink } from "../store/model.ts";
import { BUILD_ID, BUILD_TIME, VERSION } from "../version.ts";
import { Linker, nodeSettings } from "./linker.ts";
import { missingVtep } from "./vtep.ts";
import { PodDirectory } from "../pods/pods.ts";

/** How long a STATUS probe of etcd or the API server may take. */
const PROBE_MS = 3000;
/** How often DELs that could not reach etcd are retried. */
const RETRY_MS = 2000;

interface NodeStore {
  etcd: Etcd3;
  linker: Linker;
  ready: Promise<void>;
}

/** A DEL whose records could not be removed (etcd away): retried until it is done. */
interface DeferredDel {
  conf: NetConf;
  env: CallParams["env"];
}

export class NodeAgent {
  readonly pods: PodDirectory;
  private readonly stores = new Map<string, NodeStore>();
  private deferred: DeferredDel[] = [];
  private retryTimer: Timer | undefined;

  constructor(
    private readonly log: Logger,
    private readonly onDrain: () => void,
    /** Where DELs waiting for etcd are kept across restarts. */
    private readonly journal: string,
  ) {
    this.pods = new PodDirectory(log);
    try {
      this.deferred = readFileSync(journal, "utf8")
        .split("\n")
        .filter(Boolean)
        .map((l) => JSON.parse(l) as DeferredDel);
      if (this.deferred.length > 0) this.scheduleRetry();
    } catch {
      // no journal yet
    }
  }

  hello(): Hello {
    return { buildId: BUILD_ID, buildTime: BUILD_TIME, version: VERSION, pid: process.pid };
  }

  /** The linker for this config's etcd, prefix and node; made (and reconciled, watched) once. */
  private async store(conf: NetConf): Promise<NodeStore> {
    const settings = nodeSettings(conf);
    const key = JSON.stringify([
      conf.etcd_endpoints,
      conf.etcd_host,
      conf.etcd_port,
      conf.etcd_ca_file,
      conf.etcd_cert_file,
      conf.etcd_key_file,
      conf.etcd_username,
      settings,
    ]);
    let s = this.stores.get(key);
    if (!s) {
      const etcd = openEtcd(conf);
      const linker = new Linker(etcd, settings, this.log);
      const ready = this.start(etcd, linker);
      s = { etcd, linker, ready };
      this.stores.set(key, s);
      ready.catch(() => {
        // Not reachable now: forget it, so the next request tries again from scratch.
        if (this.stores.get(key) === s) this.stores.delete(key);
        etcd.close();
      });
    }
    await s.ready;
    return s;
  }

  /** At first use of a node's store: make the node's links match etcd, then follow it. */
  private async start(etcd: Etcd3, linker: Linker): Promise<void> {
    const node = linker.node;
    try {
      const fixed = await linker.reconcile();
      this.log.info("reconciled this node's links with etcd", {
        node,
        tunnelEnds: fixed,
        endpoints: linker.local.size,
      });
      const watcher = await etcd.watch().prefix(linker.keys.nodeLinksPrefix(node)).create();
      watcher.on("put", (kv) => {
        let nl: NodeLink;
        try {
          nl = JSON.parse(kv.value.toString()) as NodeLink;
        } catch {
          return;
        }
        // Our own ADD wrote this entry and builds that end itself (racing it here would make
        // one of the two fail with EEXIST). An entry from the other node means it (re)built
        // its side just now: rebuild ours even if it matches, for a fresh neighbour table.
        if (nl.builtBy === node) return;
        linker
          .ensureNodeLink(nl, true)
          .catch((err: unknown) =>
            this.log.error("could not build a tunnel end", { link: nl.key, error: (err as Error).message }),
          );
      });
      watcher.on("delete", (kv) => {
        const key = kv.key.toString().slice(linker.keys.nodeLinksPrefix(node).length);
        linker
          .dropNodeLink(key)
          .catch((err: unknown) =>
            this.log.warn("could not remove a tunnel end", { link: key, error: (err as Error).message }),
          );
      });
      watcher.on("error", (err) => this.log.warn("etcd watch error", { error: err.message }));
    } catch (err) {
      throw storeError(err);
    }
  }

  /** Starts watching this node's pods now, not at the first ADD. */
  watchPods(conf: NetConf): void {
    try {
      this.pods.cache(conf);
    } catch (err) {
      this.log.error("cannot watch this node's pods", { error: (err as Error).message });
    }
  }

  /** Starts on this config's store in the background (errors are logged, retried on use). */
  warm(conf: NetConf): void {
    this.store(conf).catch((err: unknown) => {
      const e = toCniError(err);
      this.log.warn(
        e.code === Code.TryAgainLater
          ? "etcd not reachable at start; will retry on the next request"
          : "cannot take up this node's links at start",
        { error: e.message },
      );
    });
  }

  async handle(req: Request): Promise<unknown> {
    switch (req.method) {
      case "hello":
        return this.hello();
      case "drain":
        this.log.info("draining: a newer node agent takes over");
        this.onDrain();
        return { draining: true };
      case "classify":
        return this.classify(req.params as CallParams, req.deadline);
      case "attach":
        return this.attach(req.params as CallParams, req.deadline);
      case "detach":
        return this.detach(req.params as CallParams);
      case "check": {
        const p = req.params as CallParams;
        await (await this.store(p.conf)).linker.check(p.env);
        return { ok: true };
      }
      case "status":
        return this.status(req.params as CallParams, req.deadline);
      case "gc": {
        const p = req.params as Methods["gc"]["params"];
        return { removed: await (await this.store(p.conf)).linker.gc(p.valid) };
      }
      default:
        throw new CniError(
          Code.InvalidConfig,
          `unknown request ${JSON.stringify((req as { method: unknown }).method)}`,
        );
    }
  }

  private async classify(p: CallParams, deadline: number): Promise<Methods["classify"]["result"]> {
    if (!p.env.pod) return { eligible: false, links: 0 };
    const c = await this.pods.classify(p.env.pod, p.conf, deadline);
    this.log.debug("classified", {
      pod: `${c.pod.namespace}/${c.pod.name}`,
      eligible: c.eligible,
      links: c.links.length,
    });
    return { eligible: c.eligible, links: c.links.length };
  }

  private async attach(p: CallParams, deadline: number): Promise<Methods["attach"]["result"]> {
    if (!p.env.pod) throw new CniError(Code.Internal, "attach needs K8S_POD_NAMESPACE and K8S_POD_NAME");
    const c = await this.pods.classify(p.env.pod, p.conf, deadline);
    if (!c.eligible)
      throw new CniError(
        Code.TryAgainLater,
        `pod ${c.pod.namespace}/${c.pod.name} is no longer a ratchet pod`,
      );
    const missing = missingVtep(p.conf);
    if (missing) throw new CniError(Code.InvalidConfig, `invalid network configuration: ${missing}`);
    const { linker } = await this.store(p.conf);
    const before = stats.roundTrips;
    const interfaces = await linker.attach(p.env, c.links);
    this.log.info("attached", {
      pod: `${c.pod.namespace}/${c.pod.name}`,
      containerId: p.env.containerId,
      links: c.links.length,
      built: interfaces.map((i) => i.iface.name),
      // Exact when attaches do not overlap (the benchmark runs them one at a time).
      etcdRoundTrips: stats.roundTrips - before,
    });
    return { interfaces };
  }

  private async detach(p: CallParams): Promise<Methods["detach"]["result"]> {
    let owned: boolean | undefined;
    try {
      // Without a VXLAN endpoint the node's store cannot be taken up (the VTEP names the node
      // in etcd), so no attach worked with this config: the pod cache answers below.
      if (!missingVtep(p.conf)) owned = await (await this.store(p.conf)).linker.detach(p.env);
    } catch (err) {
      const e = toCniError(err);
      if (e.code !== Code.TryAgainLater) throw e;
      // etcd is away: the netns (and our ends in it) goes with the pod anyway; the records
      // are removed when etcd is back.
      this.log.warn("etcd unreachable during DEL: records will be removed later", {
        containerId: p.env.containerId,
        error: e.message,
      });
      this.defer({ conf: p.conf, env: p.env });
      return { owned: null };
    }
    if (owned !== undefined) return { owned };
    // No endpoint of this container: ratchet built nothing for it. Which plugin served it (the
    // boot network or the delegate) is what the pod cache knows of its labels; never an API
    // request: a DEL does not wait for the API server. When it cannot tell, both plugins'
    // DELs run (each tolerates a container it never saw).
    if (!p.env.pod) return { owned: false };
    const eligible = this.pods.knownEligible(p.env.pod, p.conf);
    return { owned: eligible === false ? false : null };
  }

  private async status(p: CallParams, deadline: number): Promise<Methods["status"]["result"]> {
    const until = Math.min(deadline, Date.now() + PROBE_MS);
    let etcd: Etcd3 | undefined;
    try {
      etcd = openEtcd(p.conf, { callTimeoutMs: Math.max(100, until - Date.now()) });
      await etcd.maintenance.status();
    } catch (err) {
      throw new CniError(
        Code.PluginNotAvailable,
        `etcd is not ready: ${describeEtcdError(err, p.conf, etcd)}`,
      );
    } finally {
      etcd?.close();
    }
    try {
      await this.pods.ping(p.conf, Math.max(1, until - Date.now()));
    } catch (err) {
      throw new CniError(
        Code.PluginNotAvailable,
        `the Kubernetes API server is not reachable: ${(err as Error).message}`,
      );
    }
    return { ok: true };
  }

  private defer(d: DeferredDel): void {
    this.deferred.push(d);
    this.saveJournal();
    this.scheduleRetry();
  }

  private saveJournal(): void {
    try {
      writeFileSync(
        this.journal,
        this.deferred.map((d) => JSON.stringify(d)).join("\n") + (this.deferred.length ? "\n" : ""),
        { mode: 0o600 },
      );
    } catch (err) {
      this.log.warn("could not save the deferred DEL journal", { error: (err as Error).message });
    }
  }

  private scheduleRetry(): void {
    if (this.retryTimer) return;
    this.retryTimer = setInterval(() => void this.retryDeferred(), RETRY_MS);
  }

  private async retryDeferred(): Promise<void> {
    const left: DeferredDel[] = [];
    for (const d of this.deferred) {
      try {
        await (await this.store(d.conf)).linker.detach(d.env);
        this.log.info("removed the records of a DEL that happened while etcd was away", {
          containerId: d.env.containerId,
        });
      } catch {
        left.push(d);
      }
    }
    this.deferred = left;
    this.saveJournal();
    if (left.length === 0) {
      clearInterval(this.retryTimer);
      this.retryTimer = undefined;
    }
  }

  /** Work that must not be dropped by an idle exit: ratchet pods on this node, DELs to finish. */
  get pendingWork(): boolean {
    return this.deferred.length > 0 || [...this.stores.values()].some((s) => s.linker.pendingWork);
  }

  close(): void {
    clearInterval(this.retryTimer);
    for (const s of this.stores.values()) s.etcd.close();
    this.stores.clear();
    this.pods.close();
  }
}

export const journalPath = (conf: NetConf): string => join(dirname(conf.child_socket), "deferred-del.jsonl");
