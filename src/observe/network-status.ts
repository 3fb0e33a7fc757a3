// The pod's k8s.v1.cni.cncf.io/network-status annotation (the Multus format): one entry per
// ratchet link of the pod ("ratchet/<peer>") as the kernel has it now, plus the boot network
// as the default entry when the plugin told us its result. Entries written by others are
// kept (merged by interface). Written with a JSON merge patch conditioned on the pod's
// resourceVersion: the pod as the agent's pod cache holds it, or as read from the API server
// after a conflict (someone wrote it, or the cache was behind). In the background only.
import type { Logger } from "../log.ts";
import { failure, type KubeApi, MERGE_PATCH, podPath, podRef } from "./kube-api.ts";

export const NETWORK_STATUS = "k8s.v1.cni.cncf.io/network-status";

export interface StatusEntry {
  name: string;
  interface: string;
  ips: string[];
  mac?: string;
  default?: boolean;
  dns?: Record<string, unknown>;
}

const isRecord = (x: unknown): x is Record<string, unknown> =>
  typeof x === "object" && x !== null && !Array.isArray(x);

/** The annotation's entries; anything unreadable counts as none. */
export function parseStatus(text: string | undefined): Record<string, unknown>[] {
  if (!text) return [];
  try {
    const list: unknown = JSON.parse(text);
    return Array.isArray(list) ? list.filter(isRecord) : [];
  } catch {
    return [];
  }
}

/**
 * `current` with ratchet's entries replaced by `ours`: an entry named "ratchet/..." or on an
 * interface of ours is ratchet's; the boot entry replaces the one on its interface (or goes
 * first); everything else stays where it was.
 */
export function mergeStatus(
  current: Record<string, unknown>[],
  ours: StatusEntry[],
  boot: StatusEntry | undefined,
): Record<string, unknown>[] {
  const mine = new Map(ours.map((e) => [e.interface, e]));
  const out: Record<string, unknown>[] = [];
  let bootPlaced = false;
  for (const e of current) {
    const iface = typeof e.interface === "string" ? e.interface : undefined;
    if (boot && iface === boot.interface) {
      if (!bootPlaced) out.push({ ...boot });
      bootPlaced = true;
      continue;
    }
    const replacement = iface === undefined ? undefined : mine.get(iface);
    if (replacement) {
      out.push({ ...replacement });
      mine.delete(replacement.interface);
      continue;
    }
    if (typeof e.name === "string" && e.name.startsWith("ratchet/")) continue; // a link gone since
    out.push(e);
  }
  if (boot && !bootPlaced) out.unshift({ ...boot });
  const rest = [...mine.values()].sort((a, b) => (a.interface < b.interface ? -1 : 1));
  for (const e of rest) out.push({ ...e });
  return out;
}

/** A pod's annotations and version as the agent's pod cache holds them. */
export interface CachedPod {
  annotations: Record<string, string>;
  resourceVersion: string;
}

/** Annotations and version of a Pod object (a GET's or a PATCH's answer). */
function podOf(body: unknown): CachedPod | undefined {
  if (!isRecord(body) || !isRecord(body.metadata)) return undefined;
  const meta = body.metadata;
  const annotations: Record<string, string> = {};
  if (isRecord(meta.annotations))
    for (const [k, v] of Object.entries(meta.annotations)) if (typeof v === "string") annotations[k] = v;
  return {
    annotations,
    resourceVersion: typeof meta.resourceVersion === "string" ? meta.resourceVersion : "",
  };
}

export interface StatusOptions {
  /** The pod from the pod cache (no read per write); undefined: read it from the API server. */
  cached?: (pod: string) => CachedPod | undefined;
  /** Requests in flight, at most. */
  concurrency?: number;
  /** How long changes of one pod are gathered before one write. */
  settleMs?: number;
}

export class NetworkStatusWriter {
  private readonly boots = new Map<string, StatusEntry>();
  /** Our last write of each pod: the version it replaced, and the pod it made. */
  private readonly written = new Map<string, { replaced: string; made: CachedPod }>();
  private readonly pending = new Set<string>();
  private readonly busy = new Set<string>();
  private readonly again = new Set<string>();
  private timer: Timer | undefined;
  private idle: Array<() => void> = [];
  private closed = false;
  /** Writes by outcome ("patched", "unchanged", "failed"), for metrics. */
  readonly results = new Map<string, number>();

  constructor(
    private readonly api: () => KubeApi | undefined,
    /** Ratchet's entries for pod "ns/name" now; undefined when the pod has no container here. */
    private readonly entries: (pod: string) => StatusEntry[] | undefined,
    private readonly log: Logger,
    private readonly opts: StatusOptions = {},
  ) {}

  /** The boot network's entry of the pod, from its last ADD (undefined: keep what is there). */
  setBoot(pod: string, entry: StatusEntry | undefined): void {
    if (entry) this.boots.set(pod, entry);
    else this.boots.delete(pod);
  }

  /** Asks for the pod's annotation to be brought up to date soon; returns at once. */
  refresh(pod: string): void {
    if (this.closed) return;
    if (this.busy.has(pod)) {
      this.again.add(pod);
      return;
    }
    this.pending.add(pod);
    this.timer ??= setTimeout(() => {
      this.timer = undefined;
      this.pump();
    }, this.opts.settleMs ?? 20);
  }

  private pump(): void {
    for (const pod of this.pending) {
      if (this.busy.size >= (this.opts.concurrency ?? 4)) return;
      this.pending.delete(pod);
      if (this.busy.has(pod)) {
        this.again.add(pod);
        continue;
      }
      this.busy.add(pod);
      void this.write(pod).finally(() => {
        this.busy.delete(pod);
        if (this.again.delete(pod)) this.pending.add(pod);
        this.pump();
        if (this.busy.size === 0 && this.pending.size === 0 && !this.timer)
          for (const w of this.idle.splice(0)) w();
      });
    }
  }

  private tally(result: string): void {
    this.results.set(result, (this.results.get(result) ?? 0) + 1);
  }

  private async write(pod: string): Promise<void> {
    const api = this.api();
    if (!api) return;
    const { namespace, name } = podRef(pod);
    try {
      let fromCache = true;
      for (let attempt = 1; ; attempt++) {
        const ours = this.entries(pod);
        if (!ours) {
          // No container here any more: nothing of ours to say.
          this.boots.delete(pod);
          this.written.delete(pod);
          return;
        }
        const current = (fromCache && this.known(pod)) || (await this.read(api, namespace, name));
        if (!current) return; // the pod is gone
        const value = current.annotations[NETWORK_STATUS];
        const text = typeof value === "string" ? value : undefined;
        const entries = parseStatus(text);
        const merged = mergeStatus(entries, ours, this.boots.get(pod));
        const same = JSON.stringify(merged) === JSON.stringify(entries);
        if (same && (text !== undefined || merged.length === 0)) {
          this.tally("unchanged");
          return;
        }
        const patch = {
          metadata: {
            resourceVersion: current.resourceVersion,
            annotations: { [NETWORK_STATUS]: JSON.stringify(merged, null, 4) },
          },
        };
        const res = await api.call("PATCH", podPath(namespace, name), {
          json: patch,
          contentType: MERGE_PATCH,
        });
        if (res.status === 200) {
          this.tally("patched");
          const made = podOf(res.body);
          if (made) this.written.set(pod, { replaced: current.resourceVersion, made });
          return;
        }
        // Someone wrote the pod since (or the cache is behind): read it, merge again.
        if (res.status !== 409 || attempt >= 5) throw new Error(`patching the pod: ${failure(res)}`);
        fromCache = false;
      }
    } catch (err) {
      this.tally("failed");
      this.log.warn("could not update the network-status annotation", { pod, error: (err as Error).message });
    }
  }

  /**
   * The pod as the cache holds it; while the cache still shows the version our last write
   * replaced (the watch has not brought our change yet), the pod that write made.
   */
  private known(pod: string): CachedPod | undefined {
    const c = this.opts.cached?.(pod);
    if (!c?.resourceVersion) return undefined;
    const w = this.written.get(pod);
    return w && w.replaced === c.resourceVersion ? w.made : c;
  }

  /** The pod's annotations and version from the API server; undefined when it is gone. */
  private async read(api: KubeApi, namespace: string, name: string): Promise<CachedPod | undefined> {
    const got = await api.call("GET", podPath(namespace, name));
    if (got.status === 404) return undefined;
    const pod = got.status === 200 ? podOf(got.body) : undefined;
    if (!pod) throw new Error(`reading the pod: ${failure(got)}`);
    return pod;
  }

  /** Resolves when no write is pending or in flight (or after timeoutMs). */
  async flush(timeoutMs = 5000): Promise<void> {
    if (this.busy.size === 0 && this.pending.size === 0 && !this.timer) return;
    let t: Timer | undefined;
    await Promise.race([
      new Promise<void>((r) => this.idle.push(r)),
      new Promise<void>((r) => {
        t = setTimeout(r, timeoutMs);
      }),
    ]);
    clearTimeout(t);
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    this.timer = undefined;
    this.pending.clear();
  }
}
