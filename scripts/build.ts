// Builds bin/ratchet: one self-contained executable (bun build --compile).
//
// etcd3 loads its gRPC schema with `loadSync(`${__dirname}/../proto/rpc.proto`)` when it is
// imported. In a compiled binary __dirname points into the build machine's node_modules, so
// the binary would only work where it was built. The plugin below parses the .proto files
// here, at build time, and replaces that call with `fromJSON(<schema>)`, embedding the schema.
import { $ } from "bun";
import { mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { createRequire } from "node:module";
import type { BunPlugin } from "bun";

const root = join(import.meta.dir, "..");
const require = createRequire(join(root, "package.json"));

const PROTO_OPTIONS = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };

function etcdSchemaJson(): string {
  const etcdDir = dirname(require.resolve("etcd3/package.json"));
  // proto-loader's own loader, so the schema is exactly what etcd3 would have loaded.
  const protoUtil = require(join(dirname(require.resolve("@grpc/proto-loader")), "util.js")) as {
    loadProtosWithOptionsSync: (file: string, options: object) => { toJSON: () => object };
  };
  const loaded = protoUtil.loadProtosWithOptionsSync(join(etcdDir, "proto", "rpc.proto"), PROTO_OPTIONS);
  return JSON.stringify(loaded.toJSON());
}

const LOAD_CALL = /\(0, proto_loader_1\.loadSync\)\(`\$\{__dirname\}\/\.\.\/proto\/rpc\.proto`, \{/;

export const embedEtcdProto: BunPlugin = {
  name: "embed-etcd3-proto",
  setup(build) {
    build.onLoad({ filter: /etcd3[\\/]lib[\\/]connection-pool\.js$/ }, async (args) => {
      const src = await Bun.file(args.path).text();
      if (!LOAD_CALL.test(src))
        throw new Error(
          `${args.path}: the proto loadSync call was not found; update scripts/build.ts for this etcd3 version`,
        );
      const contents = src.replace(LOAD_CALL, `(0, proto_loader_1.fromJSON)(${etcdSchemaJson()}, {`);
      return { contents, loader: "js" };
    });
  },
};

async function gitCommit(): Promise<string> {
  const r = await $`git -C ${root} rev-parse --short=12 HEAD`.quiet().nothrow();
  if (r.exitCode !== 0) return "unknown";
  const dirty =
    (await $`git -C ${root} status --porcelain --untracked-files=no`.quiet().nothrow()).stdout.length > 0;
  return r.stdout.toString().trim() + (dirty ? "-dirty" : "");
}

export async function build(outfile = join(root, "bin", "ratchet")): Promise<string> {
  const pkg = (await Bun.file(join(root, "package.json")).json()) as { version: string };
  const commit = await gitCommit();
  const buildTime = Date.now();
  const buildId = `${pkg.version}-${commit}-${buildTime.toString(36)}`;
  mkdirSync(dirname(outfile), { recursive: true });
  const result = await Bun.build({
    // The link counters worker is a thread of the agent: an entrypoint of its own (Bun
    // embeds it as observe/counters-worker.ts; src/child/observe.ts starts it by that path).
    entrypoints: [join(root, "src", "main.ts"), join(root, "src", "observe", "counters-worker.ts")],
    compile: {
      outfile,
      // A CNI plugin runs as root in whatever directory the runtime chose: it must not pick
      // up a .env, bunfig.toml, tsconfig.json or package.json from there.
      autoloadDotenv: false,
      autoloadBunfig: false,
      autoloadTsconfig: false,
      autoloadPackageJson: false,
    },
    target: "bun",
    format: "esm",
    // The child's modules (etcd3, the Kubernetes client) go in chunks the parent never loads.
    splitting: true,
    minify: true,
    bytecode: true,
    sourcemap: "none",
    plugins: [embedEtcdProto],
    define: {
      RATCHET_VERSION: JSON.stringify(pkg.version),
      RATCHET_COMMIT: JSON.stringify(commit),
      RATCHET_BUILD_ID: JSON.stringify(buildId),
      RATCHET_BUILD_TIME: String(buildTime),
    },
  });
  if (!result.success) {
    for (const log of result.logs) console.error(log);
    throw new Error("build failed");
  }
  return outfile;
}

if (import.meta.main) {
  const out = await build(process.argv[2]);
  console.log(`built ${out}`);
}
