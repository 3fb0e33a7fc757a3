// Following a prefix of etcd that survives what etcd does to watches. etcd3's watcher
// already resumes after a broken connection (from the revision after the last one it saw),
// but when etcd cancels a watch (its start revision was compacted away: a watch that fell
// behind, or one that resumed after a long outage) the watcher is gone and says so once,
// with an 'error'. Then the prefix is read again (the caller's resync: what changed while
// nobody watched) and a new watch starts right after the revision of that read.
import type { Etcd3, IKeyValue, Watcher } from "etcd3";
import type { Logger } from "../log.ts";
import { storeError } from "./etcd-ops.ts";

export interface FollowHandlers {
  /** `prev`: the value before the put, if any (etcd sends it with the event). */
  put(kv: IKeyValue, prev: IKeyValue | undefined): void;
  /** `prev`: the value before the delete (etcd sends it with the event). */
  delete(kv: IKeyValue, prev: IKeyValue | undefined): void;
  /** Re-reads the prefix, acts on what it finds, and returns the revision it read at. */
  resync(): Promise<string>;
}

/** How long to wait before trying again when etcd cannot be reached for a resync. */
const RETRY_MS = 1000;

export class Follower {
  private watcher: Watcher | undefined;
  private closed = false;
  /** How many times the watch was started again after etcd canceled it. */
  resyncs = 0;

  constructor(
    private readonly etcd: Etcd3,
    private readonly prefix: string,
    private readonly handlers: FollowHandlers,
    private readonly log: Logger,
  ) {}

  /** Starts following right after `revision` (the revision the caller read the prefix at). */
  async start(revision: string): Promise<void> {
    let w: Watcher;
    try {
      w = await this.etcd
        .watch()
        .prefix(this.prefix)
        .withPreviousKV()
        .startRevision((BigInt(revision) + 1n).toString())
        .create();
    } catch (err) {
      throw storeError(err);
    }
    if (this.closed) {
      void w.cancel().catch(() => undefined);
      return;
    }
    this.watcher = w;
    // Handlers never throw out of the watch: what fails is logged and skipped.
    w.on("put", (kv, prev) => this.guard(() => this.handlers.put(kv, prev), kv));
    w.on("delete", (kv, prev) => this.guard(() => this.handlers.delete(kv, prev), kv));
    w.on("disconnected", (err: Error) =>
      this.log.debug("etcd watch disconnected; it resumes by itself", {
        prefix: this.prefix,
        error: err.message,
      }),
    );
    w.on("error", (err: Error) => {
      // etcd canceled this watch (e.g. its revision was compacted): it will not come back.
      w.removeAllListeners();
      if (this.watcher === w) this.watcher = undefined;
      this.log.warn("etcd canceled the watch: reading again and following from there", {
        prefix: this.prefix,
        error: err.message,
      });
      void this.restart();
    });
  }

  private guard(fn: () => void, kv: IKeyValue): void {
    try {
      fn();
    } catch (err) {
      this.log.error("could not act on an etcd change", {
        key: kv.key.toString(),
        error: (err as Error).message,
      });
    }
  }

  private async restart(): Promise<void> {
    while (!this.closed) {
      try {
        const revision = await this.handlers.resync();
        this.resyncs++;
        await this.start(revision);
        return;
      } catch (err) {
        this.log.warn("could not follow etcd again yet; retrying", {
          prefix: this.prefix,
          error: (err as Error).message,
        });
        await Bun.sleep(RETRY_MS);
      }
    }
  }

  close(): void {
    this.closed = true;
    const w = this.watcher;
    this.watcher = undefined;
    if (w) {
      w.removeAllListeners();
      void w.cancel().catch(() => undefined);
    }
  }
}
