// Shared pieces of the benchmark scripts: timing a spawned command, medians, a table.
export interface Timed {
  ms: number;
  maxRssKiB: number;
  code: number;
  stdout: string;
}

/** Runs a program with env and stdin; wall time in ms and its peak RSS (from wait4). */
export async function timed(cmd: string[], env: Record<string, string>, stdin: string): Promise<Timed> {
  const t0 = performance.now();
  const proc = Bun.spawn({
    cmd,
    env,
    stdin: new TextEncoder().encode(stdin),
    stdout: "pipe",
    stderr: "pipe",
  });
  const [stdout, code] = await Promise.all([new Response(proc.stdout).text(), proc.exited]);
  const ms = performance.now() - t0;
  const usage = proc.resourceUsage();
  // Bun reports maxRSS in bytes on Linux (ru_maxrss is KiB; Bun scales it).
  const maxRssKiB = usage ? Math.round(usage.maxRSS / 1024) : 0;
  if (code !== 0) throw new Error(`${cmd.join(" ")} failed (${code}): ${stdout}`);
  return { ms, maxRssKiB, code, stdout };
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

/** The 95th percentile, nearest rank (the 19th of 20). */
export function p95(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.max(0, Math.min(s.length - 1, Math.ceil(0.95 * s.length) - 1))] ?? Number.NaN;
}

export function table(rows: Array<Record<string, string | number>>): string {
  const cols = Object.keys(rows[0] ?? {});
  const cell = (v: string | number) => (typeof v === "number" ? v.toFixed(v < 10 ? 2 : 1) : v);
  const width = cols.map((c) => Math.max(c.length, ...rows.map((r) => String(cell(r[c] ?? "")).length)));
  const line = (vals: string[]) => vals.map((v, i) => v.padEnd(width[i] as number)).join("  ");
  return [
    line(cols),
    line(width.map((w) => "-".repeat(w))),
    ...rows.map((r) => line(cols.map((c) => String(cell(r[c] ?? ""))))),
  ].join("\n");
}

/** `--json` among the arguments: print one JSON object of the figures instead of tables. */
export const JSON_OUT = process.argv.includes("--json");

/** The positional arguments (flags such as --json left out). */
export const ARGS = process.argv.slice(2).filter((a) => !a.startsWith("--"));

/** The etcd the benchmarks use: $RATCHET_TEST_ETCD (scripts/bench.sh starts one), else the default port. */
export const ETCD = process.env.RATCHET_TEST_ETCD ?? "http://127.0.0.1:2379";

/** Prints the human lines, or with --json the figures as one line of JSON. */
export function report(figures: Record<string, number | string>, human: string[]): void {
  console.log(JSON_OUT ? JSON.stringify(figures) : human.join("\n"));
}
