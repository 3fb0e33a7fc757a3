// The records of a pod that goes (DEL): per pair with a peer, what the pair no longer needs,
// then the pod's endpoint, last: a crash or a failure between two transactions leaves the
// endpoint, so the runtime's retried DEL finds the pod and finishes.
import { CniError, Code } from "../cni/errors.ts";
import { podId } from "../links/spec.ts";
import { GONE } from "./decode.ts";
import { cmp, type Op, op, pack, sizeOf, txn } from "./etcd-ops.ts";
import type { LinkReads } from "./link-reads.ts";
import type { EndpointRecord } from "./records.ts";

const MAX_ATTEMPTS = 8;
const sameNamespace = (x: string, y: string) => x.split("/")[0] === y.split("/")[0];

/** etcd refuses a transaction that names one key twice. */
function unique(ops: Op[]): Op[] {
  const seen = new Set<string>();
  return ops.filter((o) => {
    const r = o.request_delete_range ?? o.request_put;
    const k = `${r?.key?.toString()}:${o.request_delete_range?.range_end?.toString() ?? ""}`;
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
}

/**
 * Removes a deregistered pod's records. Per pair: while the peer is registered, the
 * declarations and built-link chunks stay (the links come back with this pod) and only this
 * node's tunnel entries go; otherwise everything of the pair goes. A declaration into
 * another namespace goes at once (only its pod reads it back). Each peer's endpoint is
 * compared in the same transaction, so two pods deleted at once cannot both keep a pair for
 * the other (the second one retries and cleans up).
 */
export async function removeRecords(
  store: LinkReads,
  endpoint: EndpointRecord,
  rev: string,
  peers: Iterable<string>,
  declaredTo: Set<string>,
  /** Pairs the caller read already (before removing the ends): the first attempt uses them. */
  read?: Awaited<ReturnType<LinkReads["pairs"]>>,
): Promise<void> {
  const keys = store.keys;
  const id = podId(endpoint);
  const peerIds = [...new Set(peers)].filter((p) => p !== id);
  for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
    const pairs: Awaited<ReturnType<LinkReads["pairs"]>> = new Map(attempt === 0 ? read : undefined);
    const missing = peerIds.filter((p) => !pairs.has(p));
    if (missing.length > 0) for (const [p, r] of await store.pairs(id, missing)) pairs.set(p, r);
    const units = peerIds.map((p) => {
      const pair = pairs.get(p);
      const compare = [cmp.modRev(keys.endpoint(p), pair?.epRev ?? "0")];
      const writes: Op[] = [op.delPrefix(keys.tunnelPairPrefix(endpoint.node, id, p))];
      if (!sameNamespace(p, id)) writes.push(op.delPrefix(keys.declPairPrefix(id, p)));
      // Our declarations to a registered peer stay: its index keeps pointing at them.
      const keep = pair?.endpoint && sameNamespace(p, id) && declaredTo.has(p);
      writes.push(keep ? op.put(keys.peer(p, id), GONE) : op.del(keys.peer(p, id)));
      if (!pair?.endpoint) {
        writes.push(
          op.delPrefix(keys.declPairPrefix(id, p)),
          op.delPrefix(keys.declPairPrefix(p, id)),
          op.del(keys.peer(id, p)),
          op.delPrefix(keys.pairPrefix(id, p)),
        );
        for (const { chunk } of pair?.state.values() ?? []) {
          if (chunk?.block !== undefined) writes.push(op.del(keys.vni(chunk.block)));
          for (const e of Object.values(chunk?.ends ?? {}))
            writes.push(op.delPrefix(keys.tunnelPairPrefix(e.node, id, p)));
        }
      }
      return { compare, writes: unique(writes) };
    });
    const guard = [cmp.modRev(keys.endpoint(id), rev)];
    units.push({
      compare: [],
      // The agents' reports of its ends go with it (the peers' say so at their next report).
      writes: [
        op.del(keys.endpoint(id)),
        op.del(keys.nodeEndpoint(endpoint.node, id)),
        op.delPrefix(keys.observedPodPrefix(id)),
      ],
    });
    let done = true;
    for (const part of pack(units, (u) => sizeOf(u.compare, u.writes), sizeOf(guard, []))) {
      const t = await txn(store.etcd, {
        compare: [...guard, ...part.flatMap((u) => u.compare)],
        writes: part.flatMap((u) => u.writes),
      });
      if (t.succeeded) continue;
      const now = await store.own(id);
      if (!now.endpoint || now.endpoint.containerId !== endpoint.containerId) return; // a newer ADD's
      rev = now.rev;
      done = false;
      break;
    }
    if (done) return;
  }
  throw new CniError(
    Code.TryAgainLater,
    `could not remove the records of pod ${id}: etcd kept changing under us`,
  );
}
