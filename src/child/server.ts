// The child's unix-socket server: newline-delimited JSON requests, bounded concurrency,
// per-pod serialization, idle exit, drain for upgrades.
import { chmodSync, mkdirSync, unlinkSync } from "node:fs";
import { dirname } from "node:path";
import { CniError, Code, toCniError } from "../cni/errors.ts";
import type { Logger } from "../log.ts";
import { LineReader, type CallParams, type Method, type Request, type Response } from "../rpc/protocol.ts";

export type Handler = (req: Request, signal: AbortSignal) => Promise<unknown>;

export interface ServerOptions {
  socket: string;
  log: Logger;
  handle: Handler;
  /** The key requests are serialized on (e.g. namespace/pod); undefined: no serialization. */
  keyOf: (req: Request) => string | undefined;
  maxInFlight?: number;
  maxQueued?: number;
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
}

export class Server {
  private listener: ReturnType<typeof Bun.listen<ConnState>> | undefined;
  private readonly queue = new KeyedQueue();
  private readonly limiter: Limiter;
  private inFlight = 0;
  private idleWaiters: Array<() => void> = [];
  lastActivity = Date.now();
  draining = false;

  constructor(private readonly opts: ServerOptions) {
    this.limiter = new Limiter(opts.maxInFlight ?? 32, opts.maxQueued ?? 512);
  }

  /** Binds the socket (directory 0700, socket 0600). The caller holds the socket lock. */
  listen(): void {
    const { socket } = this.opts;
    mkdirSync(dirname(socket), { recursive: true, mode: 0o700 });
    chmodSync(dirname(socket), 0o700);
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
            s.data = { reader: new LineReader() };
          },
          data: (s, chunk) => this.onData(s, chunk),
          error: (_s, err) => this.opts.log.warn("connection error", { error: err.message }),
        },
      });
    } finally {
      process.umask(old);
    }
    chmodSync(socket, 0o600);
  }

  private onData(s: Bun.Socket<ConnState>, chunk: Uint8Array): void {
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
      req = JSON.parse(line) as Request;
      if (typeof req.id !== "number" || typeof req.method !== "string")
        throw new Error("a request needs id and method");
    } catch (err) {
      s.write(
        `${JSON.stringify({ id: 0, ok: false, error: { code: Code.DecodeFailure, msg: `bad request: ${(err as Error).message}` } })}\n`,
      );
      return;
    }
    this.inFlight++;
    let res: Response;
    try {
      // Serialize per pod first, then take a slot: a request waiting for its pod holds no slot.
      const result = await this.queue.run(this.opts.keyOf(req), () =>
        this.limiter.run(async () => {
          const left = req.deadline - Date.now();
          if (left <= 0)
            throw new CniError(Code.TryAgainLater, `request ${req.method} expired before it could start`);
          return this.opts.handle(req, AbortSignal.timeout(left));
        }),
      );
      res = { id: req.id, ok: true, result } as Response;
    } catch (err) {
      const e = toCniError(err);
      if (e.code === Code.Internal)
        this.opts.log.error(`${req.method} failed`, { error: e.message, stack: (err as Error).stack });
      res = {
        id: req.id,
        ok: false,
        error: { code: e.code, msg: e.message, ...(e.details ? { details: e.details } : {}) },
      };
    } finally {
      this.inFlight--;
      this.lastActivity = Date.now();
      if (this.inFlight === 0) for (const w of this.idleWaiters.splice(0)) w();
    }
    try {
      s.write(`${JSON.stringify(res)}\n`);
    } catch {
      // the parent went away (its runtime timed out): nothing to tell it
    }
  }

  get busy(): boolean {
    return this.inFlight > 0;
  }

  /** Stops accepting connections and removes the socket file; in-flight requests go on. */
  stopListening(): void {
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

export function isMethod(m: string): m is Method {
  return ["hello", "drain", "classify", "attach", "detach", "check", "status", "gc"].includes(m);
}

/** Serialization key: the pod, else the container. */
export function requestKey(req: Request): string | undefined {
  const p = req.params as Partial<CallParams>;
  if (p.env?.pod) return `pod/${p.env.pod.namespace}/${p.env.pod.name}`;
  if (p.env?.containerId) return `ctr/${p.env.containerId}`;
  return undefined;
}
