// Pod lookups for the agent: one warm reader per kubeconfig, and the classification of a
// pod (ratchet pod or not, and its links) from its labels and annotation.
import type { NetConf } from "../cni/config.ts";
import type { PodRef } from "../cni/env.ts";
import { PodReader, type PodInfo } from "./kube.ts";
import { podLinks, type PodLinks } from "./podspec.ts";

/** How long one pod read may take, at most (less when the caller's deadline is nearer). */
export const POD_READ_TIMEOUT_MS = 10_000;

export interface Classified extends PodLinks {
  pod: PodInfo;
}

export class PodDirectory {
  private readonly readers = new Map<string, PodReader>();
  constructor(private readonly env: Record<string, string | undefined> = process.env) {}

  private reader(conf: NetConf): PodReader {
    const key = conf.kubeconfig ?? "(in-cluster)";
    let r = this.readers.get(key);
    if (!r) {
      r = PodReader.fromConfig(conf, this.env);
      this.readers.set(key, r);
    }
    return r;
  }

  /** Reads the pod and parses its ratchet labels/annotation; code 11 when the API cannot answer, 103 for bad specs. */
  async classify(ref: PodRef, conf: NetConf, deadline: number): Promise<Classified> {
    const left = Math.min(POD_READ_TIMEOUT_MS, deadline - Date.now());
    const pod = await this.reader(conf).readPod(ref.namespace, ref.name, Math.max(1, left));
    return { pod, ...podLinks(pod, { defaultPrefix: conf.default_prefix }) };
  }

  /** Is the API server there (for STATUS)? */
  async ping(conf: NetConf, deadlineMs: number): Promise<void> {
    await this.reader(conf).ping(deadlineMs);
  }

  close(): void {
    for (const r of this.readers.values()) r.close();
    this.readers.clear();
  }
}
