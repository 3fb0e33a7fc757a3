// Text <-> bytes for IP addresses, prefixes and MAC addresses.
import { isIPv4, isIPv6 } from "node:net";
import { formatIpv6 } from "../cni/names.ts";

export interface ParsedIp {
  family: 4 | 6;
  bytes: Uint8Array;
}

/** Parses an IPv4 or IPv6 address; throws a RangeError naming the bad input. */
export function parseIp(text: string): ParsedIp {
  if (isIPv4(text)) return { family: 4, bytes: Uint8Array.from(text.split(".").map(Number)) };
  if (isIPv6(text)) return { family: 6, bytes: parseIpv6(text) };
  throw new RangeError(`${JSON.stringify(text)} is not an IP address`);
}

function parseIpv6(text: string): Uint8Array {
  let s = text;
  const zone = s.indexOf("%");
  if (zone >= 0) s = s.slice(0, zone);
  const groups: number[] = [];
  const pushGroups = (part: string): number[] => {
    const out: number[] = [];
    if (part === "") return out;
    for (const g of part.split(":")) {
      if (g.includes(".")) {
        const v4 = g.split(".").map(Number);
        out.push(((v4[0] ?? 0) << 8) | (v4[1] ?? 0), ((v4[2] ?? 0) << 8) | (v4[3] ?? 0));
      } else out.push(parseInt(g, 16));
    }
    return out;
  };
  const gap = s.indexOf("::");
  if (gap >= 0) {
    const head = pushGroups(s.slice(0, gap));
    const tail = pushGroups(s.slice(gap + 2));
    groups.push(...head, ...new Array<number>(8 - head.length - tail.length).fill(0), ...tail);
  } else groups.push(...pushGroups(s));
  const bytes = new Uint8Array(16);
  groups.forEach((g, i) => {
    bytes[2 * i] = g >> 8;
    bytes[2 * i + 1] = g & 0xff;
  });
  return bytes;
}

/** Formats 4 or 16 address bytes (RFC 5952 for IPv6: lower case, longest zero run as ::). */
export function formatIp(bytes: Uint8Array): string {
  if (bytes.byteLength === 4) return Array.from(bytes).join(".");
  if (bytes.byteLength !== 16)
    throw new RangeError(`an IP address has 4 or 16 bytes, not ${bytes.byteLength}`);
  const g: number[] = [];
  for (let i = 0; i < 16; i += 2) g.push(((bytes[i] as number) << 8) | (bytes[i + 1] as number));
  return formatIpv6(g);
}

export interface ParsedCidr extends ParsedIp {
  prefixLength: number;
}

/** Parses "10.1.2.3/24" or "fd00::1/64". */
export function parseCidr(text: string): ParsedCidr {
  const slash = text.lastIndexOf("/");
  if (slash < 0) throw new RangeError(`${JSON.stringify(text)} has no prefix length (address/length)`);
  const ip = parseIp(text.slice(0, slash));
  const lenText = text.slice(slash + 1);
  const max = ip.family === 4 ? 32 : 128;
  const prefixLength = Number(lenText);
  if (!/^\d{1,3}$/.test(lenText) || prefixLength > max)
    throw new RangeError(`${JSON.stringify(text)}: prefix length must be 0..${max}`);
  return { ...ip, prefixLength };
}

/** Parses "aa:bb:cc:dd:ee:ff" (also with "-"). */
export function parseMac(text: string): Uint8Array {
  const parts = text.split(/[:-]/);
  if (parts.length !== 6 || !parts.every((p) => /^[0-9a-fA-F]{2}$/.test(p))) {
    throw new RangeError(`${JSON.stringify(text)} is not a MAC address (six hex pairs)`);
  }
  return Uint8Array.from(parts.map((p) => parseInt(p, 16)));
}

export function formatMac(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join(":");
}
