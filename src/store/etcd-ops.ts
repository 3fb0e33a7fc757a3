// Thin helpers over etcd's raw KV API: one transaction is one round trip. Reads are named:
// a Query hands out a Slot per read, and the result is asked by slot, never by position.
import { BrokenCircuitError, TaskCancelledError } from "cockatiel";
import {
  ClientClosedError,
  type Etcd3,
  GRPCCancelledError,
  GRPCDeadlineExceededError,
  GRPCUnavailableError,
  isRecoverableError,
} from "etcd3";
import { StoreRefusedError, StoreUnavailableError } from "../cni/errors.ts";
import { step } from "../steps.ts";

type KV = Etcd3["kv"];
type TxnRequest = Parameters<KV["txn"]>[0];
type TxnResponse = Awaited<ReturnType<KV["txn"]>>;
export type Op = NonNullable<TxnRequest["success"]>[number];
export type Compare = NonNullable<TxnRequest["compare"]>[number];
export type KeyValue = TxnResponse["responses"][number]["response_range"]["kvs"][number];

const b = (s: string) => Buffer.from(s);

/** The end of a prefix range: the prefix with its last byte incremented. */
function prefixEnd(prefix: string): Buffer {
  const end = Buffer.from(prefix);
  end[end.length - 1] = (end[end.length - 1] as number) + 1;
  return end;
}

/** etcd's defaults: --max-txn-ops (per branch and for the compares) and --max-request-bytes. */
export const MAX_TXN_OPS = 128;
export const MAX_REQUEST_BYTES = 1.5 * 1024 * 1024;
/** What ratchet puts in one request: well under the limit, for keys and gRPC framing. */
export const TXN_BYTES = 1024 * 1024;
/** Keys per page when reading a prefix, and the most one read in a transaction returns. */
export const PAGE = 256;

/** Options of a prefix read. */
export interface RangeOptions {
  keysOnly?: boolean;
  /** At most this many keys; the rest comes page by page (see rest()). */
  limit?: number;
}

export const op = {
  get: (key: string): Op => ({ request_range: { key: b(key) } }),
  prefix: (prefix: string, o: RangeOptions = {}): Op => ({
    request_range: {
      key: b(prefix),
      range_end: prefixEnd(prefix),
      ...(o.keysOnly ? { keys_only: true } : {}),
      ...(o.limit ? { limit: o.limit } : {}),
    },
  }),
  put: (key: string, value: unknown): Op => ({
    request_put: { key: b(key), value: b(typeof value === "string" ? value : JSON.stringify(value)) },
  }),
  del: (key: string): Op => ({ request_delete_range: { key: b(key) } }),
  delPrefix: (prefix: string): Op => ({
    request_delete_range: { key: b(prefix), range_end: prefixEnd(prefix) },
  }),
  /** Every key from `from` to the end of `prefix` (e.g. the chunks past a new last one). */
  delFrom: (from: string, prefix: string): Op => ({
    request_delete_range: { key: b(from), range_end: prefixEnd(prefix) },
  }),
};

/** Bytes an op adds to a request: its key, range end and value, plus framing. */
export function opBytes(x: Op | Compare): number {
  if ("target" in x) return ((x as Compare).key?.length ?? 0) + 16;
  const o = x as Op;
  const r = o.request_put ?? o.request_range ?? o.request_delete_range;
  const value = o.request_put?.value?.length ?? 0;
  const end = (o.request_range ?? o.request_delete_range)?.range_end?.length ?? 0;
  return (r?.key?.length ?? 0) + end + value + 16;
}

export const cmp = {
  /** The key does not exist. */
  absent: (key: string): Compare => ({ key: b(key), target: "Create", result: "Equal", create_revision: 0 }),
  /** The key exists. */
  present: (key: string): Compare => ({
    key: b(key),
    target: "Create",
    result: "Greater",
    create_revision: 0,
  }),
  /** The key was last written at `rev` (0: it does not exist). */
  modRev: (key: string, rev: string | number): Compare => ({
    key: b(key),
    target: "Mod",
    result: "Equal",
    mod_revision: rev,
  }),
};

/** A named read in a Query. */
export interface Slot {
  readonly query: Query;
  readonly index: number;
}

/** The reads of one branch of a transaction, each answered through its Slot. */
export class Query {
  readonly ops: Op[] = [];
  get(key: string): Slot {
    return this.add(op.get(key));
  }
  /** A prefix read; inside a transaction, give a limit and read the rest with rest(). */
  prefix(prefix: string, o: RangeOptions = {}): Slot {
    return this.add(op.prefix(prefix, o));
  }
  private add(o: Op): Slot {
    this.ops.push(o);
    return { query: this, index: this.ops.length - 1 };
  }
}

export interface Txn {
  compare?: Compare[];
  /** Read before the writes (they see the state before this transaction). */
  reads?: Query;
  writes?: Op[];
  /** Read when a compare fails. */
  otherwise?: Query;
}

export class TxnResult {
  constructor(
    readonly succeeded: boolean,
    readonly revision: string,
    private readonly ran: Query | undefined,
    private readonly responses: TxnResponse["responses"],
  ) {}
  /** Every key-value a read returned. */
  all(slot: Slot): KeyValue[] {
    if (slot.query !== this.ran) throw new Error("a read of the branch that did not run");
    return this.responses[slot.index]?.response_range?.kvs ?? [];
  }
  /** The one key-value a get returned, if the key exists. */
  one(slot: Slot): KeyValue | undefined {
    return this.all(slot)[0];
  }
  /** Whether a limited prefix read left keys out. */
  more(slot: Slot): boolean {
    if (slot.query !== this.ran) throw new Error("a read of the branch that did not run");
    return this.responses[slot.index]?.response_range?.more === true;
  }
  /** The range request a slot made. */
  request(slot: Slot): NonNullable<Op["request_range"]> {
    return slot.query.ops[slot.index]?.request_range ?? {};
  }
}

/**
 * Every key-value of a limited prefix read in a transaction: what it returned, and the
 * keys it left out, read page by page at the transaction's revision (the same snapshot).
 */
export async function rest(client: Etcd3, r: TxnResult, slot: Slot): Promise<KeyValue[]> {
  const out = [...r.all(slot)];
  if (!r.more(slot)) return out;
  const req = r.request(slot);
  const last = out[out.length - 1];
  const from = last ? Buffer.concat([last.key, Buffer.from([0])]) : (req.key as Buffer);
  const page = await scanRange(client, from, req.range_end as Buffer, {
    revision: r.revision,
    keysOnly: req.keys_only === true,
  });
  return out.concat(page.kvs);
}

/** Every key-value under `prefix`, PAGE keys per round trip, all at one revision. */
export async function scan(
  client: Etcd3,
  prefix: string,
  o: { keysOnly?: boolean; revision?: string } = {},
): Promise<{ kvs: KeyValue[]; revision: string }> {
  return scanRange(client, Buffer.from(prefix), prefixEnd(prefix), o);
}

async function scanRange(
  client: Etcd3,
  from: Buffer,
  end: Buffer,
  o: { keysOnly?: boolean; revision?: string },
): Promise<{ kvs: KeyValue[]; revision: string }> {
  const kvs: KeyValue[] = [];
  let key = from;
  let revision = o.revision;
  for (;;) {
    stats.roundTrips++;
    let res: Awaited<ReturnType<KV["range"]>>;
    const done = step("etcd");
    try {
      res = await client.kv.range({
        key,
        range_end: end,
        limit: PAGE,
        ...(revision ? { revision } : {}),
        ...(o.keysOnly ? { keys_only: true } : {}),
      });
    } catch (err) {
      throw storeError(err);
    } finally {
      done();
    }
    revision ??= String(res.header.revision);
    kvs.push(...res.kvs);
    const last = res.kvs[res.kvs.length - 1];
    if (!res.more || !last) return { kvs, revision };
    key = Buffer.concat([last.key, Buffer.from([0])]);
  }
}

/**
 * Transactions sent by this process: one round trip each (the ADD benchmark reports them),
 * and their results by kind ("ok", "unavailable", "refused"; for metrics).
 */
export const stats = { roundTrips: 0, results: new Map<string, number>() };
const tally = (result: string) => stats.results.set(result, (stats.results.get(result) ?? 0) + 1);

/**
 * Runs one transaction; etcd errors become StoreUnavailableError or StoreRefusedError. One
 * beyond etcd's default limits is a bug here, refused before it is sent.
 */
export async function txn(client: Etcd3, t: Txn): Promise<TxnResult> {
  const success = [...(t.reads?.ops ?? []), ...(t.writes ?? [])];
  const compare = t.compare ?? [];
  const failure = t.otherwise?.ops ?? [];
  const bytes = [...compare, ...success, ...failure].reduce((n, o) => n + opBytes(o), 0);
  if (Math.max(compare.length, success.length, failure.length) > MAX_TXN_OPS || bytes > MAX_REQUEST_BYTES) {
    throw new Error(
      `a transaction of ${compare.length} compares, ${success.length} + ${failure.length} operations ` +
        `and ${bytes} bytes exceeds etcd's limits (${MAX_TXN_OPS} operations, ${MAX_REQUEST_BYTES} bytes)`,
    );
  }
  let res: TxnResponse;
  stats.roundTrips++;
  const done = step("etcd");
  try {
    res = await client.kv.txn({ compare, success, failure });
  } catch (err) {
    const e = storeError(err);
    tally(e instanceof StoreUnavailableError ? "unavailable" : "refused");
    throw e;
  } finally {
    done();
  }
  tally("ok");
  return new TxnResult(
    res.succeeded,
    String(res.header.revision),
    res.succeeded ? t.reads : t.otherwise,
    res.responses,
  );
}

/** Reads in one round trip (no compare, no writes). */
export function read(client: Etcd3, q: Query): Promise<TxnResult> {
  return txn(client, { reads: q });
}

/**
 * An etcd client error as a typed store error: unavailable (connection, deadline, an open
 * circuit: worth retrying) or refused (etcd answered no).
 */
export function storeError(err: unknown): StoreUnavailableError | StoreRefusedError {
  if (err instanceof StoreUnavailableError || err instanceof StoreRefusedError) return err;
  const msg = err instanceof Error ? err.message : String(err);
  const unavailable =
    (err instanceof Error && isRecoverableError(err)) ||
    err instanceof GRPCUnavailableError ||
    err instanceof GRPCDeadlineExceededError ||
    err instanceof GRPCCancelledError ||
    err instanceof ClientClosedError ||
    err instanceof BrokenCircuitError ||
    err instanceof TaskCancelledError;
  return unavailable
    ? new StoreUnavailableError(`etcd unreachable: ${msg}`, { cause: err })
    : new StoreRefusedError(`etcd refused a request: ${msg}`, { cause: err });
}

export const keyOf = (kv: KeyValue): string => kv.key.toString();

/** What a piece of a transaction takes of etcd's limits. */
export interface TxnSize {
  compares: number;
  /** Reads and writes of the success branch. */
  ops: number;
  bytes: number;
}

export const sizeOf = (compare: Compare[], ops: Op[]): TxnSize => ({
  compares: compare.length,
  ops: ops.length,
  bytes: [...compare, ...ops].reduce((n, o) => n + opBytes(o), 0),
});

/** Room kept in every transaction for reads of the failure branch and a few fixed ops. */
export const OPS_BUDGET = MAX_TXN_OPS - 8;

/**
 * Packs units (pieces that must commit together), in order, into as few transactions as
 * etcd's default limits allow; every transaction also carries `fixed` (e.g. the guard on
 * the pod's endpoint). A unit is never split.
 */
export function pack<U>(units: U[], size: (u: U) => TxnSize, fixed: TxnSize): U[][] {
  const out: U[][] = [];
  let cur: U[] = [];
  let used = { ...fixed };
  for (const u of units) {
    const s = size(u);
    const fits =
      used.compares + s.compares <= OPS_BUDGET &&
      used.ops + s.ops <= OPS_BUDGET &&
      used.bytes + s.bytes <= TXN_BYTES;
    if (!fits && cur.length > 0) {
      out.push(cur);
      cur = [];
      used = { ...fixed };
    }
    cur.push(u);
    used = { compares: used.compares + s.compares, ops: used.ops + s.ops, bytes: used.bytes + s.bytes };
  }
  if (cur.length > 0) out.push(cur);
  return out;
}
