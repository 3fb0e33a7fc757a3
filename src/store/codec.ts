// Links in and out of their chunked etcd values: a pod's declarations to one peer as
// DeclChunks, the built links of a pair of pods as PairChunks, a node's tunnel ends as
// TunnelChunks. Pure: the store reads and writes them, the keys name the pods.
import type { Declaration } from "../links/planner.ts";
import { type EndSpec, type Link, type LinkSpec, linkKey, podId } from "../links/spec.ts";
import { DECL_CHUNK, LINK_CHUNK, pairOf, vniOf } from "./keys.ts";
import type { ChunkEnd, DeclChunk, PairChunk } from "./records.ts";

/** Splits a list into pieces of at most `n`. */
export function chunked<T>(xs: T[], n: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < xs.length; i += n) out.push(xs.slice(i, i + n));
  return out;
}

const chunkEnd = (e: EndSpec): ChunkEnd => ({
  ifname: e.ifname,
  ips: e.ips,
  ...(e.mac !== undefined ? { mac: e.mac } : {}),
  ...(e.netem !== undefined ? { netem: e.netem } : {}),
});

/** A pod's declarations of links to one peer (local = the pod), as the chunks stored for them. */
export function toDeclChunks(specs: LinkSpec[]): DeclChunk[] {
  const sorted = [...specs].sort((x, y) => (linkKey(x) < linkKey(y) ? -1 : 1));
  return chunked(sorted, DECL_CHUNK).map((part) => ({
    links: part.map((s) => ({
      local: chunkEnd(s.local),
      peer: chunkEnd(s.peer),
      ...(s.mtu !== undefined ? { mtu: s.mtu } : {}),
      ...(s.state !== undefined ? { state: s.state } : {}),
      ...(s.primary !== undefined ? { primary: s.primary } : {}),
      source: s.source,
    })),
  }));
}

const endOf = (id: string, e: ChunkEnd): EndSpec => {
  const [namespace, pod] = id.split("/") as [string, string];
  return { namespace, pod, ...e };
};

/** The declarations a chunk under decl/<declarer>/<peer>/ holds. */
export function fromDeclChunk(declarer: string, peer: string, chunk: DeclChunk): Declaration[] {
  return chunk.links.map((l) => {
    const spec: LinkSpec = {
      local: endOf(declarer, l.local),
      peer: endOf(peer, l.peer),
      ...(l.mtu !== undefined ? { mtu: l.mtu } : {}),
      ...(l.state !== undefined ? { state: l.state } : {}),
      ...(l.primary !== undefined ? { primary: l.primary } : {}),
      source: l.source,
    };
    return { declarer, link: linkKey(spec), spec };
  });
}

/** The link keys (with VNIs for VXLAN) of a pair chunk of pods a < b. */
export function pairLinks(a: string, b: string, chunk: PairChunk): Array<{ key: string; vni?: number }> {
  return chunk.links.map(([ifA, ifB], i) => {
    const key = linkKey({
      local: endOf(a, { ifname: ifA, ips: [] }),
      peer: endOf(b, { ifname: ifB, ips: [] }),
    });
    return chunk.block === undefined ? { key } : { key, vni: vniOf(chunk.block, i) };
  });
}

/** Links between two pods in the order a pair's chunks hold them, cut into chunks. */
export function pairChunksOf(links: Link[]): Link[][] {
  const sorted = [...links].sort((x, y) => (x.key < y.key ? -1 : 1));
  return chunked(sorted, LINK_CHUNK);
}

/** [a's interface, b's interface] of a link between pods a < b. */
export function pairIfnames(link: Link): [string, string] {
  const [a] = pairOf(podId(link.a), podId(link.b));
  return podId(link.a) === a ? [link.a.ifname, link.b.ifname] : [link.b.ifname, link.a.ifname];
}
