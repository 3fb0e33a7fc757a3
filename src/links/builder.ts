// The kernel side of links: builds and removes link ends through src/netlink, and never
// changes an interface that does not carry ratchet's mark for that very link. The mark is
// IFLA_IFALIAS "ratchet:v1:<digest of the link key>", set on every end ratchet creates; an
// interface of the wanted name without it belongs to someone else, and is left alone.
//
// The kernel takes no alias in the create request, so the alias follows in a second one.
// An end is created in ratchet's device group (IFLA_GROUP, which the create request does
// carry): an agent killed between the two requests leaves an end with no alias in that
// group, which a retry recognises as its own half-built end.
import { createHash } from "node:crypto";
import { CniError, Code, NotOursError } from "../cni/errors.ts";
import { show } from "../cni/names.ts";
import type { Logger } from "../log.ts";
import {
  addAddress,
  addVethPair,
  addVxlan,
  deleteAddress,
  deleteLink,
  deleteRootQdisc,
  getLink,
  getRootQdisc,
  type Link as KernelLink,
  LinkNotFoundError,
  listAddresses,
  NetnsNotFoundError,
  sameImpairment,
  setLink,
  setLinkUp,
  setRootQdisc,
} from "../netlink/index.ts";
import { type LinkState, toImpairment } from "./impair.ts";
import type { EndSpec } from "./spec.ts";

/** The mark of every interface ratchet builds for `link` (at most 255 bytes: a digest). */
export function markOf(link: string): string {
  return `ratchet:v1:${createHash("sha256").update(link).digest("hex").slice(0, 32)}`;
}

/** The device group of every end ratchet creates ("RTCH"). */
export const RATCHET_GROUP = 0x52544348;

function isOurs(link: string, l: KernelLink): boolean {
  if (l.alias === markOf(link)) return true;
  // Half-built by an agent that died before it could set the alias.
  return l.alias === "" && l.group === RATCHET_GROUP && (l.kind === "veth" || l.kind === "vxlan");
}

/** Where one end lives: its pod (for messages) and netns (from this node's own CNI calls). */
export interface Place {
  pod: string;
  netns: string;
}

export type Presence =
  | { state: "absent" }
  | { state: "ours"; link: KernelLink }
  | { state: "foreign"; link: KernelLink };

/** What holds `ifname` in `netns` now, and whether it is ratchet's for `link`. */
export function presence(link: string, ifname: string, netns: string): Presence {
  let l: KernelLink;
  try {
    l = getLink(ifname, netns);
  } catch (err) {
    if (err instanceof LinkNotFoundError || err instanceof NetnsNotFoundError) return { state: "absent" };
    throw err;
  }
  return isOurs(link, l) ? { state: "ours", link: l } : { state: "foreign", link: l };
}

function notOurs(link: string, ifname: string, at: Place, kind: string): NotOursError {
  return new NotOursError(
    `link ${link}: interface ${show(ifname)} in netns ${show(at.netns)} of pod ${at.pod} already exists ` +
      `(${kind || "no kind"}) and was not built by ratchet for this link: it is left alone; ` +
      "rename the link's interface or remove that interface",
  );
}

/** Makes way for a new end: removes ratchet's earlier end of this link, refuses anything else. */
function clear(link: string, end: EndSpec, at: Place): void {
  const p = presence(link, end.ifname, at.netns);
  if (p.state === "foreign")
    throw notOurs(link, end.ifname, at, p.link.kind === "other" ? p.link.infoKind : p.link.kind);
  if (p.state === "ours") deleteLink(end.ifname, at.netns);
}

/** What one end should be besides existing: its link's MTU and state, its own netem. */
export interface EndProps {
  mtu: number | undefined;
  state: LinkState | undefined;
}

/**
 * Makes an end of ours match its declaration in place: MTU, addresses (the declared ones,
 * and no other global ones), root qdisc (tbf, netem or the kernel's default) and admin
 * state. Returns what it changed. The qdisc is set before the link comes up.
 */
export function converge(link: string, end: EndSpec, at: Place, props: EndProps): string[] {
  const p = presence(link, end.ifname, at.netns);
  if (p.state !== "ours")
    throw new CniError(Code.Netlink, `link ${link}: ${end.ifname} is not there to change`);
  const changed: string[] = [];
  const l = p.link;
  if (props.mtu !== undefined && l.mtu !== props.mtu) {
    setLink(end.ifname, { mtu: props.mtu }, at.netns);
    changed.push(`mtu ${props.mtu}`);
  }
  const have = listAddresses(end.ifname, at.netns).filter((a) => a.scope !== "link");
  const haveText = new Set(have.map((a) => `${a.address}/${a.prefixLength}`));
  for (const ip of end.ips) {
    if (haveText.has(ip)) continue;
    addAddress(end.ifname, ip, at.netns);
    changed.push(`+${ip}`);
  }
  for (const a of haveText) {
    if (end.ips.includes(a)) continue;
    deleteAddress(end.ifname, a, at.netns);
    changed.push(`-${a}`);
  }
  const want = toImpairment(end.netem);
  const now = getRootQdisc(end.ifname, at.netns)?.impairment;
  try {
    if (want && !sameImpairment(now, want)) {
      setRootQdisc(end.ifname, want, at.netns);
      changed.push(`qdisc ${want.kind}`);
    } else if (!want && now && deleteRootQdisc(end.ifname, at.netns)) {
      changed.push("qdisc removed");
    }
  } catch (err) {
    const msg = `link ${link}, interface ${show(end.ifname)}: ${(err as Error).message}`;
    throw new CniError(Code.Netlink, msg, "", { cause: err });
  }
  const up = (props.state ?? "up") === "up";
  if (up !== l.up) {
    setLinkUp(end.ifname, up, at.netns);
    changed.push(up ? "up" : "down");
  }
  return changed;
}

export interface BuiltEnd {
  name: string;
  mac: string;
  sandbox: string;
}

/**
 * Builds a veth pair for `link` between two pods of this node, both ends marked, addressed
 * and up. Either everything is built, or nothing of it is left.
 */
export function buildVeth(
  link: string,
  props: EndProps,
  mine: EndSpec,
  me: Place,
  theirs: EndSpec,
  peer: Place,
): BuiltEnd {
  const { mtu } = props;
  clear(link, mine, me);
  clear(link, theirs, peer);
  const mark = markOf(link);
  const end = (e: EndSpec, at: Place) => ({
    name: e.ifname,
    ns: at.netns,
    alias: mark,
    group: RATCHET_GROUP,
    ...(mtu ? { mtu } : {}),
    ...(e.mac ? { mac: e.mac } : {}),
  });
  addVethPair({ a: end(mine, me), b: end(theirs, peer) });
  try {
    converge(link, mine, me, props);
    converge(link, theirs, peer, props);
    const l = getLink(mine.ifname, me.netns);
    return { name: mine.ifname, mac: l.mac, sandbox: me.netns };
  } catch (err) {
    removeEnd(link, mine.ifname, me);
    throw err;
  }
}

export interface TunnelSpec extends EndProps {
  vni: number;
  remote: string;
  underlay: string | undefined;
  hostNetns: string | undefined;
}

/**
 * Makes this node's end of a VXLAN link match `t`: created, finished (addresses, up) when it
 * is right already, or rebuilt when it points elsewhere or `fresh` asks for a new one (the
 * other side was rebuilt: no neighbour entry for its old MAC may survive).
 */
export function buildTunnelEnd(
  link: string,
  end: EndSpec,
  at: Place,
  t: TunnelSpec,
  fresh: boolean,
): BuiltEnd {
  if (!t.underlay) {
    throw new CniError(
      Code.InvalidConfig,
      "invalid network configuration: field parent_interface: missing, and it is needed for VXLAN links " +
        "(links between pods on different nodes)",
    );
  }
  const p = presence(link, end.ifname, at.netns);
  if (p.state === "foreign")
    throw notOurs(link, end.ifname, at, p.link.kind === "other" ? p.link.infoKind : p.link.kind);
  const right =
    p.state === "ours" && p.link.kind === "vxlan" && p.link.vni === t.vni && p.link.remote === t.remote;
  if (right && !fresh) {
    // Changed in place: addresses, qdisc, state (also what a killed agent left unfinished).
    converge(link, end, at, t);
    return { name: end.ifname, mac: p.link.mac, sandbox: at.netns };
  }
  if (p.state === "ours") deleteLink(end.ifname, at.netns);
  addVxlan({
    name: end.ifname,
    ns: at.netns,
    vni: t.vni,
    remote: t.remote,
    underlay: t.underlay,
    alias: markOf(link),
    group: RATCHET_GROUP,
    // Up only once complete: whoever sees it up sees its addresses too.
    up: false,
    ...(t.hostNetns ? { hostNs: t.hostNetns } : {}),
    ...(t.mtu ? { mtu: t.mtu } : {}),
    ...(end.mac ? { mac: end.mac } : {}),
  });
  try {
    converge(link, end, at, t);
    return { name: end.ifname, mac: getLink(end.ifname, at.netns).mac, sandbox: at.netns };
  } catch (err) {
    removeEnd(link, end.ifname, at);
    throw err;
  }
}

/**
 * Removes ratchet's end of `link` named `ifname`: true when it was there. An interface of
 * that name that is not ratchet's for this link is never touched (false, and logged).
 */
export function removeEnd(link: string, ifname: string, at: Place, log?: Logger): boolean {
  const p = presence(link, ifname, at.netns);
  if (p.state === "absent") return false;
  if (p.state === "foreign") {
    log?.warn("not removing an interface ratchet did not build for this link", {
      link,
      pod: at.pod,
      ifname,
    });
    return false;
  }
  try {
    deleteLink(ifname, at.netns);
    return true;
  } catch (err) {
    if (err instanceof LinkNotFoundError || err instanceof NetnsNotFoundError) return false;
    throw err;
  }
}
