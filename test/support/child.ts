// Helpers to observe node agents (children) from tests.
import { readdirSync, readFileSync, readlinkSync } from "node:fs";

/** Polls until cond() is truthy; throws with `what` after timeoutMs. Never a blind sleep. */
export async function waitFor<T>(
  what: string,
  cond: () => T | Promise<T>,
  timeoutMs = 10_000,
  everyMs = 25,
): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > until) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await Bun.sleep(everyMs);
  }
}

/** Live (not zombie) processes whose stdout is the given log file: the children a test started. */
export function childPids(logFile: string): number[] {
  const pids: number[] = [];
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      if (readlinkSync(`/proc/${d}/fd/1`) !== logFile) continue;
      const stat = readFileSync(`/proc/${d}/stat`, "utf8");
      const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
      if (state !== "Z" && state !== "X") pids.push(Number(d));
    } catch {
      // gone meanwhile, or not ours to read
    }
  }
  return pids;
}

export function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return !/\) [ZX] /.test(stat);
  } catch {
    return false;
  }
}

/** Sends one request to a child socket and returns the parsed response line. */
export async function rpc(
  socket: string,
  method: string,
  params: unknown = {},
  timeoutMs = 5000,
): Promise<{ ok: boolean; result?: Record<string, unknown>; error?: { code: number; msg: string } }> {
  let buf = "";
  let done: (s: string) => void = () => undefined;
  const line = new Promise<string>((r) => {
    done = r;
  });
  const sock = await Bun.connect({
    unix: socket,
    socket: {
      data: (_s, chunk) => {
        buf += new TextDecoder().decode(chunk);
        const i = buf.indexOf("\n");
        if (i >= 0) done(buf.slice(0, i));
      },
    },
  });
  sock.write(`${JSON.stringify({ id: 1, method, deadline: Date.now() + timeoutMs, params })}\n`);
  const timer = setTimeout(
    () => done(JSON.stringify({ ok: false, error: { code: -1, msg: "test rpc timeout" } })),
    timeoutMs,
  );
  try {
    return JSON.parse(await line) as {
      ok: boolean;
      result?: Record<string, unknown>;
      error?: { code: number; msg: string };
    };
  } finally {
    clearTimeout(timer);
    sock.end();
  }
}

/** Kills every child that logs to logFile and waits until they are gone. */
export async function killChildren(logFile: string): Promise<void> {
  for (const pid of childPids(logFile)) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
  await waitFor("children to exit", () => childPids(logFile).length === 0, 5000);
}
