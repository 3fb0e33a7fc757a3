// Reads Pods from the Kubernetes API through @kubernetes/client-node, over Bun's fetch: one
// pod (GET), the pods of a node (list), and a watch of them.
//
// The client sends its requests through undici's fetch with a `dispatcher` that carries the
// kubeconfig's CA and client certificate. Bun ignores that dispatcher, so every cluster with
// a private CA fails with "unable to verify the first certificate". The client stays in
// charge of the kubeconfig (parsing, auth providers, building and decoding requests); only
// the transport is ours: an HttpLibrary that asks the KubeConfig for its TLS material and
// headers (applyToHTTPSOptions) and hands them to Bun's fetch as `tls`. The client's Watch
// class calls undici's fetch itself (same problem), so list and watch are plain requests of
// ours through the same transport; the cache (cache.ts) reads the watch's JSON lines.
//
// Only the child imports this file: loading the client costs ~150 ms, which the parent,
// exec'd once per CNI command, must never pay.
import type { OutgoingHttpHeaders, RequestOptions } from "node:http";
import { join } from "node:path";
import {
  ApiException,
  CoreV1Api,
  createConfiguration,
  KubeConfig,
  ResponseContext,
  ServerConfiguration,
  VersionApi,
  wrapHttpLibrary,
  type HttpLibrary,
  type RequestContext,
} from "@kubernetes/client-node";
import { CniError, Code } from "../cni/errors.ts";
import { loadKubeconfig, TokenFile } from "./kube-config.ts";
import {
  DeadlineError,
  describeFetchError,
  PodNotFoundError,
  STATUS_TEXT,
  StatusError,
  signalReason,
  statusMessage,
} from "./kube-errors.ts";

import { namespaceProblem, podNameProblem, show } from "../cni/names.ts";
import { VERSION } from "../version.ts";

export { DeadlineError, PodNotFoundError, StatusError } from "./kube-errors.ts";
export { TokenFile } from "./kube-config.ts";

/** What ratchet needs of a Pod. */
export interface PodInfo {
  namespace: string;
  name: string;
  uid: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
  /** The node it is scheduled to; undefined before scheduling. */
  nodeName: string | undefined;
  /** The object's version as read ("" when unknown): a precondition for patches. */
  resourceVersion?: string;
}

export const SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount";

/** API requests this process made, by result: "ok" (2xx), the HTTP status, or "error" (no answer). */
export const kubeRequestResults = new Map<string, number>();
function tally(result: string): void {
  kubeRequestResults.set(result, (kubeRequestResults.get(result) ?? 0) + 1);
}

export interface PodReaderOptions {
  /** Path of a kubeconfig; without it, the in-cluster service account is used. */
  kubeconfig?: string | undefined;
  /** For in-cluster mode: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT. */
  env?: Record<string, string | undefined>;
  /** For in-cluster mode: the directory holding `token` and `ca.crt`. */
  serviceAccountDir?: string;
}

type Pem = string | Buffer | Array<string | Buffer> | undefined;
function pemText(v: Pem): string | string[] | undefined {
  if (v === undefined) return undefined;
  if (Array.isArray(v)) return v.map((x) => x.toString());
  return v.toString();
}

function headerValue(v: OutgoingHttpHeaders[string]): string | undefined {
  if (v === undefined) return undefined;
  return Array.isArray(v) ? v.join(", ") : String(v);
}

function isRecord(x: unknown): x is Record<string, unknown> {
  return typeof x === "object" && x !== null && !Array.isArray(x);
}

function stringMap(x: unknown): Record<string, string> {
  if (!isRecord(x)) return {};
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(x)) if (typeof v === "string") out[k] = v;
  return out;
}

/** What ratchet keeps of a Pod object as JSON (a list item, a watch event); undefined if it is not one. */
export function podInfo(obj: unknown): PodInfo | undefined {
  if (!isRecord(obj) || !isRecord(obj.metadata)) return undefined;
  const m = obj.metadata;
  if (typeof m.name !== "string" || typeof m.namespace !== "string") return undefined;
  const spec = isRecord(obj.spec) ? obj.spec : {};
  return {
    namespace: m.namespace,
    name: m.name,
    uid: typeof m.uid === "string" ? m.uid : "",
    labels: stringMap(m.labels),
    annotations: stringMap(m.annotations),
    nodeName: typeof spec.nodeName === "string" && spec.nodeName !== "" ? spec.nodeName : undefined,
    resourceVersion: typeof m.resourceVersion === "string" ? m.resourceVersion : "",
  };
}

export class PodReader implements Disposable {
  readonly server: string;
  private readonly kc: KubeConfig;
  private readonly api: CoreV1Api;
  private readonly versionApi: VersionApi;
  private readonly tokenFile: TokenFile | undefined;
  private readonly proxy: string | undefined;
  /** One keep-alive pool per reader, so connections are reused and closed with it. */
  private readonly session = new Bun.FetchSession();

  /** A reader for a config's `kubeconfig`, or the in-cluster service account when it has none. */
  static fromConfig(
    conf: { kubeconfig?: string | undefined },
    env: Record<string, string | undefined>,
  ): PodReader {
    return new PodReader({ kubeconfig: conf.kubeconfig, env });
  }

  constructor(opts: PodReaderOptions) {
    const kc = new KubeConfig();
    if (opts.kubeconfig !== undefined) {
      const path = opts.kubeconfig;
      try {
        this.tokenFile = loadKubeconfig(kc, path);
      } catch (err) {
        throw new CniError(
          Code.InvalidConfig,
          `cannot load kubeconfig ${show(path)}: ${(err as Error).message}`,
          "",
          { cause: err },
        );
      }
    } else {
      const env = opts.env ?? {};
      const host = env.KUBERNETES_SERVICE_HOST;
      const port = env.KUBERNETES_SERVICE_PORT;
      if (!host || !port) {
        throw new CniError(
          Code.InvalidConfig,
          "no kubeconfig in the network configuration and not in a cluster (KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT unset)",
        );
      }
      const dir = opts.serviceAccountDir ?? SERVICE_ACCOUNT_DIR;
      const h = host.includes(":") && !host.startsWith("[") ? `[${host}]` : host;
      // The client's loadFromCluster would re-read the token only once a minute; ours reads it per request.
      kc.loadFromClusterAndUser(
        {
          name: "in-cluster",
          server: `https://${h}:${port}`,
          caFile: join(dir, "ca.crt"),
          skipTLSVerify: false,
        },
        { name: "in-cluster" },
      );
      this.tokenFile = new TokenFile(join(dir, "token"));
    }
    const cluster = kc.getCurrentCluster();
    if (!cluster)
      throw new CniError(Code.InvalidConfig, `kubeconfig ${show(opts.kubeconfig)} has no current cluster`);
    if (cluster.proxyUrl && !/^https?:\/\//.test(cluster.proxyUrl)) {
      throw new CniError(
        Code.InvalidConfig,
        `kubeconfig ${show(opts.kubeconfig)}: proxy-url ${show(cluster.proxyUrl)} is not supported (only http:// and https:// proxies)`,
      );
    }
    this.kc = kc;
    this.server = cluster.server.replace(/\/+$/, "");
    this.proxy = cluster.proxyUrl || undefined;
    const configuration = createConfiguration({
      baseServer: new ServerConfiguration(this.server, {}),
      // Authentication happens in send(), together with the TLS material.
      authMethods: {},
      httpApi: this.transport(undefined),
    });
    this.api = new CoreV1Api(configuration);
    this.versionApi = new VersionApi(configuration);
  }

  /** The HttpLibrary the client sends through; `signal` ends the request at the caller's deadline. */
  private transport(signal: AbortSignal | undefined): HttpLibrary {
    return wrapHttpLibrary({ send: (req) => this.send(req, signal) });
  }

  private async send(req: RequestContext, signal: AbortSignal | undefined): Promise<ResponseContext> {
    const body = req.getBody();
    const resp = await this.request(req.getUrl(), {
      method: req.getHttpMethod(),
      headers: req.getHeaders(),
      ...(typeof body === "string" ? { body } : {}),
      signal,
    });
    const out: Record<string, string> = {};
    resp.headers.forEach((value, name) => {
      out[name] = value;
    });
    return new ResponseContext(resp.status, out, {
      text: () => resp.text(),
      binary: async () => Buffer.from(await resp.arrayBuffer()),
      stream: () => resp.body,
    });
  }

  /** One request through Bun's fetch, with the kubeconfig's TLS material and credentials. */
  private async request(
    url: string,
    init: {
      method: string;
      headers?: Record<string, string>;
      body?: string;
      signal: AbortSignal | undefined;
    },
  ): Promise<Response> {
    // The client's own view of the kubeconfig: CA, client certificate and key (inline or
    // files, read now so rotated files are picked up), auth headers from token, basic auth,
    // exec or auth-provider plugins.
    const opts: RequestOptions & {
      ca?: Pem;
      cert?: Pem;
      key?: Pem;
      rejectUnauthorized?: boolean;
      servername?: string;
    } = {};
    await this.kc.applyToHTTPSOptions(opts);
    const headers = new Headers(init.headers);
    for (const [k, v] of Object.entries(opts.headers ?? {})) {
      const value = headerValue(v as OutgoingHttpHeaders[string]);
      if (value !== undefined) headers.set(k, value);
    }
    if (typeof opts.auth === "string")
      headers.set("Authorization", `Basic ${Buffer.from(opts.auth).toString("base64")}`);
    if (this.tokenFile) headers.set("Authorization", `Bearer ${this.tokenFile.read()}`);
    headers.set("User-Agent", `ratchet/${VERSION}`);

    const tls: BunFetchRequestInitTLS = {};
    const ca = pemText(opts.ca);
    const cert = pemText(opts.cert);
    const key = pemText(opts.key);
    if (ca !== undefined) tls.ca = ca;
    if (cert !== undefined) tls.cert = cert;
    if (key !== undefined) tls.key = key;
    if (opts.rejectUnauthorized === false) tls.rejectUnauthorized = false;
    if (opts.servername) tls.serverName = opts.servername;

    return fetch(url, {
      method: init.method,
      headers,
      ...(init.body !== undefined ? { body: init.body } : {}),
      ...(init.signal ? { signal: init.signal } : {}),
      tls,
      session: this.session,
      ...(this.proxy ? { proxy: this.proxy } : {}),
    }).then(
      (resp) => {
        tally(resp.status >= 200 && resp.status < 300 ? "ok" : String(resp.status));
        return resp;
      },
      (err: unknown) => {
        tally("error");
        throw err;
      },
    );
  }

  /**
   * One request of the agent's own (Events, pod patches) to `path` on the API server: its
   * status and JSON body (undefined when it has none). Throws only when there is no answer
   * within `timeoutMs`.
   */
  async call(
    method: "GET" | "POST" | "PATCH",
    path: string,
    body?: { json: unknown; contentType: string },
    timeoutMs = 10_000,
  ): Promise<{ status: number; body: unknown }> {
    const signal = AbortSignal.timeout(timeoutMs);
    const resp = await this.request(`${this.server}${path}`, {
      method,
      headers: { Accept: "application/json", ...(body ? { "Content-Type": body.contentType } : {}) },
      ...(body ? { body: JSON.stringify(body.json) } : {}),
      signal,
    });
    const text = await resp.text();
    let json: unknown;
    try {
      json = text === "" ? undefined : JSON.parse(text);
    } catch {
      json = undefined;
    }
    return { status: resp.status, body: json };
  }

  /** A GET whose status must be 200; the response (body unread) or a StatusError. */
  private async get(path: string, signal: AbortSignal): Promise<Response> {
    const resp = await this.request(`${this.server}${path}`, {
      method: "GET",
      headers: { Accept: "application/json" },
      signal,
    });
    if (resp.status !== 200) throw new StatusError(resp.status, await resp.text().catch(() => ""));
    return resp;
  }

  /**
   * Lists the pods of all namespaces matching a field selector (e.g. `spec.nodeName=n1`): the
   * pods and the list's resourceVersion, to watch from. Code 11 when there is no answer.
   */
  async listPods(
    fieldSelector: string,
    deadlineMs: number,
  ): Promise<{ resourceVersion: string; pods: PodInfo[] }> {
    const ctl = new AbortController();
    const timer = setTimeout(
      () => ctl.abort(new DeadlineError(`no answer within ${deadlineMs} ms`)),
      deadlineMs,
    );
    try {
      const q = new URLSearchParams({ fieldSelector });
      const list = (await (await this.get(`/api/v1/pods?${q}`, ctl.signal)).json()) as {
        metadata?: { resourceVersion?: unknown };
        items?: unknown;
      };
      const rv = list.metadata?.resourceVersion;
      if (typeof rv !== "string" || rv === "" || !Array.isArray(list.items))
        throw new Error("the pod list has no metadata.resourceVersion or items");
      const pods = list.items.map(podInfo).filter((p): p is PodInfo => p !== undefined);
      return { resourceVersion: rv, pods };
    } catch (err) {
      throw this.failure(`the pods (${fieldSelector})`, signalReason(ctl.signal, err), "list");
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Opens a watch of pods matching a field selector from a resourceVersion, with bookmarks.
   * Resolves once the server answered 200 (within connectMs); the body streams one JSON
   * event per line until the server ends it (after about timeoutSeconds) or `signal` aborts.
   */
  async watchPods(
    fieldSelector: string,
    resourceVersion: string,
    opts: { timeoutSeconds: number; connectMs: number; signal: AbortSignal },
  ): Promise<ReadableStream<Uint8Array>> {
    const ctl = new AbortController();
    const onAbort = () => ctl.abort(opts.signal.reason);
    opts.signal.addEventListener("abort", onAbort, { once: true });
    const timer = setTimeout(
      () => ctl.abort(new DeadlineError(`no answer within ${opts.connectMs} ms`)),
      opts.connectMs,
    );
    try {
      const q = new URLSearchParams({
        watch: "1",
        fieldSelector,
        resourceVersion,
        allowWatchBookmarks: "true",
        timeoutSeconds: String(opts.timeoutSeconds),
      });
      const resp = await this.get(`/api/v1/pods?${q}`, ctl.signal);
      if (!resp.body) throw new Error("the watch answered without a body");
      return resp.body;
    } catch (err) {
      opts.signal.removeEventListener("abort", onAbort);
      throw this.failure(`the pods (${fieldSelector})`, signalReason(ctl.signal, err), "watch");
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Reads one Pod. Everything that keeps us from an answer (API unreachable, TLS failure,
   * no answer by the deadline, pod not found, any error status) is CniError code 11, try
   * again later, with a message naming the pod and the reason.
   */
  async readPod(namespace: string, name: string, deadlineMs: number): Promise<PodInfo> {
    const id = `${namespace}/${name}`;
    const bad = namespaceProblem(namespace) ?? podNameProblem(name);
    if (bad) throw new CniError(Code.InvalidPodSpec, `cannot read pod ${show(id)}: the name ${bad}`);

    const ctl = new AbortController();
    let timer: Timer | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        ctl.abort(new DeadlineError(`no answer within ${deadlineMs} ms`));
        reject(new DeadlineError(`no answer within ${deadlineMs} ms`));
      }, deadlineMs);
    });
    try {
      const pod = await Promise.race([
        this.api.readNamespacedPod({ namespace, name }, { httpApi: this.transport(ctl.signal) }),
        deadline,
      ]);
      return {
        namespace: pod.metadata?.namespace ?? namespace,
        name: pod.metadata?.name ?? name,
        uid: pod.metadata?.uid ?? "",
        labels: pod.metadata?.labels ?? {},
        annotations: pod.metadata?.annotations ?? {},
        nodeName: pod.spec?.nodeName,
        resourceVersion: pod.metadata?.resourceVersion ?? "",
      };
    } catch (err) {
      throw this.failure(id, err);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Asks the API server for its version: is it there and do we get in? Code 11 otherwise. */
  async ping(deadlineMs: number): Promise<string> {
    const ctl = new AbortController();
    const timer = setTimeout(
      () => ctl.abort(new DeadlineError(`no answer within ${deadlineMs} ms`)),
      deadlineMs,
    );
    try {
      const v = await this.versionApi.getCode({ httpApi: this.transport(ctl.signal) });
      return v.gitVersion;
    } catch (err) {
      throw this.failure("(version)", err);
    } finally {
      clearTimeout(timer);
    }
  }

  private failure(id: string, err: unknown, verb = "read"): CniError {
    const what = verb === "read" ? `pod ${id}` : id;
    if (err instanceof ApiException || err instanceof StatusError) {
      const code = err.code;
      const detail = statusMessage(err.body);
      if (code === 404 && verb === "read")
        return new PodNotFoundError(
          Code.TryAgainLater,
          `pod ${id} not found (404 from ${this.server})`,
          detail ?? "",
          { cause: err },
        );
      const text = STATUS_TEXT[code] ? ` ${STATUS_TEXT[code]}` : "";
      return new CniError(
        Code.TryAgainLater,
        `cannot ${verb} ${what}: the API server ${this.server} answered ${code}${text}${detail ? `: ${detail}` : ""}`,
        "",
        { cause: err },
      );
    }
    if (err instanceof DeadlineError)
      return new CniError(
        Code.TryAgainLater,
        `cannot ${verb} ${what} from ${this.server}: ${err.message}`,
        "",
        { cause: err },
      );
    return new CniError(
      Code.TryAgainLater,
      `cannot ${verb} ${what} from ${this.server}: ${describeFetchError(err)}`,
      "",
      { cause: err },
    );
  }

  /** Closes idle connections. */
  close(): void {
    this.session.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
