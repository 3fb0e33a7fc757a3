import { describe, expect, test } from "bun:test";
import { KeyedQueue, Limiter } from "../../src/child/server.ts";
import { CniError } from "../../src/cni/errors.ts";

const tick = () => new Promise((r) => setTimeout(r, 1));

describe("KeyedQueue", () => {
  test("runs one task at a time per key, keys in parallel, in arrival order", async () => {
    const q = new KeyedQueue();
    const log: string[] = [];
    let running = 0;
    let most = 0;
    const task = (name: string) => async () => {
      running++;
      most = Math.max(most, running);
      log.push(`start ${name}`);
      await tick();
      log.push(`end ${name}`);
      running--;
      return name;
    };
    const results = await Promise.all([
      q.run("a", task("a1")),
      q.run("a", task("a2")),
      q.run("b", task("b1")),
      q.run("a", task("a3")),
    ]);
    expect(results).toEqual(["a1", "a2", "b1", "a3"]);
    const a = log.filter((l) => l.endsWith("a1") || l.endsWith("a2") || l.endsWith("a3"));
    expect(a).toEqual(["start a1", "end a1", "start a2", "end a2", "start a3", "end a3"]);
    expect(most).toBe(2); // a and b overlapped
    expect(q.size).toBe(0); // nothing retained once idle
  });

  test("a failing task does not block the next one on its key", async () => {
    const q = new KeyedQueue();
    const failed = q.run("k", async () => {
      throw new Error("boom");
    });
    await expect(failed).rejects.toThrow("boom");
    expect(await q.run("k", async () => "after")).toBe("after");
  });
});

describe("Limiter", () => {
  test("caps concurrency, queues up to a bound, refuses beyond it with code 11", async () => {
    const lim = new Limiter(2, 1);
    let running = 0;
    let most = 0;
    const gate = Promise.withResolvers<void>();
    const work = () =>
      lim.run(async () => {
        running++;
        most = Math.max(most, running);
        await gate.promise;
        running--;
      });
    const a = work();
    const b = work();
    const c = work(); // queued
    await tick();
    expect(lim.load).toBe(3);
    let refused: unknown;
    try {
      await work();
    } catch (err) {
      refused = err;
    }
    expect(refused).toBeInstanceOf(CniError);
    expect((refused as CniError).code).toBe(11);
    expect((refused as CniError).message).toBe("the node agent is busy: 2 requests running and 1 queued");
    gate.resolve();
    await Promise.all([a, b, c]);
    expect(most).toBe(2);
    expect(lim.load).toBe(0);
  });
});
