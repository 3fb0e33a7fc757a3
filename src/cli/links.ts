// `ratchet links [--config FILE] [--output table|json|dot]`: what ratchet has built, read
// from etcd with the node's network config: every endpoint and every link, with its state.
// Secrets (the etcd password, keys) are read to connect and never printed.
import { loadConfigFile } from "../cni/config-file.ts";
import type { EndSpec, LinkSpec } from "../pods/podspec.ts";
import { keyOf, op, parse, txn } from "../store/etcd-ops.ts";
import { openEtcd } from "../store/etcd.ts";
import { Keys, podId, toLink, type Endpoint, type LinkRecord } from "../store/model.ts";

export const DEFAULT_CONFIG = "/etc/cni/net.d/10-ratchet.conf";

export type LinkState = "up" | "waiting for peer" | "broken";

export interface LinksView {
  endpoints: Array<{
    pod: string;
    node: string;
    containerId: string;
    netns: string;
    links: number;
    since: string;
  }>;
  links: Array<{
    key: string;
    a: { pod: string; ifname: string; ips: string[]; node?: string };
    b: { pod: string; ifname: string; ips: string[]; node?: string };
    kind: "veth" | "vxlan" | "-";
    vni?: number;
    state: LinkState;
    why?: string;
  }>;
}

/** Reads the whole picture in one etcd round trip. */
export async function readView(conf: ReturnType<typeof loadConfigFile>): Promise<LinksView> {
  const keys = new Keys(conf.etcd_prefix);
  const etcd = openEtcd(conf);
  try {
    const r = await txn(
      etcd,
      [],
      [op.prefix(`${keys.root}endpoints/`), op.prefix(`${keys.root}decl/`), op.prefix(`${keys.root}links/`)],
    );
    const endpoints = new Map<string, Endpoint>();
    for (const kv of r.ranges[0] ?? []) {
      const ep = parse<Endpoint>(kv);
      if (ep) endpoints.set(podId(ep), ep);
    }
    const declared = new Map<string, LinkSpec>();
    for (const kv of r.ranges[1] ?? []) {
      const spec = parse<LinkSpec>(kv);
      const parts = keyOf(kv).slice(`${keys.root}decl/`.length).split("/");
      // <ns>/<pod>/<link (5 parts)>/<declarer ns>/<declarer pod>
      if (!spec || parts.length !== 9) continue;
      const link = parts.slice(2, 7).join("/");
      if (!declared.has(link)) declared.set(link, spec);
    }
    const records = new Map<string, LinkRecord>();
    for (const kv of r.ranges[2] ?? []) {
      const rec = parse<LinkRecord>(kv);
      if (rec) records.set(rec.key, rec);
    }
    const view: LinksView = {
      endpoints: [...endpoints.values()]
        .sort((x, y) => podId(x).localeCompare(podId(y)))
        .map((ep) => ({
          pod: podId(ep),
          node: ep.node,
          containerId: ep.containerId,
          netns: ep.netns,
          links: ep.links.length,
          since: ep.createdAt,
        })),
      links: [],
    };
    for (const [key, spec] of [...declared].sort(([x], [y]) => x.localeCompare(y))) {
      const link = toLink(key, spec);
      const rec = records.get(key);
      const end = (e: EndSpec) => {
        const ep = endpoints.get(podId(e));
        return { pod: podId(e), ifname: e.ifname, ips: e.ips, ...(ep ? { node: ep.node } : {}) };
      };
      const a = end(link.a);
      const b = end(link.b);
      const missing = [a, b].filter((e) => e.node === undefined).map((e) => e.pod);
      let state: LinkState = "up";
      let why: string | undefined;
      if (missing.length > 0) {
        state = "waiting for peer";
        why = `not registered: ${missing.join(", ")}`;
      } else if (!rec) {
        state = "broken";
        why = "both pods are registered but the link was never recorded as built";
      } else {
        const stale = [link.a, link.b]
          .filter((e) => rec.ends[podId(e)]?.containerId !== endpoints.get(podId(e))?.containerId)
          .map((e) => podId(e));
        if (stale.length > 0) {
          state = "broken";
          why = `built for an older container of ${stale.join(", ")}`;
        }
      }
      view.links.push({
        key,
        a,
        b,
        kind: rec?.kind ?? "-",
        ...(rec?.vni !== undefined ? { vni: rec.vni } : {}),
        state,
        ...(why ? { why } : {}),
      });
    }
    return view;
  } finally {
    etcd.close();
  }
}

function align(rows: string[][]): string {
  const widths = rows[0]?.map((_, c) => Math.max(...rows.map((r) => (r[c] ?? "").length))) ?? [];
  return rows
    .map((r) =>
      r
        .map((cell, c) => (c === r.length - 1 ? cell : cell.padEnd(widths[c] as number)))
        .join("  ")
        .trimEnd(),
    )
    .join("\n");
}

export function formatTable(v: LinksView): string {
  const eps = [
    ["POD", "NODE", "CONTAINER", "LINKS", "SINCE"],
    ...v.endpoints.map((e) => [e.pod, e.node, e.containerId.slice(0, 12), String(e.links), e.since]),
  ];
  const end = (e: LinksView["links"][number]["a"]) =>
    `${e.pod}:${e.ifname}${e.ips.length ? ` ${e.ips.join(",")}` : ""}`;
  const links = [
    ["A", "B", "KIND", "VNI", "STATE"],
    ...v.links.map((l) => [
      end(l.a),
      end(l.b),
      l.kind,
      l.vni === undefined ? "-" : String(l.vni),
      l.why ? `${l.state} (${l.why})` : l.state,
    ]),
  ];
  return `ENDPOINTS (${v.endpoints.length})\n${v.endpoints.length ? align(eps) : "(none)"}\n\nLINKS (${v.links.length})\n${v.links.length ? align(links) : "(none)"}\n`;
}

const q = (s: string) => JSON.stringify(s);

/** Graphviz: one cluster per node, pods as boxes, links as edges labelled with interfaces and addresses. */
export function formatDot(v: LinksView): string {
  const lines = [
    "graph ratchet {",
    '  graph [rankdir=LR, fontname=Helvetica, label="ratchet links", labelloc=t];',
    "  node [shape=box, style=rounded, fontname=Helvetica];",
    "  edge [fontname=Helvetica, fontsize=10];",
  ];
  const byNode = new Map<string, string[]>();
  for (const e of v.endpoints) (byNode.get(e.node) ?? byNode.set(e.node, []).get(e.node))?.push(e.pod);
  let n = 0;
  for (const [node, pods] of [...byNode].sort(([x], [y]) => x.localeCompare(y))) {
    lines.push(`  subgraph ${q(`cluster_${n++}`)} {`, `    label=${q(`node ${node}`)};`, "    style=dashed;");
    for (const p of pods) lines.push(`    ${q(p)};`);
    lines.push("  }");
  }
  const registered = new Set(v.endpoints.map((e) => e.pod));
  for (const l of v.links) {
    for (const e of [l.a, l.b])
      if (!registered.has(e.pod)) lines.push(`  ${q(e.pod)} [style="rounded,dashed", color=gray];`);
    const label = `${l.a.ifname} ${l.a.ips.join(",")}\\n${l.kind}${l.vni !== undefined ? ` vni ${l.vni}` : ""}\\n${l.b.ifname} ${l.b.ips.join(",")}`;
    const style = l.state === "up" ? "solid" : l.state === "waiting for peer" ? "dashed" : "dotted";
    const color = l.state === "up" ? "black" : l.state === "waiting for peer" ? "gray" : "red";
    lines.push(
      `  ${q(l.a.pod)} -- ${q(l.b.pod)} [label=${q(label).replaceAll("\\\\n", "\\n")}, style=${style}, color=${color}];`,
    );
  }
  lines.push("}");
  return `${lines.join("\n")}\n`;
}

function option(args: string[], name: string): string | undefined {
  const i = args.findIndex((a) => a === name || a.startsWith(`${name}=`));
  if (i < 0) return undefined;
  const a = args[i] as string;
  return a.includes("=") ? a.slice(name.length + 1) : args[i + 1];
}

export async function runLinks(
  args: string[],
  write: (s: string) => void,
  writeErr: (s: string) => void,
): Promise<number> {
  const output = option(args, "--output") ?? option(args, "-o") ?? "table";
  if (!["table", "json", "dot"].includes(output)) {
    writeErr(`ratchet links: --output must be table, json or dot, not ${JSON.stringify(output)}\n`);
    return 2;
  }
  const path = option(args, "--config") ?? DEFAULT_CONFIG;
  let view: LinksView;
  try {
    view = await readView(loadConfigFile(path));
  } catch (err) {
    writeErr(`ratchet links: ${(err as Error).message}\n`);
    return 1;
  }
  write(
    output === "json"
      ? `${JSON.stringify(view, null, 2)}\n`
      : output === "dot"
        ? formatDot(view)
        : formatTable(view),
  );
  return 0;
}
