// The product never runs `ip`, a shell or any other program, except CNI delegate plugins
// (only src/cni/delegate.ts) and its own node agent (only src/parent/agent-client.ts).
import { describe, expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { join, relative } from "node:path";
import { REPO } from "../support/env.ts";

const SRC = join(REPO, "src");
// delegate.ts execs CNI plugins found in CNI_PATH; agent-client.ts starts child_path, ratchet's
// own binary in child mode. Nothing else may start a process.
const ALLOWED = new Set(["src/cni/delegate.ts", "src/parent/agent-client.ts"]);
// Ways to start a process from Bun or Node code.
const SPAWNING = [
  /\bchild_process\b/,
  /\bBun\s*\.\s*spawn(Sync)?\b/,
  /\bspawnSync\b/,
  /\bBun\s*\.\s*\$/,
  /import\s*\{[^}]*\$[^}]*\}\s*from\s+["']bun["']/,
  // exec()/execSync()/execFile() but not RegExp's re.exec()
  /(?<![.\w])exec(File)?(Sync)?\s*\(/,
  /\bexecve?\b/,
  /\bposix_spawn\b/,
  /\bfork\s*\(/,
  /\bsystem\s*\(/,
];

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = join(dir, e.name);
    if (e.isDirectory()) return sourceFiles(p);
    return /\.(ts|tsx|js|mjs|cjs)$/.test(e.name) ? [p] : [];
  });
}

/** Lines of a file that look like they start a process. */
export function spawnSites(text: string): string[] {
  return text.split("\n").filter((line) => SPAWNING.some((re) => re.test(line)));
}

describe("no process spawning in src/", () => {
  test("the patterns catch the usual ways to spawn", () => {
    for (const line of [
      'import { spawn } from "node:child_process";',
      "const p = Bun.spawn({ cmd: ['ip'] });",
      "Bun.spawnSync(['ip'])",
      "await Bun.$`ip link`;",
      "execFileSync('ip', [])",
      'import { $ } from "bun";',
      "lib.symbols.execve(path, argv, envp)",
    ]) {
      expect(spawnSites(line)).toEqual([line]);
    }
    expect(spawnSites("const m = /x/.exec(s); const executor = 1;")).toEqual([]);
  });

  test("only the delegate executor and the agent starter may spawn", () => {
    const files = sourceFiles(SRC);
    expect(files.length).toBeGreaterThan(5);
    const offenders = files
      .map((f) => ({ file: relative(REPO, f), sites: spawnSites(readFileSync(f, "utf8")) }))
      .filter((o) => o.sites.length > 0 && !ALLOWED.has(o.file));
    expect(offenders).toEqual([]);
  });
});
