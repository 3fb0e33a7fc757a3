// What ratchet keeps in etcd, and where. Every key is built here, only from validated names
// (DNS-1123 pod and namespace names, interface names, IP addresses, numbers), under the
// configured prefix:
//
//   <p>/v1/endpoints/<ns>/<pod>                 Endpoint: the pod's current container on a node
//   <p>/v1/decl/<ns>/<pod>/<link>/<ns>/<pod>    a link touching the first pod, as declared by the second
//   <p>/v1/peers/<ns>/<pod>/<ns>/<pod>          the second pod's Endpoint, while it is registered and
//                                               declares a link to the first
//   <p>/v1/links/<link>                         LinkRecord: a link that was built (kind, VNI, ends)
//   <p>/v1/vni/<n>                              <link>: VNI n is taken
//   <p>/v1/vni-next                             next VNI to try
//   <p>/v1/nodes/<vtep>/endpoints/<ns>/<pod>    index: the node's endpoints (reconcile, GC)
//   <p>/v1/nodes/<vtep>/links/<link>            NodeLink: this node must build its end of a VXLAN link
//
// <link> is linkKey(): "ns/pod/ifname:ns/pod/ifname", the two ends sorted. A node's agent
// watches only <p>/v1/nodes/<its vtep>/, so etcd traffic grows with links, not nodes x links.
import type { EndSpec, LinkSpec } from "../pods/podspec.ts";

export const FIRST_VNI = 11;
export const MAX_VNI = 0xffffff;

export interface Endpoint {
  namespace: string;
  pod: string;
  containerId: string;
  /** CNI_IFNAME of the container (the boot network's interface). */
  ifname: string;
  netns: string;
  /** The node's VTEP address: parent_address, or the first IPv4 of parent_interface. */
  node: string;
  parentInterface?: string;
  /** The links this pod declares itself (labels or annotation). */
  links: LinkSpec[];
  createdAt: string;
}

/** A link in its direction-independent form: ends a and b in linkKey order. */
export interface Link {
  key: string;
  a: EndSpec;
  b: EndSpec;
  mtu?: number;
}

export interface LinkRecord extends Link {
  kind: "veth" | "vxlan";
  vni?: number;
  /** For each end ("ns/pod"), the node and container it was built for. */
  ends: Record<string, { node: string; containerId: string }>;
}

/** Tells a node's agent to build (or rebuild) its end of a VXLAN link. */
export interface NodeLink {
  key: string;
  /** The end on this node. */
  end: EndSpec;
  containerId: string;
  netns: string;
  vni: number;
  /** The other node's VTEP. */
  remote: string;
  mtu?: number;
  /** The node whose ADD wrote this entry (and already built its own end). */
  builtBy: string;
}

export const podId = (e: { namespace: string; pod: string }): string => `${e.namespace}/${e.pod}`;

/** The direction-independent form of a declared link. */
export function toLink(key: string, spec: LinkSpec): Link {
  const localFirst = `${podId(spec.local)}/${spec.local.ifname}` < `${podId(spec.peer)}/${spec.peer.ifname}`;
  const [a, b] = localFirst ? [spec.local, spec.peer] : [spec.peer, spec.local];
  return { key, a, b, ...(spec.mtu !== undefined ? { mtu: spec.mtu } : {}) };
}

/** The end of `link` that belongs to pod `id`, and the other one. */
export function sides(link: Link, id: string): { mine: EndSpec; theirs: EndSpec } {
  return podId(link.a) === id ? { mine: link.a, theirs: link.b } : { mine: link.b, theirs: link.a };
}

export class Keys {
  readonly root: string;
  constructor(prefix: string) {
    this.root = `${prefix.replace(/\/+$/, "")}/v1/`;
  }
  endpoint(id: string): string {
    return `${this.root}endpoints/${id}`;
  }
  declPrefix(id: string): string {
    return `${this.root}decl/${id}/`;
  }
  decl(id: string, link: string, declarer: string): string {
    return `${this.root}decl/${id}/${link}/${declarer}`;
  }
  /** Copies of the endpoints of the pods that declare links to `id` (see Linker.attach). */
  peersPrefix(id: string): string {
    return `${this.root}peers/${id}/`;
  }
  peer(id: string, declarer: string): string {
    return `${this.root}peers/${id}/${declarer}`;
  }
  link(link: string): string {
    return `${this.root}links/${link}`;
  }
  vni(n: number): string {
    return `${this.root}vni/${n}`;
  }
  get vniNext(): string {
    return `${this.root}vni-next`;
  }
  nodePrefix(node: string): string {
    return `${this.root}nodes/${node}/`;
  }
  nodeEndpoint(node: string, id: string): string {
    return `${this.root}nodes/${node}/endpoints/${id}`;
  }
  nodeEndpointsPrefix(node: string): string {
    return `${this.root}nodes/${node}/endpoints/`;
  }
  nodeLink(node: string, link: string): string {
    return `${this.root}nodes/${node}/links/${link}`;
  }
  nodeLinksPrefix(node: string): string {
    return `${this.root}nodes/${node}/links/`;
  }
  /** The link key and declarer of a decl key under declPrefix(id). */
  parseDecl(id: string, key: string): { link: string; declarer: string } | undefined {
    const rest = key.slice(this.declPrefix(id).length).split("/");
    // link = ns/pod/if:ns/pod/if -> 5 parts around the ":" ; declarer = ns/pod
    if (rest.length !== 7) return undefined;
    return { link: rest.slice(0, 5).join("/"), declarer: rest.slice(5).join("/") };
  }
}
