// A link end's impairment as pods declare it (the `netem` fields of the ratchet/links
// annotation), and what it becomes in the kernel: rate alone is a tbf root qdisc, anything
// else one netem root qdisc (with its own rate), nothing at all the kernel's default qdisc.
import * as v from "valibot";
import { type Impairment, IMPAIRMENT_LIMITS } from "../netlink/index.ts";

const num = (min: number, max: number, extra = "") =>
  v.pipe(
    v.number("must be a number"),
    v.check((n) => Number.isFinite(n) && n >= min && n <= max, `must be ${min}..${max}${extra}`),
  );
const percent = num(0, 100);

/** The declared form: every field optional; {} means no impairment. */
export const NetemSchema = v.pipe(
  v.strictObject({
    delay_ms: v.optional(
      v.pipe(
        num(IMPAIRMENT_LIMITS.delayMs.min, IMPAIRMENT_LIMITS.delayMs.max),
        v.check(
          (n) => Math.abs(n * 1000 - Math.round(n * 1000)) < 1e-6,
          "must be a multiple of 0.001 (1 us)",
        ),
      ),
    ),
    jitter_ms: v.optional(num(IMPAIRMENT_LIMITS.jitterMs.min, IMPAIRMENT_LIMITS.jitterMs.max)),
    loss_percent: v.optional(percent),
    duplicate_percent: v.optional(percent),
    corrupt_percent: v.optional(percent),
    reorder_percent: v.optional(percent),
    rate_kbit: v.optional(
      v.pipe(
        num(IMPAIRMENT_LIMITS.rateKbit.min, IMPAIRMENT_LIMITS.rateKbit.max),
        v.integer("must be a whole number"),
      ),
    ),
  }),
  v.check((n) => n.jitter_ms === undefined || n.delay_ms !== undefined, "jitter_ms needs delay_ms"),
  v.check(
    (n) => n.reorder_percent === undefined || n.delay_ms !== undefined,
    "reorder_percent needs delay_ms",
  ),
);
export type Netem = v.InferOutput<typeof NetemSchema>;

export const LINK_STATES = ["up", "down"] as const;
export type LinkState = (typeof LINK_STATES)[number];

/** What the kernel should hold for a declaration: a qdisc, or none (undefined). */
export function toImpairment(n: Netem | undefined): Impairment | undefined {
  if (!n) return undefined;
  const keys = Object.keys(n).filter((k) => n[k as keyof Netem] !== undefined);
  if (keys.length === 0) return undefined;
  if (keys.length === 1 && n.rate_kbit !== undefined) return { kind: "tbf", rateKbit: n.rate_kbit };
  const out: Impairment = { kind: "netem" };
  if (n.delay_ms !== undefined) out.delayMs = n.delay_ms;
  if (n.jitter_ms !== undefined) out.jitterMs = n.jitter_ms;
  if (n.loss_percent !== undefined) out.lossPercent = n.loss_percent;
  if (n.duplicate_percent !== undefined) out.duplicatePercent = n.duplicate_percent;
  if (n.corrupt_percent !== undefined) out.corruptPercent = n.corrupt_percent;
  if (n.reorder_percent !== undefined) out.reorderPercent = n.reorder_percent;
  if (n.rate_kbit !== undefined) out.rateKbit = n.rate_kbit;
  return out;
}

/** The declared form of what the kernel holds (for `ratchet links` and CHECK messages). */
export function fromImpairment(i: Impairment | undefined): Netem {
  if (!i) return {};
  if (i.kind === "tbf") return { rate_kbit: i.rateKbit };
  const out: Netem = {};
  if (i.delayMs) out.delay_ms = i.delayMs;
  if (i.jitterMs) out.jitter_ms = i.jitterMs;
  if (i.lossPercent) out.loss_percent = i.lossPercent;
  if (i.duplicatePercent) out.duplicate_percent = i.duplicatePercent;
  if (i.corruptPercent) out.corrupt_percent = i.corruptPercent;
  if (i.reorderPercent) out.reorder_percent = i.reorderPercent;
  if (i.rateKbit) out.rate_kbit = i.rateKbit;
  return out;
}

/** Equal declarations (absent fields and {} are "none"). */
export function sameNetem(a: Netem | undefined, b: Netem | undefined): boolean {
  return JSON.stringify(canonical(a)) === JSON.stringify(canonical(b));
}

function canonical(n: Netem | undefined): Array<[string, number]> {
  return Object.entries(n ?? {})
    .filter(([, x]) => x !== undefined)
    .sort(([x], [y]) => x.localeCompare(y)) as Array<[string, number]>;
}
