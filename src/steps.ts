// Where the agent spends one request's time, by kind of work (etcd, netlink, the pod cache,
// the node state file, ...): gathered only when the plugin asks (RATCHET_TRACE=1) and sent
// back with the answer, so the plugin's trace shows the agent's side too. Off, a step costs
// one lookup of the current request.
import { AsyncLocalStorage } from "node:async_hooks";

/** Step name -> [milliseconds in all, how many times]. */
export type StepTimes = Record<string, [number, number]>;

const current = new AsyncLocalStorage<StepTimes>();

const NOTHING = () => {};

/** Starts timing one step of the current request; call the result when it ends. */
export function step(what: string): () => void {
  const times = current.getStore();
  if (!times) return NOTHING;
  const t0 = performance.now();
  return () => {
    const t = times[what] ?? [0, 0];
    t[0] += performance.now() - t0;
    t[1]++;
    times[what] = t;
  };
}

/** Runs `fn` as one request whose steps are gathered in `times`. */
export function withSteps<T>(times: StepTimes, fn: () => Promise<T>): Promise<T> {
  return current.run(times, fn);
}
