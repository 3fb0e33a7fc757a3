// Batches of netlink work in several namespaces: the sockets (one switch into each netns),
// one dump of a netns' links or addresses, ifindexes free in a netns, and deleting many
// links in one kernel call. The verbs of src/netlink/bulk.ts build on these.
import { randomBytes } from "node:crypto";
import { type Address, scopeName } from "./addr.ts";
import { Errno, type ErrnoError, NetlinkError } from "./errors.ts";
import { formatIp, formatMac } from "./ip.ts";
import { decodeLink, type Link } from "./link-info.ts";
import { type NetnsFd, openNetns, withNetns } from "./netns.ts";
import {
  AF_INET,
  AF_INET6,
  AF_UNSPEC,
  type Attr,
  Attrs,
  attrU32,
  IFA_ADDRESS,
  IFA_LOCAL,
  IFADDRMSG_LEN,
  IfAddrMsg,
  IfInfoMsg,
  IFLA_EXT_MASK,
  IFLA_GROUP,
  Message,
  NLM_F_ACK,
  NLM_F_REQUEST,
  RTEXT_FILTER_SKIP_STATS,
  RTM_DELLINK,
  RTM_GETADDR,
  RTM_GETLINK,
  RTM_SETLINK,
} from "./nl.ts";
import { NetlinkSocket } from "./socket.ts";

export function push<K, V>(m: Map<K, V[]>, k: K, v: V): void {
  const list = m.get(k);
  if (list) list.push(v);
  else m.set(k, [v]);
}

export const request = (type: number, flags: number, header: IfInfoMsg | IfAddrMsg, attrs: Attr[]) =>
  new Message(type, NLM_F_REQUEST | NLM_F_ACK | flags, header, attrs);

/**
 * The sockets (and netns files) one batch of work needs, one per netns: each made with one
 * switch into its netns. `undefined` is the agent's own netns. Dispose closes them all.
 */
export class NetnsSockets implements Disposable {
  private readonly socks = new Map<string | undefined, NetlinkSocket>();
  private readonly fds = new Map<string, NetnsFd>();

  socket(ns: string | undefined): NetlinkSocket {
    let s = this.socks.get(ns);
    if (!s) {
      s = withNetns(ns, () => NetlinkSocket.open());
      this.socks.set(ns, s);
    }
    return s;
  }

  /** An open file of the netns, for IFLA_NET_NS_FD. */
  fd(ns: string): NetnsFd {
    let f = this.fds.get(ns);
    if (!f) {
      f = openNetns(ns);
      this.fds.set(ns, f);
    }
    return f;
  }

  [Symbol.dispose](): void {
    for (const s of this.socks.values()) s.close();
    for (const f of this.fds.values()) f[Symbol.dispose]();
    this.socks.clear();
    this.fds.clear();
  }
}

export const SKIP_STATS = attrU32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS);

/** Every link of the socket's netns, without counters, in one dump. */
export function dumpLinks(sock: NetlinkSocket): Link[] {
  return sock.dump(RTM_GETLINK, new IfInfoMsg(), [SKIP_STATS]).map(decodeLink);
}

/** Every IPv4/IPv6 address of the socket's netns, by ifindex, in one dump. */
export function dumpAddresses(sock: NetlinkSocket): Map<number, Address[]> {
  const out = new Map<number, Address[]>();
  // One dump per family: a busy IPv6 side (duplicate address detection on fresh links)
  // interrupts only its own dump, which is redone (socket.ts), never the IPv4 one.
  const msgs = [AF_INET, AF_INET6].flatMap((family) => sock.dump(RTM_GETADDR, new IfAddrMsg(family), []));
  for (const m of msgs) {
    const hdr = IfAddrMsg.parse(m.payload);
    if (hdr.family !== AF_INET && hdr.family !== AF_INET6) continue;
    const attrs = Attrs.parse(m.payload.subarray(IFADDRMSG_LEN));
    const bytes = attrs.get(IFA_LOCAL) ?? attrs.get(IFA_ADDRESS);
    if (bytes === undefined) continue;
    const list = out.get(hdr.index) ?? [];
    list.push({
      family: hdr.family === AF_INET ? 4 : 6,
      address: formatIp(bytes),
      prefixLength: hdr.prefixlen,
      scope: scopeName(hdr.scope),
    });
    out.set(hdr.index, list);
  }
  return out;
}

/** Hands out ifindexes that no link of one netns holds (ifindexes are per netns). */
export class IndexAllocator {
  private readonly used: Set<number>;
  private next: number;
  constructor(links: Link[]) {
    this.used = new Set(links.map((l) => l.index));
    this.next = Math.max(1, ...this.used) + 1;
  }
  /** Also avoids these (e.g. the host netns' ifindexes: see createVxlans). */
  avoid(links: Link[]): void {
    for (const l of links) this.used.add(l.index);
  }
  take(): number {
    while (this.used.has(this.next)) this.next++;
    if (this.next > 0x7fffffff) throw new NetlinkError("no free ifindex left", { errno: 28 /* ENOSPC */ });
    this.used.add(this.next);
    return this.next++;
  }
}

/** A random locally administered unicast MAC, as the kernel gives a veth or vxlan. */
export function randomMac(): string {
  const b = randomBytes(6);
  b[0] = ((b[0] as number) & 0xfe) | 0x02;
  return formatMac(b);
}

/**
 * Deletes links of one netns by ifindex. Several go in one kernel call: the kernel pays its
 * unregister cost (RCU grace periods) once, not once per link. When the links are exactly
 * the members of device group `group`, that group is deleted; otherwise they are first put
 * in a group no link of the netns uses. Should that call fail (a link the kernel cannot
 * delete), each is deleted on its own. Per index: undefined (gone, or was gone already) or
 * the error. `links`: the netns' links now.
 */
export function deleteIndexes(
  sock: NetlinkSocket,
  indexes: number[],
  links: Link[],
  group?: number,
): Array<ErrnoError | undefined> {
  const gone = (errs: Array<ErrnoError | undefined>) =>
    errs.map((e) => (e && e.errno !== Errno.ENODEV ? e : undefined));
  if (indexes.length === 0) return [];
  const one = (i: number) => request(RTM_DELLINK, 0, new IfInfoMsg(AF_UNSPEC, i), []);
  if (indexes.length === 1) return gone(sock.changeAll([one(indexes[0] as number)]));
  const wanted = new Set(indexes);
  if (group) {
    const members = links.filter((l) => l.group === group);
    if (members.length === wanted.size && members.every((l) => wanted.has(l.index))) {
      const [all] = sock.changeAll([request(RTM_DELLINK, 0, new IfInfoMsg(), [attrU32(IFLA_GROUP, group)])]);
      if (!all) return indexes.map(() => undefined);
    }
  }
  const taken = new Set(links.map((l) => l.group));
  let temp = 0;
  while (temp === 0 || taken.has(temp)) temp = (randomBytes(4).readUInt32LE(0) | 0x10000) >>> 1;
  const grouped = sock.changeAll(
    indexes.map((i) => request(RTM_SETLINK, 0, new IfInfoMsg(AF_UNSPEC, i), [attrU32(IFLA_GROUP, temp)])),
  );
  const [all] = sock.changeAll([request(RTM_DELLINK, 0, new IfInfoMsg(), [attrU32(IFLA_GROUP, temp)])]);
  if (!all) return gone(grouped);
  return gone(sock.changeAll(indexes.map(one)));
}
