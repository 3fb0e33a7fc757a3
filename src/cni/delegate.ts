// The one place in src/ that runs another program: a CNI plugin found in CNI_PATH by its
// `type`, with the runtime's environment, CNI_COMMAND set, and its config on stdin.
import type { PluginConf } from "./config.ts";
import { CniError, Code } from "./errors.ts";
import { show } from "./names.ts";
import { bestCommonVersion, OLDEST_VERSION, SKIPPED_WHEN_UNKNOWN, type Command } from "./versions.ts";

export interface PluginRun {
  /** The embedded config, completed (cniVersion, name, prevResult, ...). */
  conf: Record<string, unknown>;
  command: Command;
  /** The runtime's environment: passed on unchanged but for CNI_COMMAND. */
  env: Record<string, string | undefined>;
  path: readonly string[];
}

/** Finds `type` in CNI_PATH. Names with "/" never get here (the config schema rejects them). */
export function findPlugin(type: string, path: readonly string[]): string {
  if (type.includes("/") || type === "." || type === "..") {
    throw new CniError(Code.InvalidConfig, `plugin type ${show(type)} must be a plain name, without '/'`);
  }
  // Bun.which looks for an executable file, natively: node:fs would add ~6 MiB to every call.
  const file = path.length > 0 ? Bun.which(type, { PATH: path.join(":") }) : null;
  if (!file)
    throw new CniError(
      Code.DelegateFailed,
      `failed to find plugin ${show(type)} in CNI_PATH`,
      `searched: ${path.join(":")}`,
    );
  return file;
}

function pluginEnv(env: Record<string, string | undefined>, command: Command): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(env)) if (v !== undefined) out[k] = v;
  out.CNI_COMMAND = command;
  return out;
}

/**
 * Runs a plugin; returns its parsed stdout (undefined when empty). A failure keeps the
 * plugin's code and message.
 */
export async function execPlugin(run: PluginRun): Promise<unknown> {
  const type = String(run.conf.type);
  const file = findPlugin(type, run.path);
  let proc: ReturnType<typeof Bun.spawn<"pipe", "pipe", "inherit">>;
  try {
    proc = Bun.spawn({
      cmd: [file],
      env: pluginEnv(run.env, run.command),
      stdin: "pipe",
      stdout: "pipe",
      stderr: "inherit",
    });
  } catch (err) {
    throw new CniError(
      Code.DelegateFailed,
      `failed to run plugin ${show(type)} (${file}): ${(err as Error).message}`,
      "",
      { cause: err },
    );
  }
  try {
    proc.stdin.write(JSON.stringify(run.conf));
    await proc.stdin.end();
  } catch (err) {
    // A plugin may exit without reading its config (e.g. a command it does not know): its
    // exit code and output say what happened, not the broken pipe.
    if ((err as NodeJS.ErrnoException).code !== "EPIPE") throw err;
  }
  const [stdout, code] = await Promise.all([new Response(proc.stdout).text(), proc.exited]);
  let parsed: unknown;
  if (stdout.trim() !== "") {
    try {
      parsed = JSON.parse(stdout);
    } catch {
      if (code === 0)
        throw new CniError(
          Code.DecodeFailure,
          `plugin ${show(type)} ${run.command} printed something that is not JSON: ${show(stdout)}`,
        );
    }
  }
  if (code !== 0) {
    const e = parsed as { code?: unknown; msg?: unknown; details?: unknown } | undefined;
    if (e && typeof e.code === "number" && typeof e.msg === "string") {
      const details = typeof e.details === "string" && e.details ? `${e.details}; ` : "";
      throw new CniError(e.code, e.msg, `${details}from plugin ${type} ${run.command}`);
    }
    throw new CniError(
      Code.DelegateFailed,
      `plugin ${show(type)} ${run.command} failed with exit code ${code}`,
      stdout.trim().slice(0, 500),
    );
  }
  return parsed;
}

/** Asks a plugin which spec versions it supports. */
export async function pluginVersions(
  type: string,
  env: Record<string, string | undefined>,
  path: readonly string[],
): Promise<string[]> {
  const out = (await execPlugin({
    conf: { cniVersion: OLDEST_VERSION, name: "version-probe", type },
    command: "VERSION",
    env,
    path,
  })) as { supportedVersions?: unknown } | undefined;
  const list = out?.supportedVersions;
  return Array.isArray(list) ? list.filter((v): v is string => typeof v === "string") : [];
}

/**
 * Runs an embedded plugin config, filling in the top-level cniVersion and name when it lacks
 * them. When it was given our version and refuses it (code 1, e.g. a 1.0.0 plugin under a
 * 1.1.0 config), asks the plugin's VERSION and retries once with the best common version;
 * `prepare` completes the config for the version finally used (prevResult, ...).
 */
export async function delegate(
  sub: PluginConf,
  top: { cniVersion: string; name: string },
  command: Command,
  env: Record<string, string | undefined>,
  path: readonly string[],
  prepare: (conf: Record<string, unknown>, version: string) => Record<string, unknown> = (c) => c,
): Promise<{ output: unknown; version: string; skipped?: boolean }> {
  const fixed = typeof sub.cniVersion === "string" && sub.cniVersion !== "";
  let version = fixed ? (sub.cniVersion as string) : top.cniVersion;
  const make = (v: string) => prepare({ ...sub, cniVersion: v, name: sub.name ?? top.name }, v);
  if (SKIPPED_WHEN_UNKNOWN.includes(command)) {
    // A plugin none of whose versions has the command does not know it (and does not even
    // fail with code 1): the spec treats it as always ready, with nothing to collect.
    const usable = bestCommonVersion(await pluginVersions(sub.type, env, path), top.cniVersion, command);
    if (!usable) return { output: undefined, version, skipped: true };
    version = usable;
    return { output: await execPlugin({ conf: make(version), command, env, path }), version };
  }
  try {
    return { output: await execPlugin({ conf: make(version), command, env, path }), version };
  } catch (err) {
    if (fixed || !(err instanceof CniError) || err.code !== Code.IncompatibleVersion) throw err;
    const common = bestCommonVersion(await pluginVersions(sub.type, env, path), top.cniVersion, command);
    if (!common || common === version) throw err;
    version = common;
    return { output: await execPlugin({ conf: make(version), command, env, path }), version };
  }
}
