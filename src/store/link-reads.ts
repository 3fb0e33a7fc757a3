// Reads of ratchet's state: one pod's records (DEL, CHECK), pairs' built links, a node's
// entries (reconcile) and the whole picture (`ratchet links`). Prefixes are read page by
// page at one revision; many keys are read in transactions within etcd's limits.
import type { Declaration } from "../links/planner.ts";
import { podId } from "../links/spec.ts";
import { pairLinks } from "./codec.ts";
import { type PairState, StoreBase } from "./decode.ts";
import { keyOf, PAGE, pack, Query, read, rest, scan, type Slot } from "./etcd-ops.ts";
import { pairOf } from "./keys.ts";
import {
  decodeValue,
  type EndpointRecord,
  type LinkKind,
  type Observed,
  ObservedChunkSchema,
  type PairChunk,
  type TunnelChunk,
} from "./records.ts";

const sameNamespace = (x: string, y: string) => x.split("/")[0] === y.split("/")[0];
const NO_SIZE = { compares: 0, ops: 0, bytes: 0 };

/** A built link as `ratchet links` shows it. */
export interface LinkView {
  kind: LinkKind;
  vni?: number;
  ends: PairChunk["ends"];
}

export class LinkReads extends StoreBase {
  /**
   * The pod's endpoint (with its revision), its own declarations and those of the pods of
   * its namespace that declare links to it, and every pod it has a pair with that way.
   */
  async own(id: string): Promise<{
    endpoint: EndpointRecord | undefined;
    rev: string;
    decls: Declaration[];
    peers: Set<string>;
  }> {
    const keys = this.keys;
    const q = new Query();
    const epSlot = q.get(keys.endpoint(id));
    const mineSlot = q.prefix(keys.declPrefix(id), { limit: PAGE });
    const peersSlot = q.prefix(keys.peersPrefix(id), { keysOnly: true, limit: PAGE });
    const r = await read(this.etcd, q);
    const kv = r.one(epSlot);
    const decls = this.declarationsOf(await rest(this.etcd, r, mineSlot), id);
    const peers = new Set(decls.map((d) => podId(d.spec.peer)));
    const declarers: string[] = [];
    for (const p of await rest(this.etcd, r, peersSlot)) {
      const d = keys.idAfter(keys.peersPrefix(id), keyOf(p));
      if (d && sameNamespace(d, id)) declarers.push(d);
    }
    for (const part of pack(declarers, () => ({ ...NO_SIZE, ops: 1 }), NO_SIZE)) {
      const q2 = new Query();
      const slots = part.map((d) => ({ d, slot: q2.prefix(keys.declPairPrefix(d, id), { limit: PAGE }) }));
      const r2 = await read(this.etcd, q2);
      for (const { d, slot } of slots) {
        peers.add(d);
        decls.push(...this.declarationsOf(await rest(this.etcd, r2, slot), d, id));
      }
    }
    return { endpoint: this.endpointOf(kv, id), rev: kv?.mod_revision ?? "0", decls, peers };
  }

  async endpoints(ids: string[]): Promise<Map<string, EndpointRecord>> {
    const out = new Map<string, EndpointRecord>();
    for (const part of pack(ids, () => ({ ...NO_SIZE, ops: 1 }), NO_SIZE)) {
      const q = new Query();
      const slots = part.map((id) => ({ id, slot: q.get(this.keys.endpoint(id)) }));
      const r = await read(this.etcd, q);
      for (const { id, slot } of slots) {
        const ep = this.endpointOf(r.one(slot), id);
        if (ep) out.set(id, ep);
      }
    }
    return out;
  }

  /** The built-link chunks of pod `id` with each of `peers`, and each peer's endpoint. */
  async pairs(
    id: string,
    peers: string[],
  ): Promise<Map<string, { state: PairState; endpoint: EndpointRecord | undefined; epRev: string }>> {
    const out = new Map<string, { state: PairState; endpoint: EndpointRecord | undefined; epRev: string }>();
    for (const part of pack(peers, () => ({ ...NO_SIZE, ops: 2 }), NO_SIZE)) {
      const q = new Query();
      const slots = part.map((p) => ({
        p,
        ep: q.get(this.keys.endpoint(p)),
        chunks: q.prefix(this.keys.pairPrefix(id, p), { limit: PAGE }) as Slot,
      }));
      const r = await read(this.etcd, q);
      for (const s of slots) {
        const kv = r.one(s.ep);
        out.set(s.p, {
          state: this.pairStateOf(id, s.p, await rest(this.etcd, r, s.chunks)),
          endpoint: this.endpointOf(kv, s.p),
          epRev: kv?.mod_revision ?? "0",
        });
      }
    }
    return out;
  }

  /** The links recorded as built between two pods (by key). */
  async recordedLinks(x: string, y: string): Promise<Set<string>> {
    const [a, b] = pairOf(x, y);
    const { kvs } = await scan(this.etcd, this.keys.pairPrefix(a, b));
    const out = new Set<string>();
    for (const { chunk } of this.pairStateOf(a, b, kvs).values())
      if (chunk) for (const l of pairLinks(a, b, chunk)) out.add(l.key);
    return out;
  }

  /** Everything, for `ratchet links`: every endpoint, declaration and built link, at one revision. */
  async snapshot(): Promise<{
    endpoints: Map<string, EndpointRecord>;
    decls: Declaration[];
    records: Map<string, LinkView>;
    /** "<link> <ns>/<pod>" -> what that end's node read back. */
    observed: Map<string, Observed>;
  }> {
    const keys = this.keys;
    const eps = await scan(this.etcd, keys.endpointsPrefix);
    const at = { revision: eps.revision };
    const declKvs = (await scan(this.etcd, keys.allDeclsPrefix, at)).kvs;
    const linkKvs = (await scan(this.etcd, keys.linksPrefix, at)).kvs;
    const obsKvs = (await scan(this.etcd, keys.observedPrefix, at)).kvs;
    const observed = new Map<string, Observed>();
    for (const kv of obsKvs) {
      const parsed = keys.parseObserved(keyOf(kv));
      const chunk = parsed ? decodeValue(ObservedChunkSchema, keyOf(kv), kv.value, this.bad) : undefined;
      if (!parsed || !chunk) continue;
      for (const { link, ...o } of chunk.ends) observed.set(`${link} ${parsed.id}`, o);
    }
    const endpoints = new Map<string, EndpointRecord>();
    for (const kv of eps.kvs) {
      const id = keys.idAfter(keys.endpointsPrefix, keyOf(kv));
      const ep = id ? this.endpointOf(kv, id) : undefined;
      if (ep) endpoints.set(podId(ep), ep);
    }
    const records = new Map<string, LinkView>();
    for (const kv of linkKvs) {
      const p = keys.parsePair(keys.linksPrefix, keyOf(kv));
      const chunk = p ? this.pairChunkOf(kv, p.a, p.b) : undefined;
      if (!p || !chunk) continue;
      for (const l of pairLinks(p.a, p.b, chunk))
        records.set(l.key, {
          kind: chunk.kind,
          ...(l.vni !== undefined ? { vni: l.vni } : {}),
          ends: chunk.ends,
        });
    }
    return { endpoints, decls: this.declarationsOf(declKvs), records, observed };
  }

  /** This node's endpoint index and tunnel entries, and the revision they were read at. */
  async nodeIndex(node: string): Promise<{ ids: string[]; tunnels: TunnelChunk[]; revision: string }> {
    const keys = this.keys;
    const eps = await scan(this.etcd, keys.nodeEndpointsPrefix(node), { keysOnly: true });
    const tun = await scan(this.etcd, keys.tunnelsPrefix(node), { revision: eps.revision });
    const ids = eps.kvs
      .map((kv) => keys.idAfter(keys.nodeEndpointsPrefix(node), keyOf(kv)))
      .filter((id): id is string => id !== undefined);
    const tunnels = tun.kvs.flatMap((kv) => this.tunnelChunkOf(kv, node) ?? []);
    return { ids, tunnels, revision: eps.revision };
  }
}
