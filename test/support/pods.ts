// Pod objects from YAML files such as pod_specs/example.yaml (multi-document).
import { readFileSync } from "node:fs";
import { loadAll } from "js-yaml";

/** The part of a Pod object the stand-in API server and the tests use. */
export interface PodObject {
  apiVersion: "v1";
  kind: "Pod";
  metadata: {
    name: string;
    namespace: string;
    uid: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
    [k: string]: unknown;
  };
  spec?: { nodeName?: string; [k: string]: unknown };
  [k: string]: unknown;
}

function isRecord(x: unknown): x is Record<string, unknown> {
  return typeof x === "object" && x !== null && !Array.isArray(x);
}

/** Fills what an API server would: namespace "default", a uid. Throws on anything not a Pod. */
export function normalizePod(doc: unknown, where = "pod"): PodObject {
  if (
    !isRecord(doc) ||
    doc.kind !== "Pod" ||
    !isRecord(doc.metadata) ||
    typeof doc.metadata.name !== "string"
  ) {
    throw new Error(`${where}: not a Pod with metadata.name`);
  }
  const metadata = { ...doc.metadata };
  if (typeof metadata.namespace !== "string" || metadata.namespace === "") metadata.namespace = "default";
  if (typeof metadata.uid !== "string") metadata.uid = crypto.randomUUID();
  return { ...doc, apiVersion: "v1", kind: "Pod", metadata } as PodObject;
}

export function readPodYaml(file: string): PodObject[] {
  const docs = loadAll(readFileSync(file, "utf8")).filter((d) => d !== null && d !== undefined);
  return docs.map((d, i) => normalizePod(d, `${file} document ${i + 1}`));
}

/** The fields podLinks reads. */
export function podMeta(pod: PodObject): {
  namespace: string;
  name: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
} {
  return {
    namespace: pod.metadata.namespace,
    name: pod.metadata.name,
    labels: pod.metadata.labels ?? {},
    annotations: pod.metadata.annotations ?? {},
  };
}

const IN1 = { namespace: "default", pod: "primary-pod", ifname: "in1", ips: ["192.168.2.100/24"] };
const IN2 = { namespace: "default", pod: "pair-pod", ifname: "in2", ips: ["192.168.2.101/24"] };
/**
 * How the pods of pod_specs/example.yaml read (default_prefix 24): the primary declares the
 * link with its labels; the pair pod, as in the original, only opts in.
 */
export const EXAMPLE_LINKS = {
  "primary-pod": { local: IN1, peer: IN2, primary: true, source: "labels" },
} as const;
