// A stand-in Kubernetes API server for tests and the demo: HTTPS on loopback with a
// certificate chain made for the run, bearer-token auth (or client certificates), serving
// Pod objects loaded from YAML. Only what ratchet reads: pods (get, list), /version, /healthz.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Server } from "bun";
import { makePki, type TestPki } from "./certs.ts";
import { normalizePod, readPodYaml, type PodObject } from "./pods.ts";

export interface ApiServerOptions {
  /** YAML files of Pod objects (multi-document) to serve from the start. */
  podFiles?: string[];
  /** Bearer tokens accepted; default one random token. */
  tokens?: string[];
  /**
   * Require a client certificate signed by the test CA (TLS `requestCert`). Bun.serve does
   * not show the handler which certificate a client sent, so in this mode the TLS handshake
   * is the authentication: a client without a valid certificate never gets to send a request.
   */
  clientCert?: boolean;
  /** Where to make the temp dir for certificates; default the system temp dir. */
  dir?: string;
}

export interface RequestRecord {
  method: string;
  path: string;
  /** The bearer token presented, if any. */
  token: string | undefined;
  status: number;
}

export interface KubeconfigOptions {
  auth: "token" | "cert";
  /** Put the CA (and client cert/key) inline as base64 data, or refer to files. Default inline. */
  inline?: boolean;
  /** The token to write (auth "token"); default the server's first token. */
  token?: string;
  /** A CA PEM to trust instead of the server's (to test a wrong CA). */
  caPem?: string;
  /** File name in dir; default "kubeconfig". */
  name?: string;
}

export interface ServiceAccountFiles {
  dir: string;
  tokenFile: string;
  caFile: string;
  /** The environment the in-cluster reader uses: KUBERNETES_SERVICE_HOST and _PORT. */
  env: { KUBERNETES_SERVICE_HOST: string; KUBERNETES_SERVICE_PORT: string };
}

/** What setFault makes every API request answer. */
export type Fault = { status: number; message: string };

function status(code: number, reason: string, message: string, details?: Record<string, string>): Response {
  const body = {
    kind: "Status",
    apiVersion: "v1",
    metadata: {},
    status: "Failure",
    message,
    reason,
    code,
    ...(details ? { details } : {}),
  };
  return Response.json(body, { status: code });
}

const REASONS: Record<number, string> = {
  400: "BadRequest",
  401: "Unauthorized",
  403: "Forbidden",
  404: "NotFound",
  405: "MethodNotAllowed",
  429: "TooManyRequests",
  500: "InternalError",
  503: "ServiceUnavailable",
  504: "Timeout",
};

export class ApiServer implements AsyncDisposable {
  readonly pki: TestPki;
  readonly url: string;
  readonly requests: RequestRecord[] = [];
  private tokens: Set<string>;
  private readonly pods = new Map<string, PodObject>();
  private readonly files: string[] = [];
  private server: Server<undefined> | undefined;
  private delayMs = 0;
  private fault: Fault | undefined;
  private resourceVersion = 1;

  private constructor(
    private readonly opts: ApiServerOptions,
    private readonly tmp: string,
  ) {
    this.pki = makePki(tmp);
    this.tokens = new Set(opts.tokens ?? [`t-${crypto.randomUUID()}`]);
    for (const f of opts.podFiles ?? []) this.loadPods(f);
    this.server = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      tls: {
        cert: this.pki.server.cert,
        key: this.pki.server.key,
        ...(opts.clientCert ? { ca: this.pki.ca.cert, requestCert: true, rejectUnauthorized: true } : {}),
      },
      fetch: (req) => this.handle(req),
    });
    this.url = `https://127.0.0.1:${this.server.port}`;
  }

  static start(opts: ApiServerOptions = {}): ApiServer {
    const tmp = mkdtempSync(join(opts.dir ?? tmpdir(), "ratchet-apiserver-"));
    try {
      return new ApiServer(opts, tmp);
    } catch (err) {
      rmSync(tmp, { recursive: true, force: true });
      throw err;
    }
  }

  get token(): string {
    return [...this.tokens][0] as string;
  }

  /** Replaces the accepted tokens (e.g. after a rotation). */
  setTokens(tokens: string[]): void {
    this.tokens = new Set(tokens);
  }

  /** Adds a pod or replaces the one with its namespace and name; returns it as served. */
  putPod(pod: unknown): PodObject {
    const p = normalizePod(pod);
    p.metadata.resourceVersion = String(++this.resourceVersion);
    this.pods.set(`${p.metadata.namespace}/${p.metadata.name}`, p);
    return p;
  }

  /** Adds (or replaces) every Pod of a YAML file; returns them as served. */
  loadPods(file: string): PodObject[] {
    return readPodYaml(file).map((p) => this.putPod(p));
  }

  deletePod(namespace: string, name: string): boolean {
    return this.pods.delete(`${namespace}/${name}`);
  }

  getPod(namespace: string, name: string): PodObject | undefined {
    return this.pods.get(`${namespace}/${name}`);
  }

  /** Every response waits this long first (0: none). */
  setDelay(ms: number): void {
    this.delayMs = ms;
  }

  /** Every API request (not /healthz) answers this status until cleared with undefined. */
  setFault(fault: Fault | undefined): void {
    this.fault = fault;
  }

  private authorized(req: Request): { ok: boolean; token: string | undefined } {
    const h = req.headers.get("authorization");
    const token = h?.startsWith("Bearer ") ? h.slice("Bearer ".length) : undefined;
    if (this.opts.clientCert) return { ok: true, token }; // the handshake checked the certificate
    return { ok: token !== undefined && this.tokens.has(token), token };
  }

  private async handle(req: Request): Promise<Response> {
    const url = new URL(req.url);
    const auth = this.authorized(req);
    const res = await this.respond(req, url, auth.ok);
    this.requests.push({ method: req.method, path: url.pathname, token: auth.token, status: res.status });
    return res;
  }

  private async respond(req: Request, url: URL, authorized: boolean): Promise<Response> {
    if (this.delayMs > 0) await Bun.sleep(this.delayMs);
    if (url.pathname === "/healthz" || url.pathname === "/livez" || url.pathname === "/readyz")
      return new Response("ok");
    if (!authorized) return status(401, "Unauthorized", "Unauthorized");
    if (this.fault)
      return status(this.fault.status, REASONS[this.fault.status] ?? "Unknown", this.fault.message);
    if (req.method !== "GET")
      return status(
        405,
        "MethodNotAllowed",
        `the server does not allow this method on the requested resource`,
      );
    if (url.pathname === "/version") {
      return Response.json({
        major: "1",
        minor: "31",
        gitVersion: "v1.31.0-ratchet-standin",
        platform: "linux/amd64",
      });
    }
    const parts = url.pathname
      .split("/")
      .filter((s) => s !== "")
      .map(decodeURIComponent);
    // /api/v1/pods, /api/v1/namespaces/{ns}/pods, /api/v1/namespaces/{ns}/pods/{name}
    if (parts[0] === "api" && parts[1] === "v1") {
      if (parts.length === 3 && parts[2] === "pods") return this.list(undefined);
      if (parts.length === 5 && parts[2] === "namespaces" && parts[4] === "pods") return this.list(parts[3]);
      if (parts.length === 6 && parts[2] === "namespaces" && parts[4] === "pods") {
        const pod = this.getPod(parts[3] as string, parts[5] as string);
        if (!pod)
          return status(404, "NotFound", `pods "${parts[5]}" not found`, {
            name: parts[5] as string,
            kind: "pods",
          });
        return Response.json(pod);
      }
    }
    return status(404, "NotFound", "the server could not find the requested resource");
  }

  private list(namespace: string | undefined): Response {
    const items = [...this.pods.values()].filter(
      (p) => namespace === undefined || p.metadata.namespace === namespace,
    );
    return Response.json({
      kind: "PodList",
      apiVersion: "v1",
      metadata: { resourceVersion: String(this.resourceVersion) },
      items,
    });
  }

  /** Writes a kubeconfig for this server into dir; removed with the server. Returns its path. */
  writeKubeconfig(dir: string, opts: KubeconfigOptions): string {
    const inline = opts.inline ?? true;
    const b64 = (s: string) => Buffer.from(s).toString("base64");
    let caFile = this.pki.ca.certFile;
    if (opts.caPem !== undefined && !inline) {
      caFile = join(dir, `${opts.name ?? "kubeconfig"}-ca.crt`);
      writeFileSync(caFile, opts.caPem);
      this.files.push(caFile);
    }
    const caPem = opts.caPem ?? this.pki.ca.cert;
    const cluster = inline
      ? { server: this.url, "certificate-authority-data": b64(caPem) }
      : { server: this.url, "certificate-authority": caFile };
    let user: Record<string, string>;
    if (opts.auth === "token") user = { token: opts.token ?? this.token };
    else if (inline)
      user = {
        "client-certificate-data": b64(this.pki.client.cert),
        "client-key-data": b64(this.pki.client.key),
      };
    else user = { "client-certificate": this.pki.client.certFile, "client-key": this.pki.client.keyFile };
    const config = {
      apiVersion: "v1",
      kind: "Config",
      clusters: [{ name: "standin", cluster }],
      users: [{ name: "ratchet", user }],
      contexts: [{ name: "standin", context: { cluster: "standin", user: "ratchet" } }],
      "current-context": "standin",
    };
    const path = join(dir, opts.name ?? "kubeconfig");
    // JSON is YAML: the client's kubeconfig loader reads it.
    writeFileSync(path, `${JSON.stringify(config, null, 2)}\n`, { mode: 0o600 });
    this.files.push(path);
    return path;
  }

  /** Writes an in-cluster service account directory (token, ca.crt, namespace) into dir. */
  writeServiceAccount(dir: string, token = this.token): ServiceAccountFiles {
    const tokenFile = join(dir, "token");
    const caFile = join(dir, "ca.crt");
    writeFileSync(tokenFile, token, { mode: 0o600 });
    writeFileSync(caFile, this.pki.ca.cert);
    writeFileSync(join(dir, "namespace"), "kube-system");
    this.files.push(tokenFile, caFile, join(dir, "namespace"));
    return {
      dir,
      tokenFile,
      caFile,
      env: { KUBERNETES_SERVICE_HOST: "127.0.0.1", KUBERNETES_SERVICE_PORT: String(this.server?.port ?? 0) },
    };
  }

  /** Stops serving (in-flight requests are cut) and removes the certificates and the files it wrote. */
  async stop(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    if (s) await s.stop(true);
    for (const f of this.files) rmSync(f, { force: true });
    rmSync(this.tmp, { recursive: true, force: true });
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }
}

export function startApiServer(opts: ApiServerOptions = {}): ApiServer {
  return ApiServer.start(opts);
}
