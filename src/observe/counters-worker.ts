// A worker thread that reads link counters (one dump per netns) off the agent's main thread:
// the dumps are most of a scrape's time, and the kernel's time at that. setns() acts on the
// calling thread only, so this thread enters the pods' namespaces without touching the
// main one. Asked for a list of netns, it answers in chunks as it goes.
// It is an entrypoint of the build (scripts/build.ts): a compiled binary holds it.
import { listLinkCounters } from "../netlink/counters.ts";
import type { CountersReply, CountersRequest } from "./counters-reader.ts";

/** Netns per reply: the main thread renders one chunk while this one reads the next. */
const CHUNK = 64;

declare const self: Worker;

self.onmessage = (e: MessageEvent<CountersRequest>) => {
  const { id, netns } = e.data;
  for (let start = 0; start < netns.length; start += CHUNK) {
    const rows: CountersReply["rows"] = netns.slice(start, start + CHUNK).map((ns) => {
      try {
        return [ns, listLinkCounters(ns)];
      } catch {
        return [ns, null]; // the netns is gone (a pod being deleted): its ends are absent
      }
    });
    const reply: CountersReply = { id, rows, last: start + CHUNK >= netns.length };
    self.postMessage(reply);
  }
  if (netns.length === 0) self.postMessage({ id, rows: [], last: true } satisfies CountersReply);
};
