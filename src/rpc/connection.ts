// The calling side of the protocol: one connection to the agent's socket, requests one
// after another, every reply checked against the method's schema.
import * as v from "valibot";
import { AgentUnavailableError, CniError, Code } from "../cni/errors.ts";
import {
  LineReader,
  MAX_REPLY_BYTES,
  type Method,
  type InterimOf,
  type Methods,
  type NoteMethod,
  type Response,
} from "./protocol.ts";
import type { StepTimes } from "../steps.ts";
import { firstIssue, interimSchemas, resultSchemas, StepTimesSchema } from "./results.ts";

type Sock = Awaited<ReturnType<typeof Bun.connect>>;

/** The connection broke (closed, reset): a new agent may answer the same request. */
export class ConnectionLost extends Error {
  override name = "ConnectionLost";
}

export class Connection {
  private next = 1;
  private readonly reader = new LineReader(MAX_REPLY_BYTES);
  private waiting:
    | { resolve: (r: unknown) => void; reject: (e: Error) => void; interim?: (line: unknown) => void }
    | undefined;
  /** Who waits for the pending output to reach the socket (a note before the plugin exits). */
  private written: Array<() => void> = [];
  private closed: Error | undefined;
  /** What the socket did not take yet (a large request, e.g. a CHECK's prevResult). */
  private pending: Uint8Array | undefined;
  private constructor(private sock: Sock | undefined) {}

  /** Connects; throws AgentUnavailableError when nothing listens on `path`. */
  static async open(path: string): Promise<Connection> {
    const conn = new Connection(undefined);
    try {
      conn.sock = await Bun.connect({
        unix: path,
        socket: {
          data: (_s, chunk) => conn.onData(chunk),
          drain: () => conn.flush(),
          close: () => conn.fail(new ConnectionLost("the node agent closed the connection")),
          error: (_s, err) => conn.fail(new ConnectionLost(err.message)),
        },
      });
    } catch (err) {
      throw new AgentUnavailableError(
        `cannot connect to the node agent on ${path}: ${(err as Error).message}`,
      );
    }
    return conn;
  }

  private onData(chunk: Uint8Array): void {
    try {
      for (const line of this.reader.push(chunk)) {
        const msg = JSON.parse(line) as { interim?: unknown } | null;
        if (msg && typeof msg === "object" && "interim" in msg) {
          this.waiting?.interim?.(msg);
          continue;
        }
        const w = this.waiting;
        this.waiting = undefined;
        w?.resolve(msg);
      }
    } catch (err) {
      this.fail(new ConnectionLost(`bad answer from the node agent: ${(err as Error).message}`));
    }
  }

  /** Sends what is pending; the rest waits for the socket's drain. */
  private flush(): void {
    const buf = this.pending;
    if (!buf || !this.sock) return;
    const n = this.sock.write(buf);
    this.pending = n < buf.byteLength ? buf.subarray(Math.max(0, n)) : undefined;
    if (!this.pending) for (const w of this.written.splice(0)) w();
  }

  /** Writes one request line (the previous one has been taken: requests go one at a time). */
  private send(request: Record<string, unknown>): void {
    this.pending = new TextEncoder().encode(`${JSON.stringify(request)}\n`);
    this.flush();
  }

  private fail(err: Error): void {
    this.closed ??= err;
    const w = this.waiting;
    this.waiting = undefined;
    w?.reject(err);
    for (const done of this.written.splice(0)) done();
  }

  /**
   * One request. Throws the agent's CniError as it sent it, ConnectionLost when the
   * connection broke, AgentUnavailableError on time-out or a malformed answer.
   */
  async call<M extends Method>(
    method: M,
    params: Methods[M]["params"],
    timeoutMs: number,
    /** Asks the agent for its time by kind of work (RATCHET_TRACE=1) and receives it. */
    onSteps?: (steps: StepTimes) => void,
    /** What the agent says before its answer (the method's InterimOf), once checked. */
    onInterim?: (interim: InterimOf<M>) => void,
  ): Promise<Methods[M]["result"]> {
    if (this.closed) throw this.closed;
    const id = this.next++;
    const deadline = Date.now() + timeoutMs;
    const schema = interimSchemas[method];
    const interim =
      onInterim && schema
        ? (line: unknown) => {
            const m = line as { id?: unknown; interim?: unknown };
            if (m.id !== id) return;
            const checked = v.safeParse(schema, m.interim);
            // A malformed interim line is ignored: the answer still says it all.
            if (checked.success) onInterim(checked.output);
          }
        : undefined;
    const reply = new Promise<unknown>((resolve, reject) => {
      this.waiting = { resolve, reject, ...(interim ? { interim } : {}) };
    });
    this.send({ id, method, deadline, params, ...(onSteps ? { trace: true } : {}) });
    let timer: Timer | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(new AgentUnavailableError(`the node agent did not answer ${method} within ${timeoutMs} ms`)),
        timeoutMs,
      );
    });
    try {
      const res = (await Promise.race([reply, timeout])) as Response<M>;
      if (res?.id !== id) throw new AgentUnavailableError(`answer ${res?.id} does not match request ${id}`);
      if (onSteps) {
        const steps = v.safeParse(StepTimesSchema, res.steps);
        if (steps.success) onSteps(steps.output);
      }
      if (!res.ok) throw new CniError(res.error.code, res.error.msg, res.error.details ?? "");
      const checked = v.safeParse(resultSchemas[method], res.result);
      if (!checked.success) {
        throw new CniError(
          Code.Internal,
          `the node agent's answer to ${method} is malformed: ${firstIssue(checked.issues)}`,
        );
      }
      return checked.output;
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * A note: sent, never answered. Resolves once the socket has taken the whole line (the
   * kernel delivers it after this process exits), at most `timeoutMs` later; throws only
   * when the connection is already broken.
   */
  async note<M extends NoteMethod>(
    method: M,
    params: Methods[M]["params"],
    timeoutMs: number,
  ): Promise<void> {
    if (this.closed) throw this.closed;
    this.send({ id: this.next++, method, deadline: Date.now() + timeoutMs, params, note: true });
    if (!this.pending) return;
    let timer: Timer | undefined;
    await new Promise<void>((resolve) => {
      this.written.push(resolve);
      timer = setTimeout(resolve, timeoutMs);
    });
    clearTimeout(timer);
  }

  close(): void {
    this.closed ??= new ConnectionLost("closed");
    this.sock?.end();
  }
}

/** Asks the agent serving `socket` to finish its work and exit (a foreground agent taking over). */
export async function requestDrain(socket: string): Promise<void> {
  const conn = await Connection.open(socket);
  try {
    await conn.call("drain", {}, 5000);
  } finally {
    conn.close();
  }
}
