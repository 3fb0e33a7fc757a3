// An agent follows its node's tunnel entries in etcd: at start it reconciles (every entry's
// ends in place, nothing that is right rebuilt), then watches. Entries that arrive together
// (one commit writes many chunks) are built in one batch; a removed entry removes the ends
// whose link is gone. Should etcd cancel the watch (compaction), it reconciles again and
// follows from there (src/store/watch.ts).
import type { Etcd3, IKeyValue } from "etcd3";
import type { Logger } from "../log.ts";
import type { TunnelChunk } from "../store/records.ts";
import { Follower } from "../store/watch.ts";
import type { Linker } from "./linker.ts";

type Change = { put: TunnelChunk } | { drop: { a: string; b: string }; prev: TunnelChunk | undefined };

/** Runs the changes in order, one at a time; consecutive puts as one batch. */
class ChangeQueue {
  private readonly queue: Change[] = [];
  private running = false;
  constructor(
    private readonly linker: Linker,
    private readonly log: Logger,
  ) {}

  push(c: Change): void {
    this.queue.push(c);
    if (!this.running) {
      this.running = true;
      // On the next turn: the other events of the same watch response join this batch.
      setImmediate(() => void this.drain());
    }
  }

  private async drain(): Promise<void> {
    try {
      while (this.queue.length > 0) {
        const puts: TunnelChunk[] = [];
        while (this.queue.length > 0 && "put" in (this.queue[0] as Change))
          puts.push((this.queue.shift() as Change as { put: TunnelChunk }).put);
        try {
          // An entry from the other node means it (re)built its side just now: rebuild ours
          // even if it matches, for a fresh neighbour table.
          if (puts.length > 0) this.linker.ensureTunnels(puts, true);
          const next = this.queue[0];
          if (next && "drop" in next) {
            this.queue.shift();
            await this.linker.dropTunnels(next.drop, next.prev);
          }
        } catch (err) {
          this.log.error("could not follow a tunnel entry", { error: (err as Error).message });
        }
      }
    } finally {
      this.running = false;
    }
  }
}

/** Reconciles this node's tunnel ends with etcd, then follows its entries. */
export async function followNode(
  etcd: Etcd3,
  linker: Linker,
  log: Logger,
): Promise<{ follower: Follower; ends: number; entries: number }> {
  const node = linker.node;
  const keys = linker.store.keys;
  const prefix = keys.tunnelsPrefix(node);
  const queue = new ChangeQueue(linker, log);
  const first = await linker.reconcile();
  const follower = new Follower(
    etcd,
    prefix,
    {
      put: (kv: IKeyValue, prev: IKeyValue | undefined) => {
        const t = linker.store.tunnelChunkOf(kv, node);
        // Our own ADD wrote this entry and built those ends itself.
        if (t && t.builtBy !== node) queue.push({ put: t });
        // Links the entry held and holds no more: their ends go if the links are gone.
        const before = prev ? linker.store.tunnelChunkOf(prev, node) : undefined;
        const now = new Set(t?.ends.map((e) => e.key) ?? []);
        const left = before?.ends.filter((e) => !now.has(e.key)) ?? [];
        const pair = keys.parsePair(prefix, kv.key.toString());
        if (before && pair && left.length > 0) queue.push({ drop: pair, prev: { ...before, ends: left } });
      },
      delete: (kv: IKeyValue, prev: IKeyValue | undefined) => {
        const pair = keys.parsePair(prefix, kv.key.toString());
        if (!pair) return;
        queue.push({ drop: pair, prev: prev ? linker.store.tunnelChunkOf(prev, node) : undefined });
      },
      resync: async () => {
        const r = await linker.reconcile();
        log.info("reconciled this node's links with etcd again", {
          node,
          tunnelEnds: r.ends,
          entries: r.entries,
        });
        return r.revision;
      },
    },
    log,
  );
  await follower.start(first.revision);
  return { follower, ends: first.ends, entries: first.entries };
}
