// The links of a netns with their counters, for metrics: one RTM_GETLINK dump, decoded by a
// scanner that picks the few attributes metrics need (name, alias, flags, carrier,
// IFLA_STATS64) without building the full Link of link-info.ts. A dump entry carries some
// 1.5 KiB of attributes, most of them of no use here; a scrape reads thousands of them.
import { inNetns } from "./errors.ts";
import { withSocket } from "./link.ts";
import {
  IFF_UP,
  IFINFOMSG_LEN,
  IFLA_CARRIER,
  IFLA_IFALIAS,
  IFLA_IFNAME,
  IFLA_STATS64,
  IfInfoMsg,
  LITTLE_ENDIAN,
  RTA_HDRLEN,
  RTM_GETLINK,
  RTM_NEWLINK,
  align,
  viewOf,
} from "./nl.ts";

/** One link as metrics see it. Counters from struct rtnl_link_stats64 (0 when absent). */
export interface LinkCounters {
  name: string;
  /** IFLA_IFALIAS ("" when none): ratchet's mark. */
  alias: string;
  /** IFF_UP: administratively up. */
  up: boolean;
  /** IFLA_CARRIER. */
  carrier: boolean;
  rxPackets: number;
  txPackets: number;
  rxBytes: number;
  txBytes: number;
  rxDropped: number;
  txDropped: number;
}

const TYPE_MASK = 0x3fff; // without NLA_F_NESTED and NLA_F_NET_BYTEORDER
const utf8 = new TextDecoder();

/** Decodes the metrics' view of one RTM_NEWLINK payload; throws on a length that does not fit. */
export function decodeCounters(p: Uint8Array): LinkCounters {
  if (p.byteLength < IFINFOMSG_LEN) throw new RangeError(`ifinfomsg needs 16 bytes, got ${p.byteLength}`);
  const v = viewOf(p);
  const out: LinkCounters = {
    name: "",
    alias: "",
    up: (v.getUint32(8, LITTLE_ENDIAN) & IFF_UP) !== 0,
    carrier: false,
    rxPackets: 0,
    txPackets: 0,
    rxBytes: 0,
    txBytes: 0,
    rxDropped: 0,
    txDropped: 0,
  };
  // Strings are NUL-terminated in the attribute; the terminator is left out.
  const str = (o: number, len: number) => {
    let end = o + len;
    while (end > o && p[end - 1] === 0) end--;
    return utf8.decode(p.subarray(o, end));
  };
  const u64 = (o: number) => Number(v.getBigUint64(o, LITTLE_ENDIAN));
  let o = IFINFOMSG_LEN;
  while (o + RTA_HDRLEN <= p.byteLength) {
    const len = v.getUint16(o, LITTLE_ENDIAN);
    if (len < RTA_HDRLEN || len > p.byteLength - o)
      throw new RangeError(`bad rta_len ${len} at offset ${o} of ${p.byteLength}`);
    const data = o + RTA_HDRLEN;
    const size = len - RTA_HDRLEN;
    switch (v.getUint16(o + 2, LITTLE_ENDIAN) & TYPE_MASK) {
      case IFLA_IFNAME:
        out.name = str(data, size);
        break;
      case IFLA_IFALIAS:
        out.alias = str(data, size);
        break;
      case IFLA_CARRIER:
        out.carrier = size >= 1 && p[data] !== 0;
        break;
      case IFLA_STATS64:
        if (size < 64) throw new RangeError(`IFLA_STATS64 needs 64 bytes, got ${size}`);
        out.rxPackets = u64(data);
        out.txPackets = u64(data + 8);
        out.rxBytes = u64(data + 16);
        out.txBytes = u64(data + 24);
        out.rxDropped = u64(data + 48);
        out.txDropped = u64(data + 56);
        break;
    }
    o += align(len);
  }
  return out;
}

/** Every link of a netns with its counters, in one dump. `ip -s link show` */
export function listLinkCounters(ns?: string): LinkCounters[] {
  return withSocket(ns, `list link counters ${inNetns(ns)}`, (sock) =>
    sock
      .dump(RTM_GETLINK, new IfInfoMsg(), [])
      .filter((m) => m.type === RTM_NEWLINK)
      .map((m) => decodeCounters(m.payload)),
  );
}
