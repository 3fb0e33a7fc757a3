// The kubeconfig as ratchet loads it: token files resolved as client-go does, and re-read
// as they rotate (the client would read them once).
import { readFileSync } from "node:fs";
import { dirname, isAbsolute, join } from "node:path";
import { type KubeConfig, loadYaml } from "@kubernetes/client-node";

/**
 * A bearer token kept in a file that is replaced while we run (bound service-account tokens
 * rotate; kubelet swaps the file atomically). Read for every request: it is a few hundred
 * bytes. If a read fails, the last token read stays in use for at most maxStaleMs.
 */
export class TokenFile {
  private last: { token: string; at: number } | undefined;
  constructor(
    readonly path: string,
    private readonly maxStaleMs = 60_000,
  ) {}

  read(): string {
    try {
      const token = readFileSync(this.path, "utf8").trim();
      if (token === "") throw new Error("the file is empty");
      this.last = { token, at: Date.now() };
      return token;
    } catch (err) {
      if (this.last && Date.now() - this.last.at < this.maxStaleMs) return this.last.token;
      throw new Error(`cannot read the token file ${this.path}: ${(err as Error).message}`, { cause: err });
    }
  }
}

type RawKubeconfig = { users?: Array<{ name?: unknown; user?: Record<string, unknown> }> };

/**
 * Loads a kubeconfig as KubeConfig.loadFromFile does, with one difference: a user's
 * `token-file` is resolved relative to the kubeconfig (as client-go does; the client would
 * read it relative to the working directory), and, since the client reads that file only
 * once, the current user's token file is returned for the reader to re-read as it rotates.
 */
export function loadKubeconfig(kc: KubeConfig, path: string): TokenFile | undefined {
  const raw = loadYaml<RawKubeconfig | null>(readFileSync(path, "utf8")) ?? {};
  const files = new Map<string, string>();
  for (const u of Array.isArray(raw.users) ? raw.users : []) {
    const file = u.user?.["token-file"];
    if (typeof file !== "string" || file === "" || !u.user) continue;
    const abs = isAbsolute(file) ? file : join(dirname(path), file);
    u.user["token-file"] = abs;
    // An explicit `token` wins over `token-file`, as in client-go.
    if (u.user.token === undefined && typeof u.name === "string") files.set(u.name, abs);
  }
  kc.loadFromString(JSON.stringify(raw));
  kc.makePathsAbsolute(dirname(path));
  const user = kc.getCurrentUser();
  const file = user ? files.get(user.name) : undefined;
  return file === undefined ? undefined : new TokenFile(file);
}
