// Where ratchet keeps things in etcd. Every key is built (and parsed) here, only from
// validated names (DNS-1123 pod and namespace names, interface names, IP addresses, numbers),
// under the configured prefix:
//
//   <p>/v1/endpoints/<ns>/<pod>                 EndpointRecord: the pod's current container
//   <p>/v1/decl/<ns>/<pod>/<link>/<ns>/<pod>    a link touching the first pod, as declared by
//                                               the second (same namespace only: a declaration
//                                               into another namespace stays under its own pod)
//   <p>/v1/peers/<ns>/<pod>/<ns>/<pod>          the second pod's EndpointRecord, while it is
//                                               registered and declares a link to the first
//   <p>/v1/links/<link>                         LinkRecord: a link that was built
//   <p>/v1/vni/<n>                              <link>: VNI n is taken
//   <p>/v1/vni-next                             next VNI to try
//   <p>/v1/nodes/<node>/endpoints/<ns>/<pod>    index: the node's endpoints (reconcile, GC)
//   <p>/v1/nodes/<node>/links/<link>            TunnelEnd: this node must build its end
//   <p>/v1/observed/<link>/<ns>/<pod>           Observed: what the kernel holds for that end,
//                                               written by the agent of the end's node
//
// <link> is linkKey(): "ns/pod/ifname:ns/pod/ifname", the two ends sorted. A node's agent
// watches only <p>/v1/nodes/<its node>/ (<node>: its VTEP address, else its name), so etcd traffic grows with links, not nodes x links.

export const FIRST_VNI = 11;
export const MAX_VNI = 0xffffff;

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
  declPrefix(id: string): string {
    return `${this.root}decl/${id}/`;
  }
  declLinkPrefix(id: string, link: string): string {
    return `${this.root}decl/${id}/${link}/`;
  }
  decl(id: string, link: string, declarer: string): string {
    return `${this.root}decl/${id}/${link}/${declarer}`;
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
  link(link: string): string {
    return `${this.root}links/${link}`;
  }
  vni(n: number): string {
    return `${this.root}vni/${n}`;
  }
  get vniNext(): string {
    return `${this.root}vni-next`;
  }
  get observedPrefix(): string {
    return `${this.root}observed/`;
  }
  observed(link: string, id: string): string {
    return `${this.root}observed/${link}/${id}`;
  }
  nodeEndpoint(vtep: string, id: string): string {
    return `${this.root}nodes/${vtep}/endpoints/${id}`;
  }
  nodeEndpointsPrefix(vtep: string): string {
    return `${this.root}nodes/${vtep}/endpoints/`;
  }
  tunnelEnd(vtep: string, link: string): string {
    return `${this.root}nodes/${vtep}/links/${link}`;
  }
  tunnelEndsPrefix(vtep: string): string {
    return `${this.root}nodes/${vtep}/links/`;
  }

  /**
   * Any decl key: the pod it is filed under, the link and the declarer. Undefined for a key
   * of another shape (ns/pod, then the link's 5 parts around ":", then the declarer's ns/pod).
   */
  parseDecl(key: string): { id: string; link: string; declarer: string } | undefined {
    if (!key.startsWith(this.allDeclsPrefix)) return undefined;
    const parts = key.slice(this.allDeclsPrefix.length).split("/");
    if (parts.length !== 9) return undefined;
    return {
      id: parts.slice(0, 2).join("/"),
      link: parts.slice(2, 7).join("/"),
      declarer: parts.slice(7).join("/"),
    };
  }
  /** The "ns/pod" of a key under endpointsPrefix, nodeEndpointsPrefix(vtep) and the like. */
  idAfter(prefix: string, key: string): string | undefined {
    if (!key.startsWith(prefix)) return undefined;
    const rest = key.slice(prefix.length);
    return rest.split("/").length === 2 ? rest : undefined;
  }
  /** The link key of a key under `prefix` (linksPrefix, tunnelEndsPrefix(vtep)). */
  linkAfter(prefix: string, key: string): string | undefined {
    if (!key.startsWith(prefix)) return undefined;
    const rest = key.slice(prefix.length);
    return /^[^/:]+\/[^/:]+\/[^/:]+:[^/:]+\/[^/:]+\/[^/:]+$/.test(rest) ? rest : undefined;
  }
}
