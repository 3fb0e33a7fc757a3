// Schemas of the protocol table's params (src/rpc/protocol.ts): the agent checks every
// request, so it trusts no cast. The replies' schemas, which the plugin checks, are in
// results.ts: the plugin loads only those.
import * as v from "valibot";
import { NetConf } from "../cni/config.ts";
import { COMMANDS } from "../cni/versions.ts";
import { containerIdProblem, interfaceNameProblem, namespaceProblem, podNameProblem } from "../cni/names.ts";
import type { Method, Methods } from "./protocol.ts";

const valid = (problem: (s: string) => string | undefined, what: string) =>
  v.pipe(
    v.string(`${what} must be a string`),
    v.check(
      (s) => s === "" || problem(s) === undefined,
      (i) => `${what} ${JSON.stringify(i.input)} is not valid`,
    ),
  );

const Env = v.object({
  command: v.picklist(COMMANDS),
  containerId: valid(containerIdProblem, "containerId"),
  netns: v.pipe(
    v.string(),
    v.check((p) => p === "" || (p.startsWith("/") && !p.includes("\0")), "netns must be an absolute path"),
  ),
  ifname: valid(interfaceNameProblem, "ifname"),
  path: v.array(v.string()),
  pod: v.optional(
    v.object({
      namespace: valid(namespaceProblem, "pod namespace"),
      name: valid(podNameProblem, "pod name"),
      uid: v.optional(v.string()),
      infraContainerId: v.optional(v.string()),
    }),
  ),
});
const Boot = v.object({
  name: v.string(),
  interface: v.string(),
  ips: v.array(v.string()),
  mac: v.optional(v.string()),
  dns: v.optional(v.record(v.string(), v.unknown())),
});
const Empty = v.object({});

/** The params of the methods that carry a CNI call (its env and config), `conf` checking the config. */
function callSchemas<C extends v.GenericSchema>(conf: C) {
  const Call = v.object({ env: Env, conf });
  return {
    classify: Call,
    attach: v.object({ ...Call.entries, boot: v.optional(Boot) }),
    detach: Call,
    check: Call,
    status: Call,
    gc: v.object({
      ...Call.entries,
      valid: v.array(v.object({ containerID: v.string(), ifname: v.string() })),
    }),
  };
}
/** The same with the config left unchecked: checkParams checks it once per distinct config. */
const withAnyConf: Partial<Record<Method, v.GenericSchema>> = callSchemas(v.unknown());

type ParamSchemas = { [M in Method]: v.GenericSchema<unknown, Methods[M]["params"]> };
export const paramSchemas: ParamSchemas = {
  hello: Empty as v.GenericSchema<unknown, Record<string, never>>,
  drain: Empty as v.GenericSchema<unknown, Record<string, never>>,
  booted: v.object({
    pod: v.object({
      namespace: valid(namespaceProblem, "pod namespace"),
      name: valid(podNameProblem, "pod name"),
    }),
    boot: Boot,
  }),
  ...callSchemas(NetConf),
};

/** Configs checked already, by their JSON (a node has one or a few). */
const confsSeen = new Map<string, v.InferOutput<typeof NetConf>>();
const CONFS_KEPT = 16;
/** A config carrying a large prevResult (a CHECK or DEL of a big pod) is checked, not kept. */
const CONF_KEPT_BYTES = 16 * 1024;

type Checked<M extends Method> = v.SafeParseResult<v.GenericSchema<unknown, Methods[M]["params"]>>;

/**
 * A request's params, checked: every request of a node carries the same config, so a config
 * checked once (by its exact JSON) is not checked again; the rest always is.
 */
export function checkParams<M extends Method>(method: M, params: unknown): Checked<M> {
  const lenient = withAnyConf[method];
  const conf = (params as { conf?: unknown } | null)?.conf;
  const key = lenient && conf !== undefined ? JSON.stringify(conf) : undefined;
  const seen = key === undefined ? undefined : confsSeen.get(key);
  if (!lenient || !seen) {
    const full = v.safeParse(paramSchemas[method], params);
    if (full.success && key !== undefined && key.length <= CONF_KEPT_BYTES) {
      if (confsSeen.size >= CONFS_KEPT) confsSeen.delete(confsSeen.keys().next().value as string);
      confsSeen.set(key, (full.output as { conf: v.InferOutput<typeof NetConf> }).conf);
    }
    return full;
  }
  const rest = v.safeParse(lenient, params);
  if (!rest.success) return rest as Checked<M>;
  return { ...rest, output: { ...(rest.output as object), conf: seen } } as Checked<M>;
}
