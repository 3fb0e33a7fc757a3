// Thin helpers over etcd's raw KV API: one transaction is one round trip, with reads and
// writes (and nested conditional transactions) in the order given.
import type { Etcd3 } from "etcd3";
import { CniError, Code } from "../cni/errors.ts";

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
  /** A nested transaction: `then` runs only when every compare holds (etcd 3.3+). */
  txn: (compare: Compare[], then: Op[], otherwise: Op[] = []): Op => ({
    request_txn: { compare, success: then, failure: otherwise },
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

export interface TxnResult {
  succeeded: boolean;
  /** The kvs each range op returned, in op order (undefined for writes). */
  ranges: Array<KeyValue[] | undefined>;
  revision: string;
}

/** Transactions sent by this process: one round trip each (the ADD benchmark reports them). */
export const stats = { roundTrips: 0 };

/** Runs one transaction; etcd errors become code 11 (etcd unreachable) or 102 (refused). */
export async function txn(
  client: Etcd3,
  compare: Compare[],
  success: Op[],
  failure: Op[] = [],
): Promise<TxnResult> {
  let res: TxnResponse;
  stats.roundTrips++;
  try {
    res = await client.kv.txn({ compare, success, failure });
  } catch (err) {
    throw storeError(err);
  }
  return {
    succeeded: res.succeeded,
    ranges: res.responses.map((r) => r.response_range?.kvs),
    revision: String(res.header.revision),
  };
}

export function storeError(err: unknown): CniError {
  const e = err as { message?: string; name?: string };
  const msg = e.message ?? String(err);
  const unreachable =
    /UNAVAILABLE|DEADLINE_EXCEEDED|ECONNREFUSED|No connection|unreachable|timed out|GRPCConnectFailed|Circuit/i.test(
      `${e.name} ${msg}`,
    );
  return new CniError(
    unreachable ? Code.TryAgainLater : Code.Store,
    `etcd ${unreachable ? "unreachable" : "refused a request"}: ${msg}`,
    "",
    { cause: err },
  );
}

export function parse<T>(kv: KeyValue | undefined): T | undefined {
  if (!kv) return undefined;
  try {
    return JSON.parse(kv.value.toString()) as T;
  } catch {
    return undefined;
  }
}

export const keyOf = (kv: KeyValue): string => kv.key.toString();
