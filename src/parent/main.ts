import { CniError, Code, toCniError } from "../cni/errors.ts";

export interface ParentIO {
  env: Record<string, string | undefined>;
  readStdin: () => Promise<string>;
  write: (s: string) => void;
}

export const SUPPORTED_VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] as const;

/** Runs one CNI command; returns the exit code. */
export async function runParent(_args: string[], io: ParentIO): Promise<number> {
  const command = io.env.CNI_COMMAND;
  try {
    await io.readStdin();
    if (command === "VERSION") {
      io.write(`${JSON.stringify({ cniVersion: "1.1.0", supportedVersions: SUPPORTED_VERSIONS })}\n`);
      return 0;
    }
    throw new CniError(Code.InvalidEnv, `CNI_COMMAND ${JSON.stringify(command ?? "")} is not supported`);
  } catch (err) {
    io.write(`${JSON.stringify(toCniError(err).toJSON("1.1.0"))}\n`);
    return 1;
  }
}
