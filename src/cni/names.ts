// Validators for every name that can reach a kernel call, an etcd key or a log line.
// Kept free of dependencies so the parent and the child share them.

/** CNI_IFNAME / Linux interface names: 1..15 bytes, not "." or "..", no "/", ":" or whitespace. */
export function interfaceNameProblem(name: string): string | undefined {
  const bytes = Buffer.byteLength(name, "utf8");
  if (bytes === 0) return "is empty";
  if (bytes > 15) return `is ${bytes} bytes long, the limit is 15`;
  if (name === "." || name === "..") return "may not be '.' or '..'";
  if (/[/:\s\0]/u.test(name)) return "may not contain '/', ':', NUL or whitespace";
  return undefined;
}

const CONTAINER_ID = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;
export function containerIdProblem(id: string): string | undefined {
  if (id.length === 0) return "is empty";
  if (id.length > 256) return `is ${id.length} characters long, the limit is 256`;
  if (!CONTAINER_ID.test(id)) return "must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$";
  return undefined;
}

const DNS1123_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const DNS1123_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

/** Pod names are DNS-1123 subdomains (253), namespaces DNS-1123 labels (63). */
export function podNameProblem(name: string): string | undefined {
  if (name.length === 0) return "is empty";
  if (name.length > 253) return `is ${name.length} characters long, the limit is 253`;
  if (!DNS1123_SUBDOMAIN.test(name))
    return "is not a DNS-1123 subdomain (lower-case letters, digits, '-' and '.')";
  return undefined;
}

export function namespaceProblem(name: string): string | undefined {
  if (name.length === 0) return "is empty";
  if (name.length > 63) return `is ${name.length} characters long, the limit is 63`;
  if (!DNS1123_LABEL.test(name)) return "is not a DNS-1123 label (lower-case letters, digits and '-')";
  return undefined;
}

/** Renders a value for an error message: quoted, control characters escaped, long values cut. */
export function show(value: unknown): string {
  if (typeof value === "string")
    return JSON.stringify(value.length > 80 ? `${value.slice(0, 80)}...` : value);
  const s = JSON.stringify(value) ?? String(value);
  return s.length > 80 ? `${s.slice(0, 80)}...` : s;
}

/** A Linux interface name as the CNI rules allow it, and free of control characters (log lines). */
export function linkInterfaceNameProblem(name: string): string | undefined {
  return (
    interfaceNameProblem(name) ?? (/\p{Cc}/u.test(name) ? "may not contain control characters" : undefined)
  );
}

export interface IpAddress {
  family: 4 | 6;
  /** Canonical text: dotted quad, or RFC 5952 for IPv6 (lower case, longest zero run as "::"). */
  address: string;
}

function parseIpv4Octets(s: string): number[] | undefined {
  const parts = s.split(".");
  if (parts.length !== 4) return undefined;
  const out: number[] = [];
  for (const p of parts) {
    // No leading zeros: "010" means 8 to some parsers and 10 to others.
    if (!/^(0|[1-9]\d{0,2})$/.test(p)) return undefined;
    const n = Number(p);
    if (n > 255) return undefined;
    out.push(n);
  }
  return out;
}

function parseIpv6Groups(s: string): number[] | undefined {
  if (s.length > 45) return undefined;
  const halves = s.split("::");
  if (halves.length > 2) return undefined;
  const side = (text: string): number[] | undefined => {
    if (text === "") return [];
    const groups: number[] = [];
    const parts = text.split(":");
    for (let i = 0; i < parts.length; i++) {
      const p = parts[i] as string;
      if (i === parts.length - 1 && p.includes(".")) {
        const v4 = parseIpv4Octets(p);
        if (!v4) return undefined;
        groups.push(
          ((v4[0] as number) << 8) | (v4[1] as number),
          ((v4[2] as number) << 8) | (v4[3] as number),
        );
      } else {
        if (!/^[0-9a-fA-F]{1,4}$/.test(p)) return undefined;
        groups.push(parseInt(p, 16));
      }
    }
    return groups;
  };
  const head = side(halves[0] as string);
  if (!head) return undefined;
  if (halves.length === 1) return head.length === 8 ? head : undefined;
  const tail = side(halves[1] as string);
  if (!tail || head.length + tail.length > 7) return undefined;
  return [...head, ...new Array<number>(8 - head.length - tail.length).fill(0), ...tail];
}

/** The eight 16-bit groups of an IPv6 address as RFC 5952 text. */
export function formatIpv6(groups: readonly number[]): string {
  // RFC 5952: compress the longest run of two or more zero groups, the first one on a tie.
  let bestStart = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestStart < 0) return hex.join(":");
  return `${hex.slice(0, bestStart).join(":")}::${hex.slice(bestStart + bestLen).join(":")}`;
}

/** Parses an IPv4 or IPv6 address (no zone, no prefix); undefined when it is neither. */
export function parseIpAddress(s: string): IpAddress | undefined {
  const v4 = parseIpv4Octets(s);
  if (v4) return { family: 4, address: v4.join(".") };
  if (!s.includes(":")) return undefined;
  const v6 = parseIpv6Groups(s);
  return v6 ? { family: 6, address: formatIpv6(v6) } : undefined;
}

export interface Cidr extends IpAddress {
  prefix: number;
  /** Canonical "address/prefix". */
  text: string;
}

/** Parses "address/prefix" (prefix <= 32 for IPv4, <= 128 for IPv6): the Cidr, or the problem. */
export function parseCidr(s: string): Cidr | { problem: string } {
  const slash = s.indexOf("/");
  if (slash < 0) return { problem: "needs a prefix length, such as 10.0.0.1/24 or fd00::1/64" };
  const ip = parseIpAddress(s.slice(0, slash));
  if (!ip) return { problem: "is not an IPv4 or IPv6 address with a prefix length" };
  const p = s.slice(slash + 1);
  const max = ip.family === 4 ? 32 : 128;
  if (!/^(0|[1-9]\d{0,2})$/.test(p) || Number(p) > max)
    return { problem: `has a bad prefix length: IPv${ip.family} allows 0..${max}` };
  const prefix = Number(p);
  return { ...ip, prefix, text: `${ip.address}/${prefix}` };
}

/** A unicast Ethernet address "02:00:00:00:00:01" (lower or upper case hex). */
export function macProblem(mac: string): string | undefined {
  if (!/^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/.test(mac))
    return "is not a MAC address such as 02:00:00:00:00:01";
  const bytes = mac.split(":").map((b) => parseInt(b, 16));
  if (bytes.every((b) => b === 0xff)) return "is the broadcast address";
  if (((bytes[0] as number) & 1) === 1) return "is a multicast address (the first octet is odd)";
  if (bytes.every((b) => b === 0)) return "is all zeros";
  return undefined;
}

/** Link MTU: what the kernel accepts for an IPv4-capable link. */
export function mtuProblem(mtu: number): string | undefined {
  if (!Number.isInteger(mtu)) return "is not an integer";
  if (mtu < 68 || mtu > 65535) return "is out of range 68..65535";
  return undefined;
}
