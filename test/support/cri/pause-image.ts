// The sandbox ("pause") image for the containerd tests, made at test time: no registry is
// reachable here. A static C program that sleeps until SIGTERM or SIGINT, in a one-layer
// OCI image layout (oci-layout, index.json, blobs/sha256/...) packed as a tar for
// `ctr images import`.
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { run, tempDir } from "../env.ts";

/** The reference the tests' containerd configs name as `sandbox_image`. */
export const PAUSE_IMAGE = "localhost/ratchet-test/pause:1";

const PAUSE_C = `#include <signal.h>
#include <unistd.h>
static void done(int sig) { (void)sig; _exit(0); }
int main(void) {
  signal(SIGTERM, done);
  signal(SIGINT, done);
  for (;;) pause();
}
`;

const OCI_ARCH: Record<string, string> = { x64: "amd64", arm64: "arm64", arm: "arm", ppc64: "ppc64le" };

async function must(cmd: string[]): Promise<void> {
  const r = await run(cmd, { timeoutMs: 60_000 });
  if (r.code !== 0) throw new Error(`${cmd.join(" ")} failed (${r.code}): ${r.stderr.trim()}`);
}

/** Writes a blob into the layout; returns its descriptor fields. */
function blob(layout: string, data: Buffer): { digest: string; size: number } {
  const hex = createHash("sha256").update(data).digest("hex");
  writeFileSync(join(layout, "blobs", "sha256", hex), data);
  return { digest: `sha256:${hex}`, size: data.length };
}

let built: Promise<string> | undefined;
let buildDir: { [Symbol.dispose](): void } | undefined;

/** Removes the image's build directory (the run-wide afterAll calls it). */
export function removePauseImage(): void {
  buildDir?.[Symbol.dispose]();
  buildDir = undefined;
  built = undefined;
}

/**
 * The image tarball, built once per test process into a temp dir removed after the run.
 * Returns its path.
 */
export function pauseImageTar(): Promise<string> {
  built ??= build();
  return built;
}

async function build(): Promise<string> {
  const dir = tempDir("ratchet-pause-");
  buildDir = dir;
  const root = join(dir.path, "rootfs");
  const layout = join(dir.path, "layout");
  mkdirSync(root);
  mkdirSync(join(layout, "blobs", "sha256"), { recursive: true });
  writeFileSync(join(dir.path, "pause.c"), PAUSE_C);
  await must(["cc", "-static", "-Os", "-s", "-o", join(root, "pause"), join(dir.path, "pause.c")]);
  // Reproducible layer: fixed owner and mtime, sorted names.
  const layerTar = join(dir.path, "layer.tar");
  const fixed = ["--sort=name", "--owner=0", "--group=0", "--numeric-owner", "--mtime=@0"];
  await must(["tar", ...fixed, "-C", root, "-cf", layerTar, "pause"]);
  const layer = blob(layout, readFileSync(layerTar));
  const arch = OCI_ARCH[process.arch];
  if (!arch) throw new Error(`no OCI architecture name known for ${process.arch}`);
  const config = blob(
    layout,
    Buffer.from(
      JSON.stringify({
        architecture: arch,
        os: "linux",
        config: { Entrypoint: ["/pause"] },
        rootfs: { type: "layers", diff_ids: [layer.digest] },
      }),
    ),
  );
  const manifestType = "application/vnd.oci.image.manifest.v1+json";
  const manifest = blob(
    layout,
    Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: manifestType,
        config: { mediaType: "application/vnd.oci.image.config.v1+json", ...config },
        layers: [{ mediaType: "application/vnd.oci.image.layer.v1.tar", ...layer }],
      }),
    ),
  );
  const index = {
    schemaVersion: 2,
    manifests: [
      {
        mediaType: manifestType,
        ...manifest,
        platform: { architecture: arch, os: "linux" },
        annotations: {
          "io.containerd.image.name": PAUSE_IMAGE,
          "org.opencontainers.image.ref.name": PAUSE_IMAGE.slice(PAUSE_IMAGE.lastIndexOf(":") + 1),
        },
      },
    ],
  };
  writeFileSync(join(layout, "index.json"), JSON.stringify(index));
  writeFileSync(join(layout, "oci-layout"), JSON.stringify({ imageLayoutVersion: "1.0.0" }));
  const tar = join(dir.path, "pause.tar");
  await must(["tar", ...fixed, "-C", layout, "-cf", tar, "oci-layout", "index.json", "blobs"]);
  return tar;
}
