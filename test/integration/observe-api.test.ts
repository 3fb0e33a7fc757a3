// The agent's writes to the Kubernetes API, in process against the stand-in API server through
// the real client (src/pods/kube.ts): Events aggregated, re-created once expired, bounded
// while the server hangs, and never thrown; the network-status annotation merged again when
// someone else wrote the pod between our read and our patch.
import { describe, expect, test } from "bun:test";
import { Logger } from "../../src/log.ts";
import { EventRecorder } from "../../src/observe/events.ts";
import type { KubeApi } from "../../src/observe/kube-api.ts";
import { NETWORK_STATUS, NetworkStatusWriter } from "../../src/observe/network-status.ts";
import { PodReader } from "../../src/pods/kube.ts";
import { startApiServer } from "../support/apiserver.ts";
import { tempDir } from "../support/env.ts";

const log = new Logger("test", "error");

async function setup() {
  const dir = tempDir();
  const api = startApiServer({ dir: dir.path });
  const reader = new PodReader({ kubeconfig: api.writeKubeconfig(dir.path, { auth: "token" }) });
  const pod = api.putPod({ kind: "Pod", metadata: { name: "web", namespace: "lab" }, spec: {} });
  return {
    api,
    reader,
    ref: { namespace: "lab", name: "web", uid: pod.metadata.uid },
    async [Symbol.asyncDispose]() {
      reader.close();
      await api.stop();
      dir[Symbol.dispose]();
    },
  };
}

type Ev = { reason: string; message: string; count: number; metadata: { name: string } };

describe("Events", () => {
  test("the same event again is one Event with its count; a new message is another; an expired one is made again", async () => {
    await using s = await setup();
    const rec = new EventRecorder(() => s.reader, { node: "n1", log, minIntervalMs: 20 });
    rec.emit(s.ref, "Warning", "LinkFailed", "boom");
    await rec.flush();
    rec.emit(s.ref, "Warning", "LinkFailed", "boom");
    rec.emit(s.ref, "Warning", "LinkFailed", "boom");
    rec.emit(s.ref, "Normal", "LinkUp", "up");
    await rec.flush();
    const events = s.api.events as unknown as Ev[];
    expect(events.map((e) => [e.reason, e.count]).sort()).toEqual([
      ["LinkFailed", 3],
      ["LinkUp", 1],
    ]);
    // At most one write per interval: three emits of LinkFailed were one POST and one PATCH.
    expect(s.api.count("PATCH", "/api/v1/namespaces/lab/events/")).toBe(1);
    expect(rec.results.get("created")).toBe(2);

    s.api.expireEvents();
    rec.emit(s.ref, "Warning", "LinkFailed", "boom");
    await rec.flush();
    expect((s.api.events as unknown as Ev[]).map((e) => [e.reason, e.count])).toEqual([["LinkFailed", 4]]);
    rec.close();
  });

  test("while the API server hangs, emit returns at once and the queue is bounded; errors are counted, not thrown", async () => {
    await using s = await setup();
    const rec = new EventRecorder(() => s.reader, { node: "n1", log, concurrency: 1, maxQueue: 2 });
    s.api.hang();
    for (let i = 0; i < 5; i++) rec.emit(s.ref, "Normal", "LinkWaiting", `link ${i} waits`);
    // One in flight, two queued, two dropped.
    expect(rec.results.get("dropped")).toBe(2);
    s.api.unhang();
    await rec.flush();
    expect(s.api.events).toHaveLength(3);

    s.api.setFault({ status: 500, message: "etcd leader changed" });
    rec.emit(s.ref, "Warning", "LinkConflict", "x");
    await rec.flush();
    expect(rec.results.get("failed")).toBe(1);
    s.api.setFault(undefined);
    rec.emit(s.ref, "Warning", "LinkConflict", "x");
    await rec.flush();
    expect((s.api.events as unknown as Ev[]).find((e) => e.reason === "LinkConflict")?.count).toBe(2);
    rec.close();
  });
});

describe("network-status", () => {
  test("someone writes the pod between our read and our patch: we read again and keep their entry", async () => {
    await using s = await setup();
    let raced = false;
    // Someone else (Multus, say) adds an entry right after our first read of the pod.
    const racing: KubeApi = {
      call: async (method, path, body, timeoutMs) => {
        const res = await s.reader.call(method, path, body, timeoutMs);
        if (method === "GET" && !raced) {
          raced = true;
          const pod = s.api.getPod("lab", "web");
          const theirs = JSON.stringify([{ name: "other/net9", interface: "net9", ips: ["10.9.9.9"] }]);
          s.api.putPod({ ...pod, metadata: { ...pod?.metadata, annotations: { [NETWORK_STATUS]: theirs } } });
        }
        return res;
      },
    };
    const mine = { name: "ratchet/peer", interface: "in1", ips: ["10.0.0.1"], mac: "02:00:00:00:00:01" };
    const w = new NetworkStatusWriter(
      () => racing,
      () => [mine],
      log,
    );
    w.refresh("lab/web");
    await w.flush();
    const text = s.api.getPod("lab", "web")?.metadata.annotations?.[NETWORK_STATUS] ?? "[]";
    expect(JSON.parse(text)).toEqual([{ name: "other/net9", interface: "net9", ips: ["10.9.9.9"] }, mine]);
    expect(s.api.requests.filter((r) => r.method === "PATCH").map((r) => r.status)).toEqual([409, 200]);
    expect(w.results.get("patched")).toBe(1);
    // Nothing changed since: no write.
    w.refresh("lab/web");
    await w.flush();
    expect(w.results.get("unchanged")).toBe(1);
    w.close();
  });
});
