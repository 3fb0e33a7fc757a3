// ratchet's state in etcd: every key, value check and transaction of linking lives in
// src/store, and each operation returns named results. The rules (who builds, consent) are
// the planner's. This file: the writes of an ADD (reads: link-reads.ts, decode.ts).
//
// Scale: a pod's links are stored in chunks per pair of pods (keys.ts), and every
// transaction stays within etcd's defaults (128 operations, 1.5 MiB): an operation on many
// links is cut into units that must commit together, packed into as few transactions as fit,
// run in an order that leaves a crash between two of them recoverable:
//  - register: the endpoint and the first peers' declarations, then the other peers'; each
//    peer's declarations, index entry and reads go in one transaction. A crash leaves a
//    registered pod with part of its declarations: the ADD failed, and the runtime's retry
//    rewrites them all, or its DEL removes them all (by prefix).
//  - commit (link-commit.ts): one unit per pair chunk (its record, VNI block and tunnel entries). A crash
//    leaves some chunks recorded whose links were not built: the failed ADD's retry rebuilds
//    them (comparing the revisions it reads), its DEL removes them with the pair.
//  - removeRecords (link-removal.ts): the pairs first, the endpoint last, so a retried DEL
//    still finds the pod and finishes.
import type { Etcd3 } from "etcd3";
import type { Build, BuiltLink, Declaration } from "../links/planner.ts";
import { type LinkSpec, podId } from "../links/spec.ts";
import { chunked, pairLinks, toDeclChunks } from "./codec.ts";
import {
  cmp,
  keyOf,
  OPS_BUDGET,
  type Op,
  op,
  PAGE,
  pack,
  Query,
  rest,
  type Slot,
  sizeOf,
  txn,
} from "./etcd-ops.ts";
import { Keys, OBSERVED_CHUNK, VNI_BLOCKS } from "./keys.ts";
import type { PairState } from "./decode.ts";
import { LinkReads } from "./link-reads.ts";
import { commitLinks } from "./link-commit.ts";
import { removeRecords } from "./link-removal.ts";
import type { BadRecords, EndpointRecord, Observed } from "./records.ts";

/** What one registration saw, besides writing the pod's endpoint and declarations. */
export interface Registration {
  /** The revision of the endpoint's write: later writes compare it (a newer ADD wins). */
  rev: string;
  /** Declarations by other pods of links to this one (the planner decides which count). */
  others: Declaration[];
  /** The pods this pod had declared links to. */
  previousPeers: Set<string>;
  /** This pod's declarations as they were (a refused live change puts them back). */
  previous: Declaration[];
  /** The links recorded as built between this pod and the peers read, by key. */
  built: Map<string, BuiltLink>;
  peers: Map<string, EndpointRecord>;
  /** The built-link chunks of this pod with each peer read, by peer. */
  pairs: Map<string, PairState>;
  /** The VNI block to try first. */
  vniNext: number;
}

/** One pair chunk recorded by a commit: the links it holds (with their VNIs) and its peer. */
export interface Committed {
  peer: EndpointRecord;
  kind: "veth" | "vxlan";
  chunk: number;
  /** The block this commit took (undefined: none, or the chunk's earlier one). */
  newBlock: number | undefined;
  links: Array<{ build: Build; vni?: number }>;
  /** The revision of the transaction that wrote it ("" until written). */
  rev: string;
}

const sameNamespace = (x: string, y: string) => x.split("/")[0] === y.split("/")[0];

export class LinkStore extends LinkReads {
  constructor(etcd: Etcd3, prefix: string, bad: BadRecords) {
    super(etcd, new Keys(prefix), bad);
  }

  /**
   * Round trip 1 of an ADD (more for a pod with many peers): writes the pod's endpoint, its
   * declarations (per peer, in chunks) and its index entry under each peer of its namespace;
   * reads in the same transactions (reads first: they see the state before the writes) what
   * the planner needs. A declaration into another namespace stays under the declaring pod.
   * `hints`: pods believed to declare links to this one (the node's pod cache): their
   * declarations and the pair's chunks are read in the first transaction too, and used only
   * if the peer index read there names them; the others are read after it.
   */
  async register(
    endpoint: EndpointRecord,
    declared: LinkSpec[],
    hints: string[] = [],
  ): Promise<Registration> {
    const keys = this.keys;
    const id = podId(endpoint);
    const byPeer = new Map<string, LinkSpec[]>();
    for (const s of declared) {
      const list = byPeer.get(podId(s.peer));
      if (list) list.push(s);
      else byPeer.set(podId(s.peer), [s]);
    }
    const units = [...byPeer].map(([peer, specs]) => {
      const chunks = toDeclChunks(specs);
      const writes = chunks.map((c, n) => op.put(keys.decl(id, peer, n), c));
      writes.push(op.delFrom(keys.decl(id, peer, chunks.length), keys.declPairPrefix(id, peer)));
      if (sameNamespace(peer, id)) writes.push(op.put(keys.peer(peer, id), endpoint));
      return { peer, writes };
    });
    const first = [op.put(keys.endpoint(id), endpoint), op.put(keys.nodeEndpoint(endpoint.node, id), "")];
    const groups = pack(units, (u) => ({ ...sizeOf([], u.writes), ops: u.writes.length + 3 }), {
      ...sizeOf([], first),
      ops: first.length + 3,
    });
    if (groups.length === 0) groups.push([]);

    const reg: Registration = {
      rev: "0",
      others: [],
      previousPeers: new Set(),
      previous: [],
      built: new Map(),
      peers: new Map(),
      pairs: new Map(),
      vniNext: 0,
    };
    const declarers: string[] = [];
    const readEarly = new Set<string>();
    for (const [n, group] of groups.entries()) {
      const q = new Query();
      const head =
        n === 0
          ? {
              mine: q.prefix(keys.declPrefix(id), { limit: PAGE }),
              peers: q.prefix(keys.peersPrefix(id), { limit: PAGE }),
              vni: q.get(keys.vniNext),
            }
          : undefined;
      const reads = group.map((u) => ({
        peer: u.peer,
        ep: q.get(keys.endpoint(u.peer)),
        ...this.pairSlots(q, id, u.peer),
      }));
      const writes = [...(n === 0 ? first : []), ...group.flatMap((u) => u.writes)];
      // Hinted declarers' reads, as far as the transaction has room (two reads each).
      const hinted = new Map<string, { decls: Slot; chunks: Slot }>();
      if (head)
        for (const h of hints) {
          if (h === id || byPeer.has(h) || !sameNamespace(h, id) || hinted.has(h)) continue;
          if (q.ops.length + writes.length + 2 > OPS_BUDGET) break;
          hinted.set(h, this.pairSlots(q, id, h));
        }
      const r = await txn(this.etcd, { reads: q, writes });
      if (head) {
        reg.rev = r.revision;
        const mine = await rest(this.etcd, r, head.mine);
        for (const kv of mine) {
          const d = keys.parseDecl(keyOf(kv));
          if (d && d.id === id) reg.previousPeers.add(d.peer);
        }
        reg.previous = this.declarationsOf(mine, id);
        for (const kv of await rest(this.etcd, r, head.peers)) {
          const declarer = keys.idAfter(keys.peersPrefix(id), keyOf(kv));
          if (!declarer || !sameNamespace(declarer, id)) continue;
          // Its declarations count whether it is registered (an endpoint) or gone (a marker).
          const entry = this.peerEntryOf(kv, declarer);
          if (entry === undefined) continue;
          if (entry) reg.peers.set(declarer, entry);
          if (byPeer.has(declarer)) continue;
          // Read in this transaction already (a hint the index confirms), or read after it.
          const early = hinted.get(declarer);
          if (early) {
            await this.readPair(r, id, { peer: declarer, ...early }, reg);
            readEarly.add(declarer);
          } else declarers.push(declarer);
        }
        const hint = Number(r.one(head.vni)?.value.toString());
        reg.vniNext = Number.isInteger(hint) && hint >= 0 && hint < VNI_BLOCKS ? hint : 0;
      }
      for (const s of reads) {
        const ep = this.endpointOf(r.one(s.ep), s.peer);
        if (ep) reg.peers.set(s.peer, ep);
        await this.readPair(r, id, s, reg);
      }
    }
    // Pods that declare links to this one without this one declaring any to them (same
    // namespace), and those it declared links to before and no more: their declarations and
    // the pair's chunks, read only.
    for (const p of reg.previousPeers)
      if (!byPeer.has(p) && !declarers.includes(p) && !readEarly.has(p)) declarers.push(p);
    for (const part of pack(declarers, () => ({ compares: 0, ops: 2, bytes: 0 }), {
      compares: 0,
      ops: 0,
      bytes: 0,
    })) {
      const q = new Query();
      const reads = part.map((peer) => ({ peer, ...this.pairSlots(q, id, peer) }));
      const r = await txn(this.etcd, { reads: q });
      for (const s of reads) await this.readPair(r, id, s, reg);
    }
    for (const [peer, state] of reg.pairs) {
      const [a, b] = id < peer ? [id, peer] : [peer, id];
      for (const { chunk } of state.values())
        if (chunk)
          for (const l of pairLinks(a, b, chunk))
            reg.built.set(l.key, { kind: chunk.kind, ends: chunk.ends });
    }
    return reg;
  }

  private pairSlots(q: Query, id: string, peer: string): { decls: Slot; chunks: Slot } {
    return {
      decls: q.prefix(this.keys.declPairPrefix(peer, id), { limit: PAGE }),
      chunks: q.prefix(this.keys.pairPrefix(id, peer), { limit: PAGE }),
    };
  }

  private async readPair(
    r: Awaited<ReturnType<typeof txn>>,
    id: string,
    s: { peer: string; decls: Slot; chunks: Slot },
    reg: Registration,
  ): Promise<void> {
    reg.others.push(...this.declarationsOf(await rest(this.etcd, r, s.decls), s.peer, id));
    reg.pairs.set(s.peer, this.pairStateOf(id, s.peer, await rest(this.etcd, r, s.chunks)));
  }

  /** Undoes a registration this call made (its declarations too), if nothing newer replaced it. */
  async unregister(endpoint: EndpointRecord, rev: string, declared: LinkSpec[]): Promise<void> {
    const keys = this.keys;
    const id = podId(endpoint);
    const guard = [cmp.modRev(keys.endpoint(id), rev)];
    const peers = [...new Set(declared.map((s) => podId(s.peer)))];
    const units = peers.map((p) => [op.delPrefix(keys.declPairPrefix(id, p)), op.del(keys.peer(p, id))]);
    units.push([op.del(keys.endpoint(id)), op.del(keys.nodeEndpoint(endpoint.node, id))]);
    for (const part of pack(units, (u) => sizeOf([], u), sizeOf(guard, []))) {
      const r = await txn(this.etcd, { compare: guard, writes: part.flat() });
      if (!r.succeeded) return; // a newer ADD registered the pod: its records
    }
  }

  /** Round trip 2 of an ADD: records the links this pod builds (link-commit.ts). */
  commit(
    endpoint: EndpointRecord,
    reg: Registration,
    builds: Build[],
    stale: string[],
  ): Promise<{ committed: Committed[]; revision: string }> {
    return commitLinks(this, endpoint, reg, builds, stale);
  }

  /**
   * A failed ADD takes back the pair chunks it recorded (where nobody wrote them since), so no
   * later ADD reads them as built: the chunk, the VNI block it took and its tunnel entries.
   */
  async abandon(me: EndpointRecord, committed: Committed[]): Promise<void> {
    const keys = this.keys;
    const id = podId(me);
    const units = committed.map((c) => {
      const peer = podId(c.peer);
      const compare = [cmp.modRev(keys.pairChunk(id, peer, c.chunk), c.rev)];
      const writes: Op[] = [op.del(keys.pairChunk(id, peer, c.chunk))];
      if (c.newBlock !== undefined) writes.push(op.del(keys.vni(c.newBlock)));
      if (c.kind === "vxlan")
        for (const node of new Set([c.peer.node, me.node]))
          writes.push(op.del(keys.tunnelChunk(node, id, peer, c.chunk)));
      return { compare, writes };
    });
    // Each chunk on its own: one that someone rewrote since stays theirs.
    for (const u of units) await txn(this.etcd, u);
  }

  /**
   * A refused change to a running pod: its declarations go back to `previous` (those to
   * peers it declared links to only now are removed), so nothing changes for anyone.
   */
  async restoreDeclarations(
    endpoint: EndpointRecord,
    declared: LinkSpec[],
    previous: Declaration[],
  ): Promise<void> {
    const keys = this.keys;
    const id = podId(endpoint);
    const before = new Map<string, LinkSpec[]>();
    for (const d of previous) {
      if (d.declarer !== id) continue;
      const p = podId(d.spec.peer);
      before.set(p, [...(before.get(p) ?? []), d.spec]);
    }
    const units: Op[][] = [];
    for (const p of new Set(declared.map((s) => podId(s.peer)))) {
      if (before.has(p)) continue;
      units.push([op.delPrefix(keys.declPairPrefix(id, p)), op.del(keys.peer(p, id))]);
    }
    for (const [p, specs] of before) {
      const chunks = toDeclChunks(specs);
      const writes = chunks.map((c, n) => op.put(keys.decl(id, p, n), c));
      writes.push(op.delFrom(keys.decl(id, p, chunks.length), keys.declPairPrefix(id, p)));
      if (sameNamespace(p, id)) writes.push(op.put(keys.peer(p, id), endpoint));
      units.push(writes);
    }
    for (const part of pack(units, (u) => sizeOf([], u), sizeOf([], [])))
      await txn(this.etcd, { writes: part.flat() });
  }

  /**
   * The built links of pairs none of whose links any pod declares any more: the pair's
   * chunks, VNI blocks and tunnel entries go (the other node's agent removes its ends when
   * its entries go).
   */
  async dropPairs(id: string, peers: string[]): Promise<void> {
    const keys = this.keys;
    const pairs = await this.pairs(id, peers);
    const units = peers.map((p) => {
      const writes: Op[] = [op.delPrefix(keys.pairPrefix(id, p))];
      const nodes = new Set<string>();
      for (const { chunk } of pairs.get(p)?.state.values() ?? []) {
        if (chunk?.block !== undefined) writes.push(op.del(keys.vni(chunk.block)));
        for (const e of Object.values(chunk?.ends ?? {})) nodes.add(e.node);
      }
      for (const node of nodes) writes.push(op.delPrefix(keys.tunnelPairPrefix(node, id, p)));
      return writes;
    });
    for (const part of pack(units, (u) => sizeOf([], u), sizeOf([], [])))
      await txn(this.etcd, { writes: part.flat() });
  }

  /**
   * Writes what this node observed for the ends of its pods: per pod, all its ends (in
   * chunks, replacing what was there), only while the pod is registered (a report racing
   * the pod's DEL must not outlive it); a pod with no ends has its reports removed.
   */
  async writeObserved(pods: Array<{ id: string; ends: Array<Observed & { link: string }> }>): Promise<void> {
    const keys = this.keys;
    for (const { id, ends } of pods) {
      const chunks = chunked(ends, OBSERVED_CHUNK);
      if (chunks.length === 0) {
        await txn(this.etcd, { writes: [op.delPrefix(keys.observedPodPrefix(id))] });
        continue;
      }
      // Reports need not change together: each chunk is a unit of its own.
      const units = chunks.map((c, n) => [op.put(keys.observed(id, n), { ends: c })]);
      units.push([op.delFrom(keys.observed(id, chunks.length), keys.observedPodPrefix(id))]);
      const guard = [cmp.present(keys.endpoint(id))];
      for (const part of pack(units, (u) => sizeOf([], u), sizeOf(guard, []))) {
        const r = await txn(this.etcd, { compare: guard, writes: part.flat() });
        if (!r.succeeded) break; // deregistered meanwhile
      }
    }
  }

  /** A deregistered pod's records (link-removal.ts). */
  removeRecords(
    endpoint: EndpointRecord,
    rev: string,
    peers: Iterable<string>,
    declaredTo: Set<string>,
    read?: Awaited<ReturnType<LinkStore["pairs"]>>,
  ): Promise<void> {
    return removeRecords(this, endpoint, rev, peers, declaredTo, read);
  }
}
