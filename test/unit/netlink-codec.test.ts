// Codec tests against bytes captured once from a real system (kept as hex here):
// - VETH_REQUEST: what iproute2 6.1 sent for
//   `ip -n fx link add vc mtu 1400 address 02:00:00:00:00:0c type veth peer name vd` (strace -e write)
// - VXLAN_REQUEST: the request this layer sent for a vxlan the kernel then parsed and refused
// - VXLAN_EEXIST: the kernel's NLMSG_ERROR for it, with its extended-ack text
// - VXLAN_GET: the kernel's answer (and ack) to RTM_GETLINK for a vxlan made with
//   `ip link add vx0 address 02:00:00:00:00:0b type vxlan id 42 remote 192.168.77.2 dev du0 \
//      dstport 4789 learning`
import { describe, expect, test } from "bun:test";
import { formatIp, parseCidr, parseIp } from "../../src/netlink/ip.ts";
import { decodeLink } from "../../src/netlink/link.ts";
import {
  AF_UNSPEC,
  Attr,
  Attrs,
  Bytes,
  IFF_UP,
  IFINFOMSG_LEN,
  IFLA_ADDRESS,
  IFLA_IFNAME,
  IFLA_INFO_DATA,
  IFLA_INFO_KIND,
  IFLA_LINKINFO,
  IFLA_MTU,
  IFLA_VXLAN_GROUP,
  IFLA_VXLAN_ID,
  IFLA_VXLAN_LEARNING,
  IFLA_VXLAN_LINK,
  IFLA_VXLAN_PORT,
  IfAddrMsg,
  IfInfoMsg,
  Message,
  NLM_F_ACK,
  NLM_F_CREATE,
  NLM_F_EXCL,
  NLM_F_REQUEST,
  NLMSG_ERROR,
  RTM_NEWLINK,
  VETH_INFO_PEER,
  align,
  attrBe16,
  attrString,
  attrU32,
  attrU8,
  parseError,
  parseMessages,
} from "../../src/netlink/nl.ts";
import { rng } from "../support/rng.ts";

const hex = (s: string): Uint8Array => Uint8Array.from(Buffer.from(s, "hex"));
const toHex = (b: Uint8Array): string => Buffer.from(b).toString("hex");
const encodeAttr = (a: Attr): Uint8Array => {
  const b = new Uint8Array(align(a.length));
  a.write(new DataView(b.buffer), 0);
  return b;
};

const VETH_REQUEST = hex(
  "6800000010000506a1390a6b000000000000000000000000000000000000000008000400780500000a00010002000000" +
    "000c000007000300766300002c0012000800010076657468200002001c00010000000000000000000000000000000000" +
    "0700030076640000",
);
const VXLAN_REQUEST = hex(
  "6c00000010000506361bf11f0000000000000000000000000100000001000000080003007678310008000400aa050000" +
    "3c0012000a00010076786c616e0000002c000200080001002a00000008000200c0a84d02080003000300000006000f00" +
    "12b500000500070001000000",
);
const VXLAN_EEXIST = hex(
  "6000000002000003361bf11fb0300000efffffff6c00000010000506361bf11f0000000039000100412056584c414e20" +
    "6465766963652077697468207468652073706563696669656420564e4920616c72656164792065786973747300000000",
);
const VXLAN_GET = hex(
  "3405000010000000341bf11fb030000000000100060000004310010000000000080003007678300008000d00e8030000" +
    "05001000000000000500110000000000050043000000000008000400aa050000080032004400000008003300ffff0000" +
    "08001b000000000008001e000000000008003d000000000008001f000100000008002800ffff00000800290000000100" +
    "08003a000000010008003f0000000100080040000000010008003b00f8ff070008003c00ffff00000800420000000000" +
    "08002000010000000500210001000000080023000000000008002f000000000008003000000000000600440040000000" +
    "060045000000000005002700000000000a00010002000000000b00000a000200ffffffffffff0000cc00170000000000" +
    "000000000800000000000000000000000000000020020000000000000000000000000000000000000000000000000000" +
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000" +
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000" +
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000" +
    "000000006400070000000000080000000000000020020000000000000000000000000000000000000000000000000000" +
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000" +
    "00000000000000000c002b000500020000000000e80012000a00010076786c616e000000d8000200080001002a000000" +
    "08000200c0a84d020800030003000000050005000000000005001c0000000000050006000000000005001d0000000000" +
    "08001a00000000000800200000000000050007000100000005000b000000000005000c000000000005000d0000000000" +
    "05000e00000000000500190000000000080008002c010000080009000000000006000f0012b500000500120001000000" +
    "050013000000000005001400000000000500150000000000050016000000000005001f000100000008000a0000000000" +
    "0c002100f7ffffff000000ff0c0006006e6f717565756500c0011a008c00020088000100010000000000000000000000" +
    "010000000100000001000000010000000000000001000000000000000000000000000000000000000000000000000000" +
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000010270000" +
    "e8030000000000000000000000000000000000000100000030010a00080001001000008014000500ffff0000aaca0300" +
    "848b0000e8030000f40002000000000040000000aa05000001000000010000000100000001000000ffffffffa00f0000" +
    "e803000000000000803a0900805101000300000058020000100000000000000001000000010000000100000060ea0000" +
    "00000000000000000000000000000000000000000000000001000000000000000000000010270000e803000001000000" +
    "0000000000000000010000000000000000000000010000000000000000000000000000000000000080ee360000000000" +
    "000000000100000000000000000000000000000000000000000000000004000000000000ffff0000ffffffff01000000" +
    "0000000000000000000000001400070000000000000000000000000000000000050008000000000024000e0000000000" +
    "0000000000000000000000000000000000000000000000000000000004003e80040041802400000002000001341bf11f" +
    "b0300000000000003000000012000500341bf11f00000000",
);

describe("encoding", () => {
  test("a veth request built as an attribute tree matches iproute2's bytes", () => {
    const info = new Attr(IFLA_LINKINFO);
    // iproute2 sends the kind without NUL
    info.add(IFLA_INFO_KIND, new Bytes(new TextEncoder().encode("veth")));
    info.add(IFLA_INFO_DATA).add(VETH_INFO_PEER, new IfInfoMsg()).add(attrString(IFLA_IFNAME, "vd"));
    const msg = new Message(
      RTM_NEWLINK,
      NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE,
      new IfInfoMsg(),
      [
        attrU32(IFLA_MTU, 1400),
        new Attr(IFLA_ADDRESS, new Bytes(hex("02000000000c"))),
        attrString(IFLA_IFNAME, "vc"),
        info,
      ],
      1795832225,
    );
    expect(toHex(msg.encode())).toBe(toHex(VETH_REQUEST));
    expect(msg.length).toBe(VETH_REQUEST.byteLength);
  });

  test("a vxlan request (big-endian port, nested data) matches what the kernel accepted for parsing", () => {
    const info = new Attr(IFLA_LINKINFO);
    info.add(attrString(IFLA_INFO_KIND, "vxlan"));
    info
      .add(IFLA_INFO_DATA)
      .u32(IFLA_VXLAN_ID, 42)
      .bytes(IFLA_VXLAN_GROUP, parseIp("192.168.77.2").bytes)
      .u32(IFLA_VXLAN_LINK, 3)
      .add(attrBe16(IFLA_VXLAN_PORT, 4789));
    info.children[1]?.add(attrU8(IFLA_VXLAN_LEARNING, 1));
    const msg = new Message(
      RTM_NEWLINK,
      NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE,
      new IfInfoMsg(AF_UNSPEC, 0, IFF_UP, IFF_UP),
      [attrString(IFLA_IFNAME, "vx1"), attrU32(IFLA_MTU, 1450), info],
      0x1ff11b36,
    );
    expect(toHex(msg.encode())).toBe(toHex(VXLAN_REQUEST));
    // The port is in network byte order: 4789 = 0x12b5 -> bytes 12 b5.
    expect(toHex(VXLAN_REQUEST)).toContain("06000f0012b50000");
  });

  test("lengths: a leaf counts its payload unpadded, a nest counts its children padded", () => {
    const leaf = attrString(IFLA_IFNAME, "a"); // 4 + 2
    expect(leaf.length).toBe(6);
    const nest = new Attr(IFLA_LINKINFO);
    nest.add(leaf);
    nest.add(attrU8(1, 7)); // 5 -> 8
    expect(nest.length).toBe(4 + 8 + 8);
    const msg = new Message(RTM_NEWLINK, NLM_F_REQUEST, new IfInfoMsg(), [nest, attrU8(9, 1)]);
    expect(msg.length).toBe(16 + 16 + 20 + 5 + 3);
    expect(msg.encode().byteLength % 4).toBe(0);
  });
});

describe("decoding kernel answers", () => {
  test("RTM_GETLINK answer for a vxlan, then the ack", () => {
    const msgs = parseMessages(VXLAN_GET);
    expect(msgs.map((m) => m.type)).toEqual([RTM_NEWLINK, NLMSG_ERROR]);
    const link = decodeLink(msgs[0]!);
    expect(link).toMatchObject({ name: "vx0", mtu: 1450, mac: "02:00:00:00:00:0b", up: true, kind: "vxlan" });
    if (link.kind !== "vxlan") throw new Error("not a vxlan");
    expect(link.vni).toBe(42);
    expect(link.remote).toBe("192.168.77.2");
    expect(link.port).toBe(4789);
    expect(link.learning).toBe(true);
    expect(link.underlayIndex).toBe(3);
    const ack = parseError(msgs[1]!);
    expect(ack.error).toBe(0);
    expect(ack.seq).toBe(msgs[0]!.seq);
  });

  test("NLMSG_ERROR with an extended ack", () => {
    const [msg] = parseMessages(VXLAN_EEXIST);
    const err = parseError(msg!);
    expect(err.error).toBe(-17);
    expect(err.message).toBe("A VXLAN device with the specified VNI already exists");
    expect(err.seq).toBe(0x1ff11b36);
  });

  test("a kernel answer re-encodes to the same bytes (flags such as NLA_F_NESTED kept)", () => {
    const [msg] = parseMessages(VXLAN_GET);
    const payload = msg!.payload;
    const attrs = Attrs.parse(payload.subarray(IFINFOMSG_LEN));
    const hdr = IfInfoMsg.parse(payload);
    const rebuilt = new Message(
      msg!.type,
      msg!.flags,
      hdr,
      attrs.list.map((a) => new Attr(a.rawType, new Bytes(a.data))),
      msg!.seq,
      msg!.pid,
    );
    expect(toHex(rebuilt.encode())).toBe(toHex(VXLAN_GET.subarray(0, align(payload.byteLength + 16))));
  });
});

describe("bad lengths are rejected", () => {
  const good = new Message(RTM_NEWLINK, NLM_F_REQUEST, new IfInfoMsg(), [
    attrString(IFLA_IFNAME, "eth0"),
  ]).encode();
  const withU32 = (bytes: Uint8Array, offset: number, value: number, size: 2 | 4) => {
    const b = bytes.slice();
    const v = new DataView(b.buffer);
    if (size === 4) v.setUint32(offset, value, true);
    else v.setUint16(offset, value, true);
    return b;
  };
  test("nlmsg_len shorter than a header, longer than the datagram, or a truncated header", () => {
    expect(() => parseMessages(withU32(good, 0, 8, 4))).toThrow(RangeError);
    expect(() => parseMessages(withU32(good, 0, good.byteLength + 4, 4))).toThrow(RangeError);
    expect(() => parseMessages(good.subarray(0, 10))).toThrow(RangeError);
  });
  test("rta_len below the header or past the end", () => {
    const attrs = good.subarray(16 + IFINFOMSG_LEN);
    expect(() => Attrs.parse(withU32(attrs, 0, 2, 2))).toThrow(RangeError);
    expect(() => Attrs.parse(withU32(attrs, 0, 200, 2))).toThrow(RangeError);
    expect(() => Attrs.parse(attrs.subarray(0, 6))).toThrow(RangeError);
  });
  test("short fixed headers and short integer attributes", () => {
    expect(() => IfInfoMsg.parse(new Uint8Array(15))).toThrow(RangeError);
    expect(() => IfAddrMsg.parse(new Uint8Array(7))).toThrow(RangeError);
    const a = Attrs.parse(encodeAttr(new Attr(5, new Bytes(new Uint8Array(2)))));
    expect(() => a.u32(5)).toThrow(RangeError);
    expect(() =>
      parseError({ type: NLMSG_ERROR, flags: 0, seq: 0, pid: 0, payload: new Uint8Array(8) }),
    ).toThrow(RangeError);
  });
});

function randomTree(rand: () => number, depth: number): Attr {
  const type = 1 + Math.floor(rand() * 30);
  if (depth > 0 && rand() < 0.4) {
    const nest = new Attr(type);
    const n = Math.floor(rand() * 4);
    for (let i = 0; i < n; i++) nest.add(randomTree(rand, depth - 1));
    return nest;
  }
  const data = Uint8Array.from({ length: Math.floor(rand() * 23) }, () => Math.floor(rand() * 256));
  return new Attr(type, new Bytes(data));
}

// Compares a written tree with what the parser reads back, level by level.
function expectSame(tree: Attr, read: { type: number; data: Uint8Array }): void {
  expect(read.type).toBe(tree.type);
  if (tree.children.length === 0) {
    expect(toHex(read.data)).toBe(toHex((tree.data as Bytes).data));
    return;
  }
  const kids = Attrs.parse(read.data).list;
  expect(kids.length).toBe(tree.children.length);
  tree.children.forEach((c, i) => {
    expectSame(c, kids[i]!);
  });
}

describe("random round trips", () => {
  test("500 random attribute trees survive encode -> parse", () => {
    const rand = rng(20261128);
    for (let i = 0; i < 500; i++) {
      const attrs = Array.from({ length: 1 + Math.floor(rand() * 5) }, () => randomTree(rand, 3));
      const hdr = new IfAddrMsg(10, Math.floor(rand() * 129), 2, 0, Math.floor(rand() * 1000));
      const seq = Math.floor(rand() * 2 ** 32);
      const bytes = new Message(RTM_NEWLINK, NLM_F_REQUEST, hdr, attrs, seq, 7).encode();
      const [msg, ...rest] = parseMessages(bytes);
      expect(rest).toEqual([]);
      expect(msg!.seq).toBe(seq);
      expect(IfAddrMsg.parse(msg!.payload)).toEqual(hdr);
      const read = Attrs.parse(msg!.payload.subarray(8)).list;
      expect(read.length).toBe(attrs.length);
      attrs.forEach((a, k) => {
        expectSame(a, read[k]!);
      });
    }
  });

  test("IP addresses and prefixes", () => {
    const rand = rng(7);
    for (let i = 0; i < 300; i++) {
      const v6 = rand() < 0.5;
      const bytes = Uint8Array.from({ length: v6 ? 16 : 4 }, () =>
        rand() < 0.4 ? 0 : Math.floor(rand() * 256),
      );
      const text = formatIp(bytes);
      expect(toHex(parseIp(text).bytes)).toBe(toHex(bytes));
    }
    expect(formatIp(parseIp("fd00:0:0:1::1").bytes)).toBe("fd00:0:0:1::1");
    expect(formatIp(parseIp("::ffff:10.1.2.3").bytes)).toBe("::ffff:a01:203");
    expect(parseCidr("10.1.2.3/24")).toMatchObject({ family: 4, prefixLength: 24 });
    expect(() => parseCidr("10.1.2.3/33")).toThrow(RangeError);
    expect(() => parseCidr("10.1.2.3")).toThrow(RangeError);
    expect(() => parseCidr("fd00::1/129")).toThrow(RangeError);
  });
});
