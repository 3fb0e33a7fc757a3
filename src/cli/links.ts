// `ratchet links [--config FILE] [--output table|json|dot]`: what ratchet has built, read
// from etcd with the node's network config: every endpoint and every link, with its state.
// Secrets (the etcd password, keys) are read to connect and never printed.
import { option } from "../argv.ts";
import { loadConfigFile } from "../cni/config-file.ts";
import { type EndSpec, type LinkSpec, podId, toLink } from "../links/spec.ts";
import { openEtcd } from "../store/etcd.ts";
import type { Netem } from "../links/impair.ts";
import { LinkStore } from "../store/link-store.ts";
import type { Observed } from "../store/records.ts";
import { BadRecords } from "../store/records.ts";

export const DEFAULT_CONFIG = "/etc/cni/net.d/10-ratchet.conf";

export type LinkState = "up" | "waiting for peer" | "broken";

export interface LinksView {
  endpoints: Array<{
    pod: string;
    node: string;
    containerId: string;
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
    /** What the pods declare: admin state, MTU, each end's impairment ({}: none). */
    declared: { state: "up" | "down"; mtu?: number; a: { netem: Netem }; b: { netem: Netem } };
    /** What each end's node read back from the kernel (absent: not reported). */
    observed: { a?: Observed; b?: Observed };
  }>;
}

/** Reads the whole picture in one etcd round trip. */
export async function readView(conf: ReturnType<typeof loadConfigFile>): Promise<LinksView> {
  const etcd = openEtcd(conf);
  try {
    const bad = new BadRecords((key, problem) => process.stderr.write(`ignoring ${key}: ${problem}\n`));
    const { endpoints, decls, records, observed } = await new LinkStore(
      etcd,
      conf.etcd_prefix,
      bad,
    ).snapshot();
    const declared = new Map<string, LinkSpec>();
    const linkCount = new Map<string, number>();
    const counted = new Set<string>();
    for (const d of decls) {
      if (!declared.has(d.link)) declared.set(d.link, d.spec);
      // Filed under both pods in one namespace: each declaration counts once.
      if (counted.has(`${d.declarer} ${d.link}`)) continue;
      counted.add(`${d.declarer} ${d.link}`);
      linkCount.set(d.declarer, (linkCount.get(d.declarer) ?? 0) + 1);
    }
    const view: LinksView = {
      endpoints: [...endpoints.values()]
        .sort((x, y) => podId(x).localeCompare(podId(y)))
        .map((ep) => ({
          pod: podId(ep),
          node: ep.node,
          containerId: ep.containerId,
          links: linkCount.get(podId(ep)) ?? 0,
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
      const obsA = observed.get(`${key} ${podId(link.a)}`);
      const obsB = observed.get(`${key} ${podId(link.b)}`);
      view.links.push({
        key,
        a,
        b,
        kind: rec?.kind ?? "-",
        ...(rec?.vni !== undefined ? { vni: rec.vni } : {}),
        state,
        ...(why ? { why } : {}),
        declared: {
          state: link.state ?? "up",
          ...(link.mtu !== undefined ? { mtu: link.mtu } : {}),
          a: { netem: link.a.netem ?? {} },
          b: { netem: link.b.netem ?? {} },
        },
        observed: { ...(obsA ? { a: obsA } : {}), ...(obsB ? { b: obsB } : {}) },
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
    ["A", "B", "KIND", "VNI", "ADMIN", "NETEM A", "NETEM B", "MTU", "SINCE", "STATE"],
    ...v.links.map((l) => [
      end(l.a),
      end(l.b),
      l.kind,
      l.vni === undefined ? "-" : String(l.vni),
      adminCell(l),
      netemCell(l.declared.a.netem, l.observed.a),
      netemCell(l.declared.b.netem, l.observed.b),
      String(l.observed.a?.mtu || l.observed.b?.mtu || l.declared.mtu || "-"),
      l.observed.a?.since ?? l.observed.b?.since ?? "-",
      l.why ? `${l.state} (${l.why})` : l.state,
    ]),
  ];
  const section = (title: string, rows: string[][]) =>
    `${title} (${rows.length - 1})\n${rows.length > 1 ? align(rows) : "(none)"}\n`;
  return `${section("ENDPOINTS", eps)}\n${section("LINKS", links)}`;
}

/** "delay_ms=10,loss_percent=1" or "-" for none. */
function netemText(n: Netem | undefined): string {
  const parts = Object.entries(n ?? {}).map(([k, x]) => `${k}=${x}`);
  return parts.length > 0 ? parts.join(",") : "-";
}

/** Declared impairment; the observed one beside it when it differs, with the reason if known. */
function netemCell(declared: Netem, seen: Observed | undefined): string {
  const want = netemText(declared);
  if (!seen?.present) return want;
  const have = netemText(seen.netem);
  if (have === want) return want;
  return `${want} (observed ${have}${seen.error ? `: ${seen.error}` : ""})`;
}

/** Declared admin state; the observed one of each end when it differs. */
function adminCell(l: LinksView["links"][number]): string {
  const seen = [l.observed.a, l.observed.b].filter((o) => o?.present).map((o) => (o?.up ? "up" : "down"));
  const off = seen.filter((s) => s !== l.declared.state);
  return off.length > 0 ? `${l.declared.state} (observed ${seen.join("/")})` : l.declared.state;
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
    // Graphviz's own line break is the two characters \n inside the quoted label.
    const kind = `${l.kind}${l.vni !== undefined ? ` vni ${l.vni}` : ""}`;
    const end = (e: typeof l.a) => `${e.ifname} ${e.ips.join(",")}`;
    const impaired = [l.declared.a.netem, l.declared.b.netem].some((n) => Object.keys(n).length > 0);
    const netem = impaired ? `netem ${netemText(l.declared.a.netem)} / ${netemText(l.declared.b.netem)}` : "";
    const down = l.declared.state === "down" ? "DOWN" : "";
    const label = [
      end(l.a),
      [kind, down].filter(Boolean).join(" "),
      ...(netem ? [netem] : []),
      end(l.b),
    ].join("\\n");
    // Broken: dotted red; waiting: dashed gray; down: dotted gray; impaired: bold orange.
    const style =
      l.state === "broken" || l.declared.state === "down"
        ? "dotted"
        : l.state === "waiting for peer"
          ? "dashed"
          : impaired
            ? "bold"
            : "solid";
    const color =
      l.state === "broken"
        ? "red"
        : l.state === "waiting for peer" || l.declared.state === "down"
          ? "gray"
          : impaired
            ? "orange"
            : "black";
    const attrs = `label=${q(label).replaceAll("\\\\n", "\\n")}, style=${style}, color=${color}`;
    lines.push(`  ${q(l.a.pod)} -- ${q(l.b.pod)} [${attrs}];`);
  }
  lines.push("}");
  return `${lines.join("\n")}\n`;
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
