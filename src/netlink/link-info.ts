// What the kernel says about a link (RTM_NEWLINK, from a GET or a dump), decoded into a
// union tagged by kind: state, ratchet's mark (IFLA_IFALIAS), counters (IFLA_STATS64).
import { formatIp, formatMac } from "./ip.ts";
import {
  Attrs,
  IFF_UP,
  IFINFOMSG_LEN,
  IFLA_ADDRESS,
  IFLA_CARRIER,
  IFLA_GROUP,
  IFLA_IFALIAS,
  IFLA_IFNAME,
  IFLA_INFO_DATA,
  IFLA_INFO_KIND,
  IFLA_LINK,
  IFLA_LINK_NETNSID,
  IFLA_LINKINFO,
  IFLA_MASTER,
  IFLA_MTU,
  IFLA_OPERSTATE,
  IFLA_STATS64,
  IFLA_VXLAN_GROUP,
  IFLA_VXLAN_GROUP6,
  IFLA_VXLAN_ID,
  IFLA_VXLAN_LEARNING,
  IFLA_VXLAN_LINK,
  IFLA_VXLAN_LOCAL,
  IFLA_VXLAN_LOCAL6,
  IFLA_VXLAN_PORT,
  IfInfoMsg,
  LITTLE_ENDIAN,
  type NlMsg,
  viewOf,
} from "./nl.ts";

/** IF_OPER_* from linux/if.h, by value. */
const OPERSTATES = ["unknown", "notpresent", "down", "lowerlayerdown", "testing", "dormant", "up"] as const;
export type OperState = (typeof OPERSTATES)[number];

/** The counters of struct rtnl_link_stats64 (linux/if_link.h) that metrics use. */
export interface LinkStats {
  rxPackets: number;
  txPackets: number;
  rxBytes: number;
  txBytes: number;
  rxErrors: number;
  txErrors: number;
  rxDropped: number;
  txDropped: number;
}

export interface LinkBase {
  index: number;
  name: string;
  mtu: number;
  /** "aa:bb:cc:dd:ee:ff"; "" for links without one. */
  mac: string;
  /** IFF_UP: administratively up. */
  up: boolean;
  /** IFLA_CARRIER: the link can carry traffic; a veth has none while its peer is down. */
  carrier: boolean;
  /** RFC 2863 state: "up" once the link can carry traffic (e.g. both veth ends up). */
  operstate: OperState;
  /** ifi_flags (IFF_*). */
  flags: number;
  /** IFLA_IFALIAS: a free-form label ("" when none); ratchet's ownership mark. */
  alias: string;
  /** IFLA_GROUP: the device group (0 by default). */
  group: number;
  masterIndex: number | undefined;
  /** IFLA_LINK_NETNSID: set when the peer / lower device lives in another netns. */
  linkNetnsId: number | undefined;
  /** IFLA_STATS64; undefined when the request asked the kernel to skip statistics. */
  stats: LinkStats | undefined;
}
export interface VethLink extends LinkBase {
  kind: "veth";
  /** The peer's ifindex (in the peer's netns), from IFLA_LINK. */
  peerIndex: number | undefined;
}
export interface VxlanLink extends LinkBase {
  kind: "vxlan";
  vni: number;
  /** The remote VTEP (IFLA_VXLAN_GROUP/GROUP6). */
  remote: string | undefined;
  local: string | undefined;
  port: number;
  /** IFLA_VXLAN_LINK: the underlay's ifindex, in the netns the vxlan was created in. */
  underlayIndex: number | undefined;
  learning: boolean;
}
export interface OtherLink extends LinkBase {
  kind: "other";
  /** IFLA_INFO_KIND as the kernel reports it ("dummy", "bridge", ...; "" for e.g. lo). */
  infoKind: string;
}
/** A link, tagged by `kind`. */
export type Link = VethLink | VxlanLink | OtherLink;

function decodeStats(d: Uint8Array | undefined): LinkStats | undefined {
  if (d === undefined) return undefined;
  if (d.byteLength < 64) throw new RangeError(`IFLA_STATS64 needs 64 bytes, got ${d.byteLength}`);
  const v = viewOf(d);
  const at = (i: number) => Number(v.getBigUint64(i * 8, LITTLE_ENDIAN));
  return {
    rxPackets: at(0),
    txPackets: at(1),
    rxBytes: at(2),
    txBytes: at(3),
    rxErrors: at(4),
    txErrors: at(5),
    rxDropped: at(6),
    txDropped: at(7),
  };
}

/** Decodes an RTM_NEWLINK message (a GETLINK answer or a dump entry). */
export function decodeLink(m: NlMsg): Link {
  const hdr = IfInfoMsg.parse(m.payload);
  const attrs = Attrs.parse(m.payload.subarray(IFINFOMSG_LEN));
  const info = attrs.nested(IFLA_LINKINFO);
  const infoKind = info?.str(IFLA_INFO_KIND) ?? "";
  const mac = attrs.get(IFLA_ADDRESS);
  const base: LinkBase = {
    index: hdr.index,
    name: attrs.str(IFLA_IFNAME) ?? "",
    mtu: attrs.u32(IFLA_MTU) ?? 0,
    mac: mac === undefined ? "" : formatMac(mac),
    up: (hdr.flags & IFF_UP) !== 0,
    carrier: (attrs.u8(IFLA_CARRIER) ?? 0) !== 0,
    operstate: OPERSTATES[attrs.u8(IFLA_OPERSTATE) ?? 0] ?? "unknown",
    flags: hdr.flags,
    alias: attrs.str(IFLA_IFALIAS) ?? "",
    group: attrs.u32(IFLA_GROUP) ?? 0,
    masterIndex: attrs.u32(IFLA_MASTER),
    linkNetnsId: attrs.u32(IFLA_LINK_NETNSID),
    stats: decodeStats(attrs.get(IFLA_STATS64)),
  };
  if (infoKind === "veth") return { ...base, kind: "veth", peerIndex: attrs.u32(IFLA_LINK) };
  if (infoKind === "vxlan") {
    const data = info?.nested(IFLA_INFO_DATA);
    const addr = (t4: number, t6: number): string | undefined => {
      const b = data?.get(t4) ?? data?.get(t6);
      return b === undefined ? undefined : formatIp(b);
    };
    return {
      ...base,
      kind: "vxlan",
      vni: data?.u32(IFLA_VXLAN_ID) ?? 0,
      remote: addr(IFLA_VXLAN_GROUP, IFLA_VXLAN_GROUP6),
      local: addr(IFLA_VXLAN_LOCAL, IFLA_VXLAN_LOCAL6),
      port: data?.be16(IFLA_VXLAN_PORT) ?? 0,
      underlayIndex: data?.u32(IFLA_VXLAN_LINK),
      learning: (data?.u8(IFLA_VXLAN_LEARNING) ?? 0) !== 0,
    };
  }
  return { ...base, kind: "other", infoKind };
}
