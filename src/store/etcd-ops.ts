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

export const op = {
  get: (key: string): Op => ({ request_range: { key: b(key) } }),
  prefix: (prefix: string): Op => ({ request_range: { key: b(prefix), range_end: prefixEnd(prefix) } }),
  put: (key: string, value: unknown): Op => ({
    request_put: { key: b(key), value: b(typeof value === "string" ? value : JSON.stringify(value)) },
  }),
  del: (key: string): Op => ({ request_delete_range: { key: b(key) } }),
  delPrefix: (prefix: string): Op => ({
    request_delete_range: { key: b(prefix), range_end: prefixEnd(prefix) },
  }),
};

export const cmp = {
  /** The key does not exist. */
  absent: (key: string): Compare => ({ key: b(key), target: "Create", result: "Equal", create_revision: 0 }),
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
  prefix(prefix: string): Slot {
    return this.add(op.prefix(prefix));
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
}

/**
 * Transactions sent by this process: one round trip each (the ADD benchmark reports them),
 * and their results by kind ("ok", "unavailable", "refused"; for metrics).
 */
export const stats = { roundTrips: 0, results: new Map<string, number>() };
const tally = (result: string) => stats.results.set(result, (stats.results.get(result) ?? 0) + 1);

/** Runs one transaction; etcd errors become StoreUnavailableError or StoreRefusedError. */
export async function txn(client: Etcd3, t: Txn): Promise<TxnResult> {
  const success = [...(t.reads?.ops ?? []), ...(t.writes ?? [])];
  let res: TxnResponse;
  stats.roundTrips++;
  try {
    res = await client.kv.txn({ compare: t.compare ?? [], success, failure: t.otherwise?.ops ?? [] });
  } catch (err) {
    const e = storeError(err);
    tally(e instanceof StoreUnavailableError ? "unavailable" : "refused");
    throw e;
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
