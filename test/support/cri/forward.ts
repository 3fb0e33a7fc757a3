// Runs forward-fixture.ts (optionally inside a netns) and stops it on dispose.
import { join } from "node:path";
import { BUN } from "../env.ts";

const FIXTURE = join(import.meta.dir, "forward-fixture.ts");

export class Forward implements AsyncDisposable {
  private constructor(private readonly proc: ReturnType<typeof Bun.spawn>) {}

  /** Starts it and waits for "ready" (10 s at most). */
  static async start(args: string[], netns?: string): Promise<Forward> {
    const cmd = [...(netns ? ["nsenter", `--net=${netns}`] : []), BUN, FIXTURE, ...args];
    const proc = Bun.spawn({ cmd, stdin: "ignore", stdout: "pipe", stderr: "pipe" });
    const f = new Forward(proc);
    const reader = (proc.stdout as ReadableStream<Uint8Array>).getReader();
    let out = "";
    const ready = (async () => {
      while (!out.includes("ready\n")) {
        const { value, done } = await reader.read();
        if (done) return false;
        out += new TextDecoder().decode(value);
      }
      return true;
    })();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<boolean>((r) => {
      timer = setTimeout(() => r(false), 10_000);
    });
    const ok = await Promise.race([ready, late]);
    clearTimeout(timer);
    if (!ok) {
      proc.kill("SIGKILL");
      const err = await new Response(proc.stderr as ReadableStream<Uint8Array>).text();
      throw new Error(`forwarder ${args.join(" ")} did not start: ${out}${err}`);
    }
    reader.releaseLock();
    return f;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.proc.kill("SIGKILL");
    await this.proc.exited;
  }
}
