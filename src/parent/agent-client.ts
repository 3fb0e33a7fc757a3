// The parent's side of the child protocol: connect to the child's socket, start the child
// when nothing answers, replace an older child, and turn every failure into code 11.
import { dirname, join } from "node:path";
import type { NetConf } from "../cni/config.ts";
import type { CniEnv } from "../cni/env.ts";
import { AgentUnavailableError, CniError, Code } from "../cni/errors.ts";
import type { Logger } from "../log.ts";
import { Connection, ConnectionLost } from "../rpc/connection.ts";
import type { StepTimes } from "../steps.ts";
import { NO_TRACE, type Trace } from "../trace.ts";
import type { BootNetwork, CallParams, InterimOf, Methods } from "../rpc/protocol.ts";
import { BUILD_ID, BUILD_TIME } from "../version.ts";
import type { AttachedInterface } from "../cni/result.ts";
import type { Agent, Classification } from "./classify.ts";

/** How long the parent waits for a child it started to answer. */
export const START_TIMEOUT_MS = 5000;
/** How long one request may take before the parent gives up (the runtime retries the call). */
export const REQUEST_TIMEOUT_MS = 30_000;
/** How long the parent waits for a note (booted) to reach the agent's socket. */
export const NOTE_TIMEOUT_MS = 2000;

/** The ratchet-child next to this binary, unless the config names one. */
export function childPath(conf: NetConf): string {
  return conf.child_path ?? join(dirname(process.execPath), "ratchet-child");
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Starts the child detached in its own session, its stdio on the log file, the config on stdin. */
async function startChild(conf: NetConf, takeover: boolean, log: Logger): Promise<Bun.Subprocess> {
  const path = childPath(conf);
  const fs = await import("node:fs");
  fs.mkdirSync(dirname(conf.log_file), { recursive: true, mode: 0o700 });
  const out = fs.openSync(conf.log_file, "a", 0o600);
  try {
    const proc = Bun.spawn({
      // argv0 "ratchet-child" selects child mode even when child_path is the ratchet binary itself.
      cmd: [path, "--mode=child", "--spawned", ...(takeover ? ["--takeover"] : [])],
      argv0: "ratchet-child",
      stdin: "pipe",
      stdout: out,
      stderr: out,
      detached: true,
    });
    try {
      proc.stdin.write(JSON.stringify(conf));
      await proc.stdin.end();
    } catch (err) {
      // It exited at once: another agent holds the socket lock (exit 0), which we go on to
      // talk to; the exit code tells the rest.
      if ((err as NodeJS.ErrnoException).code !== "EPIPE") throw err;
    }
    proc.unref();
    log.info("started the node agent", { child: path, childPid: proc.pid, takeover });
    return proc;
  } catch (err) {
    throw new AgentUnavailableError(`cannot start the node agent ${path}: ${(err as Error).message}`, "", {
      cause: err,
    });
  } finally {
    fs.closeSync(out);
  }
}

/** Connects to the child, starting it (or its newer replacement) when needed. */
export async function connectChild(conf: NetConf, log: Logger): Promise<Connection> {
  const socket = conf.child_socket;
  let started: Bun.Subprocess | undefined;
  let takeover = false;
  const until = Date.now() + START_TIMEOUT_MS;
  let lastError = "";
  /** When the child we started lost the socket lock (exit 0) and nobody answered since. */
  let lostAt: number | undefined;
  for (let attempt = 0; ; attempt++) {
    try {
      const conn = await Connection.open(socket);
      const hello = await conn.call("hello", {}, Math.max(500, until - Date.now()));
      if (hello.buildId === BUILD_ID || hello.buildTime >= BUILD_TIME) return conn;
      // An older binary's child: let it finish its work and go; start ours in its place.
      log.info("replacing an older node agent", { theirs: hello.buildId, ours: BUILD_ID, pid: hello.pid });
      await conn.call("drain", {}, 2000).catch(() => undefined);
      conn.close();
      takeover = true;
      started = undefined;
    } catch (err) {
      lastError = (err as Error).message;
    }
    if (!started) {
      started = await startChild(conf, takeover, log);
    } else if (started.exitCode !== null && started.exitCode !== 0) {
      throw new AgentUnavailableError(
        `the node agent exited with code ${started.exitCode} before answering on ${socket}`,
        `see ${conf.log_file}`,
      );
    } else if (started.exitCode === 0) {
      // Another child held the socket lock: it serves soon, or it was a dying one (killed,
      // its lock not yet released). If nobody answers for a while, start ours again.
      lostAt ??= Date.now();
      if (Date.now() - lostAt > 300) {
        started = undefined;
        lostAt = undefined;
      }
    }
    if (Date.now() >= until) {
      throw new AgentUnavailableError(
        `the node agent did not answer on ${socket} within ${START_TIMEOUT_MS} ms`,
        lastError,
      );
    }
    // Connecting to a unix socket costs microseconds: poll often, the agent is up in ~50 ms.
    await sleep(attempt < 50 ? 10 : 50);
  }
}

/** The Agent the CNI handlers use: each method is one request to the child. */
export class ChildAgent implements Agent {
  private conn: Connection | undefined;
  constructor(
    private readonly log: Logger,
    private readonly trace: Trace = NO_TRACE,
  ) {}

  private call<M extends "classify" | "attach" | "detach" | "check" | "status" | "gc">(
    method: M,
    params: Methods[M]["params"],
    conf: NetConf,
    onInterim?: (interim: InterimOf<M>) => void,
  ): Promise<Methods[M]["result"]> {
    const onSteps = this.trace.on
      ? (steps: StepTimes) => this.trace.steps(`agent ${method}`, steps)
      : undefined;
    return this.onAgent(method, conf, (conn) =>
      this.trace.span(`agent ${method}`, () =>
        conn.call(method, params, REQUEST_TIMEOUT_MS, onSteps, onInterim),
      ),
    );
  }

  /**
   * `send` on the connection to the agent, made when there is none. An agent that dies
   * mid-request (killed, crashed) or closed the connection drops it: a new one is made and
   * `send` runs again, once. Every request is safe to repeat (attach rebuilds, detach is
   * idempotent, a note only tells).
   */
  private async onAgent<T>(what: string, conf: NetConf, send: (conn: Connection) => Promise<T>): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      try {
        this.conn ??= await this.trace.span("agent connection", () => connectChild(conf, this.log));
        return await send(this.conn);
      } catch (err) {
        if (err instanceof CniError && !(err instanceof AgentUnavailableError)) throw err;
        this.conn?.close();
        this.conn = undefined;
        if (err instanceof ConnectionLost && attempt === 0) {
          this.log.warn("the node agent went away mid-request; asking a new one", { method: what });
          continue;
        }
        if (err instanceof AgentUnavailableError) throw err;
        throw new AgentUnavailableError(
          `the node agent failed to answer ${what}: ${(err as Error).message}`,
          "",
          { cause: err },
        );
      }
    }
  }

  private params(env: CniEnv, conf: NetConf): CallParams {
    const { args: _args, ...rest } = env;
    return { env: rest, conf };
  }

  async classify(env: CniEnv, conf: NetConf): Promise<Classification> {
    // Not started by a Kubernetes runtime: nothing to look up, never a ratchet pod.
    if (!env.pod) return { eligible: false };
    const r = await this.call("classify", this.params(env, conf), conf);
    return { eligible: r.eligible };
  }

  async attach(env: CniEnv, conf: NetConf, boot?: BootNetwork): Promise<AttachedInterface[]> {
    return (await this.call("attach", { ...this.params(env, conf), ...(boot ? { boot } : {}) }, conf))
      .interfaces;
  }

  /**
   * A note on the connection of the ADD's attach: the plugin does not wait for the agent.
   * A connection closed meanwhile (the agent closes idle ones after 5 s, a slow boot plugin
   * outlasts that) is made again.
   */
  async booted(env: CniEnv, conf: NetConf, boot: BootNetwork): Promise<void> {
    if (!env.pod) return;
    const params = { pod: { namespace: env.pod.namespace, name: env.pod.name }, boot };
    await this.onAgent("booted", conf, (conn) =>
      this.trace.span("agent booted note", () => conn.note("booted", params, NOTE_TIMEOUT_MS)),
    );
  }

  async detach(env: CniEnv, conf: NetConf, onOwned?: () => void): Promise<boolean | undefined> {
    // ratchet only attaches pods it could look up: without a pod it never had this container.
    if (!env.pod) return false;
    const r = await this.call("detach", this.params(env, conf), conf, onOwned && (() => onOwned()));
    return r.owned ?? undefined;
  }

  async check(env: CniEnv, conf: NetConf): Promise<void> {
    if (!env.pod) return;
    await this.call("check", this.params(env, conf), conf);
  }

  async status(env: CniEnv, conf: NetConf): Promise<void> {
    try {
      await this.call("status", this.params(env, conf), conf);
    } catch (err) {
      // The agent itself not answering is as much "not ready" as etcd being away.
      if (
        err instanceof AgentUnavailableError ||
        (err instanceof CniError && err.code === Code.TryAgainLater)
      )
        throw new CniError(Code.PluginNotAvailable, err.message, err.details);
      throw err;
    }
  }

  async gc(env: CniEnv, conf: NetConf, valid: Array<{ containerID: string; ifname: string }>): Promise<void> {
    await this.call("gc", { ...this.params(env, conf), valid }, conf);
  }

  close(): void {
    this.conn?.close();
  }
}
