// The pods of one node, in memory: a list of the pods with spec.nodeName = this node, then a
// watch from the list's resourceVersion, kept up for as long as the agent runs. One watch
// connection per node, whatever the number of pods. A watch that ends is resumed from the
// last resourceVersion seen (events or bookmarks); 410 Gone (too old) means list again; any
// failure is retried with backoff, and meanwhile the pods last seen stay in memory.
import type { Logger } from "../log.ts";
import { type PodInfo, podInfo, type PodReader, StatusError } from "./kube.ts";

/** How long a list, or the answer to a watch request, may take. */
const REQUEST_MS = 10_000;
/** The server ends each watch after about this long; we resume from the last resourceVersion. */
const WATCH_SECONDS = 300;
/** A watch that sent nothing for this long (not even a bookmark) is taken for dead. */
const WATCH_SILENCE_MS = (WATCH_SECONDS + 60) * 1000;
const BACKOFF_MIN_MS = 200;
const BACKOFF_MAX_MS = 10_000;
/** Deleted pods remembered (for a late DEL of their containers), at most. */
const MAX_TOMBSTONES = 4096;

type Reader = Pick<PodReader, "listPods" | "watchPods" | "server">;

/** One line of a watch. */
interface WatchEvent {
  type?: unknown;
  object?: { metadata?: { resourceVersion?: unknown }; code?: unknown; message?: unknown };
}

/** The watch ended with 410: the resourceVersion is too old, list again. */
class Expired extends Error {}

export class PodCache {
  private readonly pods = new Map<string, PodInfo>();
  /** The last state of deleted pods, by namespace/name (oldest first, bounded). */
  private readonly tombstones = new Map<string, PodInfo>();
  private resourceVersion: string | undefined;
  private readonly waiters = new Set<() => void>();
  private readonly listeners = new Set<(pod: PodInfo, before: PodInfo) => void>();
  private readonly syncListeners = new Set<() => void>();
  private readonly stop = new AbortController();
  private running: Promise<void> | undefined;
  /** At least one list succeeded: the cache holds what the API server had then, and since. */
  synced = false;
  /** A watch is open now: changes reach the cache within moments. */
  watching = false;

  constructor(
    private readonly reader: Reader,
    readonly nodeName: string,
    private readonly log: Logger,
  ) {}

  get fieldSelector(): string {
    return `spec.nodeName=${this.nodeName}`;
  }

  /** Starts listing and watching (once). */
  start(): void {
    this.running ??= this.run();
  }

  close(): void {
    this.stop.abort(new Error("the pod cache is closed"));
    this.wake();
  }

  /** The resourceVersion the next watch starts from. */
  get version(): string | undefined {
    return this.resourceVersion;
  }

  get size(): number {
    return this.pods.size;
  }

  /** Every pod the cache holds (this node's). */
  all(): IterableIterator<PodInfo> {
    return this.pods.values();
  }

  /** The pod as last seen, if it is on this node. */
  get(namespace: string, name: string): PodInfo | undefined {
    return this.pods.get(`${namespace}/${name}`);
  }

  /** The last state of a pod deleted (or moved off this node) while the agent watched. */
  deleted(namespace: string, name: string): PodInfo | undefined {
    return this.tombstones.get(`${namespace}/${name}`);
  }

  /**
   * Waits until the pod's current state satisfies `ok` (checked at once, then after each
   * change), at most `ms`. Returns the pod as it is then, satisfying or not.
   */
  async waitFor(
    namespace: string,
    name: string,
    ok: (pod: PodInfo | undefined) => boolean,
    ms: number,
  ): Promise<PodInfo | undefined> {
    const current = () => this.get(namespace, name);
    if (ok(current()) || ms <= 0) return current();
    const { promise, resolve } = Promise.withResolvers<void>();
    const check = () => {
      if (ok(current()) || this.stop.signal.aborted) resolve();
    };
    const timer = setTimeout(resolve, ms);
    this.waiters.add(check);
    try {
      await promise;
    } finally {
      clearTimeout(timer);
      this.waiters.delete(check);
    }
    return current();
  }

  private wake(): void {
    for (const w of [...this.waiters]) w();
  }

  /**
   * Calls `fn` whenever a pod it held changes its labels or annotations (same uid): what a
   * live link change is. Listeners must not block; an error of theirs is logged.
   */
  onChange(fn: (pod: PodInfo, before: PodInfo) => void): void {
    this.listeners.add(fn);
  }

  /** Calls `fn` once the first list is in (at once if it is). */
  onSynced(fn: () => void): void {
    if (this.synced) fn();
    else this.syncListeners.add(fn);
  }

  private put(pod: PodInfo): void {
    const key = `${pod.namespace}/${pod.name}`;
    const before = this.pods.get(key);
    this.pods.set(key, pod);
    this.tombstones.delete(key);
    if (!before || before.uid !== pod.uid) return;
    const same = (x: Record<string, string>, y: Record<string, string>) =>
      JSON.stringify(Object.entries(x).sort()) === JSON.stringify(Object.entries(y).sort());
    if (same(before.labels, pod.labels) && same(before.annotations, pod.annotations)) return;
    for (const fn of this.listeners) {
      try {
        fn(pod, before);
      } catch (err) {
        this.log.error("a pod change listener failed", { pod: key, error: (err as Error).message });
      }
    }
  }

  private remove(key: string): void {
    const last = this.pods.get(key);
    if (!last) return;
    this.pods.delete(key);
    this.tombstones.delete(key);
    this.tombstones.set(key, last);
    if (this.tombstones.size > MAX_TOMBSTONES) {
      const oldest = this.tombstones.keys().next().value;
      if (oldest !== undefined) this.tombstones.delete(oldest);
    }
  }

  private async run(): Promise<void> {
    let failures = 0;
    while (!this.stop.signal.aborted) {
      try {
        if (this.resourceVersion === undefined) await this.list();
        const t0 = Date.now();
        const { events } = await this.watch();
        // A watch the server ends at once with nothing in it counts as a failure: no spinning.
        failures = events > 0 || Date.now() - t0 > 1000 ? 0 : failures + 1;
        if (failures > 0) await this.backoff(failures);
      } catch (err) {
        this.watching = false;
        if (this.stop.signal.aborted) break;
        if (err instanceof Expired) {
          this.log.info("pod watch: resourceVersion too old (410 Gone); listing again", {
            node: this.nodeName,
          });
          this.resourceVersion = undefined;
          continue;
        }
        failures++;
        const fields = { node: this.nodeName, error: (err as Error).message, attempt: failures };
        if (failures === 1) this.log.warn("pod watch failed; retrying with backoff", fields);
        else this.log.debug("pod watch failed again", fields);
        await this.backoff(failures);
      }
    }
    this.watching = false;
  }

  private async backoff(failures: number): Promise<void> {
    const ms = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** Math.min(failures - 1, 10));
    // Jitter, so the agents of many nodes do not come back at the same instant.
    const wait = ms / 2 + Math.random() * (ms / 2);
    const { promise, resolve } = Promise.withResolvers<void>();
    const timer = setTimeout(resolve, wait);
    this.stop.signal.addEventListener("abort", () => resolve(), { once: true });
    await promise;
    clearTimeout(timer);
  }

  /** Replaces the cache with a fresh list; pods gone since go to the tombstones. */
  private async list(): Promise<void> {
    const { resourceVersion, pods } = await this.reader.listPods(this.fieldSelector, REQUEST_MS);
    const seen = new Set(pods.map((p) => `${p.namespace}/${p.name}`));
    for (const key of [...this.pods.keys()]) if (!seen.has(key)) this.remove(key);
    for (const p of pods) this.put(p);
    this.resourceVersion = resourceVersion;
    const first = !this.synced;
    this.synced = true;
    this.wake();
    if (first) {
      for (const fn of this.syncListeners) {
        try {
          fn();
        } catch (err) {
          this.log.error("a pod cache listener failed", { error: (err as Error).message });
        }
      }
    }
    (first ? this.log.info : this.log.debug).call(this.log, "pod cache listed this node's pods", {
      node: this.nodeName,
      pods: pods.length,
      resourceVersion,
    });
  }

  /** One watch, until the server ends it; throws Expired on 410, anything else on failure. */
  private async watch(): Promise<{ events: number }> {
    const ctl = new AbortController();
    const onStop = () => ctl.abort(this.stop.signal.reason);
    this.stop.signal.addEventListener("abort", onStop, { once: true });
    let silence: Timer | undefined;
    const alive = () => {
      clearTimeout(silence);
      silence = setTimeout(
        () => ctl.abort(new Error(`the watch sent nothing for ${WATCH_SILENCE_MS / 1000} s`)),
        WATCH_SILENCE_MS,
      );
    };
    let events = 0;
    try {
      const body = await this.reader
        .watchPods(this.fieldSelector, this.resourceVersion ?? "0", {
          timeoutSeconds: WATCH_SECONDS,
          connectMs: REQUEST_MS,
          signal: ctl.signal,
        })
        .catch((err: unknown) => {
          // Some servers answer a too-old resourceVersion with a 410 status rather than an event.
          const cause = (err as Error).cause;
          throw cause instanceof StatusError && cause.code === 410 ? new Expired("410 Gone") : err;
        });
      if (!this.watching) this.log.info("pod watch open", { node: this.nodeName, pods: this.pods.size });
      this.watching = true;
      alive();
      const decoder = new TextDecoder();
      let buf = "";
      for await (const chunk of body) {
        alive();
        buf += decoder.decode(chunk, { stream: true });
        const lines = buf.split("\n");
        buf = lines.pop() ?? "";
        for (const line of lines) {
          if (line.trim() === "") continue;
          this.apply(JSON.parse(line) as WatchEvent);
          events++;
        }
      }
      if (ctl.signal.aborted) throw ctl.signal.reason;
      return { events };
    } finally {
      clearTimeout(silence);
      this.stop.signal.removeEventListener("abort", onStop);
      ctl.abort();
      this.watching = false;
    }
  }

  private apply(ev: WatchEvent): void {
    const rv = ev.object?.metadata?.resourceVersion;
    switch (ev.type) {
      case "ADDED":
      case "MODIFIED":
      case "DELETED": {
        const pod = podInfo(ev.object);
        if (!pod) return;
        const key = `${pod.namespace}/${pod.name}`;
        if (ev.type === "DELETED" || pod.nodeName !== this.nodeName) this.remove(key);
        else this.put(pod);
        this.wake();
        break;
      }
      case "BOOKMARK":
        break;
      case "ERROR": {
        const code = ev.object?.code;
        if (code === 410) throw new Expired(String(ev.object?.message ?? "410 Gone"));
        const text = typeof ev.object?.message === "string" ? ev.object.message : "";
        throw new Error(`the watch reported an error: ${code ?? "?"} ${text}`.trim());
      }
      default:
        return;
    }
    if (typeof rv === "string" && rv !== "") this.resourceVersion = rv;
  }
}
