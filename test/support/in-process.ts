// The plugin's code run in the test's own process, with a stand-in for the node agent: for
// what the plugin does around the agent's answers (rollback, the order of the plugins' calls).
import type { Agent } from "../../src/parent/classify.ts";
import { runParent } from "../../src/parent/main.ts";

/** An agent that answers every call as ratchet's own would for a ratchet pod, but for the overrides. */
export function stubAgent(overrides: Partial<Agent> = {}): Agent {
  return {
    classify: async () => ({ eligible: true }),
    attach: async () => [],
    booted: async () => undefined,
    detach: async () => true,
    check: async () => undefined,
    status: async () => undefined,
    gc: async () => undefined,
    ...overrides,
  };
}

/** One CNI command through the plugin's code, with `agent` behind it; CNI_IFNAME eth0. */
export async function runInProcess(
  command: "ADD" | "DEL",
  conf: Record<string, unknown>,
  call: { containerId: string; netns: string; args?: string },
  agent: Agent,
): Promise<{ code: number; out: string }> {
  let out = "";
  const code = await runParent(
    [],
    {
      env: {
        PATH: process.env.PATH,
        CNI_COMMAND: command,
        CNI_CONTAINERID: call.containerId,
        CNI_NETNS: call.netns,
        CNI_IFNAME: "eth0",
        CNI_PATH: "/usr/lib/cni",
        ...(call.args ? { CNI_ARGS: call.args } : {}),
      },
      readStdin: async () => JSON.stringify(conf),
      write: (s) => {
        out += s;
      },
    },
    () => agent,
  );
  return { code, out };
}
