// The agent's HTTP endpoint (Bun.serve) on `metrics_address`: /metrics (Prometheus text),
// /healthz (the event loop turns) and /readyz (etcd reachable, pod cache synced; 503 with
// the reasons otherwise). If the address is taken (an agent that is handing over still holds
// it), binding is retried until it works; the agent serves CNI requests meanwhile.
import type { Logger } from "../log.ts";
import { CONTENT_TYPE } from "./metrics.ts";

export interface Endpoints {
  /** The exposition in pieces. */
  metrics(): Promise<string[]>;
  /** Why the agent is not ready; empty when it is. */
  notReady(): Promise<string[]>;
}

/** The event loop counts as stalled when its heartbeat is this late. */
const STALLED_MS = 5000;
const RETRY_MS = 2000;

/** Host and port of a metrics_address: "" host means every address; [v6] loses its brackets. */
export function parseListen(address: string): { hostname: string; port: number } {
  const i = address.lastIndexOf(":");
  const host = address.slice(0, i);
  return {
    hostname: host === "" ? "0.0.0.0" : host.replace(/^\[(.*)\]$/, "$1"),
    port: Number(address.slice(i + 1)),
  };
}

export class ObserveServer {
  private server: ReturnType<typeof Bun.serve> | undefined;
  private retry: Timer | undefined;
  private readonly heartbeat: Timer;
  private beat = performance.now();
  private stopped = false;

  constructor(
    private readonly address: string,
    private readonly endpoints: Endpoints,
    private readonly log: Logger,
  ) {
    this.heartbeat = setInterval(() => {
      this.beat = performance.now();
    }, 1000);
    this.heartbeat.unref();
    this.bind(true);
  }

  /** The port actually bound (useful with port 0); undefined while not bound. */
  get port(): number | undefined {
    return this.server?.port;
  }

  private bind(first: boolean): void {
    if (this.stopped) return;
    const { hostname, port } = parseListen(this.address);
    try {
      this.server = Bun.serve({ hostname, port, fetch: (req) => this.route(req) });
      this.log.info("serving /metrics, /healthz and /readyz", {
        address: `${this.address.slice(0, this.address.lastIndexOf(":"))}:${this.server.port}`,
      });
    } catch (err) {
      (first ? this.log.warn : this.log.debug).call(
        this.log,
        "cannot listen on metrics_address yet; retrying",
        {
          address: this.address,
          error: (err as Error).message,
        },
      );
      this.retry = setTimeout(() => this.bind(false), RETRY_MS);
      this.retry.unref();
    }
  }

  private async route(req: Request): Promise<Response> {
    const { pathname } = new URL(req.url);
    if (req.method !== "GET" && req.method !== "HEAD")
      return new Response("method not allowed\n", { status: 405 });
    try {
      switch (pathname) {
        case "/metrics":
          return new Response(stream(await this.endpoints.metrics()), {
            headers: { "Content-Type": CONTENT_TYPE },
          });
        case "/healthz": {
          const late = performance.now() - this.beat;
          return late > STALLED_MS
            ? text(503, `the agent's event loop stalled for ${(late / 1000).toFixed(1)} s\n`)
            : text(200, "ok\n");
        }
        case "/readyz": {
          const problems = await this.endpoints.notReady();
          return problems.length === 0 ? text(200, "ok\n") : text(503, `not ready: ${problems.join("; ")}\n`);
        }
        default:
          return text(404, "not found: try /metrics, /healthz or /readyz\n");
      }
    } catch (err) {
      this.log.error("an observability request failed", { path: pathname, error: (err as Error).message });
      return text(500, `${(err as Error).message}\n`);
    }
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.retry);
    clearInterval(this.heartbeat);
    this.server?.stop(true);
    this.server = undefined;
  }
}

/** Sends the pieces one by one, each encoded when the connection wants more. */
function stream(chunks: string[]): ReadableStream<Uint8Array> {
  const utf8 = new TextEncoder();
  let i = 0;
  return new ReadableStream<Uint8Array>(
    {
      pull(controller) {
        // Small pieces (process metrics, headers) go together; large ones alone.
        let batch = "";
        while (i < chunks.length && batch.length < 64 * 1024) batch += chunks[i++];
        if (batch !== "") controller.enqueue(utf8.encode(batch));
        if (i >= chunks.length) controller.close();
      },
    },
    { highWaterMark: 0 },
  );
}

const text = (status: number, body: string) =>
  new Response(body, { status, headers: { "Content-Type": "text/plain; charset=utf-8" } });
