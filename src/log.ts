import { closeSync, mkdirSync, openSync, writeSync } from "node:fs";
import { dirname } from "node:path";

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
    if (!this.file) return (this.fd = 2);
    try {
      mkdirSync(dirname(this.file), { recursive: true, mode: 0o700 });
      this.fd = openSync(this.file, "a", 0o600);
    } catch {
      this.fd = 2;
    }
    return this.fd;
  }

  log(level: Level, msg: string, fields?: Record<string, unknown>): void {
    if (RANK[level] > RANK[this.level]) return;
    const line = JSON.stringify({ time: new Date().toISOString(), level, component: this.component, pid: process.pid, msg, ...fields });
    try {
      writeSync(this.open(), `${line}\n`);
    } catch {
      // See the class comment: logging is best effort.
    }
  }
  error(msg: string, fields?: Record<string, unknown>): void { this.log("error", msg, fields); }
  warn(msg: string, fields?: Record<string, unknown>): void { this.log("warn", msg, fields); }
  info(msg: string, fields?: Record<string, unknown>): void { this.log("info", msg, fields); }
  debug(msg: string, fields?: Record<string, unknown>): void { this.log("debug", msg, fields); }

  close(): void {
    if (this.fd !== undefined && this.fd > 2) {
      try { closeSync(this.fd); } catch { /* already closed */ }
    }
    this.fd = undefined;
  }
}
