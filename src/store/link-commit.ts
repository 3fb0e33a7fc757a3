// Round trip 2 of an ADD (more for many peers): the links a pod builds are recorded, one
// unit per pair chunk (its record, the VNI block it takes, its tunnel entries), packed into
// transactions within etcd's limits, each guarded by the pod's endpoint (a newer ADD wins).
import { randomInt, randomUUID } from "node:crypto";
import { CniError, Code } from "../cni/errors.ts";
import type { Build } from "../links/planner.ts";
import { podId } from "../links/spec.ts";
import { pairChunksOf, pairIfnames } from "./codec.ts";
import { cmp, type Compare, type Op, op, pack, Query, type Slot, sizeOf, txn } from "./etcd-ops.ts";
import { VNI_BLOCKS, vniOf } from "./keys.ts";
import type { Committed, LinkStore, Registration } from "./link-store.ts";
import type { EndpointRecord, PairChunk, TunnelChunk } from "./records.ts";

const MAX_COMMIT_ATTEMPTS = 12;
/**
 * After a conflict, new VNI blocks are tried at a random distance past the hint, within a
 * window that doubles per attempt (8, 16, ... 512 blocks): ADDs that read the same hint at
 * once would otherwise all ask for the same block again, and only one of them wins a round.
 */
const spread = (attempt: number) => Math.min(512, 8 << attempt);

/**
 * Records the links this pod builds, one unit per pair chunk (VNI blocks allocated
 * atomically), and drops the declarations of peers it no longer declares links to. A unit is
 * retried when etcd moved meanwhile (a VNI block taken); a pair whose chunks another ADD
 * recorded meanwhile for these very containers is that ADD's to build (left out). Fails
 * with 11 when a newer ADD of the pod took over.
 */
export async function commitLinks(
  store: LinkStore,
  endpoint: EndpointRecord,
  reg: Registration,
  builds: Build[],
  stale: string[],
): Promise<{ committed: Committed[]; revision: string }> {
  const keys = store.keys;
  const id = podId(endpoint);
  let myRev = reg.rev;
  let block = reg.vniNext;
  const byPeer = new Map<string, Build[]>();
  for (const b of builds) {
    const list = byPeer.get(podId(b.peer));
    if (list) list.push(b);
    else byPeer.set(podId(b.peer), [b]);
  }

  interface Unit {
    peer: string;
    chunk: number;
    /** undefined: delete the chunk (the pair has fewer chunks now). */
    builds: Build[] | undefined;
    prev: { chunk: PairChunk | undefined; rev: string };
  }
  const units: Unit[] = [];
  for (const [peer, list] of byPeer) {
    const prev = reg.pairs.get(peer) ?? new Map();
    const chunks = pairChunksOf(list.map((b) => b.link));
    const byKey = new Map(list.map((b) => [b.link.key, b]));
    chunks.forEach((links, c) => {
      const bs = links.map((l) => byKey.get(l.key) as Build);
      units.push({ peer, chunk: c, builds: bs, prev: prev.get(c) ?? { chunk: undefined, rev: "0" } });
    });
    for (const [c, p] of prev)
      if (c >= chunks.length) units.push({ peer, chunk: c, builds: undefined, prev: p });
  }
  const staleOps = stale.flatMap((p) => [op.delPrefix(keys.declPairPrefix(id, p)), op.del(keys.peer(p, id))]);
  if (units.length === 0 && staleOps.length === 0) return { committed: [], revision: myRev };

  /** The writes of one unit, allocating from `block` when it needs a VNI block. */
  let writer = randomUUID();
  const plan = (u: Unit): { compare: Compare[]; writes: Op[]; committed?: Committed } => {
    const compare = [cmp.modRev(keys.pairChunk(id, u.peer, u.chunk), u.prev.rev)];
    const writes: Op[] = [];
    const old = u.prev.chunk;
    // What the chunk had and keeps no more: its block, the entries of nodes it left.
    const dropOld = (keepBlock: boolean, keepNodes: string[]) => {
      if (old?.block !== undefined && !keepBlock) writes.push(op.del(keys.vni(old.block)));
      if (old?.kind === "vxlan")
        for (const node of new Set(Object.values(old.ends).map((e) => e.node)))
          if (!keepNodes.includes(node)) writes.push(op.del(keys.tunnelChunk(node, id, u.peer, u.chunk)));
    };
    if (!u.builds) {
      dropOld(false, []);
      writes.push(op.del(keys.pairChunk(id, u.peer, u.chunk)));
      return { compare, writes };
    }
    const peer = (u.builds[0] as Build).peer;
    const kind = (u.builds[0] as Build).kind;
    let b: number | undefined;
    let newBlock: number | undefined;
    if (kind === "vxlan") {
      if (old?.kind === "vxlan" && old.block !== undefined) b = old.block;
      else {
        b = newBlock = block;
        block = (block + 1) % VNI_BLOCKS;
        compare.push(cmp.absent(keys.vni(b)));
        writes.push(op.put(keys.vni(b), keys.pairChunk(id, u.peer, u.chunk)));
      }
    }
    dropOld(b !== undefined && b === old?.block, b !== undefined ? [endpoint.node, peer.node] : []);
    const record: PairChunk = {
      kind,
      ...(b !== undefined ? { block: b } : {}),
      ends: {
        [id]: { node: endpoint.node, containerId: endpoint.containerId },
        [u.peer]: { node: peer.node, containerId: peer.containerId },
      },
      links: u.builds.map((x) => pairIfnames(x.link)),
      writer,
    };
    writes.push(op.put(keys.pairChunk(id, u.peer, u.chunk), record));
    const links = u.builds.map((build, i) => ({ build, ...(b !== undefined ? { vni: vniOf(b, i) } : {}) }));
    if (b !== undefined) writes.push(...tunnelWrites(store, endpoint, peer, u.chunk, links));
    return { compare, writes, committed: { peer, kind, chunk: u.chunk, newBlock, links, rev: "" } };
  };

  const guard = () => [cmp.modRev(keys.endpoint(id), myRev)];
  const committed: Committed[] = [];
  let revision = myRev;
  const taken = new Set<string>();
  const groups = pack(
    units,
    (u) => {
      const p = plan(u);
      return sizeOf(p.compare, p.writes);
    },
    sizeOf([...guard(), ...staleOps.map(() => guard()[0] as Compare)], staleOps),
  );
  block = reg.vniNext;
  try {
    for (const [n, group] of groups.entries()) {
      for (let attempt = 0; ; attempt++) {
        if (attempt >= MAX_COMMIT_ATTEMPTS) {
          throw new CniError(
            Code.TryAgainLater,
            `could not record the links of pod ${id}: etcd kept changing under us`,
          );
        }
        const live = group.filter((u) => !taken.has(u.peer));
        const firstBlock = block;
        writer = randomUUID();
        const planned = live.map(plan);
        const otherwise = new Query();
        const epSlot = otherwise.get(keys.endpoint(id));
        const nextSlot = otherwise.get(keys.vniNext);
        const chunkSlots = live.map((u) => otherwise.get(keys.pairChunk(id, u.peer, u.chunk)));
        const writes = [...(n === 0 ? staleOps : []), ...planned.flatMap((p) => p.writes)];
        if (block !== firstBlock) writes.push(op.put(keys.vniNext, String(block)));
        if (writes.length === 0) break;
        const r = await txn(store.etcd, {
          compare: [...guard(), ...planned.flatMap((p) => p.compare)],
          writes,
          otherwise,
        });
        if (r.succeeded) {
          revision = r.revision;
          for (const p of planned) if (p.committed) committed.push({ ...p.committed, rev: r.revision });
          break;
        }
        const epKv = r.one(epSlot);
        const ep = store.endpointOf(epKv, id);
        if (!ep || ep.containerId !== endpoint.containerId) {
          throw new CniError(
            Code.TryAgainLater,
            `pod ${id} was registered again by another ADD while this one was linking`,
          );
        }
        myRev = epKv?.mod_revision ?? myRev;
        // The client retried a transaction that had gone through (etcd answered the first try
        // too late, e.g. its leader went away): the chunks carry this attempt's writer.
        const applied = live.findIndex((u, k) => {
          const now = store.pairChunkOf(r.one(chunkSlots[k] as Slot), id, u.peer);
          return u.builds !== undefined && now?.writer === writer;
        });
        if (applied >= 0) {
          const rev = r.one(chunkSlots[applied] as Slot)?.mod_revision ?? r.revision;
          revision = rev;
          for (const p of planned) if (p.committed) committed.push({ ...p.committed, rev });
          break;
        }
        const hint = Number(r.one(nextSlot)?.value.toString());
        // VNI blocks from firstBlock on may be taken: try after them (and after the hint),
        // spread out from the others that failed with this one; then a moment's pause.
        const from = Math.max(block, Number.isInteger(hint) ? hint : 0);
        block = (from + randomInt(spread(attempt))) % VNI_BLOCKS;
        if (attempt > 0) await Bun.sleep(randomInt(2 * attempt + 1));
        live.forEach((u, k) => {
          const kv = r.one(chunkSlots[k] as Slot);
          const rev = kv?.mod_revision ?? "0";
          if (rev === u.prev.rev) return;
          const now = store.pairChunkOf(kv, id, u.peer);
          // Another ADD recorded this pair for these very containers before we recorded any
          // of it: that ADD builds it (whoever records a pair's first chunk first, builds).
          const ours = committed.some((c) => podId(c.peer) === u.peer);
          if (now && u.builds && !ours && sameContainers(now, endpoint, (u.builds[0] as Build).peer)) {
            taken.add(u.peer);
            return;
          }
          u.prev = { chunk: now, rev };
        });
      }
    }
  } catch (err) {
    await store.abandon(endpoint, committed).catch(() => undefined);
    throw err;
  }
  // A veth pair recorded by the other ADD is built, or kept, here as well: both ADDs run in
  // this node's one agent, whose kernel work does not interleave, and each reports its end.
  // Never taken back by this ADD (rev "0" matches no written chunk).
  const theirs: Committed[] = units
    .filter((u) => taken.has(u.peer) && u.builds?.[0]?.kind === "veth")
    .map((u) => {
      const bs = u.builds as Build[];
      const peer = (bs[0] as Build).peer;
      const links = bs.map((b) => ({ build: { ...b, update: true } }));
      return { peer, kind: "veth", chunk: u.chunk, newBlock: undefined, links, rev: "0" };
    });
  return { committed: [...committed.filter((c) => !taken.has(podId(c.peer))), ...theirs], revision };
}

function sameContainers(chunk: PairChunk, me: EndpointRecord, peer: EndpointRecord): boolean {
  return (
    chunk.ends[podId(me)]?.containerId === me.containerId &&
    chunk.ends[podId(peer)]?.containerId === peer.containerId
  );
}

/** The tunnel entries of one VXLAN pair chunk: the peer's node builds its ends, ours is for restarts. */
function tunnelWrites(
  store: LinkStore,
  me: EndpointRecord,
  peer: EndpointRecord,
  chunk: number,
  links: Array<{ build: Build; vni?: number }>,
): Op[] {
  const id = podId(me);
  const peerId = podId(peer);
  const entry = (pod: string, containerId: string, remote: string): TunnelChunk => ({
    pod,
    containerId,
    remote,
    builtBy: me.node,
    ends: links.map(({ build, vni }) => {
      const end = podId(build.link.a) === pod ? build.link.a : build.link.b;
      return {
        key: build.link.key,
        end: {
          ifname: end.ifname,
          ips: end.ips,
          ...(end.mac !== undefined ? { mac: end.mac } : {}),
          ...(end.netem !== undefined ? { netem: end.netem } : {}),
        },
        vni: vni as number,
        ...(build.link.mtu !== undefined ? { mtu: build.link.mtu } : {}),
        ...(build.link.state !== undefined ? { state: build.link.state } : {}),
        // Rebuilt (or new) on the writer's side: the other side rebuilds too.
        fresh: !build.update,
      };
    }),
  });
  return [
    op.put(
      store.keys.tunnelChunk(peer.node, id, peerId, chunk),
      entry(peerId, peer.containerId, me.vtep as string),
    ),
    op.put(
      store.keys.tunnelChunk(me.node, id, peerId, chunk),
      entry(id, me.containerId, peer.vtep as string),
    ),
  ];
}
