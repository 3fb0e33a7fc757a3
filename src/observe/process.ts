// The usual process metrics (as Prometheus' client libraries name them), read at scrape time.
import { readdirSync, readFileSync } from "node:fs";
import type { Exposition } from "./metrics.ts";

/** When this process started, in seconds since the epoch. */
export const PROCESS_START_SECONDS = Math.round(Date.now() / 1000 - process.uptime());

/** The soft limit on open files, from /proc/self/limits; undefined when unreadable or unlimited. */
function maxFds(): number | undefined {
  try {
    const line = readFileSync("/proc/self/limits", "utf8")
      .split("\n")
      .find((l) => l.startsWith("Max open files"));
    const n = Number(line?.split(/\s{2,}/)[1]);
    return Number.isFinite(n) ? n : undefined;
  } catch {
    return undefined;
  }
}

function openFds(): number | undefined {
  try {
    // The directory handle readdir holds open is one of the entries.
    return readdirSync("/proc/self/fd").length - 1;
  } catch {
    return undefined;
  }
}

export function writeProcessMetrics(out: Exposition): void {
  const cpu = process.cpuUsage();
  out
    .family("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.")
    .sample("process_cpu_seconds_total", "", (cpu.user + cpu.system) / 1e6);
  out
    .family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.")
    .sample("process_resident_memory_bytes", "", process.memoryUsage.rss());
  out
    .family("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.")
    .sample("process_start_time_seconds", "", PROCESS_START_SECONDS);
  const fds = openFds();
  if (fds !== undefined)
    out
      .family("process_open_fds", "gauge", "Number of open file descriptors.")
      .sample("process_open_fds", "", fds);
  const max = maxFds();
  if (max !== undefined)
    out
      .family("process_max_fds", "gauge", "Maximum number of open file descriptors.")
      .sample("process_max_fds", "", max);
}
