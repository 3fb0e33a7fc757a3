// The parent is exec'd once per CNI command and must start fast: it must never load the
// Kubernetes client (~150 ms), so nothing it can reach may import src/pods/kube.ts.
import { describe, expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { REPO } from "../support/env.ts";

const transpiler = new Bun.Transpiler({ loader: "ts" });

/** Every module reachable from `entry` by static or dynamic import; bare specifiers as they are. */
function reachable(entry: string): Set<string> {
  const seen = new Set<string>();
  const queue = [entry];
  while (queue.length > 0) {
    const file = queue.pop() as string;
    if (seen.has(file)) continue;
    seen.add(file);
    if (!file.startsWith("/")) continue;
    for (const imp of transpiler.scanImports(readFileSync(file, "utf8"))) {
      queue.push(imp.path.startsWith(".") ? resolve(dirname(file), imp.path) : imp.path);
    }
  }
  return seen;
}

describe("layering", () => {
  const roots = [
    ...readdirSync(join(REPO, "src", "parent")).map((f) => join(REPO, "src", "parent", f)),
    ...readdirSync(join(REPO, "src", "cni")).map((f) => join(REPO, "src", "cni", f)),
  ].filter((f) => f.endsWith(".ts"));

  test.each(roots.map((r) => [r.slice(REPO.length + 1), r]))(
    "%s never reaches the Kubernetes client",
    (_name, root) => {
      const mods = [...reachable(root)];
      expect(mods.filter((m) => m.endsWith("/src/pods/kube.ts") || m.startsWith("@kubernetes/"))).toEqual([]);
    },
  );

  test("the walk does find the client from the pods' kube.ts (the test can fail)", () => {
    expect([...reachable(join(REPO, "src", "pods", "kube.ts"))]).toContain("@kubernetes/client-node");
  });
});
