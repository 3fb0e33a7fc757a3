// The byte layer of traffic control: struct tcmsg, the TCA_* attributes, and the options of
// the tbf and netem qdiscs (linux/rtnetlink.h, linux/pkt_sched.h), encoded the way iproute2's
// tc (6.9 and later) encodes them: test/fixtures/qdisc holds tc's own requests, and the unit
// tests compare ours with them byte for byte. Pure: no FFI, no I/O.
import {
  AF_UNSPEC,
  Attr,
  Attrs,
  Bytes,
  LITTLE_ENDIAN,
  type NlMsg,
  type Piece,
  attrString,
  attrU64,
  viewOf,
} from "./nl.ts";

// --- linux/rtnetlink.h -----------------------------------------------------------------------
export const TCMSG_LEN = 20;
export const TCA_KIND = 1;
export const TCA_OPTIONS = 2;
// --- linux/pkt_sched.h -----------------------------------------------------------------------
export const TC_H_ROOT = 0xffffffff;
export const TC_LINKLAYER_ETHERNET = 1;
export const TCA_TBF_PARMS = 1;
export const TCA_TBF_RTAB = 2;
export const TCA_TBF_RATE64 = 4;
export const TCA_TBF_BURST = 6;
export const TCA_NETEM_CORR = 1;
export const TCA_NETEM_REORDER = 3;
export const TCA_NETEM_CORRUPT = 4;
export const TCA_NETEM_RATE = 6;
export const TCA_NETEM_RATE64 = 8;
export const TCA_NETEM_LATENCY64 = 10;
export const TCA_NETEM_JITTER64 = 11;
/** sizeof(struct tc_netem_qopt): latency, limit, loss, gap, duplicate, jitter (u32 each). */
export const TC_NETEM_QOPT_LEN = 24;
/** sizeof(struct tc_tbf_qopt): rate and peakrate (struct tc_ratespec, 12 bytes), limit, buffer, mtu. */
export const TC_TBF_QOPT_LEN = 36;
const TC_RTAB_SIZE = 1024;
const U32_MAX = 0xffffffff;
const ETH_HLEN = 14;

// The kernel's packet scheduler clock: a "tick" is 64 ns (PSCHED_SHIFT 6). /proc/net/psched
// has said so (1000, 64, 1000000) on every kernel since 2.6.31; tc reads it to get this factor.
const TICK_IN_USEC = 1000 / 64;
const NS_PER_TICK = 64;

/** struct tcmsg (20 bytes). */
export class TcMsg implements Piece {
  readonly length = TCMSG_LEN;
  constructor(
    readonly ifindex = 0,
    readonly handle = 0,
    readonly parent = 0,
    readonly family = AF_UNSPEC,
    readonly info = 0,
  ) {}
  write(view: DataView, o: number): void {
    view.setUint8(o, this.family);
    view.setUint8(o + 1, 0);
    view.setUint16(o + 2, 0, LITTLE_ENDIAN);
    view.setInt32(o + 4, this.ifindex, LITTLE_ENDIAN);
    view.setUint32(o + 8, this.handle >>> 0, LITTLE_ENDIAN);
    view.setUint32(o + 12, this.parent >>> 0, LITTLE_ENDIAN);
    view.setUint32(o + 16, this.info >>> 0, LITTLE_ENDIAN);
  }
  static parse(data: Uint8Array): TcMsg {
    if (data.byteLength < TCMSG_LEN)
      throw new RangeError(`tcmsg needs ${TCMSG_LEN} bytes, got ${data.byteLength}`);
    const v = viewOf(data);
    return new TcMsg(
      v.getInt32(4, LITTLE_ENDIAN),
      v.getUint32(8, LITTLE_ENDIAN),
      v.getUint32(12, LITTLE_ENDIAN),
      v.getUint8(0),
      v.getUint32(16, LITTLE_ENDIAN),
    );
  }
}

// --- impairments ------------------------------------------------------------------------------

/** A token bucket: the link sends at most `rateKbit` (1000 bit/s units). */
export interface TbfImpairment {
  kind: "tbf";
  rateKbit: number;
}
/** netem: delay (with jitter), random loss, duplication, corruption, reordering, a rate. */
export interface NetemImpairment {
  kind: "netem";
  delayMs?: number;
  jitterMs?: number;
  lossPercent?: number;
  duplicatePercent?: number;
  corruptPercent?: number;
  /** Needs a delay: the reordered packets are the ones sent without it. */
  reorderPercent?: number;
  rateKbit?: number;
}
/** What a root qdisc does to a link's egress, tagged by the qdisc's kind. */
export type Impairment = TbfImpairment | NetemImpairment;

/** The accepted ranges, as a user declares them. */
export const IMPAIRMENT_LIMITS = {
  delayMs: { min: 0, max: 60_000 },
  /** The kernel clamps netem's jitter to 2^31 - 1 ns; larger values would not read back. */
  jitterMs: { min: 0, max: 2147.483 },
  percent: { min: 0, max: 100 },
  rateKbit: { min: 8, max: 100_000_000 },
} as const;

/** netem's queue, in packets: tc's default when no `limit` is given. */
export const NETEM_LIMIT = 1000;
/** tbf's burst: this much traffic at the rate, and never less than one full frame. */
export const TBF_BURST_MS = 10;
/** tbf's queue: this much waiting at the rate, on top of the burst (tc's `latency`). */
export const TBF_LATENCY_MS = 25;

const PERCENT_FIELDS = ["lossPercent", "duplicatePercent", "corruptPercent", "reorderPercent"] as const;
const TIME_FIELDS = ["delayMs", "jitterMs"] as const;

function rangeProblem(
  field: string,
  value: unknown,
  min: number,
  max: number,
  unit: string,
): string | undefined {
  if (typeof value !== "number" || !Number.isFinite(value) || value < min || value > max)
    return `${field} ${JSON.stringify(value)}: must be a number ${min}..${max}${unit}`;
  return undefined;
}

/**
 * What is wrong with an impairment (naming the field, the value and the problem), or
 * undefined when the kernel can be asked for it as it is.
 */
export function impairmentProblem(imp: Impairment): string | undefined {
  const kind = (imp as { kind: unknown }).kind;
  if (kind === "tbf") {
    const p = rangeProblem("tbf rateKbit", imp.rateKbit, 8, IMPAIRMENT_LIMITS.rateKbit.max, " kbit/s");
    if (p) return p;
    return Number.isInteger(imp.rateKbit)
      ? undefined
      : `tbf rateKbit ${imp.rateKbit}: must be a whole number`;
  }
  if (kind !== "netem") return `kind ${JSON.stringify(kind)}: must be "tbf" or "netem"`;
  const n = imp as NetemImpairment;
  for (const f of TIME_FIELDS) {
    const v = n[f];
    if (v === undefined) continue;
    const p = rangeProblem(`netem ${f}`, v, 0, IMPAIRMENT_LIMITS[f].max, " ms");
    if (p) return p;
    if (Math.abs(v * 1000 - Math.round(v * 1000)) > 1e-6)
      return `netem ${f} ${v}: finer than 1 microsecond (0.001 ms)`;
  }
  for (const f of PERCENT_FIELDS) {
    const p = n[f] === undefined ? undefined : rangeProblem(`netem ${f}`, n[f], 0, 100, " %");
    if (p) return p;
  }
  if (n.rateKbit !== undefined) {
    const p = rangeProblem("netem rateKbit", n.rateKbit, 8, IMPAIRMENT_LIMITS.rateKbit.max, " kbit/s");
    if (p) return p;
    if (!Number.isInteger(n.rateKbit)) return `netem rateKbit ${n.rateKbit}: must be a whole number`;
  }
  if (percentToU32(n.reorderPercent ?? 0) !== 0 && !(nsOf(n.delayMs ?? 0) > 0n))
    return (
      `netem reorderPercent ${n.reorderPercent}: needs a delayMs above 0 ` +
      "(reordered packets are the ones sent without the delay)"
    );
  return undefined;
}

// rint() of C: to nearest, ties to even, as tc rounds a probability.
function rint(x: number): number {
  const f = Math.floor(x);
  const d = x - f;
  if (d !== 0.5) return d < 0.5 ? f : f + 1;
  return f % 2 === 0 ? f : f + 1;
}

/** A percentage as the kernel's probability: 0 = never, 2^32-1 = always (tc's scaling). */
export function percentToU32(percent: number): number {
  return rint((percent / 100) * U32_MAX);
}

/**
 * A kernel probability as a percentage: the shortest decimal that scales back to the same
 * value, so a declared 0.5 reads back as 0.5 and not 0.50000000058.
 */
export function u32ToPercent(raw: number): number {
  const exact = (raw / U32_MAX) * 100;
  for (let digits = 0; digits <= 12; digits++) {
    const candidate = Number(exact.toFixed(digits));
    if (percentToU32(candidate) === raw) return candidate;
  }
  return exact;
}

function nsOf(ms: number): bigint {
  return BigInt(Math.round(ms * 1000)) * 1000n;
}

/** kbit/s (1000 bit/s) to the bytes per second of tc_ratespec and TCA_*_RATE64. */
function bytesPerSecond(kbit: number): number {
  return kbit * 125;
}

/** tc_calc_xmittime(): the ticks it takes to send `size` bytes at `rate` bytes/s, rounded up. */
function xmitTicks(rate: number, size: number): number {
  return Math.ceil(1e6 * (size / rate) * TICK_IN_USEC) >>> 0;
}

/**
 * tbf's burst and queue limit (bytes) for a rate and the link's MTU. tc wants both spelled
 * out; these are `burst B latency 25ms` in tc's terms, with B the larger of 10 ms of traffic
 * at the rate and one full Ethernet frame (a frame larger than the burst could never pass).
 * The limit is tc's own formula for `latency`: rate * latency + burst.
 */
export function tbfSizes(rateKbit: number, mtu: number): { burst: number; limit: number } {
  const rate = bytesPerSecond(rateKbit);
  const burst = Math.max(mtu + ETH_HLEN, Math.ceil((rate * TBF_BURST_MS) / 1000));
  const limit = Math.trunc((rate * (TBF_LATENCY_MS * 1000)) / 1e6 + burst);
  return { burst, limit };
}

function tbfOptions(imp: TbfImpairment, mtu: number): Attr {
  const rate64 = bytesPerSecond(imp.rateKbit);
  const rate = Math.min(rate64, U32_MAX);
  const { burst, limit } = tbfSizes(imp.rateKbit, mtu);
  // struct tc_ratespec as tc_calc_rtable() leaves it: cells of 8 bytes (for its default
  // 2047-byte MTU), cell_align -1, Ethernet link layer.
  const cellLog = 3;
  const qopt = new Uint8Array(TC_TBF_QOPT_LEN);
  const v = viewOf(qopt);
  v.setUint8(0, cellLog);
  v.setUint8(1, TC_LINKLAYER_ETHERNET);
  v.setInt16(4, -1, LITTLE_ENDIAN);
  v.setUint32(8, rate, LITTLE_ENDIAN);
  v.setUint32(24, limit, LITTLE_ENDIAN);
  v.setUint32(28, xmitTicks(rate, burst), LITTLE_ENDIAN);
  // The rate table: kernels since 3.13 compute times themselves (it only tells them the link
  // layer when linklayer is 0), older ones refuse a tbf without it; tc always sends it.
  const rtab = new Uint8Array(TC_RTAB_SIZE);
  const rv = viewOf(rtab);
  for (let i = 0; i < 256; i++) rv.setUint32(i * 4, xmitTicks(rate, (i + 1) << cellLog), LITTLE_ENDIAN);
  const options = new Attr(TCA_OPTIONS);
  options.add(TCA_TBF_PARMS, new Bytes(qopt));
  options.u32(TCA_TBF_BURST, burst);
  if (rate64 > U32_MAX) options.add(attrU64(TCA_TBF_RATE64, BigInt(rate64)));
  options.add(TCA_TBF_RTAB, new Bytes(rtab));
  return options;
}

function pair(first: number, second = 0): Bytes {
  const b = new Uint8Array(8);
  viewOf(b).setUint32(0, first, LITTLE_ENDIAN);
  viewOf(b).setUint32(4, second, LITTLE_ENDIAN);
  return new Bytes(b);
}

function netemOptions(imp: NetemImpairment): Attr {
  const reorder = percentToU32(imp.reorderPercent ?? 0);
  // TCA_OPTIONS of netem is not a plain nest: struct tc_netem_qopt, then attributes.
  // Delay and jitter go in TCA_NETEM_LATENCY64/JITTER64 (ns); the qopt's own fields, in
  // 64 ns ticks, stay 0 as tc >= 6.9 leaves them (the kernel reads both, the 64-bit last).
  const qopt = new Uint8Array(TC_NETEM_QOPT_LEN);
  const v = viewOf(qopt);
  v.setUint32(4, NETEM_LIMIT, LITTLE_ENDIAN);
  v.setUint32(8, percentToU32(imp.lossPercent ?? 0), LITTLE_ENDIAN);
  v.setUint32(12, reorder === 0 ? 0 : 1, LITTLE_ENDIAN); // gap 1: any packet may be reordered
  v.setUint32(16, percentToU32(imp.duplicatePercent ?? 0), LITTLE_ENDIAN);
  const options = new Attr(TCA_OPTIONS, new Bytes(qopt));
  // A jitter needs a delay to vary (tc cannot say one without the other): 0 when not given.
  if (imp.delayMs !== undefined || imp.jitterMs !== undefined)
    options.add(attrU64(TCA_NETEM_LATENCY64, nsOf(imp.delayMs ?? 0)));
  if (imp.jitterMs !== undefined) options.add(attrU64(TCA_NETEM_JITTER64, nsOf(imp.jitterMs)));
  // A change of an existing netem keeps every option whose attribute is absent (correlations,
  // reorder, corrupt, rate), so they are always sent, as 0 when not declared: the kernel then
  // holds exactly the declaration, whatever it held before.
  options.add(TCA_NETEM_CORR, new Bytes(new Uint8Array(12))); // struct tc_netem_corr: delay, loss, dup
  options.add(TCA_NETEM_REORDER, pair(reorder));
  options.add(TCA_NETEM_CORRUPT, pair(percentToU32(imp.corruptPercent ?? 0)));
  const rate64 = bytesPerSecond(imp.rateKbit ?? 0);
  if (rate64 > U32_MAX) options.add(attrU64(TCA_NETEM_RATE64, BigInt(rate64)));
  // struct tc_netem_rate: rate (0 = no limit), packet_overhead, cell_size, cell_overhead
  const rate = new Uint8Array(16);
  viewOf(rate).setUint32(0, Math.min(rate64, U32_MAX), LITTLE_ENDIAN);
  options.add(TCA_NETEM_RATE, new Bytes(rate));
  return options;
}

/**
 * The attributes of an RTM_NEWQDISC for an impairment (TCA_KIND, TCA_OPTIONS). `mtu` is the
 * link's, for tbf's burst. Throws RangeError when impairmentProblem() finds a problem.
 */
export function qdiscAttrs(imp: Impairment, mtu: number): Attr[] {
  const problem = impairmentProblem(imp);
  if (problem) throw new RangeError(problem);
  const options = imp.kind === "tbf" ? tbfOptions(imp, mtu) : netemOptions(imp);
  return [attrString(TCA_KIND, imp.kind), options];
}

// --- decoding -----------------------------------------------------------------------------------

function u32At(d: Uint8Array, offset: number): number {
  return viewOf(d).getUint32(offset, LITTLE_ENDIAN);
}

function decodeTbf(options: Uint8Array): TbfImpairment {
  const attrs = Attrs.parse(options);
  const parms = attrs.get(TCA_TBF_PARMS);
  if (parms === undefined || parms.byteLength < TC_TBF_QOPT_LEN)
    throw new RangeError(`tbf options without a ${TC_TBF_QOPT_LEN}-byte TCA_TBF_PARMS`);
  const rate = Number(attrs.u64(TCA_TBF_RATE64) ?? BigInt(u32At(parms, 8)));
  return { kind: "tbf", rateKbit: rate / 125 };
}

function decodeNetem(options: Uint8Array): NetemImpairment {
  if (options.byteLength < TC_NETEM_QOPT_LEN)
    throw new RangeError(`netem options need ${TC_NETEM_QOPT_LEN} bytes, got ${options.byteLength}`);
  const attrs = Attrs.parse(options.subarray(TC_NETEM_QOPT_LEN));
  const out: NetemImpairment = { kind: "netem" };
  // The 64-bit times are signed ns; older senders leave only the qopt's ticks.
  const time = (attr: number, ticksAt: number): number => {
    const ns64 = attrs.u64(attr);
    const ns = ns64 === undefined ? u32At(options, ticksAt) * NS_PER_TICK : Number(BigInt.asIntN(64, ns64));
    return ns / 1e6;
  };
  const delay = time(TCA_NETEM_LATENCY64, 0);
  if (delay !== 0) out.delayMs = delay;
  const jitter = time(TCA_NETEM_JITTER64, 20);
  if (jitter !== 0) out.jitterMs = jitter;
  const probability = (raw: number | undefined, field: (typeof PERCENT_FIELDS)[number]) => {
    if (raw) out[field] = u32ToPercent(raw);
  };
  probability(u32At(options, 8), "lossPercent");
  probability(u32At(options, 16), "duplicatePercent");
  const first = (attr: number) => {
    const d = attrs.get(attr);
    if (d !== undefined && d.byteLength < 4) throw new RangeError(`netem attribute ${attr} too short`);
    return d === undefined ? undefined : u32At(d, 0);
  };
  probability(first(TCA_NETEM_CORRUPT), "corruptPercent");
  probability(first(TCA_NETEM_REORDER), "reorderPercent");
  const rate = Number(attrs.u64(TCA_NETEM_RATE64) ?? BigInt(first(TCA_NETEM_RATE) ?? 0));
  if (rate !== 0) out.rateKbit = rate / 125;
  return out;
}

/**
 * The impairment a qdisc's TCA_OPTIONS describe, for kinds tbf and netem (undefined for any
 * other kind). Zero-valued netem fields are left out, as a declaration would leave them.
 */
export function decodeImpairment(kind: string, options: Uint8Array | undefined): Impairment | undefined {
  if (kind !== "tbf" && kind !== "netem") return undefined;
  if (options === undefined) throw new RangeError(`${kind} qdisc without TCA_OPTIONS`);
  return kind === "tbf" ? decodeTbf(options) : decodeNetem(options);
}

/** A qdisc as the kernel reports it (RTM_NEWQDISC, from a dump). */
export interface Qdisc {
  ifindex: number;
  /** tcm_handle, major:minor in 16 bits each; 0 for a default qdisc the kernel made itself. */
  handle: number;
  /** tcm_parent: TC_H_ROOT for a link's root qdisc. */
  parent: number;
  /** TCA_KIND: "tbf", "netem", "noqueue", "fq_codel", ... */
  kind: string;
  /** For tbf and netem, what the kernel holds, in the terms of a declaration. */
  impairment: Impairment | undefined;
}

export function decodeQdisc(m: NlMsg): Qdisc {
  const hdr = TcMsg.parse(m.payload);
  const attrs = Attrs.parse(m.payload.subarray(TCMSG_LEN));
  const kind = attrs.str(TCA_KIND) ?? "";
  return {
    ifindex: hdr.ifindex,
    handle: hdr.handle,
    parent: hdr.parent,
    kind,
    impairment: decodeImpairment(kind, attrs.get(TCA_OPTIONS)),
  };
}

/**
 * Whether two impairments ask the kernel for the same thing: equal once encoded (so an
 * absent netem field equals 0, and percentages equal at the kernel's resolution).
 */
export function sameImpairment(a: Impairment | undefined, b: Impairment | undefined): boolean {
  if (a === undefined || b === undefined) return a === b;
  if (a.kind !== b.kind) return false;
  if (a.kind === "tbf") return b.kind === "tbf" && a.rateKbit === b.rateKbit;
  const n = b as NetemImpairment;
  for (const f of TIME_FIELDS) if (nsOf(a[f] ?? 0) !== nsOf(n[f] ?? 0)) return false;
  for (const f of PERCENT_FIELDS) if (percentToU32(a[f] ?? 0) !== percentToU32(n[f] ?? 0)) return false;
  return (a.rateKbit ?? 0) === (n.rateKbit ?? 0);
}
