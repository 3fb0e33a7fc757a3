// One handler per CNI command. Config and env are already validated; the handlers decide
// which plugin serves the pod (delegate, or boot_network plus ratchet's links) and build the
// result in the requested version.
import type { NetConf, PluginConf } from "../cni/config.ts";
import { delegate } from "../cni/delegate.ts";
import type { CniEnv } from "../cni/env.ts";
import { CniError, Code } from "../cni/errors.ts";
import { appendInterfaces, emptyResult, formatResult, parseResult, type Result } from "../cni/result.ts";
import type { Command } from "../cni/versions.ts";
import type { Logger } from "../log.ts";
import type { Trace } from "../trace.ts";
import type { BootNetwork } from "../rpc/protocol.ts";
import type { Agent } from "./classify.ts";

export interface Context {
  env: CniEnv;
  /** The runtime's environment, passed on to plugins unchanged. */
  rawEnv: Record<string, string | undefined>;
  conf: NetConf;
  agent: Agent;
  log: Logger;
  /** RATCHET_TRACE=1: the time of each step on stderr. */
  trace: Trace;
}

/** Standalone: ratchet runs `delegate` itself. Chained: no delegate, another plugin ran before. */
const chained = (conf: NetConf) => conf.delegate === undefined;

function prevResult(conf: NetConf): Result | undefined {
  return conf.prevResult === undefined || conf.prevResult === null
    ? undefined
    : parseResult(conf.prevResult, "prevResult");
}

/**
 * Extra fields a plugin of `version` gets: the runtime's prevResult, runtimeConfig for its
 * capabilities, args.
 */
function forward(ctx: Context, command: Command, extra: Record<string, unknown> = {}) {
  return (conf: Record<string, unknown>, version: string): Record<string, unknown> => {
    const { prevResult: override, ...rest } = extra;
    const out = { ...conf, ...rest };
    const prev = (override as Result | undefined) ?? prevResult(ctx.conf);
    if (prev && (command === "DEL" || command === "CHECK")) out.prevResult = formatResult(prev, version);
    const caps = conf.capabilities;
    const rc = ctx.conf.runtimeConfig;
    if (caps && typeof caps === "object" && rc && typeof rc === "object") {
      const wanted = Object.entries(caps as Record<string, unknown>)
        .filter(([, on]) => on === true)
        .map(([k]) => k);
      const picked = Object.fromEntries(
        Object.entries(rc as Record<string, unknown>).filter(([k]) => wanted.includes(k)),
      );
      if (Object.keys(picked).length > 0) out.runtimeConfig = picked;
    }
    if (ctx.conf.args !== undefined && out.args === undefined) out.args = ctx.conf.args;
    return out;
  };
}

async function run(ctx: Context, sub: PluginConf, command: Command, extra?: Record<string, unknown>) {
  const top = { cniVersion: ctx.conf.cniVersion, name: ctx.conf.name };
  ctx.log.debug("running plugin", { plugin: sub.type, command, containerId: ctx.env.containerId });
  return ctx.trace.span(`plugin ${sub.type} ${command}`, () =>
    delegate(sub, top, command, ctx.rawEnv, ctx.env.path, forward(ctx, command, extra)),
  );
}

async function runAdd(ctx: Context, sub: PluginConf): Promise<Result> {
  const { output } = await run(ctx, sub, "ADD");
  return parseResult(output, `plugin ${sub.type}`);
}

/** Undoes an ADD that succeeded in a plugin when a later step failed; errors are logged, not raised. */
async function undoAdd(ctx: Context, sub: PluginConf): Promise<void> {
  try {
    await run(ctx, sub, "DEL");
  } catch (err) {
    ctx.log.warn("rollback DEL failed", {
      plugin: sub.type,
      containerId: ctx.env.containerId,
      error: (err as Error).message,
    });
  }
}

export async function cmdAdd(ctx: Context): Promise<Record<string, unknown>> {
  const { conf } = ctx;
  const prev = prevResult(conf);
  if (chained(conf) && !prev) {
    throw new CniError(
      Code.InvalidConfig,
      "invalid network configuration: field delegate: missing, and no prevResult either",
      "ratchet needs a delegate, or to be chained after a plugin that produces a result",
    );
  }
  const { eligible } = await ctx.agent.classify(ctx.env, conf);
  if (!eligible) {
    const result = chained(conf) ? (prev as Result) : await runAdd(ctx, conf.delegate as PluginConf);
    return formatResult(result, conf.cniVersion);
  }
  const boot = chained(conf) ? undefined : conf.boot_network;
  if (!boot) {
    const base = prev ?? emptyResult();
    const net = conf.network_status_annotation ? bootNetwork(base, ctx.env, conf.name) : undefined;
    const attached = await ctx.agent.attach(ctx.env, conf, net);
    return formatResult(appendInterfaces(base, attached), conf.cniVersion);
  }
  // The boot network's plugin and ratchet's links do not depend on each other (the links
  // never take CNI_IFNAME): both run at once. Whichever fails, the other is undone.
  const [booting, attaching] = await Promise.allSettled([runAdd(ctx, boot), ctx.agent.attach(ctx.env, conf)]);
  if (booting.status === "rejected") {
    if (attaching.status === "fulfilled") await undoAttach(ctx);
    throw booting.reason;
  }
  if (attaching.status === "rejected") {
    await undoAdd(ctx, boot);
    throw attaching.reason;
  }
  const base = booting.value;
  const net = conf.network_status_annotation ? bootNetwork(base, ctx.env, boot.name ?? conf.name) : undefined;
  // The annotation's default entry: best effort, the pod's network is there either way.
  if (net)
    await ctx.agent.booted(ctx.env, conf, net).catch((err: unknown) =>
      ctx.log.warn("could not pass the boot network's interface to the node agent", {
        containerId: ctx.env.containerId,
        error: (err as Error).message,
      }),
    );
  return formatResult(appendInterfaces(base, attaching.value), conf.cniVersion);
}

/** Undoes ratchet's part of an ADD whose boot network failed; errors are logged, not raised. */
async function undoAttach(ctx: Context): Promise<void> {
  try {
    await ctx.agent.detach(ctx.env, ctx.conf);
  } catch (err) {
    ctx.log.warn("rollback of the links failed", {
      containerId: ctx.env.containerId,
      error: (err as Error).message,
    });
  }
}

/**
 * The pod's interface in the boot network's (or the previous plugin's) result: the one named
 * CNI_IFNAME in the pod's netns, else the first in it. Its addresses without prefix length.
 */
export function bootNetwork(result: Result, env: CniEnv, name: string): BootNetwork | undefined {
  const inPod = (i: Result["interfaces"][number]) => i.sandbox === env.netns;
  let idx = result.interfaces.findIndex((i) => inPod(i) && i.name === env.ifname);
  if (idx < 0) idx = result.interfaces.findIndex(inPod);
  const iface = result.interfaces[idx];
  if (!iface) return undefined;
  const ips = result.ips.filter((ip) => ip.interface === idx).map((ip) => ip.address.split("/")[0] as string);
  const dns = Object.keys(result.dns).length > 0 ? { ...result.dns } : undefined;
  return {
    name,
    interface: iface.name,
    ips,
    ...(iface.mac ? { mac: iface.mac } : {}),
    ...(dns ? { dns } : {}),
  };
}

/** The plugins that may hold state for this container, for DEL, CHECK and GC. */
function servingPlugins(conf: NetConf, ratchetOwned: boolean | undefined): PluginConf[] {
  if (chained(conf)) return [];
  const delegateConf = conf.delegate as PluginConf;
  if (ratchetOwned === false || !conf.boot_network) return [delegateConf];
  if (ratchetOwned === true) return [conf.boot_network];
  // Unknown (the agent could not say): DEL both; each tolerates a container it never saw.
  const same = JSON.stringify(conf.boot_network) === JSON.stringify(delegateConf);
  return same ? [delegateConf] : [conf.boot_network, delegateConf];
}

export async function cmdDel(ctx: Context): Promise<void> {
  let owned: boolean | undefined;
  let failure: unknown;
  // The boot network's DEL, started once the agent says it attached the container: like at
  // ADD, the boot network and the links do not depend on each other, so both go at once.
  const boot = chained(ctx.conf) ? undefined : ctx.conf.boot_network;
  let early: Promise<Error | undefined> | undefined;
  const onOwned = boot
    ? () => {
        early ??= run(ctx, boot, "DEL").then(
          () => undefined,
          (err: unknown) => err as Error,
        );
      }
    : undefined;
  try {
    owned = await ctx.agent.detach(ctx.env, ctx.conf, onOwned);
  } catch (err) {
    // The plugins' DEL still runs (the pod's network is released either way); then DEL
    // reports what is left, so the runtime retries and the agent finishes it.
    failure = err;
  }
  const bootFailed = await early;
  const started = JSON.stringify(boot);
  const rest = servingPlugins(ctx.conf, owned).filter((sub) => !early || JSON.stringify(sub) !== started);
  if (failure === undefined) {
    if (bootFailed) throw bootFailed;
    for (const sub of rest) await run(ctx, sub, "DEL");
    return;
  }
  // The agent's failure is the one to report; a plugin's failure goes along in details.
  const also: string[] = [];
  if (bootFailed && boot) also.push(`${boot.type}: ${bootFailed.message}`);
  for (const sub of rest) {
    await run(ctx, sub, "DEL").catch((err: unknown) => also.push(`${sub.type}: ${(err as Error).message}`));
  }
  if (also.length > 0 && failure instanceof CniError) {
    throw new CniError(failure.code, failure.message, [failure.details, ...also].filter(Boolean).join("; "));
  }
  throw failure;
}

export async function cmdCheck(ctx: Context): Promise<void> {
  const prev = prevResult(ctx.conf);
  if (!prev) {
    throw new CniError(
      Code.InvalidConfig,
      "invalid network configuration: field prevResult: CHECK needs the result of the ADD (missing)",
    );
  }
  const { eligible } = await ctx.agent.classify(ctx.env, ctx.conf);
  if (!eligible) {
    for (const sub of servingPlugins(ctx.conf, false)) await run(ctx, sub, "CHECK");
    return;
  }
  // The boot network checks its own interfaces only: ratchet's are not its business.
  const linkNames = new Set(
    prev.interfaces
      .filter((i) => i.sandbox === ctx.env.netns && i.name !== ctx.env.ifname)
      .map((i) => i.name),
  );
  const bootPrev = withoutInterfaces(prev, linkNames);
  for (const sub of servingPlugins(ctx.conf, true)) await run(ctx, sub, "CHECK", { prevResult: bootPrev });
  await ctx.agent.check(ctx.env, ctx.conf);
}

/** A result without the named interfaces (and their addresses), indices renumbered. */
function withoutInterfaces(result: Result, names: Set<string>): Result {
  const keep = result.interfaces.map((i) => !names.has(i.name));
  const renumber = new Map<number, number>();
  result.interfaces.forEach((_, n) => {
    if (keep[n]) renumber.set(n, renumber.size);
  });
  return {
    ...result,
    interfaces: result.interfaces.filter((_, n) => keep[n]),
    ips: result.ips.flatMap((ip) =>
      ip.interface === undefined
        ? [ip]
        : renumber.has(ip.interface)
          ? [{ ...ip, interface: renumber.get(ip.interface) as number }]
          : [],
    ),
  };
}

export async function cmdStatus(ctx: Context): Promise<void> {
  const { conf } = ctx;
  await ctx.agent.status(ctx.env, conf);
  const plugins = chained(conf)
    ? []
    : [conf.delegate as PluginConf, ...(conf.boot_network ? [conf.boot_network] : [])];
  for (const sub of plugins) await run(ctx, sub, "STATUS");
}

export async function cmdGc(ctx: Context): Promise<void> {
  const { conf } = ctx;
  const valid = conf["cni.dev/valid-attachments"] ?? conf["cni.dev/attachments"];
  const extra = valid === undefined ? {} : { "cni.dev/valid-attachments": valid };
  if (Array.isArray(valid)) {
    const list = valid.filter(
      (v): v is { containerID: string; ifname: string } =>
        typeof v?.containerID === "string" && typeof v?.ifname === "string",
    );
    await ctx.agent.gc(ctx.env, conf, list);
  }
  for (const sub of servingPlugins(conf, undefined)) await run(ctx, sub, "GC", extra);
}

/** One handler per command a config may ask for; VERSION is answered before any config is read. */
export const HANDLERS: Record<Exclude<Command, "VERSION">, (ctx: Context) => Promise<unknown>> = {
  ADD: cmdAdd,
  DEL: cmdDel,
  CHECK: cmdCheck,
  STATUS: cmdStatus,
  GC: cmdGc,
};
