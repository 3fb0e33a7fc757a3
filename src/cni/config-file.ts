import { readFileSync } from "node:fs";
import { parseNetConf, type NetConf } from "./config.ts";

/** Reads a network config file; in a .conflist, the ratchet entry with the list's name and version. */
export function loadConfigFile(path: string): NetConf {
  const text = readFileSync(path, "utf8");
  const json: unknown = JSON.parse(text);
  if (json && typeof json === "object" && Array.isArray((json as { plugins?: unknown }).plugins)) {
    const list = json as { name?: string; cniVersion?: string; plugins: Array<Record<string, unknown>> };
    const mine = list.plugins.find((p) => p.type === "ratchet");
    if (!mine) throw new Error(`${path}: no plugin of type "ratchet" in the conflist`);
    return parseNetConf({ cniVersion: list.cniVersion, name: list.name, ...mine });
  }
  return parseNetConf(json);
}
