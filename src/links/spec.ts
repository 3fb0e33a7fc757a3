// A link as pods declare it, and its direction-independent form. Pure data and rules, no
// I/O: the pod parser, the store and the planner all speak these types.
import { show } from "../cni/names.ts";
import { type LinkState, type Netem, sameNetem } from "./impair.ts";

export interface EndSpec {
  namespace: string;
  pod: string;
  ifname: string;
  /** CIDR, e.g. "192.168.2.100/24" or "fd00::1/64"; canonical text. */
  ips: string[];
  /** Lower-case, unicast. */
  mac?: string;
  /** Impairment on this end's egress ({} declares none). */
  netem?: Netem;
}

export interface LinkSpec {
  local: EndSpec;
  peer: EndSpec;
  mtu?: number;
  /** Admin state of both ends; "up" when not given. */
  state?: LinkState;
  primary?: boolean;
  source: "labels" | "annotation";
}

export function endId(e: EndSpec): string {
  // None of namespace, pod name or interface name may contain "/" or ":", so this is unambiguous.
  return `${e.namespace}/${e.pod}/${e.ifname}`;
}

/** A canonical, direction-independent identifier: the two ends `namespace/pod/ifname`, sorted, joined by ":". */
export function linkKey(spec: Pick<LinkSpec, "local" | "peer">): string {
  const a = endId(spec.local);
  const b = endId(spec.peer);
  return a < b ? `${a}:${b}` : `${b}:${a}`;
}

/** The same link seen from the other end. */
export function reverseLink(spec: LinkSpec): LinkSpec {
  return { ...spec, local: spec.peer, peer: spec.local };
}

function sameSet(a: string[], b: string[]): boolean {
  return a.length === b.length && a.every((x) => b.includes(x));
}

/**
 * What differs between two declarations of one link (from either side): addresses must be
 * equal; MTU and MACs must be equal where both give one (labels cannot carry them); and at
 * most one side may be primary. Empty when they agree. Links with different keys differ in that.
 */
export function linkDifferences(a: LinkSpec, b: LinkSpec): string[] {
  if (linkKey(a) !== linkKey(b)) return [`they are different links (${linkKey(a)} and ${linkKey(b)})`];
  // Orient b like a.
  const o = endId(a.local) === endId(b.local) ? b : reverseLink(b);
  const sameSide = o === b;
  const out: string[] = [];
  for (const side of ["local", "peer"] as const) {
    const x = a[side];
    const y = o[side];
    const name = endId(x);
    if (!sameSet(x.ips, y.ips))
      out.push(`addresses of ${name}: ${JSON.stringify(x.ips)} vs ${JSON.stringify(y.ips)}`);
    if (x.mac !== undefined && y.mac !== undefined && x.mac !== y.mac)
      out.push(`MAC of ${name}: ${show(x.mac)} vs ${show(y.mac)}`);
    if (x.netem !== undefined && y.netem !== undefined && !sameNetem(x.netem, y.netem))
      out.push(`netem of ${name}: ${JSON.stringify(x.netem)} vs ${JSON.stringify(y.netem)}`);
  }
  if (a.mtu !== undefined && b.mtu !== undefined && a.mtu !== b.mtu) out.push(`MTU: ${a.mtu} vs ${b.mtu}`);
  if (a.state !== undefined && b.state !== undefined && a.state !== b.state)
    out.push(`state: ${a.state} vs ${b.state}`);
  // Both pods claiming primary is a conflict; one pod saying it twice is not.
  if (!sameSide && a.primary === true && b.primary === true) out.push("both ends are primary");
  return out;
}

export function sameLink(a: LinkSpec, b: LinkSpec): boolean {
  return linkDifferences(a, b).length === 0;
}

/** Two agreeing declarations as one, oriented like `a`: the optional values either gives. */
export function mergeLinks(a: LinkSpec, b: LinkSpec): LinkSpec {
  const o = endId(a.local) === endId(b.local) ? b : reverseLink(b);
  const end = (x: EndSpec, y: EndSpec): EndSpec => {
    const mac = x.mac ?? y.mac;
    const netem = x.netem ?? y.netem;
    return { ...x, ...(mac === undefined ? {} : { mac }), ...(netem === undefined ? {} : { netem }) };
  };
  const mtu = a.mtu ?? b.mtu;
  const state = a.state ?? b.state;
  const primary = a.primary === true || (o === b && b.primary === true);
  return {
    local: end(a.local, o.local),
    peer: end(a.peer, o.peer),
    ...(mtu !== undefined ? { mtu } : {}),
    ...(state !== undefined ? { state } : {}),
    ...(primary ? { primary: true } : {}),
    source: a.source,
  };
}

/** A link in its direction-independent form: ends a and b in linkKey order. */
export interface Link {
  key: string;
  a: EndSpec;
  b: EndSpec;
  mtu?: number;
  state?: LinkState;
}

export const podId = (e: { namespace: string; pod: string }): string => `${e.namespace}/${e.pod}`;

/** The direction-independent form of a declared link. */
export function toLink(key: string, spec: LinkSpec): Link {
  const localFirst = endId(spec.local) < endId(spec.peer);
  const [a, b] = localFirst ? [spec.local, spec.peer] : [spec.peer, spec.local];
  // Copies: merging values of other declarations must not change the declaration itself.
  return {
    key,
    a: { ...a },
    b: { ...b },
    ...(spec.mtu !== undefined ? { mtu: spec.mtu } : {}),
    ...(spec.state !== undefined ? { state: spec.state } : {}),
  };
}

/** The end of `link` that belongs to pod `id`, and the other one. */
export function sides(link: Link, id: string): { mine: EndSpec; theirs: EndSpec } {
  return podId(link.a) === id ? { mine: link.a, theirs: link.b } : { mine: link.b, theirs: link.a };
}
