// `ratchet links` for a known topology: the example pair linked on one node (up), a pod
// whose peer never came (waiting), a link whose record was lost (broken); in table, JSON
// and DOT (which graphviz must parse).
import { afterAll, beforeAll, expect, test } from "bun:test";
import { Etcd3 } from "etcd3";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { startApiServer, type ApiServer } from "../support/apiserver.ts";
import { killChildren } from "../support/child.ts";
import { cni } from "../support/cni.ts";
import {
  etcdEndpoint,
  hiddenCheckout,
  installedBin,
  REPO,
  run,
  tempDir,
  uniqueName,
} from "../support/env.ts";
import { makeNetns, type TestNetns } from "../support/netns.ts";

const scratch = tempDir("ratchet-links-");
const prefix = `/rt-test/${uniqueName("k")}`;
let api: ApiServer;
let conf: Record<string, unknown>;
const confFile = join(scratch.path, "10-ratchet.conf");
const namespaces: TestNetns[] = [];

const args = (name: string, cid: string) =>
  `IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=${name};K8S_POD_INFRA_CONTAINER_ID=${cid}`;

beforeAll(async () => {
  api = startApiServer({ podFiles: [join(REPO, "pod_specs", "example.yaml")], node: "links-node" });
  const lonely = [
    {
      peer: "never-comes",
      local_ifname: "net1",
      peer_ifname: "net1",
      local_ip: "10.77.0.1/30",
      peer_ip: "10.77.0.2/30",
    },
  ];
  api.putPod({
    kind: "Pod",
    metadata: {
      name: "lonely",
      namespace: "default",
      labels: { ratchet: "true" },
      annotations: { "ratchet/links": JSON.stringify(lonely) },
    },
    spec: {},
  });
  conf = {
    cniVersion: "1.0.0",
    name: "links",
    type: "ratchet",
    etcd_endpoints: [etcdEndpoint()],
    etcd_prefix: prefix,
    parent_address: "10.253.0.1",
    kubeconfig: api.writeKubeconfig(scratch.path, { auth: "token" }),
    node_name: "links-node",
    log_file: join(scratch.path, "ratchet.log"),
    child_socket: join(scratch.path, "run", "child.sock"),
    delegate: { type: "loopback" },
    boot_network: { type: "loopback" },
  };
  writeFileSync(confFile, JSON.stringify(conf));
  for (const pod of ["primary-pod", "pair-pod", "lonely"]) {
    const ns = await makeNetns();
    namespaces.push(ns);
    const r = await cni({
      command: "ADD",
      conf,
      containerId: `c-${pod}`,
      netns: ns.path,
      ifname: "lo",
      args: args(pod, `c-${pod}`),
    });
    if (r.code !== 0) throw new Error(`ADD ${pod}: ${r.stdout}`);
  }
});
afterAll(async () => {
  await killChildren(join(scratch.path, "ratchet.log"));
  for (const ns of namespaces) await ns[Symbol.asyncDispose]();
  await api.stop();
  const etcd = new Etcd3({ hosts: etcdEndpoint() });
  await etcd.delete().prefix(`${prefix}/`);
  etcd.close();
  scratch[Symbol.dispose]();
});

async function links(output: string) {
  return run(hiddenCheckout([installedBin(), "links", "--config", confFile, "--output", output]));
}

interface View {
  endpoints: Array<{ pod: string; node: string; containerId: string }>;
  links: Array<{
    a: { pod: string; ifname: string; ips: string[] };
    b: { pod: string; ifname: string; ips: string[] };
    kind: string;
    state: string;
    why?: string;
  }>;
}

test("JSON: every endpoint and link with its kind and state", async () => {
  const r = await links("json");
  expect(r.stderr).toBe("");
  expect(r.code).toBe(0);
  const v = JSON.parse(r.stdout) as View;
  expect(v.endpoints.map((e) => [e.pod, e.node, e.containerId])).toEqual([
    ["default/lonely", "10.253.0.1", "c-lonely"],
    ["default/pair-pod", "10.253.0.1", "c-pair-pod"],
    ["default/primary-pod", "10.253.0.1", "c-primary-pod"],
  ]);
  expect(v.links).toEqual([
    {
      key: "default/lonely/net1:default/never-comes/net1",
      a: { pod: "default/lonely", ifname: "net1", ips: ["10.77.0.1/30"], node: "10.253.0.1" },
      b: { pod: "default/never-comes", ifname: "net1", ips: ["10.77.0.2/30"] },
      kind: "-",
      state: "waiting for peer",
      why: "not registered: default/never-comes",
      declared: { state: "up", a: { netem: {} }, b: { netem: {} } },
      // Waiting: lonely's agent reports its end as not there yet.
      observed: { a: expect.objectContaining({ ifname: "net1", present: false }) },
    },
    {
      key: "default/pair-pod/in2:default/primary-pod/in1",
      a: { pod: "default/pair-pod", ifname: "in2", ips: ["192.168.2.101/24"], node: "10.253.0.1" },
      b: { pod: "default/primary-pod", ifname: "in1", ips: ["192.168.2.100/24"], node: "10.253.0.1" },
      kind: "veth",
      state: "up",
      declared: { state: "up", a: { netem: {} }, b: { netem: {} } },
      // Both ends on this node: its agent reports what the kernel holds for each.
      observed: {
        a: expect.objectContaining({ ifname: "in2", present: true, up: true, carrier: true, netem: {} }),
        b: expect.objectContaining({ ifname: "in1", present: true, up: true, carrier: true, netem: {} }),
      },
    },
  ] as unknown as View["links"]);
  // Nothing secret in it: no config, no credentials, just the picture.
  expect(r.stdout).not.toContain("kubeconfig");
});

test("table: aligned, one line per endpoint and per link", async () => {
  const r = await links("table");
  expect(r.code).toBe(0);
  const lines = r.stdout.split("\n");
  expect(lines[0]).toBe("ENDPOINTS (3)");
  expect(lines[1]).toMatch(/^POD\s+NODE\s+CONTAINER\s+LINKS\s+SINCE$/);
  expect(lines.find((l) => l.startsWith("default/pair-pod:in2 192.168.2.101/24"))).toMatch(
    /default\/primary-pod:in1 192\.168\.2\.100\/24\s+veth\s+-\s+up\s+-\s+-\s+\d+\s+\S+\s+up$/,
  );
  expect(lines.find((l) => l.startsWith("default/lonely:net1"))).toContain(
    "waiting for peer (not registered: default/never-comes)",
  );
  // Columns line up: STATE starts at the same offset in the header and each link row.
  const header = lines.find((l) => l.startsWith("A "));
  const at = header?.indexOf("STATE") as number;
  const linkRows = lines.slice(lines.indexOf(header as string) + 1).filter((x) => x !== "");
  expect(linkRows).toHaveLength(2);
  for (const l of linkRows) expect(l.slice(at)).toMatch(/^(up|waiting|broken)/);
});

test("DOT: nodes as clusters, links as labelled edges; graphviz draws it; lost record: broken", async () => {
  const etcd = new Etcd3({ hosts: etcdEndpoint() });
  await etcd.delete().key(`${prefix}/v1/links/default/pair-pod/default/primary-pod/0000`);
  etcd.close();
  const json = JSON.parse((await links("json")).stdout) as View;
  expect(json.links.find((l) => l.kind === "-" && l.a.pod === "default/pair-pod")?.state).toBe("broken");

  const r = await links("dot");
  expect(r.code).toBe(0);
  expect(r.stdout).toStartWith("graph ratchet {");
  expect(r.stdout).toContain('label="node 10.253.0.1"');
  expect(r.stdout).toContain(
    '"default/pair-pod" -- "default/primary-pod" [label="in2 ' +
      '192.168.2.101/24\\n-\\nin1 192.168.2.100/24", style=dotted, color=red]',
  );
  expect(r.stdout).toContain('"default/never-comes" [style="rounded,dashed", color=gray]');
  const svg = await run(["dot", "-Tsvg"], { stdin: r.stdout });
  expect(svg.stderr).toBe("");
  expect(svg.code).toBe(0);
  expect(svg.stdout).toContain("<svg");
  expect(svg.stdout).toContain("<title>default/primary&#45;pod</title>");
  expect(svg.stdout).toContain("node 10.253.0.1");
});

test("bad output format and unreadable config: clear errors", async () => {
  const bad = await run(hiddenCheckout([installedBin(), "links", "--config", confFile, "--output", "yaml"]));
  expect(bad).toMatchObject({
    code: 2,
    stdout: "",
    stderr: 'ratchet links: --output must be table, json or dot, not "yaml"\n',
  });
  const missing = await run(
    hiddenCheckout([installedBin(), "links", "--config", join(scratch.path, "nope.conf")]),
  );
  expect(missing.code).toBe(1);
  expect(missing.stderr).toContain("nope.conf");
});
