// What the stand-in API server holds: pods with a resourceVersion history for watches (and a
// compaction point, below which a watch gets 410 Gone), the open watches, Events and the
// patches it applied. No HTTP here: apiserver.ts routes requests to these methods.
import { normalizePod, type PodObject } from "./pods.ts";

export type WatchType = "ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK" | "ERROR";

/** One change of a pod: `now` undefined when it was deleted. */
interface Change {
  rv: number;
  before: PodObject | undefined;
  now: PodObject | undefined;
}

/** A field selector as the API server takes it: `a=b,c!=d` on a few pod fields. */
export type Selector = (pod: PodObject) => boolean;

const FIELDS: Record<string, (p: PodObject) => string> = {
  "spec.nodeName": (p) => p.spec?.nodeName ?? "",
  "metadata.name": (p) => p.metadata.name,
  "metadata.namespace": (p) => p.metadata.namespace,
};

/** Parses a fieldSelector; a string naming what is wrong when the server would answer 400. */
export function parseFieldSelector(text: string | null): Selector | string {
  if (text === null || text === "") return () => true;
  const terms: Selector[] = [];
  for (const term of text.split(",")) {
    const m = /^([^!=]+)(==|=|!=)(.*)$/.exec(term);
    if (!m) return `invalid field selector ${JSON.stringify(term)}`;
    const [, field, op, value] = m as unknown as [string, string, string, string];
    const get = FIELDS[field];
    if (!get) return `field label not supported: ${field}`;
    terms.push(op === "!=" ? (p) => get(p) !== value : (p) => get(p) === value);
  }
  return (p) => terms.every((t) => t(p));
}

/** An open watch: its selector, and how to write one event line to it. */
export interface Watcher {
  select: Selector;
  namespace: string | undefined;
  bookmarks: boolean;
  send(type: WatchType, object: unknown): void;
  close(): void;
}

const clone = <T>(x: T): T => structuredClone(x);

function isRecord(x: unknown): x is Record<string, unknown> {
  return typeof x === "object" && x !== null && !Array.isArray(x);
}

/** RFC 7386 JSON merge patch (also what a strategic merge patch does to maps such as annotations). */
export function mergePatch(target: unknown, patch: unknown): unknown {
  if (!isRecord(patch)) return clone(patch);
  const out: Record<string, unknown> = isRecord(target) ? { ...target } : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k], v);
  }
  return out;
}

export interface PatchRecord {
  kind: "pods" | "events";
  namespace: string;
  name: string;
  contentType: string;
  patch: unknown;
}

export class ApiState {
  readonly pods = new Map<string, PodObject>();
  /** Events as stored now, by namespace/name. */
  readonly events = new Map<string, Record<string, unknown>>();
  /** Every patch applied, in order. */
  readonly patches: PatchRecord[] = [];
  readonly watchers = new Set<Watcher>();
  private history: Change[] = [];
  /** A watch from a resourceVersion below this gets 410 Gone. */
  private oldestRv = 1;
  rv = 1;

  /** Adds or updates a pod; an update keeps the uid unless the object gives one. Returns it as stored. */
  putPod(doc: unknown): PodObject {
    const given = isRecord(doc) && isRecord(doc.metadata) ? doc.metadata.uid : undefined;
    const p = normalizePod(clone(doc));
    const key = `${p.metadata.namespace}/${p.metadata.name}`;
    const before = this.pods.get(key);
    if (given === undefined && before) p.metadata.uid = before.metadata.uid;
    // A new uid is a new pod: the old one is deleted first, as the API server would have it.
    if (before && before.metadata.uid !== p.metadata.uid)
      this.deletePod(before.metadata.namespace, before.metadata.name);
    return this.store(key, p);
  }

  private store(key: string, p: PodObject): PodObject {
    p.metadata.resourceVersion = String(++this.rv);
    const before = this.pods.get(key);
    this.pods.set(key, p);
    this.record({ rv: this.rv, before, now: p });
    return p;
  }

  deletePod(namespace: string, name: string): boolean {
    const key = `${namespace}/${name}`;
    const before = this.pods.get(key);
    if (!before) return false;
    this.pods.delete(key);
    this.rv++;
    this.record({ rv: this.rv, before, now: undefined });
    return true;
  }

  /**
   * Applies a merge patch to a pod (strategic merge is the same for the maps ratchet patches).
   * A patch that names metadata.resourceVersion applies only to that version ("conflict").
   */
  patchPod(
    namespace: string,
    name: string,
    patch: unknown,
    contentType: string,
  ): PodObject | "conflict" | undefined {
    const key = `${namespace}/${name}`;
    const before = this.pods.get(key);
    if (!before) return undefined;
    const rv = isRecord(patch) && isRecord(patch.metadata) ? patch.metadata.resourceVersion : undefined;
    if (rv !== undefined && rv !== before.metadata.resourceVersion) return "conflict";
    const after = mergePatch(before, patch) as PodObject;
    // Identity is not patchable.
    after.metadata = { ...after.metadata, name, namespace, uid: before.metadata.uid };
    this.patches.push({ kind: "pods", namespace, name, contentType, patch: clone(patch) });
    return this.store(key, after);
  }

  private record(c: Change): void {
    this.history.push(c);
    for (const w of this.watchers) this.deliver(w, c);
  }

  private deliver(w: Watcher, c: Change): void {
    const matches = (p: PodObject | undefined) =>
      p !== undefined && (w.namespace === undefined || p.metadata.namespace === w.namespace) && w.select(p);
    const was = matches(c.before);
    const is = matches(c.now);
    // As the API server does with selectors: leaving the selection is a DELETED, entering an ADDED.
    if (is) w.send(was ? "MODIFIED" : "ADDED", c.now);
    else if (was) {
      const last = clone(c.now ?? (c.before as PodObject));
      last.metadata.resourceVersion = String(c.rv);
      w.send("DELETED", last);
    }
  }

  /** Pods in a namespace (all when undefined) matching the selector, oldest first. */
  list(namespace: string | undefined, select: Selector): PodObject[] {
    return [...this.pods.values()].filter(
      (p) => (namespace === undefined || p.metadata.namespace === namespace) && select(p),
    );
  }

  /**
   * Starts a watch: replays the changes after `from` (the current pods as ADDED when from is
   * undefined or 0) and registers for what follows. False when `from` is compacted away (410).
   */
  watch(w: Watcher, from: number | undefined): boolean {
    if (from === undefined || from === 0) {
      for (const p of this.list(w.namespace, w.select)) w.send("ADDED", p);
    } else {
      if (from < this.oldestRv - 1) return false;
      for (const c of this.history) if (c.rv > from) this.deliver(w, c);
    }
    this.watchers.add(w);
    return true;
  }

  /** Sends a BOOKMARK with the current resourceVersion to every watch that asked for them. */
  bookmark(): void {
    for (const w of this.watchers)
      if (w.bookmarks)
        w.send("BOOKMARK", { kind: "Pod", apiVersion: "v1", metadata: { resourceVersion: String(this.rv) } });
  }

  /** Forgets the history: a watch from any resourceVersion before now gets 410 Gone. */
  compact(): void {
    this.history = [];
    this.oldestRv = this.rv + 1;
  }

  /** Ends every open watch (as a restarting API server does); with `gone`, with a 410 ERROR event first. */
  endWatches(gone = false): void {
    for (const w of [...this.watchers]) {
      if (gone) w.send("ERROR", goneStatus(this.rv));
      w.close();
    }
    this.watchers.clear();
  }

  createEvent(namespace: string, body: unknown): Record<string, unknown> | string {
    if (!isRecord(body) || !isRecord(body.metadata)) return "an Event needs metadata";
    const meta = { ...body.metadata };
    if (typeof meta.name !== "string" || meta.name === "") {
      if (typeof meta.generateName !== "string") return "metadata.name or metadata.generateName is required";
      meta.name = `${meta.generateName}${crypto.randomUUID().slice(0, 8)}`;
    }
    const key = `${namespace}/${meta.name}`;
    if (this.events.has(key)) return `exists:${meta.name}`;
    const ev = {
      ...clone(body),
      kind: "Event",
      apiVersion: "v1",
      metadata: { ...meta, namespace, uid: crypto.randomUUID(), resourceVersion: String(++this.rv) },
    };
    this.events.set(key, ev);
    return ev;
  }

  patchEvent(
    namespace: string,
    name: string,
    patch: unknown,
    contentType: string,
  ): Record<string, unknown> | undefined {
    const key = `${namespace}/${name}`;
    const before = this.events.get(key);
    if (!before) return undefined;
    const after = mergePatch(before, patch) as Record<string, unknown>;
    after.metadata = { ...(before.metadata as object), resourceVersion: String(++this.rv) };
    this.events.set(key, after);
    this.patches.push({ kind: "events", namespace, name, contentType, patch: clone(patch) });
    return after;
  }
}

/** The Status an API server sends as a watch ERROR when the resourceVersion is too old. */
export function goneStatus(rv: number, from?: number): Record<string, unknown> {
  return {
    kind: "Status",
    apiVersion: "v1",
    metadata: {},
    status: "Failure",
    message: `too old resource version: ${from ?? 0} (${rv})`,
    reason: "Expired",
    code: 410,
  };
}
