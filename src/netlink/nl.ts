// The byte layer of rtnetlink: message headers, ifinfomsg / ifaddrmsg, and attribute trees.
// Numbers come from the kernel headers (linux/netlink.h, rtnetlink.h, if_link.h, if_addr.h,
// veth.h) under their kernel names. Native byte order unless a field says big-endian.
// Traffic control (tcmsg, linux/pkt_sched.h) lives in tc.ts.

// --- linux/netlink.h ---------------------------------------------------------------------
export const NETLINK_ROUTE = 0;
export const NLMSG_NOOP = 0x1;
export const NLMSG_ERROR = 0x2;
export const NLMSG_DONE = 0x3;
export const NLM_F_REQUEST = 0x01;
export const NLM_F_MULTI = 0x02;
export const NLM_F_ACK = 0x04;
export const NLM_F_DUMP_INTR = 0x10;
export const NLM_F_ROOT = 0x100;
export const NLM_F_REPLACE = 0x100;
export const NLM_F_MATCH = 0x200;
export const NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH;
export const NLM_F_EXCL = 0x200;
export const NLM_F_CREATE = 0x400;
export const NLM_F_CAPPED = 0x100;
export const NLM_F_ACK_TLVS = 0x200;
export const NLMSGERR_ATTR_MSG = 1;
export const SOL_NETLINK = 270;
export const NETLINK_CAP_ACK = 10;
export const NETLINK_EXT_ACK = 11;
export const NLA_F_NESTED = 1 << 15;
export const NLA_F_NET_BYTEORDER = 1 << 14;
const NLA_TYPE_MASK = ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) & 0xffff;

// --- linux/rtnetlink.h -------------------------------------------------------------------
export const RTM_NEWLINK = 16;
export const RTM_DELLINK = 17;
export const RTM_GETLINK = 18;
export const RTM_SETLINK = 19;
export const RTM_NEWADDR = 20;
export const RTM_DELADDR = 21;
export const RTM_GETADDR = 22;
export const RTM_NEWQDISC = 36;
export const RTM_DELQDISC = 37;
export const RTM_GETQDISC = 38;
export const RTEXT_FILTER_SKIP_STATS = 1 << 3;
export const RT_SCOPE_UNIVERSE = 0;
export const RT_SCOPE_LINK = 253;
export const RT_SCOPE_HOST = 254;

// --- linux/if_link.h ---------------------------------------------------------------------
export const IFLA_ADDRESS = 1;
export const IFLA_IFNAME = 3;
export const IFLA_MTU = 4;
export const IFLA_LINK = 5;
export const IFLA_MASTER = 10;
export const IFLA_OPERSTATE = 16;
export const IFLA_IFALIAS = 20;
export const IFLA_GROUP = 27;
export const IFLA_STATS64 = 23;
export const IFLA_LINKINFO = 18;
export const IFLA_NET_NS_FD = 28;
export const IFLA_EXT_MASK = 29;
export const IFLA_CARRIER = 33;
export const IFLA_LINK_NETNSID = 37;
export const IFLA_INFO_KIND = 1;
export const IFLA_INFO_DATA = 2;
export const IFLA_VXLAN_ID = 1;
export const IFLA_VXLAN_GROUP = 2;
export const IFLA_VXLAN_LINK = 3;
export const IFLA_VXLAN_LOCAL = 4;
export const IFLA_VXLAN_LEARNING = 7;
export const IFLA_VXLAN_PORT = 15;
export const IFLA_VXLAN_GROUP6 = 16;
export const IFLA_VXLAN_LOCAL6 = 17;
// --- linux/veth.h --------------------------------------------------------------------------
export const VETH_INFO_PEER = 1;
// --- linux/if_addr.h -----------------------------------------------------------------------
export const IFA_ADDRESS = 1;
export const IFA_LOCAL = 2;
export const IFA_FLAGS = 8;
export const IFA_F_NODAD = 0x02;
// --- linux/if.h, linux/socket.h ------------------------------------------------------------
export const IFF_UP = 0x1;
export const AF_UNSPEC = 0;
export const AF_INET = 2;
export const AF_INET6 = 10;

export const NLMSG_HDRLEN = 16;
export const RTA_HDRLEN = 4;
export const IFINFOMSG_LEN = 16;
export const IFADDRMSG_LEN = 8;

/** Rounds up to the 4-byte alignment of netlink messages and attributes. */
export function align(n: number): number {
  return (n + 3) & ~3;
}

export const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** The names of message types, for error messages. */
export const MESSAGE_NAMES: Record<number, string> = {
  [RTM_NEWLINK]: "RTM_NEWLINK",
  [RTM_DELLINK]: "RTM_DELLINK",
  [RTM_GETLINK]: "RTM_GETLINK",
  [RTM_SETLINK]: "RTM_SETLINK",
  [RTM_NEWADDR]: "RTM_NEWADDR",
  [RTM_DELADDR]: "RTM_DELADDR",
  [RTM_GETADDR]: "RTM_GETADDR",
  [RTM_NEWQDISC]: "RTM_NEWQDISC",
  [RTM_DELQDISC]: "RTM_DELQDISC",
  [RTM_GETQDISC]: "RTM_GETQDISC",
};

/** Something that knows its (unpadded) length and writes itself at an offset. */
export interface Piece {
  readonly length: number;
  write(view: DataView, offset: number): void;
}

/** Raw bytes as a piece (a fixed header, an attribute payload). */
export class Bytes implements Piece {
  constructor(readonly data: Uint8Array) {}
  get length(): number {
    return this.data.byteLength;
  }
  write(view: DataView, offset: number): void {
    new Uint8Array(view.buffer, view.byteOffset + offset, this.data.byteLength).set(this.data);
  }
}

/** struct ifinfomsg (16 bytes). */
export class IfInfoMsg implements Piece {
  readonly length = IFINFOMSG_LEN;
  constructor(
    readonly family = AF_UNSPEC,
    readonly index = 0,
    readonly flags = 0,
    readonly change = 0,
    readonly type = 0,
  ) {}
  write(view: DataView, o: number): void {
    view.setUint8(o, this.family);
    view.setUint8(o + 1, 0);
    view.setUint16(o + 2, this.type, LITTLE_ENDIAN);
    view.setInt32(o + 4, this.index, LITTLE_ENDIAN);
    view.setUint32(o + 8, this.flags, LITTLE_ENDIAN);
    view.setUint32(o + 12, this.change, LITTLE_ENDIAN);
  }
  static parse(data: Uint8Array): IfInfoMsg {
    if (data.byteLength < IFINFOMSG_LEN)
      throw new RangeError(`ifinfomsg needs ${IFINFOMSG_LEN} bytes, got ${data.byteLength}`);
    const v = viewOf(data);
    return new IfInfoMsg(
      v.getUint8(0),
      v.getInt32(4, LITTLE_ENDIAN),
      v.getUint32(8, LITTLE_ENDIAN),
      v.getUint32(12, LITTLE_ENDIAN),
      v.getUint16(2, LITTLE_ENDIAN),
    );
  }
}

/** struct ifaddrmsg (8 bytes). */
export class IfAddrMsg implements Piece {
  readonly length = IFADDRMSG_LEN;
  constructor(
    readonly family = AF_UNSPEC,
    readonly prefixlen = 0,
    readonly flags = 0,
    readonly scope = 0,
    readonly index = 0,
  ) {}
  write(view: DataView, o: number): void {
    view.setUint8(o, this.family);
    view.setUint8(o + 1, this.prefixlen);
    view.setUint8(o + 2, this.flags);
    view.setUint8(o + 3, this.scope);
    view.setUint32(o + 4, this.index, LITTLE_ENDIAN);
  }
  static parse(data: Uint8Array): IfAddrMsg {
    if (data.byteLength < IFADDRMSG_LEN)
      throw new RangeError(`ifaddrmsg needs ${IFADDRMSG_LEN} bytes, got ${data.byteLength}`);
    const v = viewOf(data);
    return new IfAddrMsg(
      v.getUint8(0),
      v.getUint8(1),
      v.getUint8(2),
      v.getUint8(3),
      v.getUint32(4, LITTLE_ENDIAN),
    );
  }
}

/**
 * A struct rtattr: a type, an optional fixed payload, and child attributes (a nest). The
 * length is computed from the parts, so a tree is built first and written in one go.
 */
export class Attr implements Piece {
  readonly children: Attr[] = [];
  constructor(
    readonly type: number,
    readonly data: Piece = EMPTY,
  ) {}

  /** Adds a child and returns it, so nests read as paths: info.add(IFLA_INFO_DATA).add(...). */
  add(child: Attr): Attr;
  add(type: number, data?: Piece): Attr;
  add(typeOrChild: number | Attr, data?: Piece): Attr {
    const child = typeof typeOrChild === "number" ? new Attr(typeOrChild, data) : typeOrChild;
    this.children.push(child);
    return child;
  }
  u8(type: number, value: number): this {
    this.children.push(attrU8(type, value));
    return this;
  }
  u32(type: number, value: number): this {
    this.children.push(attrU32(type, value));
    return this;
  }
  str(type: number, value: string): this {
    this.children.push(attrString(type, value));
    return this;
  }
  bytes(type: number, value: Uint8Array): this {
    this.children.push(new Attr(type, new Bytes(value)));
    return this;
  }

  /** rta_len: header, payload, and each child padded (as the kernel's nla_nest_end counts). */
  get length(): number {
    if (this.children.length === 0) return RTA_HDRLEN + this.data.length;
    let n = RTA_HDRLEN + align(this.data.length);
    for (const c of this.children) n += align(c.length);
    return n;
  }

  write(view: DataView, offset: number): void {
    view.setUint16(offset, this.length, LITTLE_ENDIAN);
    view.setUint16(offset + 2, this.type, LITTLE_ENDIAN);
    this.data.write(view, offset + RTA_HDRLEN);
    let o = offset + RTA_HDRLEN + align(this.data.length);
    for (const c of this.children) {
      c.write(view, o);
      o += align(c.length);
    }
  }
}

const EMPTY = new Bytes(new Uint8Array(0));

export function attrU8(type: number, value: number): Attr {
  return new Attr(type, new Bytes(Uint8Array.of(value)));
}
export function attrU16(type: number, value: number): Attr {
  const b = new Uint8Array(2);
  viewOf(b).setUint16(0, value, LITTLE_ENDIAN);
  return new Attr(type, new Bytes(b));
}
/** A 16-bit value in network byte order (e.g. IFLA_VXLAN_PORT). */
export function attrBe16(type: number, value: number): Attr {
  const b = new Uint8Array(2);
  viewOf(b).setUint16(0, value, false);
  return new Attr(type, new Bytes(b));
}
export function attrU32(type: number, value: number): Attr {
  const b = new Uint8Array(4);
  viewOf(b).setUint32(0, value >>> 0, LITTLE_ENDIAN);
  return new Attr(type, new Bytes(b));
}
export function attrU64(type: number, value: bigint): Attr {
  const b = new Uint8Array(8);
  viewOf(b).setBigUint64(0, value, LITTLE_ENDIAN);
  return new Attr(type, new Bytes(b));
}
/** A NUL-terminated string. */
export function attrString(type: number, value: string): Attr {
  const utf8 = new TextEncoder().encode(value);
  const b = new Uint8Array(utf8.byteLength + 1);
  b.set(utf8);
  return new Attr(type, new Bytes(b));
}

/** A request: nlmsghdr, a fixed header (ifinfomsg, ifaddrmsg) and attributes. */
export class Message implements Piece {
  constructor(
    readonly type: number,
    readonly flags: number,
    readonly header: Piece,
    readonly attrs: Attr[] = [],
    public seq = 0,
    public pid = 0,
  ) {}
  get length(): number {
    let n = NLMSG_HDRLEN + align(this.header.length);
    for (const a of this.attrs) n += align(a.length);
    return n;
  }
  write(view: DataView, o: number): void {
    view.setUint32(o, this.length, LITTLE_ENDIAN);
    view.setUint16(o + 4, this.type, LITTLE_ENDIAN);
    view.setUint16(o + 6, this.flags, LITTLE_ENDIAN);
    view.setUint32(o + 8, this.seq >>> 0, LITTLE_ENDIAN);
    view.setUint32(o + 12, this.pid >>> 0, LITTLE_ENDIAN);
    this.header.write(view, o + NLMSG_HDRLEN);
    let p = o + NLMSG_HDRLEN + align(this.header.length);
    for (const a of this.attrs) {
      a.write(view, p);
      p += align(a.length);
    }
  }
  encode(): Uint8Array {
    const out = new Uint8Array(this.length);
    this.write(viewOf(out), 0);
    return out;
  }
}

/** One received netlink message; `payload` is what follows the 16-byte header. */
export interface NlMsg {
  type: number;
  flags: number;
  seq: number;
  pid: number;
  payload: Uint8Array;
}

export function viewOf(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

/** Splits a datagram into messages; throws on a length that does not fit. */
export function parseMessages(data: Uint8Array): NlMsg[] {
  const v = viewOf(data);
  const out: NlMsg[] = [];
  let o = 0;
  while (o < data.byteLength) {
    if (data.byteLength - o < NLMSG_HDRLEN)
      throw new RangeError(`truncated nlmsghdr: ${data.byteLength - o} bytes left at offset ${o}`);
    const len = v.getUint32(o, LITTLE_ENDIAN);
    if (len < NLMSG_HDRLEN || len > data.byteLength - o)
      throw new RangeError(`bad nlmsg_len ${len} at offset ${o} of ${data.byteLength}`);
    out.push({
      type: v.getUint16(o + 4, LITTLE_ENDIAN),
      flags: v.getUint16(o + 6, LITTLE_ENDIAN),
      seq: v.getUint32(o + 8, LITTLE_ENDIAN),
      pid: v.getUint32(o + 12, LITTLE_ENDIAN),
      payload: data.subarray(o + NLMSG_HDRLEN, o + len),
    });
    o += align(len);
  }
  return out;
}

/** Parsed attributes of one level; nests are parsed on demand with `nested()`. */
export class Attrs {
  /** `type` without the NLA_F_NESTED / NLA_F_NET_BYTEORDER bits, `rawType` as sent. */
  private constructor(readonly list: ReadonlyArray<{ type: number; rawType: number; data: Uint8Array }>) {}

  /** Parses a run of attributes; throws on a length that does not fit. */
  static parse(data: Uint8Array): Attrs {
    const v = viewOf(data);
    const list: Array<{ type: number; rawType: number; data: Uint8Array }> = [];
    let o = 0;
    while (o + RTA_HDRLEN <= data.byteLength) {
      const len = v.getUint16(o, LITTLE_ENDIAN);
      if (len < RTA_HDRLEN || len > data.byteLength - o)
        throw new RangeError(`bad rta_len ${len} at offset ${o} of ${data.byteLength}`);
      const rawType = v.getUint16(o + 2, LITTLE_ENDIAN);
      list.push({ type: rawType & NLA_TYPE_MASK, rawType, data: data.subarray(o + RTA_HDRLEN, o + len) });
      o += align(len);
    }
    if (o < data.byteLength) throw new RangeError(`${data.byteLength - o} stray bytes after attributes`);
    return new Attrs(list);
  }

  get(type: number): Uint8Array | undefined {
    for (const a of this.list) if (a.type === type) return a.data;
    return undefined;
  }
  has(type: number): boolean {
    return this.get(type) !== undefined;
  }
  u8(type: number): number | undefined {
    const d = this.get(type);
    if (d === undefined) return undefined;
    if (d.byteLength < 1) throw new RangeError(`attribute ${type}: expected 1 byte, got ${d.byteLength}`);
    return d[0];
  }
  u32(type: number): number | undefined {
    const d = this.get(type);
    if (d === undefined) return undefined;
    if (d.byteLength < 4) throw new RangeError(`attribute ${type}: expected 4 bytes, got ${d.byteLength}`);
    return viewOf(d).getUint32(0, LITTLE_ENDIAN);
  }
  u64(type: number): bigint | undefined {
    const d = this.get(type);
    if (d === undefined) return undefined;
    if (d.byteLength < 8) throw new RangeError(`attribute ${type}: expected 8 bytes, got ${d.byteLength}`);
    return viewOf(d).getBigUint64(0, LITTLE_ENDIAN);
  }
  be16(type: number): number | undefined {
    const d = this.get(type);
    if (d === undefined) return undefined;
    if (d.byteLength < 2) throw new RangeError(`attribute ${type}: expected 2 bytes, got ${d.byteLength}`);
    return viewOf(d).getUint16(0, false);
  }
  /** A string, up to its NUL. */
  str(type: number): string | undefined {
    const d = this.get(type);
    if (d === undefined) return undefined;
    const nul = d.indexOf(0);
    return new TextDecoder().decode(nul < 0 ? d : d.subarray(0, nul));
  }
  nested(type: number): Attrs | undefined {
    const d = this.get(type);
    return d === undefined ? undefined : Attrs.parse(d);
  }
}

/** struct nlmsgerr and its extended-ack attributes. `error` is a negative errno or 0 (ack). */
export interface NlErr {
  error: number;
  /** NLMSGERR_ATTR_MSG: the kernel's explanation, when it gave one. */
  message: string;
  /** The header of the request this answers. */
  seq: number;
}

/** Parses an NLMSG_ERROR (or a NLMSG_DONE carrying an error) payload. */
export function parseError(msg: NlMsg): NlErr {
  const p = msg.payload;
  if (msg.type === NLMSG_DONE) {
    // A dump's end: an int error code, then extended-ack attributes when NLM_F_ACK_TLVS.
    if (p.byteLength < 4) return { error: 0, message: "", seq: msg.seq };
    const error = viewOf(p).getInt32(0, LITTLE_ENDIAN);
    const tlvs = msg.flags & NLM_F_ACK_TLVS ? Attrs.parse(p.subarray(4)) : undefined;
    return { error, message: tlvs?.str(NLMSGERR_ATTR_MSG) ?? "", seq: msg.seq };
  }
  if (p.byteLength < 4 + NLMSG_HDRLEN)
    throw new RangeError(`nlmsgerr needs ${4 + NLMSG_HDRLEN} bytes, got ${p.byteLength}`);
  const v = viewOf(p);
  const error = v.getInt32(0, LITTLE_ENDIAN);
  const origLen = v.getUint32(4, LITTLE_ENDIAN);
  const origSeq = v.getUint32(12, LITTLE_ENDIAN);
  // The original request follows in full, unless capped (NETLINK_CAP_ACK) or a plain ack.
  const echoed = msg.flags & NLM_F_CAPPED || error === 0 ? NLMSG_HDRLEN : origLen;
  const start = 4 + align(echoed);
  let message = "";
  if (msg.flags & NLM_F_ACK_TLVS && start < p.byteLength)
    message = Attrs.parse(p.subarray(start)).str(NLMSGERR_ATTR_MSG) ?? "";
  return { error, message, seq: origSeq };
}
