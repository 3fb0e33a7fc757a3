import { dirname } from "node:path";

// node:fs costs the short-lived parent ~6 MiB of memory, so it is loaded on the first line
// actually written, not at import.
type Fs = typeof import("node:fs");
let fs: Fs | undefined;
const loadFs = (): Fs => (fs ??= require("node:fs") as Fs);

export type Level = "error" | "warn" | "info" | "debug";
const RANK: Record<Level, number> = { error: 0, warn: 1, info: 2, debug: 3 };

/**
 * A small line logger. It writes to a file (created 0600) or to stderr, never to stdout,
 * which belongs to the CNI result. A logging failure (disk full, read-only file) is
 * swallowed: losing a log line must never fail a CNI command.
 */
export class Logger {
  private fd: number | undefined;
  constructor(
    readonly component: string,
    readonly level: Level = "info",
    private readonly file?: string,
  ) {}

  private open(): number {
    if (this.fd !== undefined) return this.fd;
    if (!this.file) {
      this.fd = 2;
      return this.fd;
    }
    try {
      loadFs().mkdirSync(dirname(this.file), { recursive: true, mode: 0o700 });
      this.fd = loadFs().openSync(this.file, "a", 0o600);
    } catch {
      this.fd = 2;
    }
    return this.fd;
  }

  log(level: Level, msg: string, fields?: Record<string, unknown>): void {
    if (RANK[level] > RANK[this.level]) return;
    const line = JSON.stringify({
      time: new Date().toISOString(),
      level,
      component: this.component,
      pid: process.pid,
      msg,
      ...fields,
    });
    try {
      loadFs().writeSync(this.open(), `${line}\n`);
    } catch {
      // See the class comment: logging is best effort.
    }
  }
  error(msg: string, fields?: Record<string, unknown>): void {
    this.log("error", msg, fields);
  }
  warn(msg: string, fields?: Record<string, unknown>): void {
    this.log("warn", msg, fields);
  }
  info(msg: string, fields?: Record<string, unknown>): void {
    this.log("info", msg, fields);
  }
  debug(msg: string, fields?: Record<string, unknown>): void {
    this.log("debug", msg, fields);
  }

  close(): void {
    if (this.fd !== undefined && this.fd > 2) {
      try {
        loadFs().closeSync(this.fd);
      } catch {
        /* already closed */
      }
    }
    this.fd = undefined;
  }
}
