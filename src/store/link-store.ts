// ratchet's state in etcd: every key, value check and transaction of linking lives here, and
// each operation returns named results. The rules (who builds, consent) are the planner's.
import type { Etcd3 } from "etcd3";
import { CniError, Code } from "../cni/errors.ts";
import { type Build, builtFor, type Declaration } from "../links/planner.ts";
import { type LinkSpec, linkKey, podId, sides } from "../links/spec.ts";
import {
  cmp,
  type Compare,
  type KeyValue,
  keyOf,
  type Op,
  op,
  Query,
  read,
  type Slot,
  txn,
} from "./etcd-ops.ts";
import { FIRST_VNI, Keys, MAX_VNI } from "./keys.ts";
import {
  type BadRecords,
  DeclSchema,
  decodeValue,
  EndpointSchema,
  type EndpointRecord,
  type LinkRecord,
  LinkRecordSchema,
  type Observed,
  ObservedSchema,
  type TunnelEnd,
  TunnelEndSchema,
} from "./records.ts";

const MAX_COMMIT_ATTEMPTS = 8;

/** What one registration saw, besides writing the pod's endpoint and declarations. */
export interface Registration {
  rev: string;
  /** Declarations by other pods that may count for this one (the planner decides). */
  others: Declaration[];
  /** This pod's own earlier declarations. */
  previous: Declaration[];
  peers: Map<string, EndpointRecord>;
  records: Map<string, { record: LinkRecord | undefined; rev: string }>;
  vniNext: KeyValue | undefined;
}

export interface Committed {
  record: LinkRecord;
  peer: EndpointRecord;
  /** Built already for these containers: changed in place. */
  update: boolean;
}

const sameNamespace = (x: string, y: string) => x.split("/")[0] === y.split("/")[0];

/** etcd refuses a transaction that touches one key twice. */
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

export class LinkStore {
  readonly keys: Keys;
  constructor(
    readonly etcd: Etcd3,
    prefix: string,
    private readonly bad: BadRecords,
  ) {
    this.keys = new Keys(prefix);
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
  recordOf(kv: KeyValue | undefined, link?: string): LinkRecord | undefined {
    if (!kv) return undefined;
    const rec = decodeValue(LinkRecordSchema, keyOf(kv), kv.value, this.bad);
    if (rec && link !== undefined && rec.key !== link) {
      this.bad.note(keyOf(kv), `is the record of ${rec.key}`);
      return undefined;
    }
    return rec;
  }
  tunnelEndOf(kv: KeyValue, node: string): TunnelEnd | undefined {
    const key = keyOf(kv);
    const nl = decodeValue(TunnelEndSchema, key, kv.value, this.bad);
    if (nl && this.keys.linkAfter(this.keys.tunnelEndsPrefix(node), key) !== nl.key) {
      this.bad.note(key, `is the entry of ${nl.key}`);
      return undefined;
    }
    return nl;
  }
  /** The declarations in `kvs` (decl keys), each checked against its key. */
  declarationsOf(kvs: KeyValue[]): Declaration[] {
    const out: Declaration[] = [];
    for (const kv of kvs) {
      const key = keyOf(kv);
      const parsed = this.keys.parseDecl(key);
      const spec = decodeValue(DeclSchema, key, kv.value, this.bad);
      if (!parsed || !spec) continue;
      if (linkKey(spec) !== parsed.link) {
        this.bad.note(key, "declares another link than its key names");
        continue;
      }
      out.push({ declarer: parsed.declarer, link: parsed.link, spec });
    }
    return out;
  }

  /**
   * Round trip 1 of an ADD: writes the pod's endpoint and declarations and reads, in the same
   * transaction (reads first: they see the state before the writes), everything the planner
   * needs: declarations touching the pod, registered peers, link records, the VNI hint.
   * A declaration into another namespace is written under the declaring pod only.
   */
  async register(endpoint: EndpointRecord, declared: LinkSpec[]): Promise<Registration> {
    const keys = this.keys;
    const id = podId(endpoint);
    const mine = new Map(declared.map((s) => [linkKey(s), s]));
    const knownPeers = [...new Set(declared.map((l) => podId(l.peer)))];
    const q = new Query();
    const declSlot = q.prefix(keys.declPrefix(id));
    const peersSlot = q.prefix(keys.peersPrefix(id));
    const peerSlots = knownPeers.map((p) => ({ p, slot: q.get(keys.endpoint(p)) }));
    const recordSlots = [...mine.keys()].map((k) => ({ k, slot: q.get(keys.link(k)) }));
    // Across namespaces the peer's declaration stays under the peer: fetch it for our links.
    const crossSlots = [...mine].flatMap(([k, spec]) => {
      const p = podId(spec.peer);
      return sameNamespace(p, id) ? [] : [q.get(keys.decl(p, k, p))];
    });
    const vniSlot = q.get(keys.vniNext);
    const writes: Op[] = [
      op.put(keys.endpoint(id), endpoint),
      op.put(keys.nodeEndpoint(endpoint.node, id), ""),
    ];
    for (const [k, spec] of mine) {
      const p = podId(spec.peer);
      writes.push(op.put(keys.decl(id, k, id), spec));
      if (sameNamespace(p, id)) writes.push(op.put(keys.decl(p, k, id), spec));
    }
    for (const p of knownPeers) if (sameNamespace(p, id)) writes.push(op.put(keys.peer(p, id), endpoint));
    const r = await txn(this.etcd, { reads: q, writes });

    const filed = this.declarationsOf(r.all(declSlot));
    const peers = new Map<string, EndpointRecord>();
    for (const kv of r.all(peersSlot)) {
      const declarer = keys.idAfter(keys.peersPrefix(id), keyOf(kv));
      const ep = declarer ? this.endpointOf(kv, declarer) : undefined;
      if (ep && sameNamespace(declarer as string, id)) peers.set(podId(ep), ep);
    }
    for (const { p, slot } of peerSlots) {
      const ep = this.endpointOf(r.one(slot), p);
      if (ep) peers.set(p, ep);
    }
    const records = new Map<string, { record: LinkRecord | undefined; rev: string }>();
    for (const { k, slot } of recordSlots) {
      const kv = r.one(slot);
      records.set(k, { record: this.recordOf(kv, k), rev: kv?.mod_revision ?? "0" });
    }
    const cross = this.declarationsOf(crossSlots.flatMap((s) => r.all(s)));
    return {
      rev: r.revision,
      others: [...filed.filter((d) => d.declarer !== id), ...cross],
      previous: filed.filter((d) => d.declarer === id),
      peers,
      records,
      vniNext: r.one(vniSlot),
    };
  }

  /** Undoes a registration this call made (its declarations too), if nothing newer replaced it. */
  async unregister(endpoint: EndpointRecord, rev: string, declared: LinkSpec[]): Promise<void> {
    const keys = this.keys;
    const id = podId(endpoint);
    const ops: Op[] = [op.del(keys.endpoint(id)), op.del(keys.nodeEndpoint(endpoint.node, id))];
    for (const spec of declared) {
      const k = linkKey(spec);
      const p = podId(spec.peer);
      ops.push(op.del(keys.decl(id, k, id)), op.del(keys.decl(p, k, id)), op.del(keys.peer(p, id)));
    }
    await txn(this.etcd, { compare: [cmp.modRev(keys.endpoint(id), rev)], writes: unique(ops) });
  }

  /**
   * A refused change to a running pod: its declarations go back to `previous` (those of links
   * it declared only now are removed), so nothing changes for anyone.
   */
  async restoreDeclarations(
    endpoint: EndpointRecord,
    declared: LinkSpec[],
    previous: Declaration[],
  ): Promise<void> {
    const keys = this.keys;
    const id = podId(endpoint);
    const before = new Map(previous.map((d) => [d.link, d.spec]));
    const ops: Op[] = [];
    for (const spec of declared) {
      const k = linkKey(spec);
      if (before.has(k)) continue;
      ops.push(op.del(keys.decl(id, k, id)), op.del(keys.decl(podId(spec.peer), k, id)));
    }
    for (const [k, spec] of before) {
      const p = podId(spec.peer);
      ops.push(op.put(keys.decl(id, k, id), spec));
      if (sameNamespace(p, id)) ops.push(op.put(keys.decl(p, k, id), spec));
    }
    if (ops.length > 0) await txn(this.etcd, { writes: unique(ops) });
  }

  /**
   * Round trip 2 of an ADD: records the links this pod builds (VNIs allocated atomically) and
   * drops its stale declarations; retried when etcd moved meanwhile (a VNI taken, a link
   * recorded by someone else). Fails with 11 when a newer ADD of the pod took over.
   */
  async commit(
    endpoint: EndpointRecord,
    myRev: string,
    builds: Build[],
    vniNext: KeyValue | undefined,
    stale: Array<{ link: string; peer: string }>,
    stillPeers: Set<string>,
  ): Promise<{ committed: Committed[]; revision: string }> {
    const keys = this.keys;
    const id = podId(endpoint);
    let next = vniNext;
    let current = builds;
    let floor = FIRST_VNI; // VNIs below this were found taken: never tried again in this call
    for (let attempt = 0; attempt < MAX_COMMIT_ATTEMPTS; attempt++) {
      const compare: Compare[] = [cmp.modRev(keys.endpoint(id), myRev)];
      const ops: Op[] = [];
      for (const s of stale) {
        ops.push(op.del(keys.decl(id, s.link, id)), op.del(keys.decl(s.peer, s.link, id)));
        if (!stillPeers.has(s.peer)) ops.push(op.del(keys.peer(s.peer, id)));
      }
      let vni = Math.max(next ? Number(next.value.toString()) || FIRST_VNI : FIRST_VNI, floor);
      const firstTried = vni;
      let allocated = false;
      const committed: Committed[] = [];
      for (const b of current) {
        compare.push(cmp.modRev(keys.link(b.link.key), b.prevRev));
        const record: LinkRecord = {
          ...b.link,
          kind: b.kind,
          ends: {
            [id]: { node: endpoint.node, containerId: endpoint.containerId },
            [podId(b.peer)]: { node: b.peer.node, containerId: b.peer.containerId },
          },
        };
        if (b.kind === "vxlan") {
          if (b.prev?.vni !== undefined) {
            record.vni = b.prev.vni;
          } else {
            if (vni > MAX_VNI) vni = FIRST_VNI;
            compare.push(cmp.absent(keys.vni(vni)));
            ops.push(op.put(keys.vni(vni), b.link.key));
            record.vni = vni++;
            allocated = true;
          }
          const { mine, theirs } = sides(b.link, id);
          const entry = (end: typeof mine, containerId: string, remote: string): TunnelEnd => ({
            key: b.link.key,
            end,
            containerId,
            vni: record.vni as number,
            remote,
            builtBy: endpoint.node,
            fresh: !b.update,
            ...(b.link.mtu ? { mtu: b.link.mtu } : {}),
            ...(b.link.state ? { state: b.link.state } : {}),
          });
          ops.push(
            op.put(
              keys.tunnelEnd(b.peer.node, b.link.key),
              entry(theirs, b.peer.containerId, endpoint.vtep as string),
            ),
            op.put(
              keys.tunnelEnd(endpoint.node, b.link.key),
              entry(mine, endpoint.containerId, b.peer.vtep as string),
            ),
          );
        } else if (b.prev?.kind === "vxlan" && b.prev.vni !== undefined) {
          // The link was a tunnel and is now on one node: free its VNI and the old node entries.
          ops.push(op.del(keys.vni(b.prev.vni)));
          for (const e of Object.values(b.prev.ends)) ops.push(op.del(keys.tunnelEnd(e.node, b.link.key)));
        }
        ops.push(op.put(keys.link(b.link.key), record));
        committed.push({ record, peer: b.peer, update: b.update });
      }
      if (allocated) {
        compare.push(cmp.modRev(keys.vniNext, next?.mod_revision ?? "0"));
        ops.push(op.put(keys.vniNext, String(vni)));
      }
      if (ops.length === 0) return { committed: [], revision: myRev };
      const otherwise = new Query();
      const nextSlot = otherwise.get(keys.vniNext);
      const epSlot = otherwise.get(keys.endpoint(id));
      const linkSlots = current.map((b) => otherwise.get(keys.link(b.link.key)));
      const r = await txn(this.etcd, { compare, writes: unique(ops), otherwise });
      if (r.succeeded) return { committed, revision: r.revision };
      const epKv = r.one(epSlot);
      const ep = this.endpointOf(epKv, id);
      if (!ep || ep.containerId !== endpoint.containerId) {
        throw new CniError(
          Code.TryAgainLater,
          `pod ${id} was registered again by another ADD while this one was linking`,
        );
      }
      myRev = epKv?.mod_revision ?? myRev;
      next = r.one(nextSlot);
      if (allocated) floor = firstTried + 1;
      // Records read now (links learned from a peer's declaration were not read before):
      // one built for these very containers is changed in place, not rebuilt.
      current = current.map((b, n) => {
        const kv = r.one(linkSlots[n] as Slot);
        const prev = this.recordOf(kv, b.link.key);
        const update = builtFor(prev, b.kind, id, endpoint.containerId, b.peer);
        return { ...b, prev, prevRev: kv?.mod_revision ?? "0", update };
      });
    }
    throw new CniError(
      Code.TryAgainLater,
      `could not record the links of pod ${id}: etcd kept changing under us`,
    );
  }

  /**
   * A failed ADD takes back the link records it wrote (where nobody wrote them since), so no
   * later ADD reads them as built.
   */
  async abandon(committed: Committed[], revision: string): Promise<void> {
    const keys = this.keys;
    for (const c of committed) {
      const ops: Op[] = [op.del(keys.link(c.record.key))];
      if (c.record.vni !== undefined) ops.push(op.del(keys.vni(c.record.vni)));
      for (const e of Object.values(c.record.ends)) ops.push(op.del(keys.tunnelEnd(e.node, c.record.key)));
      await txn(this.etcd, { compare: [cmp.modRev(keys.link(c.record.key), revision)], writes: unique(ops) });
    }
  }

  /**
   * Links no pod declares any more: their records, VNI and tunnel-end entries go (the other
   * node's agent removes its end when its entry goes), with every declaration of them.
   */
  async dropLinks(id: string, links: Array<{ link: string; peer: string }>): Promise<void> {
    const keys = this.keys;
    for (const l of links) {
      const rec = await this.linkRecord(l.link);
      const ops: Op[] = [
        op.del(keys.link(l.link)),
        op.delPrefix(keys.declLinkPrefix(id, l.link)),
        op.delPrefix(keys.declLinkPrefix(l.peer, l.link)),
      ];
      if (rec?.vni !== undefined) ops.push(op.del(keys.vni(rec.vni)));
      for (const e of Object.values(rec?.ends ?? {})) ops.push(op.del(keys.tunnelEnd(e.node, l.link)));
      await txn(this.etcd, { writes: unique(ops) });
    }
  }

  /** Writes (or, with `undefined`, removes) what this node observed for ends of its pods. */
  async writeObserved(
    entries: Array<{ link: string; id: string; observed: Observed | undefined }>,
  ): Promise<void> {
    for (let i = 0; i < entries.length; i += 100) {
      const ops = entries.slice(i, i + 100).map((e) => {
        const key = this.keys.observed(e.link, e.id);
        return e.observed ? op.put(key, e.observed) : op.del(key);
      });
      await txn(this.etcd, { writes: unique(ops) });
    }
  }

  /** The pod's endpoint (with its revision) and the declarations filed under it. */
  async own(
    id: string,
  ): Promise<{ endpoint: EndpointRecord | undefined; rev: string; decls: Declaration[] }> {
    const q = new Query();
    const epSlot = q.get(this.keys.endpoint(id));
    const declSlot = q.prefix(this.keys.declPrefix(id));
    const r = await read(this.etcd, q);
    const kv = r.one(epSlot);
    return {
      endpoint: this.endpointOf(kv, id),
      rev: kv?.mod_revision ?? "0",
      decls: this.declarationsOf(r.all(declSlot)),
    };
  }

  async endpoints(ids: string[]): Promise<Map<string, EndpointRecord>> {
    const q = new Query();
    const slots = ids.map((id) => ({ id, slot: q.get(this.keys.endpoint(id)) }));
    const r = ids.length > 0 ? await read(this.etcd, q) : undefined;
    const out = new Map<string, EndpointRecord>();
    for (const { id, slot } of slots) {
      const ep = this.endpointOf(r?.one(slot), id);
      if (ep) out.set(id, ep);
    }
    return out;
  }

  async linkRecord(link: string): Promise<LinkRecord | undefined> {
    const q = new Query();
    const slot = q.get(this.keys.link(link));
    return this.recordOf((await read(this.etcd, q)).one(slot), link);
  }

  /** Everything, for `ratchet links`: every endpoint, declaration and link record. */
  async snapshot(): Promise<{
    endpoints: Map<string, EndpointRecord>;
    decls: Declaration[];
    records: Map<string, LinkRecord>;
    /** "<link> <ns>/<pod>" -> what that end's node read back. */
    observed: Map<string, Observed>;
  }> {
    const q = new Query();
    const epSlot = q.prefix(this.keys.endpointsPrefix);
    const declSlot = q.prefix(this.keys.allDeclsPrefix);
    const recSlot = q.prefix(this.keys.linksPrefix);
    const obsSlot = q.prefix(this.keys.observedPrefix);
    const r = await read(this.etcd, q);
    const observed = new Map<string, Observed>();
    for (const kv of r.all(obsSlot)) {
      const rest = keyOf(kv).slice(this.keys.observedPrefix.length).split("/");
      if (rest.length !== 7) continue;
      const o = decodeValue(ObservedSchema, keyOf(kv), kv.value, this.bad);
      if (o) observed.set(`${rest.slice(0, 5).join("/")} ${rest.slice(5).join("/")}`, o);
    }
    const endpoints = new Map<string, EndpointRecord>();
    for (const kv of r.all(epSlot)) {
      const id = this.keys.idAfter(this.keys.endpointsPrefix, keyOf(kv));
      const ep = id ? this.endpointOf(kv, id) : undefined;
      if (ep) endpoints.set(podId(ep), ep);
    }
    const records = new Map<string, LinkRecord>();
    for (const kv of r.all(recSlot)) {
      const k = this.keys.linkAfter(this.keys.linksPrefix, keyOf(kv));
      const rec = k ? this.recordOf(kv, k) : undefined;
      if (rec) records.set(rec.key, rec);
    }
    return { endpoints, decls: this.declarationsOf(r.all(declSlot)), records, observed };
  }

  /** This node's endpoint index and tunnel-end entries. */
  async nodeIndex(node: string): Promise<{ ids: string[]; tunnelEnds: TunnelEnd[] }> {
    const q = new Query();
    const epSlot = q.prefix(this.keys.nodeEndpointsPrefix(node));
    const nlSlot = q.prefix(this.keys.tunnelEndsPrefix(node));
    const r = await read(this.etcd, q);
    const ids = r
      .all(epSlot)
      .map((kv) => this.keys.idAfter(this.keys.nodeEndpointsPrefix(node), keyOf(kv)))
      .filter((id): id is string => id !== undefined);
    const tunnelEnds = r.all(nlSlot).flatMap((kv) => this.tunnelEndOf(kv, node) ?? []);
    return { ids, tunnelEnds };
  }

  /**
   * Removes a deregistered pod's records. Per link: while the peer is registered, the
   * declarations stay (the link comes back with this pod); otherwise everything of the link
   * goes. The peers' endpoints are compared in the same transaction, so two pods deleted at
   * once cannot both keep a link for the other (the second one retries and cleans up).
   */
  async removeRecords(endpoint: EndpointRecord, rev: string, links: Map<string, string>): Promise<void> {
    const keys = this.keys;
    const id = podId(endpoint);
    const linkKeys = [...links.keys()];
    const peerIds = [...new Set(links.values())];
    for (let attempt = 0; attempt < MAX_COMMIT_ATTEMPTS; attempt++) {
      const q = new Query();
      const peerSlots = new Map(peerIds.map((p) => [p, q.get(keys.endpoint(p))]));
      const recSlots = new Map(linkKeys.map((k) => [k, q.get(keys.link(k))]));
      const r = await read(this.etcd, q);
      const peerRev = new Map(peerIds.map((p) => [p, r.one(peerSlots.get(p) as Slot)?.mod_revision ?? "0"]));
      const compare: Compare[] = [
        cmp.modRev(keys.endpoint(id), rev),
        ...peerIds.map((p) => cmp.modRev(keys.endpoint(p), peerRev.get(p) as string)),
      ];
      const ops: Op[] = [op.del(keys.endpoint(id)), op.del(keys.nodeEndpoint(endpoint.node, id))];
      for (const p of peerIds) ops.push(op.del(keys.peer(p, id)));
      for (const k of linkKeys) {
        const peerId = links.get(k) as string;
        const rec = this.recordOf(r.one(recSlots.get(k) as Slot), k);
        ops.push(op.del(keys.tunnelEnd(endpoint.node, k)));
        // Across namespaces only this pod reads its own declaration back: it goes now.
        if (!sameNamespace(peerId, id)) ops.push(op.del(keys.decl(id, k, id)));
        if (peerRev.get(peerId) !== "0") continue;
        ops.push(
          op.delPrefix(keys.declLinkPrefix(id, k)),
          op.delPrefix(keys.declLinkPrefix(peerId, k)),
          op.del(keys.link(k)),
        );
        if (rec?.vni !== undefined) ops.push(op.del(keys.vni(rec.vni)));
        for (const e of Object.values(rec?.ends ?? {})) ops.push(op.del(keys.tunnelEnd(e.node, k)));
      }
      const otherwise = new Query();
      const nowSlot = otherwise.get(keys.endpoint(id));
      const t = await txn(this.etcd, { compare, writes: unique(ops), otherwise });
      if (t.succeeded) return;
      const kv = t.one(nowSlot);
      const now = this.endpointOf(kv, id);
      if (!now || now.containerId !== endpoint.containerId) return; // a newer ADD: its records
      rev = kv?.mod_revision ?? rev;
    }
    throw new CniError(
      Code.TryAgainLater,
      `could not remove the records of pod ${id}: etcd kept changing under us`,
    );
  }
}
