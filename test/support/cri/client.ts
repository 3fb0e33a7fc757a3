// A small CRI client for the tests: runtime.v1.RuntimeService over containerd's unix socket,
// through @grpc/grpc-js with the message subset in runtime.proto.
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { join } from "node:path";

export interface PodSandboxMetadata {
  name: string;
  uid: string;
  namespace: string;
  attempt?: number;
}

export interface PodSandboxConfig {
  metadata: PodSandboxMetadata;
  hostname?: string;
  log_directory?: string;
  dns_config?: { servers?: string[]; searches?: string[]; options?: string[] };
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  linux?: {
    cgroup_parent?: string;
    security_context?: { namespace_options?: { network?: string; pid?: string; ipc?: string } };
    sysctls?: Record<string, string>;
  };
}

export type SandboxState = "SANDBOX_READY" | "SANDBOX_NOTREADY";

export interface PodSandboxStatus {
  id: string;
  metadata: PodSandboxMetadata;
  state: SandboxState;
  created_at: string;
  network: { ip: string; additional_ips: Array<{ ip: string }> } | null;
  labels: Record<string, string>;
  annotations: Record<string, string>;
}

export interface PodSandboxStatusResponse {
  status: PodSandboxStatus;
  info: Record<string, string>;
}

export interface PodSandbox {
  id: string;
  metadata: PodSandboxMetadata;
  state: SandboxState;
  labels: Record<string, string>;
  annotations: Record<string, string>;
}

export interface VersionResponse {
  version: string;
  runtime_name: string;
  runtime_version: string;
  runtime_api_version: string;
}

export interface RuntimeCondition {
  type: string;
  status: boolean;
  reason: string;
  message: string;
}

/** A gRPC failure of one CRI call: the status code and containerd's message. */
export class CriError extends Error {
  constructor(
    readonly method: string,
    readonly code: grpc.status,
    readonly details: string,
  ) {
    super(`CRI ${method} failed: ${grpc.status[code] ?? code}: ${details}`);
    this.name = "CriError";
  }
}

type Callback = (err: grpc.ServiceError | null, res: unknown) => void;
type Unary = (req: unknown, meta: grpc.Metadata, opts: grpc.CallOptions, cb: Callback) => void;

let serviceCtor: grpc.ServiceClientConstructor | undefined;

function runtimeService(): grpc.ServiceClientConstructor {
  if (serviceCtor) return serviceCtor;
  const def = protoLoader.loadSync(join(import.meta.dir, "runtime.proto"), {
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
  });
  const pkg = grpc.loadPackageDefinition(def) as unknown as {
    runtime: { v1: { RuntimeService: grpc.ServiceClientConstructor } };
  };
  serviceCtor = pkg.runtime.v1.RuntimeService;
  return serviceCtor;
}

export class CriClient {
  private readonly client: grpc.Client;

  constructor(readonly socket: string) {
    const Ctor = runtimeService();
    this.client = new Ctor(`unix://${socket}`, grpc.credentials.createInsecure());
  }

  private call<T>(method: string, req: unknown, timeoutMs = 60_000): Promise<T> {
    const fn = (this.client as unknown as Record<string, Unary>)[method];
    if (typeof fn !== "function") throw new Error(`no CRI method ${method}`);
    return new Promise<T>((resolve, reject) => {
      fn.call(this.client, req, new grpc.Metadata(), { deadline: Date.now() + timeoutMs }, (err, res) => {
        if (err) reject(new CriError(method, err.code, err.details));
        else resolve(res as T);
      });
    });
  }

  version(): Promise<VersionResponse> {
    return this.call("Version", { version: "v1" }, 5000);
  }

  async conditions(): Promise<RuntimeCondition[]> {
    const r = await this.call<{ status: { conditions: RuntimeCondition[] } | null }>("Status", {}, 5000);
    return r.status?.conditions ?? [];
  }

  async runPodSandbox(config: PodSandboxConfig, timeoutMs?: number): Promise<string> {
    const r = await this.call<{ pod_sandbox_id: string }>("RunPodSandbox", { config }, timeoutMs);
    return r.pod_sandbox_id;
  }

  async stopPodSandbox(id: string, timeoutMs?: number): Promise<void> {
    await this.call("StopPodSandbox", { pod_sandbox_id: id }, timeoutMs);
  }

  async removePodSandbox(id: string, timeoutMs?: number): Promise<void> {
    await this.call("RemovePodSandbox", { pod_sandbox_id: id }, timeoutMs);
  }

  podSandboxStatus(id: string, verbose = false): Promise<PodSandboxStatusResponse> {
    return this.call("PodSandboxStatus", { pod_sandbox_id: id, verbose }, 10_000);
  }

  async listPodSandbox(filter: { id?: string; labels?: Record<string, string> } = {}): Promise<PodSandbox[]> {
    const r = await this.call<{ items: PodSandbox[] }>(
      "ListPodSandbox",
      { filter: { id: filter.id ?? "", label_selector: filter.labels ?? {} } },
      10_000,
    );
    return r.items;
  }

  close(): void {
    this.client.close();
  }
}
