// The rules of linking, as pure functions: from a pod's declared links and what the store
// holds (declarations, peers' endpoints, link records) to a plan: which links to build now,
// which wait, which are refused, which old declarations to drop. No I/O: unit tests are tables.
//
// Consent: in one namespace, a declaration by either pod links them (a pod with only
// `ratchet: "true"` takes its peers' declarations). Across namespaces, both pods must declare
// the link; a declaration alone is inert and can never make the other pod's ADD fail.
import { CniError, Code } from "../cni/errors.ts";
import { show } from "../cni/names.ts";
import type { EndpointRecord, LinkKind } from "../store/records.ts";
import { type Link, type LinkSpec, linkDifferences, linkKey, podId, sides, toLink } from "./spec.ts";

/** A link as one pod declared it. */
export interface Declaration {
  declarer: string;
  link: string;
  spec: LinkSpec;
}

export interface PlanInput {
  /** "ns/pod" of the pod being added. */
  id: string;
  /** Its container (CNI_CONTAINERID). */
  containerId: string;
  /** CNI_IFNAME of this call: the boot network's interface, never a link's. */
  cniIfname: string;
  /** This node (its VTEP address, else its name). */
  node: string;
  /** This node's VTEP address, if it has one. */
  vtep: string | undefined;
  /** The links the pod declares now (labels, annotation). */
  declared: LinkSpec[];
  /** Declarations by other pods of links to this one, read from the store. */
  others: Declaration[];
  /** The pods this pod declared links to before (its declarations in the store). */
  previousPeers: Iterable<string>;
  /** The links recorded as built between this pod and its peers, by key. */
  built?: Map<string, BuiltLink>;
  /** Registered peers' endpoints, by "ns/pod". */
  peers: Map<string, EndpointRecord>;
}

export interface Build {
  link: Link;
  peer: EndpointRecord;
  kind: LinkKind;
  /** Built already for these two containers: change it in place, never re-create it. */
  update: boolean;
}

export interface Plan {
  builds: Build[];
  /**
   * Links not built now: waiting (peer not registered, consent missing), refused (they would
   * touch the peer's own interface) or in conflict (declared differently across namespaces).
   */
  waits: Array<{ link: string; peer: string; state: "waiting" | "refused" | "conflict"; why: string }>;
  /** Pods this pod declared links to before and declares none to now. */
  stale: string[];
  /** Links built for this pod that no declaration keeps: their ends and records go. */
  removals: Array<{ link: string; ifname: string; peer: string }>;
  /** Every link of the pod and its interface name on this pod (for DEL when etcd is away). */
  ifnames: Map<string, string>;
}

const sameNamespace = (x: string, y: string) => x.split("/")[0] === y.split("/")[0];

/** Is `d` a declaration the rules let count for pod `id`? */
function counts(id: string, d: Declaration): boolean {
  const k = linkKey(d.spec);
  if (k !== d.link) return false; // a record whose key and value disagree
  const ends = d.link.split(":").map((e) => e.split("/").slice(0, 2).join("/"));
  return ends.includes(d.declarer) && ends.includes(id);
}

/** A link recorded as built: its kind and, per pod ("ns/pod"), the node and container. */
export interface BuiltLink {
  kind: LinkKind;
  ends: Record<string, { node: string; containerId: string }>;
}

/** Is `prev` this very link, built for these two containers (so it changes in place)? */
export function builtFor(
  prev: BuiltLink | undefined,
  kind: LinkKind,
  id: string,
  containerId: string,
  peer: EndpointRecord,
): boolean {
  return (
    prev !== undefined &&
    prev.kind === kind &&
    prev.ends[id]?.containerId === containerId &&
    prev.ends[podId(peer)]?.containerId === peer.containerId
  );
}

/** One link from its agreeing declarations: the optional values any of them gives. */
export function linkOf(key: string, decls: Declaration[]): Link {
  const [first, ...rest] = decls;
  if (!first) throw new CniError(Code.Internal, `no declaration of link ${key}`);
  const link = toLink(key, first.spec);
  for (const other of rest) {
    const o = toLink(key, other.spec);
    if (link.mtu === undefined && o.mtu !== undefined) link.mtu = o.mtu;
    if (link.a.mac === undefined && o.a.mac !== undefined) link.a.mac = o.a.mac;
    if (link.b.mac === undefined && o.b.mac !== undefined) link.b.mac = o.b.mac;
    if (link.a.netem === undefined && o.a.netem !== undefined) link.a.netem = o.a.netem;
    if (link.b.netem === undefined && o.b.netem !== undefined) link.b.netem = o.b.netem;
    if (link.state === undefined && o.state !== undefined) link.state = o.state;
  }
  return link;
}

/**
 * Groups the declarations that count for pod `id` by link. A conflict between two pods of
 * one namespace refuses the ADD (code 103); a conflict involving a pod of another namespace
 * only makes that link wait.
 */
export function plan(input: PlanInput): Plan {
  const { id } = input;
  const mine = new Map(input.declared.map((s) => [linkKey(s), s]));
  const groups = new Map<string, Declaration[]>();
  for (const [link, spec] of mine) groups.set(link, [{ declarer: id, link, spec }]);
  for (const d of input.others) {
    if (d.declarer === id || !counts(id, d)) continue;
    // Across namespaces a declaration counts only for a link this pod declares too.
    if (!sameNamespace(d.declarer, id) && !mine.has(d.link)) continue;
    const list = groups.get(d.link) ?? [];
    list.push(d);
    groups.set(d.link, list);
  }

  const waits: Plan["waits"] = [];
  const agreed = new Map<string, Link>();
  for (const [k, list] of groups) {
    const [first, ...rest] = list as [Declaration, ...Declaration[]];
    let conflict: string | undefined;
    for (const other of rest) {
      const diff = linkDifferences(first.spec, other.spec);
      if (diff.length === 0) continue;
      conflict = `declared differently by ${first.declarer} and ${other.declarer}: ${diff.join("; ")}`;
      if (list.every((d) => sameNamespace(d.declarer, id))) {
        throw new CniError(Code.InvalidPodSpec, `pod ${id}: link ${k} is ${conflict}`);
      }
    }
    const link = linkOf(k, list);
    const peer = podId(sides(link, id).theirs);
    if (conflict) {
      waits.push({ link: k, peer, state: "conflict", why: conflict });
      continue;
    }
    agreed.set(k, link);
  }

  // This pod's interface names: never CNI_IFNAME, never one name for two links.
  const ifnames = new Map<string, string>();
  const byName = new Map<string, string>();
  for (const [k, link] of agreed) {
    const { mine: end } = sides(link, id);
    const declaredHere = mine.has(k);
    const fail = (problem: string) => {
      throw new CniError(Code.InvalidPodSpec, `pod ${id}: link ${k} ${problem}`);
    };
    if (end.ifname === input.cniIfname) {
      fail(
        `uses ${show(end.ifname)}, the boot network's CNI_IFNAME${declaredHere ? "" : " (declared by its peer)"}`,
      );
    }
    const taken = byName.get(end.ifname);
    if (taken) fail(`uses interface ${show(end.ifname)}, and so does link ${taken}`);
    byName.set(end.ifname, k);
    ifnames.set(k, end.ifname);
  }

  const builds: Build[] = [];
  for (const [k, link] of agreed) {
    const peerId = podId(sides(link, id).theirs);
    const peer = input.peers.get(peerId);
    if (!peer) {
      waits.push({ link: k, peer: peerId, state: "waiting", why: "the peer is not registered yet" });
      continue;
    }
    if (sides(link, id).theirs.ifname === peer.ifname) {
      waits.push({
        link: k,
        peer: peerId,
        state: "refused",
        why: `it names the peer's CNI_IFNAME ${show(peer.ifname)}`,
      });
      continue;
    }
    if (!sameNamespace(peerId, id)) {
      const declarers = new Set((groups.get(k) ?? []).map((d) => d.declarer));
      if (!declarers.has(id) || !declarers.has(peerId)) {
        waits.push({
          link: k,
          peer: peerId,
          state: "waiting",
          why: "a link across namespaces needs both pods to declare it",
        });
        continue;
      }
    }
    const kind = peer.node === input.node ? "veth" : "vxlan";
    if (kind === "vxlan" && (!peer.vtep || !input.vtep)) {
      waits.push({
        link: k,
        peer: peerId,
        state: "waiting",
        why: "the pods are on different nodes and a VXLAN link needs parent_interface on both",
      });
      continue;
    }
    const update = builtFor(input.built?.get(k), kind, id, input.containerId, peer);
    builds.push({ link, peer, kind, update });
  }

  const declaredPeers = new Set(input.declared.map((s) => podId(s.peer)));
  const stale = [...new Set(input.previousPeers)].filter((p) => !declaredPeers.has(p));
  // A built link that no declaration keeps is gone.
  const removals: Plan["removals"] = [];
  for (const k of input.built?.keys() ?? []) {
    if (groups.has(k)) continue;
    const ends = k.split(":").map((e) => e.split("/"));
    const mine = ends.find((e) => `${e[0]}/${e[1]}` === id);
    const theirs = ends.find((e) => e !== mine);
    if (!mine || !theirs) continue;
    removals.push({ link: k, ifname: mine[2] as string, peer: `${theirs[0]}/${theirs[1]}` });
  }
  return { builds, waits, stale, removals, ifnames };
}
