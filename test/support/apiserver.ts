// A stand-in Kubernetes API server for tests and the demo: HTTPS on loopback with a
// certificate chain made for the run, bearer-token auth (or client certificates), serving
// Pod objects loaded from YAML: get, list and watch pods (field selectors, resourceVersions,
// bookmarks, 410 Gone), patch pods, create and patch Events, /version, /healthz. Tests can
// stop it and start it again on the same port, make it hang, and count every request.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Server } from "bun";
import { makePki, type TestPki } from "./certs.ts";
import {
  notAllowed,
  notFound,
  patchBody,
  podNotFound,
  REASONS,
  status,
  watchResponse,
} from "./apiserver-http.ts";
import { ApiState, type PatchRecord, parseFieldSelector } from "./apiserver-state.ts";
import { readPodYaml, type PodObject } from "./pods.ts";

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
  /** Schedules every pod put without spec.nodeName to this node, as a one-node scheduler would. */
  node?: string;
}

export interface RequestRecord {
  method: string;
  path: string;
  /** The query string, "" or starting with "?". */
  query: string;
  /** The bearer token presented, if any. */
  token: string | undefined;
  /** 0 while unanswered. */
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

export class ApiServer implements AsyncDisposable {
  readonly pki: TestPki;
  readonly url: string;
  readonly port: number;
  /** Every request, recorded when it arrives (status filled in when answered). */
  readonly requests: RequestRecord[] = [];
  private readonly state = new ApiState();
  private tokens: Set<string>;
  private readonly files: string[] = [];
  private server: Server<undefined> | undefined;
  private delayMs = 0;
  private fault: Fault | undefined;
  /** While hung: requests wait on this, watches hold their events. */
  private hung: { released: Promise<void>; release: () => void } | undefined;

  private constructor(
    private readonly opts: ApiServerOptions,
    private readonly tmp: string,
  ) {
    this.pki = makePki(tmp);
    this.tokens = new Set(opts.tokens ?? [`t-${crypto.randomUUID()}`]);
    for (const f of opts.podFiles ?? []) this.loadPods(f);
    this.server = this.serve(0);
    this.port = this.server.port as number;
    this.url = `https://127.0.0.1:${this.port}`;
  }

  private serve(port: number): Server<undefined> {
    return Bun.serve({
      hostname: "127.0.0.1",
      port,
      // Watches stay open without traffic for as long as they like.
      idleTimeout: 0,
      tls: {
        cert: this.pki.server.cert,
        key: this.pki.server.key,
        ...(this.opts.clientCert
          ? { ca: this.pki.ca.cert, requestCert: true, rejectUnauthorized: true }
          : {}),
      },
      fetch: (req) => this.handle(req),
    });
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

  /**
   * Adds a pod, or updates the one with its namespace and name (keeping its uid unless the
   * object gives one; a different uid replaces the old pod). Watches see the change.
   */
  putPod(pod: unknown): PodObject {
    const p = pod as { spec?: { nodeName?: unknown } };
    if (this.opts.node === undefined || p.spec?.nodeName) return this.state.putPod(pod);
    return this.state.putPod({ ...p, spec: { ...p.spec, nodeName: this.opts.node } });
  }

  /** Adds (or updates) every Pod of a YAML file; returns them as served. */
  loadPods(file: string): PodObject[] {
    return readPodYaml(file).map((p) => this.putPod(p));
  }

  deletePod(namespace: string, name: string): boolean {
    return this.state.deletePod(namespace, name);
  }

  getPod(namespace: string, name: string): PodObject | undefined {
    return this.state.pods.get(`${namespace}/${name}`);
  }

  /** Schedules a pod to a node (sets spec.nodeName), as the scheduler's binding does. */
  bindPod(namespace: string, name: string, node: string): PodObject {
    const pod = this.getPod(namespace, name);
    if (!pod) throw new Error(`no pod ${namespace}/${name} to bind`);
    return this.putPod({ ...pod, spec: { ...pod.spec, nodeName: node } });
  }

  /** Every response waits this long first (0: none). */
  setDelay(ms: number): void {
    this.delayMs = ms;
  }

  /** Every API request (not /healthz) answers this status until cleared with undefined. */
  setFault(fault: Fault | undefined): void {
    this.fault = fault;
  }

  /** Requests so far with this method (any when undefined) whose path starts with `path`. */
  count(method: string | undefined, path = "/"): number {
    return this.requests.filter(
      (r) => (method === undefined || r.method === method) && r.path.startsWith(path),
    ).length;
  }

  /** Events posted, as stored now (patches applied). */
  get events(): Array<Record<string, unknown>> {
    return [...this.state.events.values()];
  }

  /** Forgets every Event (as the API server's TTL does): a PATCH of one gets 404. */
  expireEvents(): void {
    this.state.events.clear();
  }

  /** Every patch applied to a pod or an event, in order. */
  get patches(): PatchRecord[] {
    return this.state.patches;
  }

  /** Open watch connections. */
  get watchCount(): number {
    return this.state.watchers.size;
  }

  /** The current resourceVersion. */
  get resourceVersion(): number {
    return this.state.rv;
  }

  /** Sends a BOOKMARK to every watch that allows them. */
  bookmark(): void {
    this.state.bookmark();
  }

  /** Forgets the watch history: a watch from an older resourceVersion gets 410 Gone. */
  compact(): void {
    this.state.compact();
  }

  /** Ends every open watch; with `gone`, after a 410 ERROR event (history compacted too). */
  endWatches(gone = false): void {
    if (gone) this.state.compact();
    this.state.endWatches(gone);
  }

  /** Stops serving and cuts every connection, keeping its pods; up() serves again on the same port. */
  async down(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    this.state.endWatches();
    this.unhang();
    if (s) await s.stop(true);
  }

  /** Serves again on the same port after down(). */
  up(): void {
    this.server ??= this.serve(this.port);
  }

  /** Accepts connections and requests but answers none, and sends nothing on open watches, until unhang(). */
  hang(): void {
    if (this.hung) return;
    let release: () => void = () => undefined;
    const released = new Promise<void>((r) => {
      release = r;
    });
    this.hung = { released, release };
  }

  unhang(): void {
    const h = this.hung;
    this.hung = undefined;
    h?.release();
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
    const record: RequestRecord = {
      method: req.method,
      path: url.pathname,
      query: url.search,
      token: auth.token,
      status: 0,
    };
    this.requests.push(record);
    if (this.hung) await this.hung.released;
    const res = await this.respond(req, url, auth.ok);
    record.status = res.status;
    return res;
  }

  private async respond(req: Request, url: URL, authorized: boolean): Promise<Response> {
    if (this.delayMs > 0) await Bun.sleep(this.delayMs);
    if (url.pathname === "/healthz" || url.pathname === "/livez" || url.pathname === "/readyz")
      return new Response("ok");
    if (!authorized) return status(401, "Unauthorized", "Unauthorized");
    if (this.fault)
      return status(this.fault.status, REASONS[this.fault.status] ?? "Unknown", this.fault.message);
    if (url.pathname === "/version" && req.method === "GET") {
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
    if (parts[0] !== "api" || parts[1] !== "v1") return notFound();
    // /api/v1/pods, /api/v1/namespaces/{ns}/{pods|events}[/{name}]
    if (parts.length === 3 && parts[2] === "pods") return this.collection(req, url, undefined);
    if (parts[2] !== "namespaces" || parts.length < 5) return notFound();
    const ns = parts[3] as string;
    const name = parts[5];
    if (parts[4] === "pods" && parts.length === 5) return this.collection(req, url, ns);
    if (parts[4] === "pods" && name !== undefined && parts.length === 6) return this.pod(req, ns, name);
    if (parts[4] === "events" && parts.length <= 6) return this.event(req, ns, name);
    return notFound();
  }

  /** GET a pod list or a watch of pods. */
  private collection(req: Request, url: URL, namespace: string | undefined): Response {
    if (req.method !== "GET") return notAllowed();
    const select = parseFieldSelector(url.searchParams.get("fieldSelector"));
    if (typeof select === "string") return status(400, "BadRequest", select);
    const w = url.searchParams.get("watch");
    if (w === "1" || w === "true")
      return watchResponse(this.state, url, namespace, select, () => this.hung?.released);
    return Response.json({
      kind: "PodList",
      apiVersion: "v1",
      metadata: { resourceVersion: String(this.state.rv) },
      items: this.state.list(namespace, select),
    });
  }

  /** GET or PATCH one pod. */
  private async pod(req: Request, namespace: string, name: string): Promise<Response> {
    if (req.method === "GET") {
      const pod = this.getPod(namespace, name);
      return pod ? Response.json(pod) : podNotFound(name);
    }
    if (req.method !== "PATCH") return notAllowed();
    const patch = await patchBody(req);
    if (patch instanceof Response) return patch;
    const pod = this.state.patchPod(namespace, name, patch.body, patch.contentType);
    if (pod === "conflict")
      return status(
        409,
        "Conflict",
        `Operation cannot be fulfilled on pods "${name}": the object has been modified; ` +
          "please apply your changes to the latest version and try again",
      );
    return pod ? Response.json(pod) : podNotFound(name);
  }

  /** POST an Event, PATCH one, GET the namespace's list. */
  private async event(req: Request, namespace: string, name: string | undefined): Promise<Response> {
    if (req.method === "GET" && name === undefined)
      return Response.json({
        kind: "EventList",
        apiVersion: "v1",
        metadata: { resourceVersion: String(this.state.rv) },
        items: this.events.filter((e) => (e.metadata as { namespace: string }).namespace === namespace),
      });
    if (req.method === "POST" && name === undefined) {
      let body: unknown;
      try {
        body = await req.json();
      } catch {
        return status(400, "BadRequest", "the body is not JSON");
      }
      const out = this.state.createEvent(namespace, body);
      if (typeof out !== "string") return Response.json(out, { status: 201 });
      if (out.startsWith("exists:"))
        return status(409, "AlreadyExists", `events "${out.slice(7)}" already exists`);
      return status(422, "Invalid", out);
    }
    if (req.method === "PATCH" && name !== undefined) {
      const patch = await patchBody(req);
      if (patch instanceof Response) return patch;
      const ev = this.state.patchEvent(namespace, name, patch.body, patch.contentType);
      return ev ? Response.json(ev) : status(404, "NotFound", `events "${name}" not found`);
    }
    return notAllowed();
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
      env: { KUBERNETES_SERVICE_HOST: "127.0.0.1", KUBERNETES_SERVICE_PORT: String(this.port) },
    };
  }

  /** Stops serving (in-flight requests are cut) and removes the certificates and the files it wrote. */
  async stop(): Promise<void> {
    await this.down();
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
