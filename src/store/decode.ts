// Reading ratchet's values back from etcd: every value passes its schema and is checked
// against the key it was found under; a value that fails is reported once and ignored.
import type { Etcd3 } from "etcd3";
import type { Declaration } from "../links/planner.ts";
import { podId } from "../links/spec.ts";
import { fromDeclChunk } from "./codec.ts";
import { type KeyValue, keyOf } from "./etcd-ops.ts";
import type { Keys } from "./keys.ts";
import {
  type BadRecords,
  DeclChunkSchema,
  decodeValue,
  type EndpointRecord,
  EndpointSchema,
  type PairChunk,
  PairChunkSchema,
  type TunnelChunk,
  TunnelChunkSchema,
} from "./records.ts";

/** The chunks of a pair as read: by chunk number, the record (undefined when bad) and its revision. */
export type PairState = Map<number, { chunk: PairChunk | undefined; rev: string }>;

/**
 * The value of peers/<pod>/<declarer> once the declarer is gone while its declarations to
 * the pod stay (the pod is registered): so the pod's own DEL still finds and removes them.
 */
export const GONE = "gone";

export class StoreBase {
  constructor(
    readonly etcd: Etcd3,
    readonly keys: Keys,
    protected readonly bad: BadRecords,
  ) {}

  /** The declarations in `kvs` (chunks under decl/<declarer>/<peer>/), each checked against its key. */
  declarationsOf(kvs: KeyValue[], declarer?: string, peer?: string): Declaration[] {
    const out: Declaration[] = [];
    for (const kv of kvs) {
      const key = keyOf(kv);
      const parsed = this.keys.parseDecl(key);
      if (!parsed || (declarer && parsed.id !== declarer) || (peer && parsed.peer !== peer)) continue;
      const chunk = decodeValue(DeclChunkSchema, key, kv.value, this.bad);
      if (chunk) out.push(...fromDeclChunk(parsed.id, parsed.peer, chunk));
    }
    return out;
  }

  endpointOf(kv: KeyValue | undefined, id?: string): EndpointRecord | undefined {
    if (!kv) return undefined;
    const ep = decodeValue(EndpointSchema, keyOf(kv), kv.value, this.bad);
    if (ep && id !== undefined && podId(ep) !== id) {
      this.bad.note(keyOf(kv), `names pod ${podId(ep)}, not ${id}`);
      return undefined;
    }
    return ep;
  }

  /**
   * An entry under peers/<pod>/<declarer>: the declarer's endpoint while it is registered,
   * null once it is gone and its declarations stay (undefined: a bad value).
   */
  peerEntryOf(kv: KeyValue, declarer: string): EndpointRecord | null | undefined {
    if (kv.value.toString() === GONE) return null;
    return this.endpointOf(kv, declarer);
  }

  /** A pair chunk of pods x and y, checked against its key (its ends are exactly the pair). */
  pairChunkOf(kv: KeyValue | undefined, x: string, y: string): PairChunk | undefined {
    if (!kv) return undefined;
    const chunk = decodeValue(PairChunkSchema, keyOf(kv), kv.value, this.bad);
    if (!chunk) return undefined;
    const ends = Object.keys(chunk.ends).sort();
    if (ends.join(" ") !== [...new Set([x, y])].sort().join(" ")) {
      this.bad.note(keyOf(kv), `is a chunk of ${ends.join(" and ")}, not of ${x} and ${y}`);
      return undefined;
    }
    return chunk;
  }

  pairStateOf(x: string, y: string, kvs: KeyValue[]): PairState {
    const out: PairState = new Map();
    for (const kv of kvs) {
      const parsed = this.keys.parsePair(this.keys.linksPrefix, keyOf(kv));
      if (!parsed) continue;
      out.set(parsed.chunk, { chunk: this.pairChunkOf(kv, x, y), rev: kv.mod_revision });
    }
    return out;
  }

  /** A tunnel chunk under nodes/<node>/links/, checked against its key. */
  tunnelChunkOf(kv: KeyValue, node: string): TunnelChunk | undefined {
    const key = keyOf(kv);
    const parsed = this.keys.parsePair(this.keys.tunnelsPrefix(node), key);
    if (!parsed) {
      this.bad.note(key, "is not a tunnel entry key");
      return undefined;
    }
    const t = decodeValue(TunnelChunkSchema, key, kv.value, this.bad);
    if (t && t.pod !== parsed.a && t.pod !== parsed.b) {
      this.bad.note(key, `is an entry of pod ${t.pod}, not of ${parsed.a} or ${parsed.b}`);
      return undefined;
    }
    return t;
  }
}
