// The child's request handlers. Everything that needs etcd, the Kubernetes API or another
// pod happens here, in one long-lived process per node.
import { CniError, Code } from "../cni/errors.ts";
import type { Logger } from "../log.ts";
import type { CallParams, Hello, Request } from "../rpc/protocol.ts";
import { BUILD_ID, BUILD_TIME, VERSION } from "../version.ts";

export interface AgentHooks {
  /** Eligibility and links of the pod named in the call. */
  classify(params: CallParams, deadline: number): Promise<{ eligible: boolean; links: number }>;
  /** Called on drain: the process exits once in-flight work is done. */
  drain(): void;
}

export class ChildAgentHandlers {
  constructor(
    private readonly log: Logger,
    private readonly hooks: AgentHooks,
  ) {}

  hello(): Hello {
    return { buildId: BUILD_ID, buildTime: BUILD_TIME, version: VERSION, pid: process.pid };
  }

  async handle(req: Request, _signal: AbortSignal): Promise<unknown> {
    switch (req.method) {
      case "hello":
        return this.hello();
      case "drain":
        this.log.info("draining: a newer node agent takes over");
        this.hooks.drain();
        return { draining: true };
      case "classify":
        return this.hooks.classify(req.params as CallParams, req.deadline);
      case "attach":
      case "detach":
      case "check":
      case "status":
      case "gc":
        throw new CniError(Code.Internal, `${req.method} is not available in this node agent`);
      default:
        throw new CniError(Code.InvalidConfig, `unknown request ${JSON.stringify((req as { method: unknown }).method)}`);
    }
  }
}

/** Serialization key: the pod, else the container. */
export function requestKey(req: Request): string | undefined {
  const p = req.params as Partial<CallParams>;
  if (p.env?.pod) return `pod/${p.env.pod.namespace}/${p.env.pod.name}`;
  if (p.env?.containerId) return `ctr/${p.env.containerId}`;
  return undefined;
}
