// Schemas of the protocol table's replies (src/rpc/protocol.ts): the plugin checks every
// answer of the agent against them. Kept apart from the params' schemas (schemas.ts), which
// only the agent needs: the plugin loads this file on every CNI call.
import * as v from "valibot";
import type { InterimOf, Method, Methods } from "./protocol.ts";

const Ok = v.object({ ok: v.literal(true) });

/** The agent's time by kind of work, sent back with a traced answer. */
export const StepTimesSchema = v.record(v.string(), v.tuple([v.number(), v.number()]));
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
  booted: Ok,
  detach: v.object({ owned: v.nullable(v.boolean()) }),
  check: Ok,
  status: Ok,
  gc: v.object({ removed: v.number() }),
};

/** Schemas of what a method may say before its answer (protocol.ts, InterimOf). */
export const interimSchemas: { [M in Method]?: v.GenericSchema<unknown, InterimOf<M>> } = {
  detach: v.object({ owned: v.literal(true) }),
};

/** The first problem of a failed parse, as "field: message". */
export function firstIssue(issues: [v.BaseIssue<unknown>, ...v.BaseIssue<unknown>[]]): string {
  const i = issues[0];
  const path = (i.path ?? []).map((p) => String(p.key)).join(".");
  return path ? `${path}: ${i.message}` : i.message;
}
