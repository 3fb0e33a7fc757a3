// Reading the link counters of many netns for a scrape: in a worker thread (counters-worker.ts)
// so the kernel's dumps never hold up the agent's event loop, or on this thread in slices
// when no worker can run.
import type { LinkCounters } from "../netlink/counters.ts";
import type { Logger } from "../log.ts";

export interface CountersRequest {
  id: number;
  netns: string[];
}

export interface CountersReply {
  id: number;
  /** Each netns with its links; null when it could not be read (gone). */
  rows: Array<[string, LinkCounters[] | null]>;
  last: boolean;
}

/** The links of each netns, as they are read; undefined for a netns that could not be read. */
export type CountersReader = (netns: string[]) => AsyncIterable<[string, LinkCounters[] | undefined]>;

const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve));

/** Reads on this thread, giving the event loop a turn every `sliceMs`. */
export function inThreadReader(read: (netns: string) => LinkCounters[], sliceMs = 5): CountersReader {
  return async function* (netns) {
    let sliceStart = performance.now();
    for (const ns of netns) {
      let rows: LinkCounters[] | undefined;
      try {
        rows = read(ns);
      } catch {
        rows = undefined;
      }
      yield [ns, rows];
      if (performance.now() - sliceStart >= sliceMs) {
        await nextTurn();
        sliceStart = performance.now();
      }
    }
  };
}

/** A worker that answers nothing for this long is taken for stuck: ended, made anew next time. */
const STUCK_MS = 15_000;

/** Reads in a worker thread, started at first use; on this thread when the worker cannot run. */
export class WorkerReader {
  private worker: Worker | undefined;
  private disabled = false;
  private seq = 0;
  private pending: { id: number; push: (r: CountersReply) => void; fail: (e: Error) => void } | undefined;

  constructor(
    /** What `new Worker()` is given for counters-worker.ts. */
    private readonly url: string,
    private readonly fallback: CountersReader,
    private readonly log: Logger,
  ) {}

  private start(): Worker | undefined {
    if (this.worker || this.disabled) return this.worker;
    try {
      const w = new Worker(this.url);
      w.unref();
      let first = true;
      w.onmessage = (e: MessageEvent<CountersReply>) => {
        if (first) this.log.info("link counters are read in a worker thread");
        first = false;
        if (this.pending?.id === e.data.id) this.pending.push(e.data);
      };
      w.onerror = (e) => {
        this.log.warn("the link counters worker failed: reading on the main thread from now on", {
          error: e.message,
        });
        this.disabled = true;
        this.stop(new Error(`the link counters worker failed: ${e.message}`));
      };
      this.worker = w;
    } catch (err) {
      this.log.warn("cannot start the link counters worker: reading on the main thread", {
        error: (err as Error).message,
      });
      this.disabled = true;
    }
    return this.worker;
  }

  private stop(reason: Error): void {
    this.worker?.terminate();
    this.worker = undefined;
    this.pending?.fail(reason);
    this.pending = undefined;
  }

  /** A CountersReader (one read at a time: the observer never runs two). */
  readonly read: CountersReader = (netns) => this.readAll(netns);

  private async *readAll(netns: string[]): AsyncIterable<[string, LinkCounters[] | undefined]> {
    if (netns.length === 0) return; // no thread for nothing
    const w = this.start();
    if (!w) {
      yield* this.fallback(netns);
      return;
    }
    const id = ++this.seq;
    const queue: CountersReply[] = [];
    let failure: Error | undefined;
    let wake: (() => void) | undefined;
    this.pending = {
      id,
      push: (r) => {
        queue.push(r);
        wake?.();
      },
      fail: (e) => {
        failure = e;
        wake?.();
      },
    };
    w.postMessage({ id, netns } satisfies CountersRequest);
    try {
      for (;;) {
        while (queue.length === 0 && !failure) {
          let timer: Timer | undefined;
          await new Promise<void>((resolve) => {
            wake = resolve;
            timer = setTimeout(() => {
              this.log.warn("the link counters worker answers nothing: starting a new one", { ms: STUCK_MS });
              this.stop(new Error(`no link counters within ${STUCK_MS} ms`));
            }, STUCK_MS);
          });
          clearTimeout(timer);
        }
        if (failure) throw failure;
        const r = queue.shift() as CountersReply;
        for (const [ns, rows] of r.rows) yield [ns, rows ?? undefined];
        if (r.last) return;
      }
    } finally {
      if (this.pending?.id === id) this.pending = undefined;
    }
  }

  close(): void {
    this.disabled = true;
    this.stop(new Error("closed"));
  }
}
