// The agent's request handlers, one per method of the protocol table. Everything that needs
// etcd, the Kubernetes API or another pod happens here, in one long-lived process per node.
import { closeSync, fsyncSync, openSync, readFileSync, renameSync, writeSync } from "node:fs";
import type { Etcd3 } from "etcd3";
import * as v from "valibot";
import type { NetConf } from "../cni/config.ts";
import { CniError, Code, StoreUnavailableError, toCniError } from "../cni/errors.ts";
import { followNode } from "../links/follow.ts";
import { Linker, nodeSettings } from "../links/linker.ts";
import { NodeState } from "../links/node-state.ts";
import type { Logger } from "../log.ts";
import { type AgentObserver, quietObserver } from "../observe/link-observer.ts";
import type { CallParams, Interim, InterimOf, Method, Methods } from "../rpc/protocol.ts";
import { paramSchemas } from "../rpc/schemas.ts";
import { stats, storeError } from "../store/etcd-ops.ts";
import { describeEtcdError, openEtcd } from "../store/etcd.ts";
import { LinkStore } from "../store/link-store.ts";
import { BadRecords } from "../store/records.ts";
import type { Follower } from "../store/watch.ts";
import { hello } from "../version.ts";
import { podKey, workKey } from "./server.ts";
import { type LinkSpec, podId } from "../links/spec.ts";
import type { PodInfo } from "../pods/kube.ts";
import { nodeName, PodDirectory } from "../pods/pods.ts";
import { step } from "../steps.ts";
import { LINKS_ANNOTATION, podLinks } from "../pods/podspec.ts";

// Loaded with the agent, in its chunk of the binary (a chunk of its own crashes bytecode builds).
export { bindObserver } from "./observe.ts";

/** How long a STATUS probe of etcd or the API server may take. */
const PROBE_MS = 3000;
/** How often DELs that could not reach etcd are retried. */
const RETRY_MS = 2000;
/** A journaled DEL that fails this many times while etcd answers is given up (left to GC). */
const GIVE_UP_AFTER = 30;

interface NodeStore {
  etcd: Etcd3;
  linker: Linker;
  ready: Promise<void>;
}

/** What a handler knows of its call besides the params. */
export interface CallContext {
  deadline: number;
  /** Aborted when the caller's deadline passes or it hangs up. */
  signal: AbortSignal;
  /** Says something before the answer (the method's InterimOf); absent for the agent's own work. */
  interim?: Interim;
}

type Handlers = {
  [M in Method]: (params: Methods[M]["params"], ctx: CallContext) => Promise<Methods[M]["result"]>;
};

/** A DEL whose records could not be removed (etcd away): retried until it is done. */
type DeferredDel = Methods["detach"]["params"];

export class NodeAgent {
  readonly pods: PodDirectory;
  private readonly stores = new Map<string, NodeStore>();
  readonly state: NodeState;
  private readonly bad: BadRecords;
  private deferred: DeferredDel[] = [];
  private retrying = false;
  private readonly followers = new Set<Follower>();
  private retryTimer: Timer | undefined;

  constructor(
    private readonly log: Logger,
    private readonly onDrain: () => void,
    /** Node-local files: the state of attached containers, the journal of deferred DELs. */
    private readonly files: AgentFiles,
    private readonly observer: AgentObserver = quietObserver,
  ) {
    this.pods = new PodDirectory(log);
    this.state = new NodeState(files.state, log);
    this.bad = new BadRecords((key, problem) => log.warn("ignoring a bad value in etcd", { key, problem }));
    this.deferred = this.readJournal();
    if (this.deferred.length > 0) this.scheduleRetry();
  }

  private readonly handlers: Handlers = {
    hello: async () => hello(),
    drain: async () => {
      this.log.info("draining: a newer node agent takes over");
      this.onDrain();
      return { draining: true };
    },
    classify: (p, ctx) => this.classify(p, ctx.deadline),
    attach: (p, ctx) => this.attach(p, ctx),
    booted: async (p) => {
      this.observer.attached(`${p.pod.namespace}/${p.pod.name}`, p.boot);
      return { ok: true };
    },
    detach: (p, ctx) => this.detach(p, ctx.interim),
    check: async (p) => {
      await (await this.store(p.conf)).linker.check(p.env);
      return { ok: true };
    },
    status: (p, ctx) => this.status(p, ctx.deadline),
    gc: async (p) => ({ removed: await (await this.store(p.conf)).linker.gc(p.valid) }),
  };

  /** Runs one request; its params were checked against the method's schema. */
  handle<M extends Method>(
    method: M,
    params: Methods[M]["params"],
    ctx: CallContext,
  ): Promise<Methods[M]["result"]> {
    return this.handlers[method](params, ctx);
  }

  /** The linker for this config's etcd, prefix and node; made (and reconciled, watched) once. */
  private async store(conf: NetConf): Promise<NodeStore> {
    const s = this.opened(conf);
    await s.ready;
    return s;
  }

  /** The node store for this config, made (and its start begun) if need be, not waited for. */
  private opened(conf: NetConf): NodeStore {
    const settings = nodeSettings(conf, nodeName(conf, process.env).name);
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
      const linker = new Linker(
        new LinkStore(etcd, settings.prefix, this.bad),
        settings,
        this.state,
        this.log,
      );
      linker.observer = this.observer;
      const ready = this.start(etcd, linker);
      s = { etcd, linker, ready };
      this.stores.set(key, s);
      const made = s;
      ready.catch(() => {
        // Not reachable now: forget it, so the next request tries again from scratch.
        if (this.stores.get(key) === made) this.stores.delete(key);
        etcd.close();
      });
    }
    return s;
  }

  /** At first use of a node's store: make the node's links match etcd, then follow it. */
  private async start(etcd: Etcd3, linker: Linker): Promise<void> {
    const { node, vtep } = linker;
    if (!vtep) {
      this.log.warn(
        "parent_interface and parent_address are not set: links between pods on this node work; " +
          "links to pods on other nodes (VXLAN) cannot be built",
        { node },
      );
    }
    try {
      const t0 = performance.now();
      const f = await followNode(etcd, linker, this.log);
      this.followers.add(f.follower);
      this.log.info("reconciled this node's links with etcd", {
        node,
        tunnelEnds: f.ends,
        containers: this.state.size,
        ms: Math.round(performance.now() - t0),
      });
    } catch (err) {
      throw storeError(err);
    }
  }

  /** Orders work per pod with the requests (the server's queue); set by the agent's main. */
  serialize: <T>(key: string, task: () => Promise<T>) => Promise<T> = (_key, task) => task();

  /** Starts watching this node's pods now, not at the first ADD; their changes are applied live. */
  watchPods(conf: NetConf): void {
    try {
      const cache = this.pods.cache(conf);
      const apply = (pod: PodInfo) => {
        const key = podKey(pod);
        void this.serialize(key, () => this.applyLive(pod, conf)).catch((err: unknown) =>
          this.log.error("could not apply a change of a running pod", {
            pod: `${pod.namespace}/${pod.name}`,
            error: (err as Error).message,
          }),
        );
      };
      // Only what declares links counts: ratchet's own network-status patches, or any other
      // annotation, change nothing for the links.
      const declaration = (pod: PodInfo) =>
        JSON.stringify([
          Object.entries(pod.labels)
            .filter(([k]) => k === "ratchet" || k.startsWith("ratchet."))
            .sort(),
          pod.annotations[LINKS_ANNOTATION] ?? null,
        ]);
      cache.onChange((pod, before) => {
        if (declaration(pod) !== declaration(before)) apply(pod);
      });
      // Reconcile after a start: every pod this node attached gets its declared state again
      // (what changed while no agent ran); converging is idempotent, so nothing right is redone.
      cache.onSynced(() => {
        for (const [, c] of [...this.state.entries()]) {
          const [namespace, name] = c.pod.split("/") as [string, string];
          const pod = cache.get(namespace, name);
          if (pod) apply(pod);
        }
      });
    } catch (err) {
      this.log.error("cannot watch this node's pods", { error: (err as Error).message });
    }
  }

  /**
   * A running pod's labels or annotation changed: its links follow (built, changed in place,
   * removed). A change that fails validation or agreement changes nothing and is reported.
   */
  private async applyLive(pod: PodInfo, conf: NetConf): Promise<void> {
    const id = `${pod.namespace}/${pod.name}`;
    const found = this.state.containerOf(id);
    if (!found) return; // not attached on this node (yet): its ADD reads the new spec
    const [containerId, c] = found;
    let links: LinkSpec[];
    try {
      const parsed = podLinks(pod, { defaultPrefix: conf.default_prefix });
      if (!parsed.eligible) {
        this.log.warn('a running pod no longer has ratchet: "true": its links stay until it goes', {
          pod: id,
        });
        return;
      }
      links = parsed.links;
    } catch (err) {
      this.log.warn("a change of a running pod is refused: nothing changed", {
        pod: id,
        error: (err as Error).message,
      });
      this.onRefused(pod, err as Error);
      return;
    }
    const { linker } = await this.store(conf);
    const env = {
      command: "ADD" as const,
      containerId,
      netns: c.netns,
      ifname: c.ifname,
      path: [],
      pod: { namespace: pod.namespace, name: pod.name, uid: pod.uid },
    };
    const started = Date.now();
    try {
      await linker.attach(env, links, { live: true });
      this.log.info("applied a change of a running pod", {
        pod: id,
        links: links.length,
        ms: Date.now() - started,
      });
    } catch (err) {
      this.log.warn("a change of a running pod could not be applied: the last good state stays", {
        pod: id,
        error: (err as Error).message,
      });
      // The linker already reported it on the pod (LinkConflict or LinkFailed).
    }
  }

  /** A refused live change, reported beyond the log. */
  private onRefused(pod: PodInfo, err: Error): void {
    // A Warning Event on the pod: `kubectl describe pod` says why its change did not apply.
    this.observer.linkConflict(`${pod.namespace}/${pod.name}`, `change not applied: ${err.message}`);
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

  /** The pod's declared links, from the pod cache (an API read only for a pod it lacks). */
  private async lookUp(ref: NonNullable<CallParams["env"]["pod"]>, conf: NetConf, deadline: number) {
    const done = step("pod lookup");
    try {
      return await this.pods.classify(ref, conf, deadline);
    } finally {
      done();
    }
  }

  private async classify(p: CallParams, deadline: number): Promise<Methods["classify"]["result"]> {
    if (!p.env.pod) return { eligible: false, links: 0 };
    const c = await this.lookUp(p.env.pod, p.conf, deadline);
    this.log.debug("classified", {
      pod: `${c.pod.namespace}/${c.pod.name}`,
      eligible: c.eligible,
      links: c.links.length,
    });
    return { eligible: c.eligible, links: c.links.length };
  }

  private async attach(
    p: Methods["attach"]["params"],
    ctx: CallContext,
  ): Promise<Methods["attach"]["result"]> {
    if (!p.env.pod) throw new CniError(Code.Internal, "attach needs K8S_POD_NAMESPACE and K8S_POD_NAME");
    const c = await this.lookUp(p.env.pod, p.conf, ctx.deadline);
    if (!c.eligible) {
      throw new CniError(
        Code.TryAgainLater,
        `pod ${c.pod.namespace}/${c.pod.name} is no longer a ratchet pod`,
      );
    }
    const { linker } = await this.store(p.conf);
    // The caller gave up (deadline, hung up): build nothing it will not hear about.
    ctx.signal.throwIfAborted();
    const before = stats.roundTrips;
    const interfaces = await linker.attach(p.env, c.links, {
      declarers: this.pods.declarersOf(p.env.pod, p.conf),
    });
    // After the ADD's success only: a failed ADD leaves the DEL to do its work.
    this.supersede(p.env.containerId);
    this.observer.attached(`${c.pod.namespace}/${c.pod.name}`, p.boot);
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

  private async detach(p: CallParams, interim?: Interim): Promise<Methods["detach"]["result"]> {
    // A plain pod's DEL waits for neither etcd nor the API server: every container ratchet
    // attaches is in this node's state before anything of it reaches etcd or the kernel, so
    // one that is not there, of a pod the synced cache knows without ratchet's label, was
    // never ratchet's. (Its records, should the state file have been lost, go with GC.)
    if (
      p.env.pod &&
      this.state.get(p.env.containerId) === undefined &&
      this.pods.knownEligible(p.env.pod, p.conf) === false
    )
      return { owned: false };
    // This agent attached the container: ratchet's, whatever etcd holds. The plugin may
    // start the boot network's DEL while the links go.
    const mine = this.state.get(p.env.containerId);
    const attached =
      p.env.pod !== undefined && mine?.pod === podId({ namespace: p.env.pod.namespace, pod: p.env.pod.name });
    if (interim && attached) {
      const early: InterimOf<"detach"> = { owned: true };
      interim(early);
    }
    let owned: boolean | undefined;
    try {
      // A container this agent attached: its ends go now, etcd or not, and the answer
      // follows; its records leave etcd right after, in the pod's turn (journaled first: a
      // restart finishes them).
      const former = attached ? this.opened(p.conf).linker.detachLocal(p.env) : undefined;
      if (former) {
        if (this.journalFirst(p, former)) return { owned: true };
        // The journal could not be written: the records go now, before the answer.
        await (await this.store(p.conf)).linker.detach(p.env, former);
        return { owned: true };
      }
      owned = await (await this.store(p.conf)).linker.detach(p.env);
    } catch (err) {
      if (!(err instanceof StoreUnavailableError)) throw err;
      // etcd is away: the ends of a container this agent attached are gone already (detach
      // removes them first); the records are removed when etcd is back.
      this.log.warn("etcd unreachable during DEL: records will be removed later", {
        containerId: p.env.containerId,
        error: err.message,
      });
      this.defer(p);
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

  // ---- DELs that wait for etcd: a journal of one JSON line each ----------------------------

  private get journal(): string {
    return this.files.journal;
  }

  /** Reads the journal; a bad line is skipped (and logged), never fatal for the others. */
  private readJournal(): DeferredDel[] {
    let text: string;
    try {
      text = readFileSync(this.journal, "utf8");
    } catch {
      return [];
    }
    const out: DeferredDel[] = [];
    text.split("\n").forEach((line, n) => {
      if (line.trim() === "") return;
      try {
        out.push(v.parse(paramSchemas.detach, JSON.parse(line)));
      } catch (err) {
        this.log.error("skipping a bad line of the deferred DEL journal", {
          file: this.journal,
          line: n + 1,
          error: (err as Error).message,
        });
      }
    });
    return out;
  }

  private defer(d: DeferredDel): void {
    this.deferred.push(d);
    this.saveJournal();
    this.scheduleRetry();
  }

  /** The links a DEL's kernel half took out of the node state, by journal entry (not kept across restarts). */
  private readonly former = new Map<DeferredDel, Record<string, string>>();
  /** Failures of a journaled DEL other than etcd being away, by entry. */
  private readonly failures = new Map<DeferredDel, number>();

  /**
   * The records' half of a DEL whose ends are gone: journaled, then run at once in the pod's
   * turn (before any later request of the pod); left to the retry loop when it fails. False
   * when the journal could not be written: then the caller removes the records itself.
   */
  private journalFirst(d: DeferredDel, former: Record<string, string>): boolean {
    this.deferred.push(d);
    this.former.set(d, former);
    if (!this.saveJournal()) {
      this.forget(d);
      return false;
    }
    this.finish(d).then(
      () => {
        this.forget(d);
        this.saveJournal();
      },
      (err: unknown) => {
        this.log.warn("could not remove the records of a DEL yet: retrying", {
          containerId: d.env.containerId,
          error: (err as Error).message,
        });
        this.failedOnce(d, err);
        this.scheduleRetry();
      },
    );
    return true;
  }

  /**
   * Runs a journaled DEL in the pod's turn, as a request: an ADD of the same container that
   * came first has taken the entry away (supersede), and then it is not run (false).
   */
  private finish(d: DeferredDel): Promise<boolean> {
    return this.serialize(workKey(d.env) ?? "", async () => {
      if (!this.deferred.includes(d)) return false;
      await (await this.store(d.conf)).linker.detach(d.env, this.former.get(d));
      return true;
    });
  }

  /**
   * A journaled DEL failed for another reason than etcd being away (which is waited out
   * however long it takes): after GIVE_UP_AFTER such failures it is dropped, logged, and
   * its records are left to the runtime's CNI GC.
   */
  private failedOnce(d: DeferredDel, err: unknown): void {
    if (err instanceof StoreUnavailableError) return;
    const n = (this.failures.get(d) ?? 0) + 1;
    this.failures.set(d, n);
    if (n < GIVE_UP_AFTER) return;
    this.log.error("giving up on the records of a DEL: they stay until GC removes them", {
      containerId: d.env.containerId,
      attempts: n,
      error: (err as Error).message,
    });
    this.forget(d);
    this.saveJournal();
  }

  private forget(d: DeferredDel): void {
    this.deferred = this.deferred.filter((x) => x !== d);
    this.former.delete(d);
    this.failures.delete(d);
  }

  /** Journal lines, made once per entry: the journal is written again at every change. */
  private readonly lines = new WeakMap<DeferredDel, string>();
  private lineOf(d: DeferredDel): string {
    let line = this.lines.get(d);
    if (line === undefined) {
      line = `${JSON.stringify(d)}\n`;
      this.lines.set(d, line);
    }
    return line;
  }

  /** Writes the journal to a temp file, fsyncs it and renames it over the old one; false on failure. */
  private saveJournal(): boolean {
    const tmp = `${this.journal}.tmp`;
    try {
      const fd = openSync(tmp, "w", 0o600);
      try {
        for (const d of this.deferred) writeSync(fd, this.lineOf(d));
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
      renameSync(tmp, this.journal);
      return true;
    } catch (err) {
      this.log.warn("could not save the deferred DEL journal", { error: (err as Error).message });
      return false;
    }
  }

  private scheduleRetry(): void {
    if (this.retryTimer) return;
    this.retryTimer = setInterval(() => void this.retryDeferred(), RETRY_MS);
  }

  private async retryDeferred(): Promise<void> {
    if (this.retrying) return; // the previous round still waits for etcd
    this.retrying = true;
    const done = new Set<DeferredDel>();
    try {
      for (const d of [...this.deferred]) {
        try {
          if (await this.finish(d))
            this.log.info("removed the records of a DEL that happened while etcd was away", {
              containerId: d.env.containerId,
            });
          done.add(d);
        } catch (err) {
          this.failedOnce(d, err); // etcd still away: the next round
        }
      }
    } finally {
      this.retrying = false;
    }
    // Entries deferred or superseded meanwhile are as they are now.
    for (const d of done) this.forget(d);
    this.saveJournal();
    if (this.deferred.length === 0) {
      clearInterval(this.retryTimer);
      this.retryTimer = undefined;
    }
  }

  /**
   * An ADD of a container whose DEL is still deferred: that DEL is dropped, not run after
   * the ADD (it would take the new attachment's records and ends away). The ADD registers
   * the pod again and its plan takes care of what the old attachment left in etcd.
   */
  private supersede(containerId: string): void {
    const gone = this.deferred.filter((d) => d.env.containerId === containerId);
    if (gone.length === 0) return;
    for (const d of gone) this.forget(d);
    this.log.info("an ADD of the container supersedes its deferred DEL", { containerId });
    this.saveJournal();
  }

  /** Work that must not be dropped by an idle exit: ratchet pods on this node, DELs to finish. */
  get pendingWork(): boolean {
    return this.deferred.length > 0 || this.state.size > 0;
  }

  close(): void {
    clearInterval(this.retryTimer);
    for (const f of this.followers) f.close();
    for (const s of this.stores.values()) s.etcd.close();
    this.stores.clear();
    this.pods.close();
  }
}

export interface AgentFiles {
  state: string;
  journal: string;
}

/** The agent's node-local files, named after its socket (its directory may be shared). */
export const agentFiles = (conf: NetConf): AgentFiles => ({
  state: `${conf.child_socket}.state.json`,
  journal: `${conf.child_socket}.deferred-del.jsonl`,
});
