// src/pods: this node's pods as the agent knows them (API client, watch cache, link schemas).
//
// Classification reads the node's pod cache: a pod the cache holds costs no API request, and
// is classified from memory even while the API server is away. A pod the cache does not hold
// yet (the watch is a moment behind the kubelet) is waited for briefly, then read once.
import { hostname } from "node:os";
import type { NetConf } from "../cni/config.ts";
import type { PodRef } from "../cni/env.ts";
import { CniError, Code } from "../cni/errors.ts";
import type { Logger } from "../log.ts";
import { PodCache } from "./cache.ts";
import { PodNotFoundError, PodReader, type PodInfo } from "./kube.ts";
import { podLinks, SELECT_LABEL, type PodLinks } from "./podspec.ts";

/** How long one pod read may take, at most (less when the caller's deadline is nearer). */
export const POD_READ_TIMEOUT_MS = 10_000;
/** How long an ADD waits for the watch to bring a pod the cache does not hold, before one GET. */
export const POD_WAIT_MS = 2500;

export interface Classified extends PodLinks {
  pod: PodInfo;
}

/** This node's Kubernetes name: `node_name`, else $NODE_NAME (downward API), else the hostname. */
export function nodeName(
  conf: Pick<NetConf, "node_name">,
  env: Record<string, string | undefined>,
): { name: string; source: "node_name" | "NODE_NAME" | "hostname" } {
  if (conf.node_name) return { name: conf.node_name, source: "node_name" };
  const fromEnv = env.NODE_NAME?.trim();
  if (fromEnv) return { name: fromEnv, source: "NODE_NAME" };
  // As the kubelet names its node by default: the hostname, lower-cased.
  return { name: hostname().trim().toLowerCase(), source: "hostname" };
}

const uidFits = (ref: PodRef) => (p: PodInfo | undefined) =>
  p !== undefined && (ref.uid === undefined || p.uid === ref.uid);

export class PodDirectory {
  private readonly readers = new Map<string, PodReader>();
  private readonly caches = new Map<string, PodCache>();
  /** Pods already reported as bound to another node (logged once each). */
  private readonly elsewhere = new Set<string>();

  constructor(
    private readonly log: Logger,
    private readonly env: Record<string, string | undefined> = process.env,
  ) {}

  /** The API client for this config (made once). */
  reader(conf: NetConf): PodReader {
    const key = conf.kubeconfig ?? "(in-cluster)";
    let r = this.readers.get(key);
    if (!r) {
      r = PodReader.fromConfig(conf, this.env);
      this.readers.set(key, r);
    }
    return r;
  }

  /** The node's pod cache for this config (started at first use). */
  cache(conf: NetConf): PodCache {
    const node = nodeName(conf, this.env);
    const key = JSON.stringify([conf.kubeconfig ?? "(in-cluster)", node.name]);
    let c = this.caches.get(key);
    if (!c) {
      const reader = this.reader(conf);
      c = new PodCache(reader, node.name, this.log);
      this.caches.set(key, c);
      this.log.info("watching this node's pods", {
        node: node.name,
        from: node.source,
        server: reader.server,
      });
      c.start();
    }
    return c;
  }

  /**
   * The pod's labels and annotation as declared links: from the cache; a pod it does not
   * hold (or holds with another uid than the runtime's) is waited for up to POD_WAIT_MS
   * while the watch is up, then read once. A pod the API server does not know (a static
   * pod) is not a ratchet pod. Code 11 when the pod cannot be read, 103 for bad specs.
   */
  async classify(ref: PodRef, conf: NetConf, deadline: number): Promise<Classified> {
    const cache = this.cache(conf);
    const fits = uidFits(ref);
    // The wait and the read share one budget: POD_READ_TIMEOUT_MS, or the caller's deadline.
    const budget = Math.min(deadline, Date.now() + POD_READ_TIMEOUT_MS);
    let pod = cache.get(ref.namespace, ref.name);
    if (!fits(pod) && cache.watching) {
      this.log.debug("waiting for the pod watch to bring the pod", {
        pod: `${ref.namespace}/${ref.name}`,
        uid: ref.uid ?? "(any)",
        cached: pod?.uid ?? "(none)",
      });
      pod = await cache.waitFor(ref.namespace, ref.name, fits, Math.min(POD_WAIT_MS, budget - Date.now()));
    }
    if (!fits(pod)) pod = await this.read(ref, conf, cache, budget);
    if (!pod) {
      this.log.debug("the API server does not know the pod (a static pod?): not a ratchet pod", {
        pod: `${ref.namespace}/${ref.name}`,
      });
      const unknown: PodInfo = {
        namespace: ref.namespace,
        name: ref.name,
        uid: ref.uid ?? "",
        labels: {},
        annotations: {},
        nodeName: undefined,
      };
      return { pod: unknown, eligible: false, links: [] };
    }
    // The cache keeps a pod's object until the pod changes: an ADD's classify and attach
    // read its links once.
    return { pod, ...this.linksOf(pod, conf) };
  }

  private linksOf(pod: PodInfo, conf: NetConf): ReturnType<typeof podLinks> {
    const prefix = conf.default_prefix;
    const seen = this.parsed.get(pod);
    if (seen && seen.prefix === prefix) return seen.links;
    const links = podLinks(pod, { defaultPrefix: prefix });
    this.parsed.set(pod, { prefix, links });
    return links;
  }
  private readonly parsed = new WeakMap<
    PodInfo,
    { prefix: number | undefined; links: ReturnType<typeof podLinks> }
  >();

  /**
   * Pods of the same namespace on this node whose declarations name this pod as a peer, as
   * the cache knows them: a hint for reading their declarations early, never a source of
   * links (etcd's peer index decides who declares what).
   */
  declarersOf(ref: PodRef, conf: NetConf): string[] {
    let cache: PodCache;
    try {
      cache = this.cache(conf);
    } catch {
      return [];
    }
    const out: string[] = [];
    for (const pod of cache.all()) {
      if (pod.namespace !== ref.namespace || pod.name === ref.name) continue;
      if (pod.labels[SELECT_LABEL] !== "true") continue;
      let links: ReturnType<typeof podLinks>;
      try {
        links = this.linksOf(pod, conf);
      } catch {
        continue; // a bad declaration: its pod's own ADD says so
      }
      if (links.links.some((l) => l.peer.namespace === ref.namespace && l.peer.pod === ref.name))
        out.push(`${pod.namespace}/${pod.name}`);
    }
    return out;
  }

  /** One GET of a pod the cache could not give; undefined when the API server answers 404. */
  private async read(
    ref: PodRef,
    conf: NetConf,
    cache: PodCache,
    budget: number,
  ): Promise<PodInfo | undefined> {
    const id = `${ref.namespace}/${ref.name}`;
    let pod: PodInfo;
    try {
      pod = await this.reader(conf).readPod(ref.namespace, ref.name, Math.max(1, budget - Date.now()));
    } catch (err) {
      if (err instanceof PodNotFoundError) return undefined;
      throw err;
    }
    if (ref.uid !== undefined && pod.uid !== ref.uid)
      throw new CniError(
        Code.TryAgainLater,
        `pod ${id}: the API server has uid ${pod.uid}, ` +
          `the runtime's call is for uid ${ref.uid} (not current yet)`,
      );
    if (pod.nodeName !== cache.nodeName && !this.elsewhere.has(id)) {
      this.elsewhere.add(id);
      this.log.warn("a pod this node runs is bound to another node in the API server: check node_name", {
        pod: id,
        boundTo: pod.nodeName ?? "(none)",
        node: cache.nodeName,
      });
    }
    return pod;
  }

  /**
   * For a DEL with no record of its container: whether the pod is a ratchet pod, from what
   * the cache knows (pods on this node, and those deleted while it watched), never from the
   * API server. `false` also when the cache is listed and up to date and has never seen the
   * pod: a pod ratchet never saw was never ratchet's. Undefined when it cannot tell.
   */
  knownEligible(ref: PodRef, conf: NetConf): boolean | undefined {
    let cache: PodCache;
    try {
      cache = this.cache(conf);
    } catch {
      return undefined; // no way to the API server in this config (logged at start)
    }
    if (!cache.synced) return undefined;
    const fits = uidFits(ref);
    const live = cache.get(ref.namespace, ref.name);
    const gone = cache.deleted(ref.namespace, ref.name);
    const pod = fits(live) ? live : fits(gone) ? gone : undefined;
    if (pod) return pod.labels[SELECT_LABEL] === "true";
    if (live === undefined && gone === undefined && cache.watching) return false;
    return undefined;
  }

  /** Is the API server there (for STATUS)? */
  async ping(conf: NetConf, deadlineMs: number): Promise<void> {
    await this.reader(conf).ping(deadlineMs);
  }

  close(): void {
    for (const c of this.caches.values()) c.close();
    this.caches.clear();
    for (const r of this.readers.values()) r.close();
    this.readers.clear();
  }
}
