// Link verbs: list, get, create (veth, vxlan), change, move, delete. Each verb opens one
// socket in the namespace it acts on and closes it before returning. Decoding is link-info.ts.
import { interfaceNameProblem } from "../cni/names.ts";
import { Errno, ErrnoError, LinkNotFoundError, NetlinkError, errnoText, inNetns } from "./errors.ts";
import { parseIp, parseMac } from "./ip.ts";
import { type Link, decodeLink } from "./link-info.ts";
import {
  AF_UNSPEC,
  Attr,
  Bytes,
  IFF_UP,
  IFLA_ADDRESS,
  IFLA_EXT_MASK,
  IFLA_IFALIAS,
  IFLA_GROUP,
  IFLA_IFNAME,
  IFLA_INFO_DATA,
  IFLA_INFO_KIND,
  IFLA_LINKINFO,
  IFLA_MTU,
  IFLA_NET_NS_FD,
  IFLA_VXLAN_GROUP,
  IFLA_VXLAN_GROUP6,
  IFLA_VXLAN_ID,
  IFLA_VXLAN_LEARNING,
  IFLA_VXLAN_LINK,
  IFLA_VXLAN_LOCAL,
  IFLA_VXLAN_LOCAL6,
  IFLA_VXLAN_PORT,
  IfInfoMsg,
  NLM_F_CREATE,
  NLM_F_EXCL,
  RTEXT_FILTER_SKIP_STATS,
  RTM_DELLINK,
  RTM_GETLINK,
  RTM_NEWLINK,
  RTM_SETLINK,
  VETH_INFO_PEER,
  attrBe16,
  attrString,
  attrU32,
  attrU8,
} from "./nl.ts";
import { type NetnsFd, openNetns, socketIn } from "./netns.ts";
import type { NetlinkSocket } from "./socket.ts";

export {
  decodeLink,
  type Link,
  type LinkBase,
  type LinkStats,
  type OperState,
  type OtherLink,
  type VethLink,
  type VxlanLink,
} from "./link-info.ts";

// --- shared plumbing ------------------------------------------------------------------------

/** Rethrows a lower-level failure as a NetlinkError that says what failed and on what. */
export function fail(what: string, err: unknown, linkMayBeMissing = false): never {
  if (err instanceof NetlinkError) throw err;
  if (err instanceof ErrnoError) {
    const message = `failed to ${what}: ${errnoText(err.errno)}${err.extack ? `: ${err.extack}` : ""}`;
    if (linkMayBeMissing && err.errno === Errno.ENODEV)
      throw new LinkNotFoundError(message, { cause: err, errno: err.errno });
    throw new NetlinkError(message, { cause: err, errno: err.errno });
  }
  if (err instanceof RangeError) throw new NetlinkError(`failed to ${what}: ${err.message}`, { cause: err });
  throw err;
}

/** Runs `fn` with a socket in `ns`, closing it afterwards; failures become NetlinkErrors. */
export function withSocket<T>(
  ns: string | undefined,
  what: string,
  fn: (sock: NetlinkSocket) => T,
  linkMayBeMissing = false,
): T {
  try {
    using sock = socketIn(ns);
    return fn(sock);
  } catch (err) {
    fail(what, err, linkMayBeMissing);
  }
}

export function checkName(name: string, role = "interface name"): void {
  const problem = interfaceNameProblem(name);
  if (problem)
    throw new NetlinkError(`invalid ${role} ${JSON.stringify(name)}: ${problem}`, { errno: Errno.EINVAL });
}

function checkMtu(mtu: number): void {
  if (!Number.isInteger(mtu) || mtu < 68 || mtu > 0xffff)
    throw new NetlinkError(`invalid MTU ${mtu}: must be an integer 68..65535`, { errno: Errno.EINVAL });
}

function macBytes(mac: string): Uint8Array {
  try {
    return parseMac(mac);
  } catch (err) {
    throw new NetlinkError(`invalid MAC address: ${(err as Error).message}`, {
      cause: err,
      errno: Errno.EINVAL,
    });
  }
}

const SKIP_STATS = attrU32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS);

/**
 * RTM_GETLINK on an open socket, by name or index; with `stats`, IFLA_STATS64 too (the kernel
 * skips statistics otherwise). Throws ErrnoError (ENODEV when absent).
 */
export function queryLink(sock: NetlinkSocket, nameOrIndex: string | number, stats = false): Link {
  const byIndex = typeof nameOrIndex === "number";
  const attrs = byIndex ? [] : [attrString(IFLA_IFNAME, nameOrIndex)];
  if (!stats) attrs.push(SKIP_STATS);
  return decodeLink(sock.get(RTM_GETLINK, new IfInfoMsg(AF_UNSPEC, byIndex ? nameOrIndex : 0), attrs));
}

function describeLink(nameOrIndex: string | number): string {
  return typeof nameOrIndex === "number"
    ? `link with index ${nameOrIndex}`
    : `link ${JSON.stringify(nameOrIndex)}`;
}

// --- verbs ----------------------------------------------------------------------------------

/** All links of a netns with their counters, in one dump. `ip -d -s link show` */
export function listLinks(ns?: string): Link[] {
  return withSocket(ns, `list links ${inNetns(ns)}`, (sock) =>
    sock.dump(RTM_GETLINK, new IfInfoMsg(), []).map(decodeLink),
  );
}

/**
 * One link by name or ifindex, with its counters; LinkNotFoundError when absent.
 * `ip -d -s link show dev NAME`
 */
export function getLink(nameOrIndex: string | number, ns?: string): Link {
  if (typeof nameOrIndex === "string") checkName(nameOrIndex);
  return withSocket(
    ns,
    `get ${describeLink(nameOrIndex)} ${inNetns(ns)}`,
    (sock) => queryLink(sock, nameOrIndex, true),
    true,
  );
}

/** One end of a veth pair: its final name, netns (current when absent), MTU, MAC, alias. */
export interface VethEnd {
  name: string;
  ns?: string;
  mtu?: number;
  mac?: string;
  /** IFLA_IFALIAS, set right after creation (the kernel ignores it in RTM_NEWLINK). */
  alias?: string;
  /** IFLA_GROUP, set in the create request. */
  group?: number;
}

// The attributes of a new link's ifinfomsg that both veth ends and vxlan share.
function endAttrs(
  name: string,
  nsFd: NetnsFd | undefined,
  mtu: number | undefined,
  mac: string | undefined,
  group: number | undefined,
): Attr[] {
  const attrs = [attrString(IFLA_IFNAME, name)];
  if (nsFd) attrs.push(attrU32(IFLA_NET_NS_FD, nsFd.fd));
  // The kernel takes the group in the create request itself (unlike the alias).
  if (group !== undefined) attrs.push(attrU32(IFLA_GROUP, group));
  if (mtu !== undefined) attrs.push(attrU32(IFLA_MTU, mtu));
  if (mac !== undefined) attrs.push(new Attr(IFLA_ADDRESS, new Bytes(macBytes(mac))));
  return attrs;
}

function linkExists(name: string, ns: string | undefined): boolean {
  try {
    getLink(name, ns);
    return true;
  } catch {
    return false;
  }
}

/**
 * Creates a veth pair whose ends appear directly in their namespaces under their final
 * names, both up. EEXIST names the end whose name is taken.
 * `ip link add A netns NSA mtu M address X up type veth peer name B netns NSB ...`
 */
export function addVethPair(spec: { a: VethEnd; b: VethEnd }): void {
  const { a, b } = spec;
  const what = (first: VethEnd, second: VethEnd) =>
    `add veth ${JSON.stringify(first.name)} ${inNetns(first.ns)} (peer ${JSON.stringify(second.name)} ${inNetns(second.ns)})`;
  for (const end of [a, b]) {
    checkName(end.name, "veth name");
    if (end.mtu !== undefined) checkMtu(end.mtu);
    if (end.alias !== undefined) checkAlias(end.alias);
  }
  try {
    using fdA = a.ns === undefined ? undefined : openNetns(a.ns);
    using fdB = b.ns === undefined ? undefined : openNetns(b.ns);
    const up = new IfInfoMsg(AF_UNSPEC, 0, IFF_UP, IFF_UP);
    const root = new Attr(IFLA_LINKINFO);
    root.add(attrString(IFLA_INFO_KIND, "veth"));
    // The peer cannot be brought up inside the same request (veth_open fails with ENOTCONN
    // until both ends are registered), so it is set up right after.
    const peer = root.add(IFLA_INFO_DATA).add(VETH_INFO_PEER, new IfInfoMsg());
    for (const at of endAttrs(b.name, fdB, b.mtu, b.mac, b.group)) peer.add(at);
    withSocket(undefined, what(a, b), (sock) =>
      sock.change(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, up, [
        ...endAttrs(a.name, fdA, a.mtu, a.mac, a.group),
        root,
      ]),
    );
  } catch (err) {
    if (
      err instanceof NetlinkError &&
      err.errno === Errno.EEXIST &&
      !linkExists(a.name, a.ns) &&
      linkExists(b.name, b.ns)
    ) {
      throw new NetlinkError(`failed to ${what(b, a)}: ${errnoText(Errno.EEXIST)}`, {
        cause: err,
        errno: Errno.EEXIST,
      });
    }
    throw err;
  }
  finishOrDelete(a.name, a.ns, () => {
    setLink(b.name, { up: true, alias: b.alias }, b.ns);
    if (a.alias !== undefined) setLink(a.name, { alias: a.alias }, a.ns);
  });
}

// Runs the steps that complete a new link; if one fails, deletes the link (a veth takes its
// peer along) so that no half-made link is left behind, and reports the step's error.
function finishOrDelete(name: string, ns: string | undefined, steps: () => void): void {
  try {
    steps();
  } catch (err) {
    try {
      deleteLink(name, ns);
    } catch {
      // the link went away some other way; the first error is the one to report
    }
    throw err;
  }
}

export interface VxlanSpec {
  /** Final name in `ns`. */
  name: string;
  /** The pod netns the device is placed in (the host netns when undefined). */
  ns: string | undefined;
  vni: number;
  /** Remote VTEP, IPv4 or IPv6. */
  remote: string;
  /** The underlay device's name in the host netns. */
  underlay: string;
  /** The "host" netns holding the underlay (the current one when undefined). */
  hostNs?: string;
  /** Local VTEP address (optional; the kernel picks one by route otherwise). */
  local?: string;
  /** UDP destination port; 4789 by default. */
  port?: number;
  /** Defaults to the underlay MTU minus 50 (IPv4 remote) or 70 (IPv6 remote). */
  mtu?: number;
  mac?: string;
  /** Learn remote MACs from received packets; on by default. */
  learning?: boolean;
  /** IFLA_IFALIAS, set right after creation (the kernel ignores it in RTM_NEWLINK). */
  alias?: string;
  /** Create it up (the default), or down for the caller to finish and bring up. */
  up?: boolean;
  /** IFLA_GROUP, set in the create request. */
  group?: number;
}

export const VXLAN_PORT = 4789;
/** Bytes a VXLAN header costs over an IPv4 / IPv6 underlay. */
export const VXLAN_OVERHEAD = { 4: 50, 6: 70 } as const;

/**
 * Creates a VXLAN device in the host netns (its UDP socket and underlay stay there) and
 * places it directly in the pod netns under its final name, up.
 * `ip -n HOST link add NAME netns POD mtu M type vxlan id VNI remote R dev UNDERLAY dstport P learning`
 * then `ip -n POD link set NAME up`.
 */
export function addVxlan(spec: VxlanSpec): void {
  const underlayName = `underlay ${JSON.stringify(spec.underlay)} ${inNetns(spec.hostNs)}`;
  const what = `add vxlan ${JSON.stringify(spec.name)} ${inNetns(spec.ns)} (vni ${spec.vni}, remote ${spec.remote}, ${underlayName})`;
  const invalid = (problem: string) =>
    new NetlinkError(`failed to ${what}: ${problem}`, { errno: Errno.EINVAL });
  checkName(spec.name, "vxlan name");
  checkName(spec.underlay, "underlay name");
  if (!Number.isInteger(spec.vni) || spec.vni < 0 || spec.vni > 0xffffff)
    throw invalid("VNI must be an integer 0..16777215");
  const port = spec.port ?? VXLAN_PORT;
  if (!Number.isInteger(port) || port < 1 || port > 0xffff) throw invalid("port must be 1..65535");
  if (spec.mtu !== undefined) checkMtu(spec.mtu);
  if (spec.alias !== undefined) checkAlias(spec.alias);
  let remote: ReturnType<typeof parseIp>;
  let local: ReturnType<typeof parseIp> | undefined;
  try {
    remote = parseIp(spec.remote);
    local = spec.local === undefined ? undefined : parseIp(spec.local);
  } catch (err) {
    fail(what, err);
  }
  if (local && local.family !== remote.family)
    throw invalid(`local ${spec.local} and remote are of different families`);
  using nsFd = spec.ns === undefined ? undefined : openNetns(spec.ns);
  withSocket(spec.hostNs, what, (sock) => {
    let underlay: Link;
    try {
      underlay = queryLink(sock, spec.underlay);
    } catch (err) {
      if (err instanceof ErrnoError && err.errno === Errno.ENODEV) {
        const message = `failed to ${what}: ${underlayName.replace(" in ", " not found in ")}: ${errnoText(err.errno)}`;
        throw new LinkNotFoundError(message, { cause: err, errno: err.errno });
      }
      throw err;
    }
    const mtu = spec.mtu ?? underlay.mtu - VXLAN_OVERHEAD[remote.family];
    const v6 = remote.family === 6;
    const linkInfo = new Attr(IFLA_LINKINFO);
    linkInfo.add(attrString(IFLA_INFO_KIND, "vxlan"));
    const data = linkInfo
      .add(IFLA_INFO_DATA)
      .u32(IFLA_VXLAN_ID, spec.vni)
      .bytes(v6 ? IFLA_VXLAN_GROUP6 : IFLA_VXLAN_GROUP, remote.bytes)
      .u32(IFLA_VXLAN_LINK, underlay.index);
    if (local) data.bytes(v6 ? IFLA_VXLAN_LOCAL6 : IFLA_VXLAN_LOCAL, local.bytes);
    data.add(attrBe16(IFLA_VXLAN_PORT, port));
    data.add(attrU8(IFLA_VXLAN_LEARNING, spec.learning === false ? 0 : 1));
    const up = spec.up === false ? new IfInfoMsg() : new IfInfoMsg(AF_UNSPEC, 0, IFF_UP, IFF_UP);
    sock.change(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, up, [
      ...endAttrs(spec.name, nsFd, mtu, spec.mac, spec.group),
      linkInfo,
    ]);
  });
  const alias = spec.alias;
  if (alias !== undefined) finishOrDelete(spec.name, spec.ns, () => setLink(spec.name, { alias }, spec.ns));
}

// A change to an existing link found by name (the kernel looks up IFLA_IFNAME when index is 0).
function changeLink(
  ifname: string,
  ns: string | undefined,
  what: string,
  hdr: IfInfoMsg,
  attrs: Attr[],
): void {
  checkName(ifname);
  withSocket(
    ns,
    what,
    (sock) => sock.change(RTM_SETLINK, 0, hdr, [attrString(IFLA_IFNAME, ifname), ...attrs]),
    true,
  );
}

/** Changes to an existing link that one RTM_SETLINK carries together. */
export interface LinkChanges {
  /** Administratively up or down. */
  up?: boolean;
  mtu?: number;
  mac?: string;
  /** IFLA_IFALIAS; "" removes it. */
  alias?: string;
}

/** At most IFALIASZ - 1 bytes, no NUL (the kernel would cut it there). */
function checkAlias(alias: string): void {
  const bytes = new TextEncoder().encode(alias).byteLength;
  const problem = bytes > 255 ? `is ${bytes} bytes, at most 255` : alias.includes("\0") ? "contains NUL" : "";
  if (problem)
    throw new NetlinkError(`invalid alias ${JSON.stringify(alias)}: ${problem}`, { errno: Errno.EINVAL });
}

/**
 * Applies several changes to a link in one request (fields left out stay as they are).
 * `ip link set NAME [up|down] [mtu M] [address X] [alias A]`
 */
export function setLink(ifname: string, changes: LinkChanges, ns?: string): void {
  const { up, mtu, mac, alias } = changes;
  const attrs: Attr[] = [];
  const said: string[] = [];
  if (up !== undefined) said.push(up ? "up" : "down");
  if (mtu !== undefined) {
    checkMtu(mtu);
    attrs.push(attrU32(IFLA_MTU, mtu));
    said.push(`MTU ${mtu}`);
  }
  if (mac !== undefined) {
    attrs.push(new Attr(IFLA_ADDRESS, new Bytes(macBytes(mac))));
    said.push(`MAC ${mac}`);
  }
  if (alias !== undefined) {
    checkAlias(alias);
    // Without a NUL, as iproute2 sends it: an empty payload clears the alias.
    attrs.push(new Attr(IFLA_IFALIAS, new Bytes(new TextEncoder().encode(alias))));
    said.push(`alias ${JSON.stringify(alias)}`);
  }
  const hdr = new IfInfoMsg(AF_UNSPEC, 0, up ? IFF_UP : 0, up === undefined ? 0 : IFF_UP);
  const what = `set ${said.join(", ") || "nothing"} on ${JSON.stringify(ifname)} ${inNetns(ns)}`;
  changeLink(ifname, ns, what, hdr, attrs);
}

/** Sets a link administratively up or down. `ip link set NAME up|down` */
export function setLinkUp(ifname: string, up: boolean, ns?: string): void {
  setLink(ifname, { up }, ns);
}

/** `ip link set NAME mtu MTU` */
export function setMtu(ifname: string, mtu: number, ns?: string): void {
  setLink(ifname, { mtu }, ns);
}

/** `ip link set NAME address MAC` */
export function setMac(ifname: string, mac: string, ns?: string): void {
  setLink(ifname, { mac }, ns);
}

/** Renames a link (most kinds must be down). `ip link set NAME name NEWNAME` */
export function renameLink(ifname: string, newName: string, ns?: string): void {
  checkName(ifname);
  checkName(newName, "new interface name");
  const what = `rename ${JSON.stringify(ifname)} to ${JSON.stringify(newName)} ${inNetns(ns)}`;
  withSocket(
    ns,
    what,
    (sock) => {
      const { index } = queryLink(sock, ifname);
      sock.change(RTM_SETLINK, 0, new IfInfoMsg(AF_UNSPEC, index), [attrString(IFLA_IFNAME, newName)]);
    },
    true,
  );
}

/**
 * Moves a link to another netns (`undefined` = the current one), keeping its name; it
 * arrives down. `ip -n FROM link set NAME netns TO`
 */
export function moveLink(ifname: string, fromNs: string | undefined, toNs: string | undefined): void {
  checkName(ifname);
  const what = `move ${JSON.stringify(ifname)} from ${inNetns(fromNs).slice(3)} to ${inNetns(toNs).slice(3)}`;
  using target = openNetns(toNs ?? "/proc/thread-self/ns/net");
  changeLink(ifname, fromNs, what, new IfInfoMsg(), [attrU32(IFLA_NET_NS_FD, target.fd)]);
}

/** Deletes a link (a veth takes its peer along); LinkNotFoundError when absent. `ip link del NAME` */
export function deleteLink(ifname: string, ns?: string): void {
  checkName(ifname);
  withSocket(
    ns,
    `delete link ${JSON.stringify(ifname)} ${inNetns(ns)}`,
    (sock) => sock.change(RTM_DELLINK, 0, new IfInfoMsg(), [attrString(IFLA_IFNAME, ifname)]),
    true,
  );
}
