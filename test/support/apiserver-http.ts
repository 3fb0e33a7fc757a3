// The stand-in API server's responses: Status errors as the API server words them, PATCH
// bodies it accepts, and the streaming body of a watch.
import { type ApiState, goneStatus, type Selector, type Watcher } from "./apiserver-state.ts";

export function status(
  code: number,
  reason: string,
  message: string,
  details?: Record<string, string>,
): Response {
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

export const notFound = () => status(404, "NotFound", "the server could not find the requested resource");
export const notAllowed = () =>
  status(405, "MethodNotAllowed", "the server does not allow this method on the requested resource");
export const podNotFound = (name: string) =>
  status(404, "NotFound", `pods "${name}" not found`, { name, kind: "pods" });
const bookmark = (rv: number) => ({
  kind: "Pod",
  apiVersion: "v1",
  metadata: { resourceVersion: String(rv) },
});

const PATCH_TYPES = ["application/merge-patch+json", "application/strategic-merge-patch+json"];

/** A PATCH body of a content type the stand-in applies, or the error response. */
export async function patchBody(req: Request): Promise<{ body: unknown; contentType: string } | Response> {
  const contentType = (req.headers.get("content-type") ?? "").split(";")[0]?.trim() ?? "";
  if (!PATCH_TYPES.includes(contentType))
    return status(
      415,
      "UnsupportedMediaType",
      `the body of the request was in an unknown format: ${contentType}`,
    );
  try {
    return { body: await req.json(), contentType };
  } catch {
    return status(400, "BadRequest", "the patch is not JSON");
  }
}

export const REASONS: Record<number, string> = {
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

/**
 * A watch: one JSON line per event, as long as the client stays (or timeoutSeconds). While
 * `hung()` gives a promise, lines wait for it.
 */
export function watchResponse(
  state: ApiState,
  url: URL,
  namespace: string | undefined,
  select: Selector,
  hung: () => Promise<void> | undefined,
): Response {
  const rvText = url.searchParams.get("resourceVersion");
  const from = rvText === null || rvText === "" ? undefined : Number(rvText);
  if (from !== undefined && !Number.isInteger(from))
    return status(400, "BadRequest", `invalid resourceVersion ${JSON.stringify(rvText)}`);
  const timeout = Number(url.searchParams.get("timeoutSeconds") ?? "0");
  const bookmarks = url.searchParams.get("allowWatchBookmarks") === "true";
  const enc = new TextEncoder();
  let timer: Timer | undefined;
  let watcher: Watcher | undefined;
  const stream = new ReadableStream<Uint8Array>({
    start(controller) {
      let open = true;
      const held: string[] = [];
      const write = (line: string) => {
        if (!open) return;
        const wait = hung();
        if (wait) {
          held.push(line);
          void wait.then(() => {
            for (const l of held.splice(0)) write(l);
          });
          return;
        }
        controller.enqueue(enc.encode(line));
      };
      watcher = {
        select,
        namespace,
        bookmarks,
        send: (type, object) => write(`${JSON.stringify({ type, object })}\n`),
        close: () => {
          if (!open) return;
          open = false;
          clearTimeout(timer);
          state.watchers.delete(watcher as Watcher);
          controller.close();
        },
      };
      // Bun sends the headers with the first byte of the body; an API server sends them at
      // once. A blank line (JSON streams skip whitespace) gets them out now.
      controller.enqueue(enc.encode("\n"));
      if (!state.watch(watcher, from)) {
        watcher.send("ERROR", goneStatus(state.rv, from));
        watcher.close();
        return;
      }
      if (timeout > 0)
        timer = setTimeout(() => {
          if (bookmarks) watcher?.send("BOOKMARK", bookmark(state.rv));
          watcher?.close();
        }, timeout * 1000);
    },
    cancel() {
      clearTimeout(timer);
      if (watcher) state.watchers.delete(watcher);
    },
  });
  return new Response(stream, { headers: { "content-type": "application/json" } });
}
