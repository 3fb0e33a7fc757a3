// RATCHET_TRACE=1: the time of each step of one CNI call on stderr, so an operator sees where
// a slow ADD spent its time. Off, a step costs next to nothing. The lines are written once,
// at the end of the call: the first write to stderr costs a Bun process milliseconds, which
// would otherwise land inside the steps it measures.
import type { StepTimes } from "./steps.ts";

export class Trace {
  private readonly started = performance.now();
  private readonly lines: string[] = [];
  constructor(private readonly out: ((line: string) => void) | undefined) {}

  private push(line: string): void {
    if (this.out) this.lines.push(line);
  }

  /** Writes the lines gathered so far. */
  flush(): void {
    if (this.out && this.lines.length > 0) this.out(this.lines.splice(0).join(""));
  }

  get on(): boolean {
    return this.out !== undefined;
  }

  /** A point in time: milliseconds since the process started (Bun's start included). */
  mark(what: string): void {
    this.push(`ratchet trace: ${what} at ${performance.now().toFixed(1)} ms since process start\n`);
  }

  /** Runs `fn` and reports how long it took. */
  async span<T>(what: string, fn: () => Promise<T>): Promise<T> {
    if (!this.out) return fn();
    const t0 = performance.now();
    try {
      return await fn();
    } finally {
      this.push(`ratchet trace: ${what} took ${(performance.now() - t0).toFixed(1)} ms\n`);
    }
  }

  /** The agent's side of a request: its time by kind of work (etcd, netlink, ...). */
  steps(request: string, times: StepTimes): void {
    for (const [what, [ms, n]] of Object.entries(times))
      this.push(
        `ratchet trace: ${request}: ${what} took ${ms.toFixed(1)} ms (${n} ${n === 1 ? "time" : "times"})\n`,
      );
  }

  total(what: string): void {
    this.push(`ratchet trace: ${what} took ${(performance.now() - this.started).toFixed(1)} ms in all\n`);
  }
}

export const NO_TRACE = new Trace(undefined);
