// The CNI plugin: reads the environment and the config, runs one command, and prints its
// result or a CNI error on stdout. Logs go to the log file, never to stdout.
import { parseNetConf, type NetConf } from "../cni/config.ts";
import { parseEnv, type CniEnv } from "../cni/env.ts";
import { CniError, Code, toCniError } from "../cni/errors.ts";
import {
  LATEST_VERSION,
  requireCommandInVersion,
  requireSupportedVersion,
  SUPPORTED_VERSIONS,
} from "../cni/versions.ts";
import { Logger } from "../log.ts";
import { NO_TRACE, Trace } from "../trace.ts";
import { ChildAgent } from "./agent-client.ts";
import type { Agent } from "./classify.ts";
import { HANDLERS, type Context } from "./commands.ts";

export interface ParentIO {
  env: Record<string, string | undefined>;
  readStdin: () => Promise<string>;
  write: (s: string) => void;
  /** Where RATCHET_TRACE=1 writes the time of each step (stderr). */
  writeTrace?: (s: string) => void;
}

/** Larger configs are refused before parsing (a runtime never sends one this big). */
export const MAX_CONFIG_BYTES = 1 << 20;

/** The cniVersion the caller asked for, read leniently so even an error can be written in it. */
function requestedVersion(parsed: unknown): string {
  const v = (parsed as { cniVersion?: unknown } | undefined)?.cniVersion;
  return typeof v === "string" && v !== "" ? v : LATEST_VERSION;
}

function parseJson(text: string): unknown {
  if (Buffer.byteLength(text) > MAX_CONFIG_BYTES) {
    throw new CniError(
      Code.DecodeFailure,
      `network configuration on stdin is ${Buffer.byteLength(text)} bytes; the limit is ${MAX_CONFIG_BYTES}`,
    );
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new CniError(
      Code.DecodeFailure,
      `network configuration on stdin is not valid JSON: ${(err as Error).message}`,
    );
  }
}

export type AgentFactory = (log: Logger, trace: Trace) => Agent & { close?: () => void };

export async function runParent(
  _args: string[],
  io: ParentIO,
  makeAgent: AgentFactory = (log, trace) => new ChildAgent(log, trace),
): Promise<number> {
  const started = performance.now();
  const trace = io.env.RATCHET_TRACE === "1" && io.writeTrace ? new Trace(io.writeTrace) : NO_TRACE;
  trace.mark("parent started");
  let version = LATEST_VERSION;
  let log: Logger | undefined;
  let env: CniEnv | undefined;
  let agent: ReturnType<AgentFactory> | undefined;
  try {
    const stdin = await io.readStdin();
    let parsed: unknown;
    let parseError: unknown;
    try {
      parsed = parseJson(stdin);
      version = requestedVersion(parsed);
    } catch (err) {
      parseError = err;
    }
    env = parseEnv(io.env);
    if (env.command === "VERSION") {
      io.write(`${JSON.stringify({ cniVersion: version, supportedVersions: SUPPORTED_VERSIONS })}\n`);
      return 0;
    }
    if (parseError) throw parseError;
    const conf: NetConf = parseNetConf(parsed);
    version = conf.cniVersion;
    requireSupportedVersion(conf.cniVersion);
    requireCommandInVersion(env.command, conf.cniVersion);
    log = new Logger("parent", conf.log_level, conf.log_file);
    agent = makeAgent(log, trace);
    const ctx: Context = { env, rawEnv: io.env, conf, agent, log, trace };
    trace.mark("config and environment read");

    const result = await HANDLERS[env.command](ctx);
    trace.total(env.command);
    if (result !== undefined) io.write(`${JSON.stringify(result)}\n`);
    // Successes are debug: a passthrough pod is not news, and writing costs the parent memory.
    log.debug(`${env.command} done`, fields(env, started));
    return 0;
  } catch (err) {
    const e = toCniError(err);
    log?.error(`${env?.command ?? "command"} failed`, {
      ...fields(env, started),
      code: e.code,
      error: e.message,
      details: e.details,
    });
    io.write(`${JSON.stringify(e.toJSON(version))}\n`);
    return 1;
  } finally {
    trace.flush();
    agent?.close?.();
    log?.close();
  }
}

function fields(env: CniEnv | undefined, started: number): Record<string, unknown> {
  return {
    containerId: env?.containerId || undefined,
    ifname: env?.ifname || undefined,
    pod: env?.pod ? `${env.pod.namespace}/${env.pod.name}` : undefined,
    ms: Math.round((performance.now() - started) * 10) / 10,
  };
}
