// Schemas of the protocol table (src/rpc/protocol.ts): the agent checks every request's
// params, the plugin every reply, so neither side trusts a cast.
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
const Call = v.object({ env: Env, conf: NetConf });
const Boot = v.object({
  name: v.string(),
  interface: v.string(),
  ips: v.array(v.string()),
  mac: v.optional(v.string()),
  dns: v.optional(v.record(v.string(), v.unknown())),
});
const Empty = v.object({});

type ParamSchemas = { [M in Method]: v.GenericSchema<unknown, Methods[M]["params"]> };
export const paramSchemas: ParamSchemas = {
  hello: Empty as v.GenericSchema<unknown, Record<string, never>>,
  drain: Empty as v.GenericSchema<unknown, Record<string, never>>,
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

const Ok = v.object({ ok: v.literal(true) });
type ResultSchemas = { [M in Method]: v.GenericSchema<unknown, Methods[M]["result"]> };
export const resultSchemas: ResultSchemas = {
  hello: v.object({ buildId: v.string(), buildTime: v.number(), version: v.string(), pid: v.number() }),
  drain: v.object({ draining: v.literal(true) }),
  classify: v.object({ eligible: v.boolean(), links: v.number() }),
  attach: v.object({
    interfaces: v.array(
      v.object({
        iface: v.object({
          name: v.string(),
          mac: v.optional(v.string()),
          sandbox: v.optional(v.string()),
          mtu: v.optional(v.number()),
        }),
        ips: v.array(v.string()),
      }),
    ),
  }),
  detach: v.object({ owned: v.nullable(v.boolean()) }),
  check: Ok,
  status: Ok,
  gc: v.object({ removed: v.number() }),
};

/** The first problem of a failed parse, as "field: message". */
export function firstIssue(issues: [v.BaseIssue<unknown>, ...v.BaseIssue<unknown>[]]): string {
  const i = issues[0];
  const path = (i.path ?? []).map((p) => String(p.key)).join(".");
  return path ? `${path}: ${i.message}` : i.message;
}
