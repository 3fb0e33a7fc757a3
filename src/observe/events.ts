// Kubernetes Events on pods (core/v1), fire and forget: emit() only notes the event and
// returns; a few workers send them. The same event again (same pod, type, reason and message)
// is aggregated: the stored Event's count and lastTimestamp are PATCHed, at most once per
// interval, rather than a new Event each time. The queue is bounded: beyond it events are
// dropped (counted, logged). A failed request is logged, never thrown.
import type { Logger } from "../log.ts";
import { failure, type KubeApi, MERGE_PATCH, type PodRef } from "./kube-api.ts";

export type EventType = "Normal" | "Warning";

export interface EventOptions {
  /** This node's name: the Events' reportingInstance and source.host. */
  node: string;
  log: Logger;
  /** Events waiting to be sent, at most. */
  maxQueue?: number;
  /** Distinct events remembered for aggregation, at most (the oldest are forgotten). */
  maxKept?: number;
  /** One Event is written at most this often; counts in between are summed. */
  minIntervalMs?: number;
  /** Requests in flight, at most. */
  concurrency?: number;
}

interface Entry {
  key: string;
  pod: PodRef;
  type: EventType;
  reason: string;
  message: string;
  /** The Event object's name. */
  name: string;
  count: number;
  /** The count the API server has. */
  written: number;
  /** The count the last attempt tried to write. */
  attempted: number;
  first: string;
  last: string;
  posted: boolean;
  queued: boolean;
  sending: boolean;
  sentAt: number;
}

const MAX_MESSAGE = 1024;
let sequence = 0;

/** metav1.Time: RFC 3339 in seconds. */
const timestamp = (d = new Date()) => d.toISOString().replace(/\.\d+Z$/, "Z");

export class EventRecorder {
  private readonly entries = new Map<string, Entry>();
  private readonly queue: Entry[] = [];
  private readonly timers = new Set<Timer>();
  private running = 0;
  private idle: Array<() => void> = [];
  private closed = false;
  /** Requests by outcome ("created", "patched", "failed") and events dropped, for metrics. */
  readonly results = new Map<string, number>();
  private lastWarn = 0;

  constructor(
    /** The API to post to; undefined while there is none (not configured, not loaded yet). */
    private readonly api: () => KubeApi | undefined,
    private readonly opts: EventOptions,
  ) {}

  private tally(result: string): void {
    this.results.set(result, (this.results.get(result) ?? 0) + 1);
  }

  /** Notes one event on a pod; returns at once. */
  emit(pod: PodRef, type: EventType, reason: string, message: string): void {
    if (this.closed) return;
    const text = message.length > MAX_MESSAGE ? `${message.slice(0, MAX_MESSAGE - 3)}...` : message;
    const key = JSON.stringify([pod.namespace, pod.name, pod.uid ?? "", type, reason, text]);
    const now = timestamp();
    let e = this.entries.get(key);
    if (e) {
      this.entries.delete(key); // re-inserted below: the map's order is the order of use
      e.count++;
      e.last = now;
    } else {
      const stem = pod.name.slice(0, 230);
      e = {
        key,
        pod,
        type,
        reason,
        message: text,
        name: `${stem}.${(Date.now() * 1000 + (sequence++ % 1000)).toString(16)}`,
        count: 1,
        written: 0,
        attempted: 0,
        first: now,
        last: now,
        posted: false,
        queued: false,
        sending: false,
        sentAt: 0,
      };
    }
    this.entries.set(key, e);
    const max = this.opts.maxKept ?? 4096;
    while (this.entries.size > max) {
      const oldest = this.entries.keys().next().value as string;
      this.entries.delete(oldest);
    }
    this.schedule(e);
  }

  private schedule(e: Entry): void {
    if (e.queued || e.sending || e.count === e.written) return;
    if (this.queue.length >= (this.opts.maxQueue ?? 1000)) {
      this.tally("dropped");
      if (Date.now() - this.lastWarn > 60_000) {
        this.lastWarn = Date.now();
        this.opts.log.warn("too many Events waiting: dropping some", { reason: e.reason, pod: e.pod.name });
      }
      return;
    }
    e.queued = true;
    const wait = e.posted ? e.sentAt + (this.opts.minIntervalMs ?? 1000) - Date.now() : 0;
    if (wait <= 0) {
      this.queue.push(e);
      this.pump();
      return;
    }
    const t = setTimeout(() => {
      this.timers.delete(t);
      this.queue.push(e);
      this.pump();
    }, wait);
    t.unref();
    this.timers.add(t);
  }

  private pump(): void {
    while (this.running < (this.opts.concurrency ?? 4) && this.queue.length > 0) {
      const e = this.queue.shift() as Entry;
      e.queued = false;
      e.sending = true;
      this.running++;
      void this.send(e).finally(() => {
        e.sending = false;
        e.sentAt = Date.now();
        this.running--;
        // Counted again meanwhile: write the new count. A failure waits for the next emit.
        if (e.count > e.attempted && this.entries.get(e.key) === e) this.schedule(e);
        this.pump();
        if (this.running === 0 && this.queue.length === 0 && this.timers.size === 0)
          for (const w of this.idle.splice(0)) w();
      });
    }
  }

  private async send(e: Entry): Promise<void> {
    const count = e.count;
    e.attempted = count;
    const api = this.api();
    if (!api) return;
    const path = `/api/v1/namespaces/${encodeURIComponent(e.pod.namespace)}/events`;
    try {
      if (e.posted) {
        const patch = { count, lastTimestamp: e.last };
        const res = await api.call("PATCH", `${path}/${encodeURIComponent(e.name)}`, {
          json: patch,
          contentType: MERGE_PATCH,
        });
        if (res.status === 200) {
          e.written = count;
          this.tally("patched");
          return;
        }
        // Gone (expired by the API server's TTL): start a new Event.
        if (res.status !== 404) throw new Error(failure(res));
        e.posted = false;
      }
      const res = await api.call("POST", path, {
        json: this.body(e, count),
        contentType: "application/json",
      });
      if (res.status !== 201 && res.status !== 200) throw new Error(failure(res));
      e.posted = true;
      e.written = count;
      this.tally("created");
    } catch (err) {
      this.tally("failed");
      const fields = {
        reason: e.reason,
        pod: `${e.pod.namespace}/${e.pod.name}`,
        error: (err as Error).message,
      };
      if (Date.now() - this.lastWarn > 60_000) {
        this.lastWarn = Date.now();
        this.opts.log.warn("could not post an Event", fields);
      } else this.opts.log.debug("could not post an Event", fields);
    }
  }

  private body(e: Entry, count: number): Record<string, unknown> {
    const { namespace, name, uid } = e.pod;
    return {
      apiVersion: "v1",
      kind: "Event",
      metadata: { name: e.name, namespace },
      involvedObject: { apiVersion: "v1", kind: "Pod", namespace, name, ...(uid ? { uid } : {}) },
      reason: e.reason,
      message: e.message,
      type: e.type,
      count,
      firstTimestamp: e.first,
      lastTimestamp: e.last,
      source: { component: "ratchet", host: this.opts.node },
      reportingComponent: "ratchet.io/agent",
      reportingInstance: this.opts.node,
    };
  }

  /** Resolves when nothing is queued or in flight (or after timeoutMs). */
  async flush(timeoutMs = 5000): Promise<void> {
    if (this.running === 0 && this.queue.length === 0 && this.timers.size === 0) return;
    let timer: Timer | undefined;
    await Promise.race([
      new Promise<void>((r) => this.idle.push(r)),
      new Promise<void>((r) => {
        timer = setTimeout(r, timeoutMs);
      }),
    ]);
    clearTimeout(timer);
  }

  close(): void {
    this.closed = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    this.queue.length = 0;
  }
}
