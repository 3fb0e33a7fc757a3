// What src/observe needs of the Kubernetes API: one request at a time (the agent's PodReader
// provides it), and a pod's identity.

export interface KubeApi {
  /** Status and JSON body of one request; throws only when there is no answer in time. */
  call(
    method: "GET" | "POST" | "PATCH",
    path: string,
    body?: { json: unknown; contentType: string },
    timeoutMs?: number,
  ): Promise<{ status: number; body: unknown }>;
}

export interface PodRef {
  namespace: string;
  name: string;
  /** Set when known: Events name the pod instance, not just its name. */
  uid?: string | undefined;
}

export const MERGE_PATCH = "application/merge-patch+json";

export const podPath = (namespace: string, name: string) =>
  `/api/v1/namespaces/${encodeURIComponent(namespace)}/pods/${encodeURIComponent(name)}`;

/** "ns/name" as a pod reference. */
export function podRef(id: string, uid?: string): PodRef {
  const i = id.indexOf("/");
  return { namespace: id.slice(0, i), name: id.slice(i + 1), ...(uid ? { uid } : {}) };
}

/** A short description of a failed request, for logs. */
export function failure(res: { status: number; body: unknown }): string {
  const msg = (res.body as { message?: unknown } | undefined)?.message;
  return `HTTP ${res.status}${typeof msg === "string" ? `: ${msg}` : ""}`;
}
