// Where ratchet keeps things in etcd. Every key is built (and parsed) here, only from
// validated names (DNS-1123 pod and namespace names, IP addresses, numbers), under the
// configured prefix. A link is stored once, in chunks grouped by the pair of pods it joins,
// so bytes per link are constant and a pod with thousands of links costs a few dozen keys:
//
//   <p>/v1/endpoints/<ns>/<pod>                      EndpointRecord: the pod's current container
//   <p>/v1/decl/<ns>/<pod>/<ns>/<peer>/<c>           DeclChunk c: up to DECL_CHUNK of the pod's
//                                                    declarations of links to <peer>
//   <p>/v1/peers/<ns>/<pod>/<ns>/<declarer>          the declarer's EndpointRecord, while it is
//                                                    registered and declares links to the pod
//                                                    (same namespace only; one per pair of pods);
//                                                    "gone" once it went and its declarations
//                                                    stay for the pod's return (decode.ts GONE)
//   <p>/v1/links/<ns>/<a>/<ns>/<b>/<c>               PairChunk c: up to LINK_CHUNK built links
//                                                    between pods a < b: kind, VNI block, containers
//   <p>/v1/vni/<n>                                   VNI block n is taken: the pair chunk holding it
//   <p>/v1/vni-next                                  the next VNI block to try
//   <p>/v1/nodes/<node>/endpoints/<ns>/<pod>         index: the node's endpoints (reconcile, GC)
//   <p>/v1/nodes/<node>/links/<ns>/<a>/<ns>/<b>/<c>  TunnelChunk: this node's ends of pair chunk c
//   <p>/v1/observed/<ns>/<pod>/<c>                   ObservedChunk c: what the kernel holds for up
//                                                    to OBSERVED_CHUNK of the pod's ends, written by
//                                                    the agent of its node
//
// A node's agent watches only <p>/v1/nodes/<its node>/ (<node>: its VTEP address, else its
// name), so etcd traffic grows with links, not nodes x links.

export const FIRST_VNI = 11;
export const MAX_VNI = 0xffffff;
/** Links per pair chunk, and VNIs per block: a VXLAN pair chunk holds exactly one block. */
export const LINK_CHUNK = 64;
/** Observed ends per observed chunk (each about 250 bytes). */
export const OBSERVED_CHUNK = 512;
/** Declarations per declaration chunk. */
export const DECL_CHUNK = 128;
/** VNI block n holds FIRST_VNI + n * LINK_CHUNK and the LINK_CHUNK - 1 VNIs after it. */
export const VNI_BLOCKS = Math.floor((MAX_VNI - FIRST_VNI + 1) / LINK_CHUNK);
export const vniOf = (block: number, i: number): number => FIRST_VNI + block * LINK_CHUNK + i;

/** Two pods in key order (the first sorts first): the pair a chunk of links belongs to. */
export function pairOf(x: string, y: string): [string, string] {
  return x < y ? [x, y] : [y, x];
}

const chunk = (c: number) => String(c).padStart(4, "0");

export class Keys {
  readonly root: string;
  constructor(prefix: string) {
    this.root = `${prefix.replace(/\/+$/, "")}/v1/`;
  }
  get endpointsPrefix(): string {
    return `${this.root}endpoints/`;
  }
  endpoint(id: string): string {
    return `${this.root}endpoints/${id}`;
  }
  get allDeclsPrefix(): string {
    return `${this.root}decl/`;
  }
  /** Every declaration chunk of pod `id`. */
  declPrefix(id: string): string {
    return `${this.root}decl/${id}/`;
  }
  /** Pod `id`'s declaration chunks of links to `peer`. */
  declPairPrefix(id: string, peer: string): string {
    return `${this.root}decl/${id}/${peer}/`;
  }
  decl(id: string, peer: string, c: number): string {
    return `${this.root}decl/${id}/${peer}/${chunk(c)}`;
  }
  /** Copies of the endpoints of the pods that declare links to `id`. */
  peersPrefix(id: string): string {
    return `${this.root}peers/${id}/`;
  }
  peer(id: string, declarer: string): string {
    return `${this.root}peers/${id}/${declarer}`;
  }
  get linksPrefix(): string {
    return `${this.root}links/`;
  }
  /** The chunks of built links between two pods (in either order). */
  pairPrefix(x: string, y: string): string {
    const [a, b] = pairOf(x, y);
    return `${this.root}links/${a}/${b}/`;
  }
  pairChunk(x: string, y: string, c: number): string {
    return `${this.pairPrefix(x, y)}${chunk(c)}`;
  }
  vni(block: number): string {
    return `${this.root}vni/${block}`;
  }
  get vniPrefix(): string {
    return `${this.root}vni/`;
  }
  get vniNext(): string {
    return `${this.root}vni-next`;
  }
  get observedPrefix(): string {
    return `${this.root}observed/`;
  }
  observedPodPrefix(id: string): string {
    return `${this.root}observed/${id}/`;
  }
  observed(id: string, c: number): string {
    return `${this.observedPodPrefix(id)}${chunk(c)}`;
  }
  /** A key under observedPrefix: its pod and chunk number. */
  parseObserved(key: string): { id: string; chunk: number } | undefined {
    const parts = this.parts(this.observedPrefix, key, 3);
    if (!parts || !/^\d{4}$/.test(parts[2] as string)) return undefined;
    return { id: parts.slice(0, 2).join("/"), chunk: Number(parts[2]) };
  }
  nodeEndpoint(node: string, id: string): string {
    return `${this.root}nodes/${node}/endpoints/${id}`;
  }
  nodeEndpointsPrefix(node: string): string {
    return `${this.root}nodes/${node}/endpoints/`;
  }
  tunnelPairPrefix(node: string, x: string, y: string): string {
    const [a, b] = pairOf(x, y);
    return `${this.root}nodes/${node}/links/${a}/${b}/`;
  }
  tunnelChunk(node: string, x: string, y: string, c: number): string {
    return `${this.tunnelPairPrefix(node, x, y)}${chunk(c)}`;
  }
  tunnelsPrefix(node: string): string {
    return `${this.root}nodes/${node}/links/`;
  }

  /** A key under decl/: the declarer, the peer and the chunk number. */
  parseDecl(key: string): { id: string; peer: string; chunk: number } | undefined {
    const parts = this.parts(this.allDeclsPrefix, key, 5);
    if (!parts) return undefined;
    return { id: parts.slice(0, 2).join("/"), peer: parts.slice(2, 4).join("/"), chunk: Number(parts[4]) };
  }
  /** A pair chunk key under `prefix` (linksPrefix, tunnelsPrefix(node)): its pods and chunk. */
  parsePair(prefix: string, key: string): { a: string; b: string; chunk: number } | undefined {
    const parts = this.parts(prefix, key, 5);
    if (!parts) return undefined;
    const a = parts.slice(0, 2).join("/");
    const b = parts.slice(2, 4).join("/");
    if (a > b) return undefined;
    return { a, b, chunk: Number(parts[4]) };
  }
  /** The "ns/pod" of a key under endpointsPrefix, nodeEndpointsPrefix(node), peersPrefix(id). */
  idAfter(prefix: string, key: string): string | undefined {
    const parts = this.parts(prefix, key, 2);
    return parts ? parts.join("/") : undefined;
  }
  /** The VNI block of a key under vniPrefix. */
  blockOf(key: string): number | undefined {
    const parts = this.parts(this.vniPrefix, key, 1);
    const n = parts ? Number(parts[0]) : Number.NaN;
    return Number.isInteger(n) && n >= 0 && n < VNI_BLOCKS ? n : undefined;
  }

  /** The `n` "/"-separated parts after `prefix`, each non-empty; chunk numbers are 4 digits. */
  private parts(prefix: string, key: string, n: number): string[] | undefined {
    if (!key.startsWith(prefix)) return undefined;
    const parts = key.slice(prefix.length).split("/");
    if (parts.length !== n || parts.some((p) => p === "" || p.includes(":"))) return undefined;
    if (n === 5 && !/^\d{4}$/.test(parts[4] as string)) return undefined;
    return parts;
  }
}
