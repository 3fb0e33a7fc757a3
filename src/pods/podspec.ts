// A pod's ratchet labels and `ratchet/links` annotation, turned into validated link specs.
// Pure: no I/O. Everything here can end up in an etcd key, a netlink call or a log line, so
// every name, address and number is checked before it leaves this file.
import * as v from "valibot";
import { LINK_STATES, NetemSchema } from "../links/impair.ts";
import { CniError, Code } from "../cni/errors.ts";
import { type EndSpec, endId, type LinkSpec, linkDifferences, linkKey, mergeLinks } from "../links/spec.ts";
import {
  linkInterfaceNameProblem,
  macProblem,
  mtuProblem,
  namespaceProblem,
  parseCidr,
  podNameProblem,
  show,
} from "../cni/names.ts";

export interface PodLinks {
  eligible: boolean;
  links: LinkSpec[];
}

/** What podLinks reads of a pod. */
export interface PodMeta {
  namespace: string;
  name: string;
  labels?: Record<string, string> | undefined;
  annotations?: Record<string, string> | undefined;
}

export const SELECT_LABEL = "ratchet";
export const LINKS_ANNOTATION = "ratchet/links";
/** What the Kubernetes API allows for all of a pod's annotations together. */
export const MAX_ANNOTATION_BYTES = 256 * 1024;
/** Links per pod: big routers of network labs, well within what etcd and the kernel take. */
export const MAX_LINKS = 4096;
/** Addresses on one end of one link. */
export const MAX_IPS_PER_END = 16;

const L = {
  podName: "ratchet.pod_name",
  pairName: "ratchet.pair_name",
  localIp: "ratchet.local_ip",
  localIfname: "ratchet.local_ifname",
  pairIp: "ratchet.pair_ip",
  pairIfname: "ratchet.pair_ifname",
  primary: "ratchet.primary",
} as const;
/**
 * Labels that describe a link. ratchet.pod_name and ratchet.primary do not (the original's
 * pair pod carries only those: it is linked by its primary's labels); ratchet.public_ip,
 * target_pod and target_container are accepted and ignored.
 */
const LINK_LABELS: readonly string[] = [L.pairName, L.localIp, L.localIfname, L.pairIp, L.pairIfname];

/** One item of the annotation: shapes and types only; podLinks checks the values. */
const IpList = v.union([v.string(), v.array(v.string())], "must be a CIDR string or a list of them");
const AnnotationLink = v.strictObject({
  peer: v.string("must be a string"),
  peer_namespace: v.optional(v.string("must be a string")),
  local_ifname: v.string("must be a string"),
  peer_ifname: v.string("must be a string"),
  local_ip: v.optional(IpList),
  peer_ip: v.optional(IpList),
  local_mac: v.optional(v.string("must be a string")),
  peer_mac: v.optional(v.string("must be a string")),
  mtu: v.optional(v.number("must be a number")),
  primary: v.optional(v.boolean("must be true or false")),
  state: v.optional(v.picklist(LINK_STATES, 'must be "up" or "down"')),
  // Impairments: on both ends, or on this pod's / the peer's end only (null or {}: none).
  netem: v.optional(v.nullable(NetemSchema)),
  local_netem: v.optional(v.nullable(NetemSchema)),
  peer_netem: v.optional(v.nullable(NetemSchema)),
});
type AnnotationLink = v.InferOutput<typeof AnnotationLink>;
const NETEM_FIELDS = Object.keys(NetemSchema.pipe[0].entries);

/** Throws code 103 in the one shape every pod spec error has: pod, field, value, problem. */
class Problems {
  constructor(private readonly pod: string) {}
  fail(field: string, value: unknown, problem: string): never {
    const shown = value === undefined ? "(missing)" : show(value);
    throw new CniError(Code.InvalidPodSpec, `pod ${this.pod}: ${field} ${shown} ${problem}`);
  }
}

function labelIp(p: Problems, label: string, value: string | undefined, prefix: number): string[] {
  if (value === undefined || value === "") return [];
  // Label values cannot hold "/" or ":", so a label carries a bare IPv4 address and the prefix
  // comes from the config.
  const c = parseCidr(`${value}/${prefix}`);
  if ("problem" in c || c.family !== 4) {
    p.fail(
      `label ${label}`,
      value,
      "is not an IPv4 address (labels cannot carry a prefix or IPv6: use the ratchet/links annotation)",
    );
  }
  return [c.text];
}

function checkIfname(p: Problems, field: string, value: string): string {
  const problem = linkInterfaceNameProblem(value);
  if (problem) p.fail(field, value, `is not a valid interface name: it ${problem}`);
  return value;
}

function checkPodName(p: Problems, field: string, value: string): string {
  const problem = podNameProblem(value);
  if (problem) p.fail(field, value, `is not a valid pod name: it ${problem}`);
  return value;
}

function checkNamespace(p: Problems, field: string, value: string): string {
  const problem = namespaceProblem(value);
  if (problem) p.fail(field, value, `is not a valid namespace: it ${problem}`);
  return value;
}

function checkMac(p: Problems, field: string, value: string | undefined): string | undefined {
  if (value === undefined) return undefined;
  const problem = macProblem(value);
  if (problem) p.fail(field, value, problem);
  return value.toLowerCase();
}

function annotationIps(p: Problems, field: string, value: string | string[] | undefined): string[] {
  if (value === undefined) return [];
  const list = typeof value === "string" ? [value] : value;
  if (list.length > MAX_IPS_PER_END)
    p.fail(field, value, `lists ${list.length} addresses, the limit is ${MAX_IPS_PER_END}`);
  const out: string[] = [];
  list.forEach((s, i) => {
    const f = typeof value === "string" ? field : `${field}[${i}]`;
    const c = parseCidr(s);
    if ("problem" in c) p.fail(f, s, c.problem);
    if (out.some((o) => o.split("/")[0] === c.address)) p.fail(f, s, "repeats an address of this end");
    out.push(c.text);
  });
  return out;
}

function fromLabels(
  p: Problems,
  pod: PodMeta,
  labels: Record<string, string>,
  defaultPrefix: number,
): LinkSpec | undefined {
  const own = labels[L.podName];
  if (own !== undefined && own !== pod.name)
    p.fail(`label ${L.podName}`, own, `does not match the pod's name ${show(pod.name)}`);
  const primary = labels[L.primary];
  if (primary !== undefined && primary !== "true" && primary !== "false")
    p.fail(`label ${L.primary}`, primary, 'must be "true" or "false"');
  if (!LINK_LABELS.some((k) => labels[k] !== undefined)) return undefined;

  const required = (label: string): string => {
    const value = labels[label];
    if (value === undefined || value === "")
      p.fail(`label ${label}`, value, "is required when the pod has ratchet link labels");
    return value;
  };
  const peerPod = checkPodName(p, `label ${L.pairName}`, required(L.pairName));
  if (peerPod === pod.name)
    p.fail(`label ${L.pairName}`, peerPod, "names the pod itself: a link needs two pods");
  const link: LinkSpec = {
    local: {
      namespace: pod.namespace,
      pod: pod.name,
      ifname: checkIfname(p, `label ${L.localIfname}`, required(L.localIfname)),
      ips: labelIp(p, L.localIp, labels[L.localIp], defaultPrefix),
    },
    peer: {
      namespace: pod.namespace,
      pod: peerPod,
      ifname: checkIfname(p, `label ${L.pairIfname}`, required(L.pairIfname)),
      ips: labelIp(p, L.pairIp, labels[L.pairIp], defaultPrefix),
    },
    ...(primary === "true" ? { primary: true } : {}),
    source: "labels",
  };
  return link;
}

function issueField(issue: v.BaseIssue<unknown>): string {
  let out = "";
  for (const item of issue.path ?? [])
    out += typeof item.key === "number" ? `[${item.key}]` : `.${String(item.key)}`;
  return out;
}

function fromAnnotation(p: Problems, pod: PodMeta, text: string): LinkSpec[] {
  const field = `annotation ${LINKS_ANNOTATION}`;
  const bytes = Buffer.byteLength(text, "utf8");
  if (bytes > MAX_ANNOTATION_BYTES)
    p.fail(field, text, `is ${bytes} bytes long, the limit is ${MAX_ANNOTATION_BYTES}`);
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    p.fail(field, text, `is not valid JSON (${(err as Error).message})`);
  }
  if (!Array.isArray(json)) p.fail(field, json, "must be a JSON list of links");
  const items: unknown[] = json;
  if (items.length > MAX_LINKS)
    p.fail(field, `[${items.length} links]`, `lists ${items.length} links, the limit is ${MAX_LINKS}`);
  const parsed = v.safeParse(v.array(AnnotationLink), items);
  if (!parsed.success) {
    const issue = parsed.issues[0];
    const where = `${field}${issueField(issue)}`;
    if (issue.type === "strict_object" && issue.input !== undefined) {
      // Unknown key: the path ends at it (in a link, or in one of its netem objects).
      const keys = (issue.path ?? []).map((item) => item.key);
      let value: unknown = items;
      for (const k of keys) value = (value as Record<string | number, unknown> | undefined)?.[k as string];
      const known = keys.length > 2 ? NETEM_FIELDS : Object.keys(AnnotationLink.entries);
      p.fail(where, value, `is not a known field (known: ${known.join(", ")})`);
    }
    if (issue.input === undefined) p.fail(where, undefined, "is required");
    p.fail(where, issue.input, issue.message);
  }
  return parsed.output.map((item: AnnotationLink, i): LinkSpec => {
    const f = (name: string) => `${field}[${i}].${name}`;
    const peerNs =
      item.peer_namespace === undefined
        ? pod.namespace
        : checkNamespace(p, f("peer_namespace"), item.peer_namespace);
    const peerPod = checkPodName(p, f("peer"), item.peer);
    if (peerNs === pod.namespace && peerPod === pod.name)
      p.fail(f("peer"), item.peer, "names the pod itself: a link needs two pods");
    const local: EndSpec = {
      namespace: pod.namespace,
      pod: pod.name,
      ifname: checkIfname(p, f("local_ifname"), item.local_ifname),
      ips: annotationIps(p, f("local_ip"), item.local_ip),
    };
    const peer: EndSpec = {
      namespace: peerNs,
      pod: peerPod,
      ifname: checkIfname(p, f("peer_ifname"), item.peer_ifname),
      ips: annotationIps(p, f("peer_ip"), item.peer_ip),
    };
    const localMac = checkMac(p, f("local_mac"), item.local_mac);
    if (localMac !== undefined) local.mac = localMac;
    const peerMac = checkMac(p, f("peer_mac"), item.peer_mac);
    if (peerMac !== undefined) peer.mac = peerMac;
    if (localMac !== undefined && localMac === peerMac)
      p.fail(f("peer_mac"), item.peer_mac, "is the same as local_mac: the two ends need different addresses");
    if (item.mtu !== undefined) {
      const problem = mtuProblem(item.mtu);
      if (problem) p.fail(f("mtu"), item.mtu, problem);
    }
    // A per-end value replaces `netem` for that end; null or {} declares none.
    const localNetem = item.local_netem !== undefined ? item.local_netem : item.netem;
    if (localNetem !== undefined) local.netem = localNetem ?? {};
    const peerNetem = item.peer_netem !== undefined ? item.peer_netem : item.netem;
    if (peerNetem !== undefined) peer.netem = peerNetem ?? {};
    return {
      local,
      peer,
      ...(item.mtu !== undefined ? { mtu: item.mtu } : {}),
      ...(item.state !== undefined ? { state: item.state } : {}),
      ...(item.primary === true ? { primary: true } : {}),
      source: "annotation",
    };
  });
}

/** Where a declared link came from, for messages; with `end`, the label or field naming that end's interface. */
function where(link: LinkSpec, index: number, labelCount: number, end?: "local" | "peer"): string {
  if (link.source === "labels")
    return end === undefined ? "labels ratchet.*" : `label ${end === "local" ? L.localIfname : L.pairIfname}`;
  const item = `annotation ${LINKS_ANNOTATION}[${index - labelCount}]`;
  return end === undefined ? item : `${item}.${end}_ifname`;
}

/**
 * Classifies a pod: eligible when it has `ratchet: "true"`, and the links its labels and
 * annotation declare (both contribute). Throws CniError code 103 for anything invalid.
 */
export function podLinks(pod: PodMeta, opts: { defaultPrefix: number }): PodLinks {
  const labels = pod.labels ?? {};
  if (labels[SELECT_LABEL] !== "true") return { eligible: false, links: [] };
  // The pod's own names go into every message: quoted unless they are valid.
  const id = `${pod.namespace}/${pod.name}`;
  const p = new Problems(namespaceProblem(pod.namespace) || podNameProblem(pod.name) ? show(id) : id);
  checkNamespace(p, "namespace", pod.namespace);
  checkPodName(p, "name", pod.name);

  const declared: LinkSpec[] = [];
  const fromLabel = fromLabels(p, pod, labels, opts.defaultPrefix);
  if (fromLabel) declared.push(fromLabel);
  const labelCount = declared.length;
  const annotation = pod.annotations?.[LINKS_ANNOTATION];
  if (annotation !== undefined) declared.push(...fromAnnotation(p, pod, annotation));
  if (declared.length > MAX_LINKS)
    p.fail(
      `annotation ${LINKS_ANNOTATION}`,
      `[${declared.length} links]`,
      `with the labels makes ${declared.length} links, the limit is ${MAX_LINKS}`,
    );

  // One link may be declared twice (labels and annotation) if both say the same; interface
  // names must otherwise be unique on this pod, and on each peer.
  const links: LinkSpec[] = [];
  const byKey = new Map<string, { link: LinkSpec; index: number; pos: number }>();
  const localIfnames = new Map<string, number>();
  const peerIfnames = new Map<string, number>();
  declared.forEach((link, i) => {
    const key = linkKey(link);
    const seen = byKey.get(key);
    if (seen) {
      const diff = linkDifferences(seen.link, link);
      if (diff.length > 0)
        p.fail(
          where(link, i, labelCount),
          key,
          `declares the same link as ${where(seen.link, seen.index, labelCount)} with other values: ${diff.join("; ")}`,
        );
      seen.link = mergeLinks(seen.link, link);
      links[seen.pos] = seen.link;
      return;
    }
    const before = localIfnames.get(link.local.ifname);
    if (before !== undefined)
      p.fail(
        where(link, i, labelCount, "local"),
        link.local.ifname,
        `is also used by ${where(declared[before] as LinkSpec, before, labelCount)}: interface names must be unique in a pod`,
      );
    const peerEnd = endId(link.peer);
    const beforePeer = peerIfnames.get(peerEnd);
    if (beforePeer !== undefined)
      p.fail(
        where(link, i, labelCount, "peer"),
        link.peer.ifname,
        `is also used on ${link.peer.namespace}/${link.peer.pod} by ${where(declared[beforePeer] as LinkSpec, beforePeer, labelCount)}: interface names must be unique in a pod`,
      );
    localIfnames.set(link.local.ifname, i);
    peerIfnames.set(peerEnd, i);
    byKey.set(key, { link, index: i, pos: links.length });
    links.push(link);
  });
  return { eligible: true, links };
}

export {
  linkDifferences,
  linkKey,
  reverseLink,
  sameLink,
  type EndSpec,
  type LinkSpec,
} from "../links/spec.ts";
