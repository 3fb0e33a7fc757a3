// Events about many links at once come out as one: a pod whose ADD builds 1500 links gets
// one LinkUp Event naming the count and the first few, not 1500 (which would crowd the API
// server and the pod's description, and hold up the agent). A handful stay one each.
import type { EventType } from "./events.ts";

/** How long after the first event of a turn the batch is sent. */
const SETTLE_MS = 20;
/** More events than this of one kind, for one pod and peer, in one turn: one summary. */
export const SUMMARIZE_OVER = 4;
/** Links a summary names. */
const NAMED = 5;

interface Group {
  pod: string;
  type: EventType;
  reason: string;
  messages: string[];
  names: string[];
  summary: (count: number, names: string) => string;
}

export class EventBatcher {
  private readonly groups = new Map<string, Group>();
  private scheduled = false;

  constructor(
    private readonly send: (pod: string, type: EventType, reason: string, message: string) => void,
  ) {}

  /**
   * Notes one link's event; what the same turn notes for the same pod, reason and `group`
   * goes out together: each on its own when few, else as `summary(count, first names)`.
   */
  note(
    pod: string,
    type: EventType,
    reason: string,
    group: string,
    message: string,
    name: string,
    summary: (count: number, names: string) => string,
  ): void {
    const key = JSON.stringify([pod, type, reason, group]);
    let g = this.groups.get(key);
    if (!g) {
      g = { pod, type, reason, messages: [], names: [], summary };
      this.groups.set(key, g);
    }
    g.messages.push(message);
    if (g.names.length < NAMED) g.names.push(name);
    if (!this.scheduled) {
      this.scheduled = true;
      // A moment after the turn: the Events (requests to the API server) never hold up the
      // CNI call that caused them, nor its follow-up note.
      setTimeout(() => this.flush(), SETTLE_MS);
    }
  }

  flush(): void {
    this.scheduled = false;
    for (const g of this.groups.values()) {
      if (g.messages.length <= SUMMARIZE_OVER) {
        for (const m of g.messages) this.send(g.pod, g.type, g.reason, m);
        continue;
      }
      const more = g.messages.length > g.names.length ? ", ..." : "";
      this.send(g.pod, g.type, g.reason, g.summary(g.messages.length, `${g.names.join(", ")}${more}`));
    }
    this.groups.clear();
  }
}
