import { CniError, Code } from "./errors.ts";
import { OLDEST_VERSION, specOf } from "./versions.ts";

// One result model (the newest shape, a superset of the others) read from any version a
// plugin printed and written in the version the runtime asked for. What each version
// holds is in the table in versions.ts.

export interface Interface {
  name: string;
  mac?: string;
  sandbox?: string;
  mtu?: number;
  socketPath?: string;
  pciID?: string;
}
/** A ratchet link interface made for a container, as it goes into the result. */
export interface AttachedInterface {
  iface: Interface;
  /** CIDRs of the interface. */
  ips: string[];
}

export interface IPConfig {
  /** Index into interfaces. */
  interface?: number;
  /** CIDR: the address and its prefix length. */
  address: string;
  gateway?: string;
}
export interface Route {
  dst: string;
  gw?: string;
  mtu?: number;
  advmss?: number;
  priority?: number;
  table?: number;
  scope?: number;
}
export interface DNS {
  nameservers?: string[];
  domain?: string;
  search?: string[];
  options?: string[];
}
export interface Result {
  interfaces: Interface[];
  ips: IPConfig[];
  routes: Route[];
  dns: DNS;
}
/** An interface ratchet made for a container during its ADD, with its addresses (CIDR). */
export interface AttachedInterface {
  iface: Interface;
  ips: string[];
}

const isObject = (x: unknown): x is Record<string, unknown> =>
  typeof x === "object" && x !== null && !Array.isArray(x);

function bad(what: string, problem: string): CniError {
  return new CniError(Code.DecodeFailure, `invalid CNI result from ${what}: ${problem}`);
}

function str(o: Record<string, unknown>, k: string, what: string): string | undefined {
  const v = o[k];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "string") throw bad(what, `${k} must be a string`);
  return v;
}
function num(o: Record<string, unknown>, k: string, what: string): number | undefined {
  const v = o[k];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "number" || !Number.isInteger(v)) throw bad(what, `${k} must be an integer`);
  return v;
}
function strings(o: Record<string, unknown>, k: string, what: string): string[] | undefined {
  const v = o[k];
  if (v === undefined || v === null) return undefined;
  if (!Array.isArray(v) || v.some((s) => typeof s !== "string"))
    throw bad(what, `${k} must be a list of strings`);
  return v as string[];
}

function defined<T extends object>(o: T): T {
  for (const k of Object.keys(o) as Array<keyof T>) if (o[k] === undefined) delete o[k];
  return o;
}

function parseDns(x: unknown, what: string): DNS {
  if (x === undefined || x === null) return {};
  if (!isObject(x)) throw bad(what, "dns must be an object");
  return defined({
    nameservers: strings(x, "nameservers", what),
    domain: str(x, "domain", what),
    search: strings(x, "search", what),
    options: strings(x, "options", what),
  });
}

function parseRoute(x: unknown, what: string): Route {
  if (!isObject(x)) throw bad(what, "a route must be an object");
  const dst = str(x, "dst", what);
  if (!dst) throw bad(what, "a route needs dst");
  return defined({
    dst,
    gw: str(x, "gw", what),
    mtu: num(x, "mtu", what),
    advmss: num(x, "advmss", what),
    priority: num(x, "priority", what),
    table: num(x, "table", what),
    scope: num(x, "scope", what),
  });
}

/** Reads a result printed by a plugin, in any version from 0.1.0 on. */
export function parseResult(x: unknown, what: string): Result {
  if (!isObject(x)) throw bad(what, "not a JSON object");
  const version = typeof x.cniVersion === "string" ? x.cniVersion : OLDEST_VERSION;
  if (specOf(version).result.form === "ip4/ip6") {
    const ips: IPConfig[] = [];
    const routes: Route[] = [];
    for (const fam of ["ip4", "ip6"] as const) {
      const c = x[fam];
      if (c === undefined || c === null) continue;
      if (!isObject(c)) throw bad(what, `${fam} must be an object`);
      const address = c.ip;
      if (typeof address !== "string" || address === "") throw bad(what, `${fam}.ip is missing`);
      ips.push(defined({ address, gateway: str(c, "gateway", what) }));
      if (Array.isArray(c.routes)) for (const r of c.routes) routes.push(parseRoute(r, what));
    }
    return { interfaces: [], ips, routes, dns: parseDns(x.dns, what) };
  }
  const rawIfaces = x.interfaces ?? [];
  const rawIps = x.ips ?? [];
  const rawRoutes = x.routes ?? [];
  if (!Array.isArray(rawIfaces) || !Array.isArray(rawIps) || !Array.isArray(rawRoutes)) {
    throw bad(what, "interfaces, ips and routes must be lists");
  }
  const interfaces = rawIfaces.map((i): Interface => {
    if (!isObject(i)) throw bad(what, "an interface must be an object");
    const name = str(i, "name", what);
    if (!name) throw bad(what, "an interface needs a name");
    return defined({
      name,
      mac: str(i, "mac", what),
      sandbox: str(i, "sandbox", what),
      mtu: num(i, "mtu", what),
      socketPath: str(i, "socketPath", what),
      pciID: str(i, "pciID", what),
    });
  });
  const ips = rawIps.map((ip): IPConfig => {
    if (!isObject(ip)) throw bad(what, "an ips entry must be an object");
    const address = str(ip, "address", what);
    if (!address) throw bad(what, "an ips entry needs an address");
    const index = num(ip, "interface", what);
    if (index !== undefined && (index < 0 || index >= interfaces.length)) {
      throw bad(what, `ips entry ${address} points at interface ${index}, which does not exist`);
    }
    return defined({ interface: index, address, gateway: str(ip, "gateway", what) });
  });
  return { interfaces, ips, routes: rawRoutes.map((r) => parseRoute(r, what)), dns: parseDns(x.dns, what) };
}

export const emptyResult = (): Result => ({ interfaces: [], ips: [], routes: [], dns: {} });

/** Appends interfaces and their addresses, keeping every existing index valid. */
export function appendInterfaces(result: Result, added: AttachedInterface[]): Result {
  const out: Result = { ...result, interfaces: [...result.interfaces], ips: [...result.ips] };
  for (const { iface, ips } of added) {
    const index = out.interfaces.push(iface) - 1;
    for (const address of ips) out.ips.push({ interface: index, address });
  }
  return out;
}

/** The named fields of `o` that are set, in the order named. */
function pick<T extends object>(o: T, fields: readonly (keyof T)[]): Partial<T> {
  const out: Partial<T> = {};
  for (const k of fields) if (o[k] !== undefined) out[k] = o[k];
  return out;
}

const isV6 = (cidr: string) => cidr.includes(":");

/** The ip4/ip6 form: the first address of each family, each family's routes beside it. */
function formatIp4Ip6(result: Result, out: Record<string, unknown>, routeFields: readonly (keyof Route)[]) {
  for (const fam of ["ip4", "ip6"] as const) {
    const v6 = fam === "ip6";
    const ip = result.ips.find((i) => isV6(i.address) === v6);
    if (!ip) continue;
    const routes = result.routes.filter((r) => isV6(r.dst) === v6).map((r) => pick(r, routeFields));
    out[fam] = defined({ ip: ip.address, gateway: ip.gateway, routes: routes.length ? routes : undefined });
  }
}

/** Writes the result as `version` prints it (the result shape in versions.ts). */
export function formatResult(result: Result, version: string): Record<string, unknown> {
  const shape = specOf(version).result;
  const out: Record<string, unknown> = { cniVersion: version };
  if (shape.form === "ip4/ip6") {
    formatIp4Ip6(result, out, shape.routeFields);
    out.dns = { ...result.dns };
    return out;
  }
  if (result.interfaces.length > 0) {
    out.interfaces = result.interfaces.map((i) => pick(i, shape.interfaceFields));
  }
  if (result.ips.length > 0) {
    out.ips = result.ips.map((ip) =>
      defined({
        version: shape.ipVersion ? (isV6(ip.address) ? "6" : "4") : undefined,
        interface: ip.interface,
        address: ip.address,
        gateway: ip.gateway,
      }),
    );
  }
  if (result.routes.length > 0) out.routes = result.routes.map((r) => pick(r, shape.routeFields));
  out.dns = { ...result.dns };
  return out;
}
