// What a failed request to the API server says: network and TLS failures in words, a
// Status body as one safe line, and the error types the pod reader and cache tell apart.
import { CniError } from "../cni/errors.ts";

const NETWORK_ERRORS: Record<string, string> = {
  ECONNREFUSED: "connection refused",
  ECONNRESET: "connection reset",
  ConnectionClosed: "the server closed the connection",
  ETIMEDOUT: "connection timed out",
  ENOTFOUND: "host not found",
  EHOSTUNREACH: "host unreachable",
  ENETUNREACH: "network unreachable",
  EPROTO: "the TLS handshake failed (the server may require a client certificate)",
};

/** What a failed fetch says, with its code; TLS verification failures always say "certificate". */
export function describeFetchError(err: unknown): string {
  const e = err as { code?: unknown; message?: unknown };
  const code = typeof e.code === "string" ? e.code : undefined;
  const message = typeof e.message === "string" ? e.message : String(err);
  if (code !== undefined && NETWORK_ERRORS[code]) return `${NETWORK_ERRORS[code]} (${code})`;
  const tls = code !== undefined && /CERT|SIGNATURE|ISSUER|SELF_SIGNED|HOSTNAME|ALTNAME/i.test(code);
  const text = tls ? `TLS certificate verification failed: ${message}` : message;
  return code && !text.includes(code) ? `${text} (${code})` : text;
}

/** The server's explanation from an error body (a Status, or text), as one safe line. */
export function statusMessage(body: unknown): string | undefined {
  let b: unknown = body;
  if (typeof body === "string") {
    try {
      b = JSON.parse(body) as unknown;
    } catch {
      b = { message: body };
    }
  }
  if (!b || typeof b !== "object" || !("message" in b) || typeof b.message !== "string" || b.message === "")
    return undefined;
  const line = b.message.replace(/\p{Cc}+/gu, " ").trim();
  return line.length > 300 ? `${line.slice(0, 300)}...` : line;
}

export const STATUS_TEXT: Record<number, string> = {
  400: "Bad Request",
  401: "Unauthorized (check the token or client certificate)",
  403: "Forbidden (the node agent needs RBAC permission to get, list and watch pods)",
  404: "Not Found",
  429: "Too Many Requests",
  500: "Internal Server Error",
  502: "Bad Gateway",
  503: "Service Unavailable",
  504: "Gateway Timeout",
};

export class DeadlineError extends Error {}

/** The API server answered 404 for the pod: still code 11 for whoever cannot do without it. */
export class PodNotFoundError extends CniError {}

/** A status other than 200 from a request of ours (the client's own requests throw ApiException). */
export class StatusError extends Error {
  constructor(
    readonly code: number,
    readonly body: string,
  ) {
    super(`HTTP ${code}`);
  }
}

/** The deadline, if that is why the request was aborted; else the error itself. */
export function signalReason(signal: AbortSignal, err: unknown): unknown {
  return signal.aborted && signal.reason instanceof DeadlineError ? signal.reason : err;
}
