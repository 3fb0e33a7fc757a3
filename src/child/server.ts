// The child's unix-socket server: newline-delimited JSON requests, bounded concurrency,
// per-pod serialization, idle exit, drain for upgrades.
import { chmodSync, existsSync, mkdirSync, unlinkSync } from "node:fs";
import { dirname } from "node:path";
import { CniError, Code, toCniError } from "../cni/errors.ts";
import type { Logger } from "../log.ts";
import { type Interim, isMethod, isNote, LineReader, type Request, type Response } from "../rpc/protocol.ts";
import { firstIssue } from "../rpc/results.ts";
import { checkParams } from "../rpc/schemas.ts";
import { type StepTimes, withSteps } from "../steps.ts";

/** `interim`: a line before the answer (see InterimOf); dropped once the caller has gone. */
export type Handler = (req: Request, signal: AbortSignal, interim: Interim) => Promise<unknown>;

/** At most this many connections at once; more are closed at once. */
export const MAX_CONNECTIONS = 128;
/** A connection with no request in flight and nothing said for this long is closed. */
export const IDLE_CONNECTION_MS = 5000;

export interface ServerOptions {
  socket: string;
  log: Logger;
  handle: Handler;
  /** The key requests are serialized on (e.g. namespace/pod); undefined: no serialization. */
  keyOf: (req: Request) => string | undefined;
  maxInFlight?: number;
  maxQueued?: number;
  maxConnections?: number;
  idleConnectionMs?: number;
}

/** Runs tasks one at a time per key; different keys run concurrently. */
export class KeyedQueue {
  private readonly tails = new Map<string, Promise<unknown>>();
  run<T>(key: string | undefined, task: () => Promise<T>): Promise<T> {
    if (key === undefined) return task();
    const prev = this.tails.get(key) ?? Promise.resolve();
    const next = prev.then(task, task);
    const tail = next.catch(() => undefined);
    this.tails.set(key, tail);
    void tail.then(() => {
      if (this.tails.get(key) === tail) this.tails.delete(key);
    });
    return next;
  }
  get size(): number {
    return this.tails.size;
  }
}

/** Caps concurrent work; callers beyond maxQueued are refused at once with code 11. */
export class Limiter {
  private active = 0;
  private readonly waiters: Array<() => void> = [];
  constructor(
    private readonly maxActive: number,
    private readonly maxQueued: number,
  ) {}
  async run<T>(task: () => Promise<T>): Promise<T> {
    if (this.active >= this.maxActive) {
      if (this.waiters.length >= this.maxQueued) {
        throw new CniError(
          Code.TryAgainLater,
          `the node agent is busy: ${this.active} requests running and ${this.waiters.length} queued`,
        );
      }
      await new Promise<void>((r) => this.waiters.push(r));
    }
    this.active++;
    try {
      return await task();
    } finally {
      this.active--;
      this.waiters.shift()?.();
    }
  }
  get load(): number {
    return this.active + this.waiters.length;
  }
}

interface ConnState {
  reader: LineReader;
  /** Output the socket did not take yet (a large answer): sent on drain, in order. */
  pending: Uint8Array[];
  /** Aborted when the connection closes: the caller no longer waits for its requests. */
  gone: AbortController;
  inFlight: number;
  lastSeen: number;
}

export class Server {
  private listener: ReturnType<typeof Bun.listen<ConnState>> | undefined;
  private readonly queue = new KeyedQueue();
  private readonly limiter: Limiter;
  private inFlight = 0;
  private idleWaiters: Array<() => void> = [];
  private readonly conns = new Set<Bun.Socket<ConnState>>();
  private reaper: Timer | undefined;
  lastActivity = Date.now();
  draining = false;

  constructor(private readonly opts: ServerOptions) {
    this.limiter = new Limiter(opts.maxInFlight ?? 32, opts.maxQueued ?? 512);
  }

  /**
   * Binds the socket (0600). Its directory is made 0700 when ratchet creates it; an existing
   * directory (/run, /tmp) is left as it is. The caller holds the socket lock.
   */
  listen(): void {
    const { socket } = this.opts;
    if (!existsSync(dirname(socket))) mkdirSync(dirname(socket), { recursive: true, mode: 0o700 });
    try {
      unlinkSync(socket); // a stale socket of a dead child: we hold the lock, so no one else owns it
    } catch {
      // absent
    }
    const old = process.umask(0o177);
    try {
      this.listener = Bun.listen<ConnState>({
        unix: socket,
        socket: {
          open: (s) => {
            s.data = {
              reader: new LineReader(),
              pending: [],
              gone: new AbortController(),
              inFlight: 0,
              lastSeen: Date.now(),
            };
            if (this.conns.size >= (this.opts.maxConnections ?? MAX_CONNECTIONS)) {
              this.opts.log.warn("too many connections: closing a new one", { open: this.conns.size });
              s.end();
              return;
            }
            this.conns.add(s);
          },
          close: (s) => {
            this.conns.delete(s);
            s.data?.gone.abort(new CniError(Code.TryAgainLater, "the caller closed the connection"));
          },
          data: (s, chunk) => this.onData(s, chunk),
          drain: (s) => this.flush(s),
          error: (_s, err) => this.opts.log.warn("connection error", { error: err.message }),
        },
      });
    } finally {
      process.umask(old);
    }
    chmodSync(socket, 0o600);
    // Connections that hold no request and say nothing (or never finish a line) are closed.
    const idleMs = this.opts.idleConnectionMs ?? IDLE_CONNECTION_MS;
    this.reaper = setInterval(() => this.reap(idleMs), Math.max(100, Math.min(1000, idleMs / 2)));
    this.reaper.unref();
  }

  private reap(idleMs: number): void {
    const now = Date.now();
    for (const s of this.conns) {
      if (s.data.inFlight === 0 && s.data.pending.length === 0 && now - s.data.lastSeen >= idleMs) {
        this.conns.delete(s);
        s.end();
      }
    }
  }

  private onData(s: Bun.Socket<ConnState>, chunk: Uint8Array): void {
    s.data.lastSeen = Date.now();
    let lines: string[];
    try {
      lines = s.data.reader.push(chunk);
    } catch (err) {
      this.opts.log.warn("dropping a connection", { error: (err as Error).message });
      s.end();
      return;
    }
    for (const line of lines) void this.serve(s, line);
  }

  private async serve(s: Bun.Socket<ConnState>, line: string): Promise<void> {
    this.lastActivity = Date.now();
    let req: Request;
    try {
      const raw = JSON.parse(line) as Partial<Request> | null;
      if (typeof raw?.id !== "number" || typeof raw.deadline !== "number") {
        throw new Error("a request needs a numeric id and deadline");
      }
      if (!isMethod(raw.method)) throw new Error(`unknown method ${JSON.stringify(raw.method)}`);
      if (raw.note === true && !isNote(raw.method)) throw new Error(`${raw.method} is not a note`);
      const params = checkParams(raw.method, raw.params);
      if (!params.success) throw new Error(`${raw.method}: ${firstIssue(params.issues)}`);
      req = {
        id: raw.id,
        method: raw.method,
        deadline: raw.deadline,
        params: params.output,
        ...(raw.trace === true ? { trace: true } : {}),
        ...(raw.note === true ? { note: true } : {}),
      };
    } catch (err) {
      this.send(
        s,
        `${JSON.stringify({ id: 0, ok: false, error: { code: Code.DecodeFailure, msg: `bad request: ${(err as Error).message}` } })}\n`,
      );
      return;
    }
    if (req.note) return this.serveNote(req);
    this.inFlight++;
    s.data.inFlight++;
    let res: Response;
    // Traced: the agent's time by kind of work goes back with the answer.
    const steps: StepTimes | undefined = req.trace ? {} : undefined;
    const arrived = performance.now();
    try {
      // Serialize per pod first, then take a slot: a request waiting for its pod holds no slot.
      const result = await this.queue.run(this.opts.keyOf(req), () =>
        this.limiter.run(async () => {
          const left = req.deadline - Date.now();
          if (left <= 0)
            throw new CniError(Code.TryAgainLater, `request ${req.method} expired before it could start`);
          s.data.gone.signal.throwIfAborted();
          const interim: Interim = (payload) => {
            if (!s.data.gone.signal.aborted)
              this.send(s, `${JSON.stringify({ id: req.id, interim: payload })}\n`);
          };
          const handle = () =>
            this.opts.handle(req, AbortSignal.any([AbortSignal.timeout(left), s.data.gone.signal]), interim);
          if (!steps) return handle();
          steps["waiting its turn"] = [performance.now() - arrived, 1];
          return withSteps(steps, handle);
        }),
      );
      res = { id: req.id, ok: true, result, ...(steps ? { steps } : {}) } as Response;
    } catch (err) {
      const e = toCniError(err);
      if (e.code === Code.Internal)
        this.opts.log.error(`${req.method} failed`, { error: e.message, stack: (err as Error).stack });
      res = {
        id: req.id,
        ok: false,
        error: { code: e.code, msg: e.message, ...(e.details ? { details: e.details } : {}) },
        ...(steps ? { steps } : {}),
      };
    } finally {
      this.inFlight--;
      s.data.inFlight--;
      s.data.lastSeen = Date.now();
      this.lastActivity = Date.now();
      if (this.inFlight === 0) for (const w of this.idleWaiters.splice(0)) w();
    }
    this.send(s, `${JSON.stringify(res)}\n`);
  }

  /**
   * A note: run in the same per-pod order and limits as requests, never answered, and not
   * bound to its connection (the plugin sends it and exits). A failure is only logged.
   */
  private async serveNote(req: Request): Promise<void> {
    try {
      await this.serialize(this.opts.keyOf(req), () =>
        this.limiter.run(() =>
          this.opts.handle(req, AbortSignal.timeout(Math.max(0, req.deadline - Date.now())), () => undefined),
        ),
      );
    } catch (err) {
      this.opts.log.warn(`${req.method} note failed`, { error: (err as Error).message });
    }
  }

  /** Writes a line; what the socket does not take at once (a large answer) waits for drain. */
  private send(s: Bun.Socket<ConnState>, line: string): void {
    s.data.pending.push(new TextEncoder().encode(line));
    if (s.data.pending.length === 1) this.flush(s);
  }

  private flush(s: Bun.Socket<ConnState>): void {
    const q = s.data.pending;
    try {
      while (q.length > 0) {
        const buf = q[0] as Uint8Array;
        const n = s.write(buf);
        if (n < buf.byteLength) {
          q[0] = buf.subarray(Math.max(0, n));
          return;
        }
        q.shift();
      }
    } catch {
      // the parent went away (its runtime timed out): nothing to tell it
      q.length = 0;
    }
  }

  /** Runs work of the agent's own (a live link change) in the same per-pod order as requests. */
  serialize<T>(key: string | undefined, task: () => Promise<T>): Promise<T> {
    this.inFlight++;
    return this.queue.run(key, task).finally(() => {
      this.inFlight--;
      this.lastActivity = Date.now();
      if (this.inFlight === 0) for (const w of this.idleWaiters.splice(0)) w();
    });
  }

  get busy(): boolean {
    return this.inFlight > 0;
  }

  /** Stops accepting connections and removes the socket file; in-flight requests go on. */
  stopListening(): void {
    clearInterval(this.reaper);
    this.listener?.stop(false);
    this.listener = undefined;
    try {
      unlinkSync(this.opts.socket);
    } catch {
      // already gone
    }
  }

  /** Resolves when no request is in flight. */
  idle(): Promise<void> {
    if (this.inFlight === 0) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }
}

/** Serialization key: the pod, else the container. */
export function requestKey(req: Request): string | undefined {
  const p = req.params;
  if ("env" in p) return workKey(p.env);
  // A note about a pod (booted) takes its turn after the pod's ADD, before a later DEL.
  if ("pod" in p) return podKey(p.pod);
  return undefined;
}

/** The queue key of work on a CNI call's pod (or, without one, its container). */
export function workKey(env: {
  pod?: { namespace: string; name: string };
  containerId: string;
}): string | undefined {
  if (env.pod) return podKey(env.pod);
  if (env.containerId) return `ctr/${env.containerId}`;
  return undefined;
}

/** The queue key of a pod's work: its CNI calls, notes and live changes. */
export function podKey(pod: { namespace: string; name: string }): string {
  return `pod/${pod.namespace}/${pod.name}`;
}
