// Address verbs: add an IPv4/IPv6 address, list the addresses of a link.
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { NetlinkError, inNetns } from "./errors.ts";
import { formatIp, parseCidr, type ParsedCidr } from "./ip.ts";
import { checkName, fail, queryLink, withSocket } from "./link.ts";
import {
  AF_INET,
  AF_INET6,
  AF_UNSPEC,
  Attrs,
  Bytes,
  Attr,
  IFADDRMSG_LEN,
  IFA_ADDRESS,
  IFA_F_NODAD,
  IFA_FLAGS,
  IFA_LOCAL,
  IfAddrMsg,
  NLM_F_CREATE,
  NLM_F_EXCL,
  RT_SCOPE_HOST,
  RT_SCOPE_LINK,
  RT_SCOPE_UNIVERSE,
  RTM_GETADDR,
  RTM_DELADDR,
  RTM_NEWADDR,
  attrU32,
} from "./nl.ts";
import { withNetns } from "./netns.ts";

export interface Address {
  family: 4 | 6;
  address: string;
  prefixLength: number;
  /** "global", "link", "host", or the number of another scope. */
  scope: string;
}

export function scopeName(scope: number): string {
  if (scope === RT_SCOPE_UNIVERSE) return "global";
  if (scope === RT_SCOPE_LINK) return "link";
  if (scope === RT_SCOPE_HOST) return "host";
  return String(scope);
}

/**
 * Makes sure IPv6 is enabled on `ifname` in `ns` (a pod image or sysctl may disable it),
 * since the kernel refuses IPv6 addresses on such a link. The sysctl tree under
 * /proc/sys/net belongs to the netns of whoever opens it, hence the switch.
 */
function enableIpv6(ifname: string, ns: string | undefined): void {
  const path = `/proc/sys/net/ipv6/conf/${ifname}/disable_ipv6`;
  withNetns(ns, () => {
    if (!existsSync(path)) return; // IPv6 compiled out or disabled at boot: the add will say so
    if (readFileSync(path, "utf8").trim() !== "0") writeFileSync(path, "0");
  });
}

/**
 * Adds an address with its prefix length to a link. IPv6 addresses skip duplicate address
 * detection (IFA_F_NODAD) so they are usable at once. `ip addr add CIDR dev NAME [nodad]`
 */
export function addAddress(ifname: string, cidr: string, ns?: string): void {
  checkName(ifname);
  const what = `add address ${cidr} to ${JSON.stringify(ifname)} ${inNetns(ns)}`;
  let addr: ParsedCidr;
  try {
    addr = parseCidr(cidr);
  } catch (err) {
    fail(what, err);
  }
  const v6 = addr.family === 6;
  if (v6) {
    try {
      enableIpv6(ifname, ns);
    } catch (err) {
      if (err instanceof NetlinkError) throw err;
      throw new NetlinkError(`failed to ${what}: cannot enable IPv6: ${(err as Error).message}`, {
        cause: err,
      });
    }
  }
  withSocket(
    ns,
    what,
    (sock) => {
      const { index } = queryLink(sock, ifname);
      const flags = v6 ? IFA_F_NODAD : 0;
      const hdr = new IfAddrMsg(v6 ? AF_INET6 : AF_INET, addr.prefixLength, flags, RT_SCOPE_UNIVERSE, index);
      const bytes = new Bytes(addr.bytes);
      const attrs = [new Attr(IFA_LOCAL, bytes), new Attr(IFA_ADDRESS, bytes)];
      if (v6) attrs.push(attrU32(IFA_FLAGS, flags));
      sock.change(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, hdr, attrs);
    },
    true,
  );
}

/** Removes an address from a link. `ip addr del CIDR dev NAME` */
export function deleteAddress(ifname: string, cidr: string, ns?: string): void {
  checkName(ifname);
  const what = `delete address ${cidr} from ${JSON.stringify(ifname)} ${inNetns(ns)}`;
  let addr: ParsedCidr;
  try {
    addr = parseCidr(cidr);
  } catch (err) {
    fail(what, err);
  }
  withSocket(
    ns,
    what,
    (sock) => {
      const { index } = queryLink(sock, ifname);
      const hdr = new IfAddrMsg(addr.family === 6 ? AF_INET6 : AF_INET, addr.prefixLength, 0, 0, index);
      sock.change(RTM_DELADDR, 0, hdr, [new Attr(IFA_LOCAL, new Bytes(addr.bytes))]);
    },
    true,
  );
}

/** The addresses of a link, IPv4 first as the kernel lists them. `ip addr show dev NAME` */
export function listAddresses(ifname: string, ns?: string): Address[] {
  checkName(ifname);
  return withSocket(
    ns,
    `list addresses of ${JSON.stringify(ifname)} ${inNetns(ns)}`,
    (sock) => {
      const { index } = queryLink(sock, ifname);
      const out: Address[] = [];
      for (const m of sock.dump(RTM_GETADDR, new IfAddrMsg(AF_UNSPEC), [])) {
        const hdr = IfAddrMsg.parse(m.payload);
        if (hdr.index !== index || (hdr.family !== AF_INET && hdr.family !== AF_INET6)) continue;
        const attrs = Attrs.parse(m.payload.subarray(IFADDRMSG_LEN));
        const bytes = attrs.get(IFA_LOCAL) ?? attrs.get(IFA_ADDRESS);
        if (bytes === undefined) continue;
        out.push({
          family: hdr.family === AF_INET ? 4 : 6,
          address: formatIp(bytes),
          prefixLength: hdr.prefixlen,
          scope: scopeName(hdr.scope),
        });
      }
      return out;
    },
    true,
  );
}

/**
 * The first IPv4 address of a link (what an empty `parent_address` stands for), or undefined
 * when it has none. `ip -4 addr show dev NAME | head`
 */
export function firstIpv4Address(ifname: string, ns?: string): string | undefined {
  return listAddresses(ifname, ns).find((a) => a.family === 4)?.address;
}
