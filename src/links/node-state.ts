// What this node knows from its own CNI calls and nothing else: for each container ratchet
// attached here, its pod, netns, CNI_IFNAME and link interfaces. Netns paths come only from
// here, never from etcd (which any node can write). Kept in memory and in a node-local file
// (written to a temp file and renamed), so an agent restart keeps it. Changes are
// saved by flush(), once per operation however many links it touched.
import { closeSync, openSync, readFileSync, renameSync, writeSync } from "node:fs";
import * as v from "valibot";
import type { Logger } from "../log.ts";
import { step } from "../steps.ts";

const ContainerSchema = v.object({
  pod: v.string(),
  netns: v.string(),
  ifname: v.string(),
  /** Link key -> this container's interface of that link. */
  links: v.record(v.string(), v.string()),
});
export type LocalContainer = v.InferOutput<typeof ContainerSchema>;
const FileSchema = v.object({ version: v.literal(1), containers: v.record(v.string(), ContainerSchema) });

export class NodeState {
  private readonly containers = new Map<string, LocalContainer>();
  private dirty = false;

  constructor(
    private readonly file: string | undefined,
    private readonly log: Logger,
  ) {
    if (!file) return;
    let text: string;
    try {
      text = readFileSync(file, "utf8");
    } catch {
      return; // first start
    }
    try {
      const parsed = v.parse(FileSchema, JSON.parse(text));
      for (const [id, c] of Object.entries(parsed.containers)) this.containers.set(id, c);
    } catch (err) {
      log.error("the node state file is unreadable: starting empty", { file, error: (err as Error).message });
    }
  }

  get(containerId: string): LocalContainer | undefined {
    return this.containers.get(containerId);
  }

  /** The current container of pod `id` on this node, if ratchet attached one. */
  containerOf(id: string): [string, LocalContainer] | undefined {
    let found: [string, LocalContainer] | undefined;
    for (const entry of this.containers) if (entry[1].pod === id) found = entry;
    return found;
  }

  set(containerId: string, c: LocalContainer): void {
    this.containers.set(containerId, c);
    this.dirty = true;
  }

  /** Records that `containerId` has these link interfaces (link key -> ifname) too. */
  addLinks(containerId: string, links: Record<string, string>): void {
    const c = this.containers.get(containerId);
    if (c) this.set(containerId, { ...c, links: { ...c.links, ...links } });
  }

  /** Forgets link interfaces of `containerId`. */
  dropLinks(containerId: string, keys: Iterable<string>): void {
    const c = this.containers.get(containerId);
    if (!c) return;
    const links = { ...c.links };
    for (const k of keys) delete links[k];
    this.set(containerId, { ...c, links });
  }

  delete(containerId: string): void {
    if (this.containers.delete(containerId)) this.dirty = true;
  }

  /** Saves the changes made since the last flush (one write, whatever their number). */
  flush(): void {
    if (!this.dirty) return;
    this.dirty = false;
    this.save();
  }

  get size(): number {
    return this.containers.size;
  }

  entries(): IterableIterator<[string, LocalContainer]> {
    return this.containers.entries();
  }

  private save(): void {
    if (!this.file) return;
    const done = step("node state file");
    const tmp = `${this.file}.tmp`;
    const body = JSON.stringify({ version: 1, containers: Object.fromEntries(this.containers) });
    try {
      // No fsync: the file must outlive the agent (a crash, an upgrade), not the machine;
      // the netns and links it describes do not survive a reboot either. Written whole and
      // renamed into place, a reader sees the old file or the new one.
      const fd = openSync(tmp, "w", 0o600);
      try {
        writeSync(fd, body);
      } finally {
        closeSync(fd);
      }
      renameSync(tmp, this.file);
    } catch (err) {
      this.log.warn("could not save the node state file", { file: this.file, error: (err as Error).message });
    } finally {
      done();
    }
  }
}
