// Command-line options shared by every mode: `--name VALUE` or `--name=VALUE`.

/** The value of the first `name` option; undefined when it is absent or has no value. */
export function option(args: readonly string[], name: string): string | undefined {
  const i = args.findIndex((a) => a === name || a.startsWith(`${name}=`));
  if (i < 0) return undefined;
  const a = args[i] as string;
  return a.includes("=") ? a.slice(name.length + 1) : args[i + 1];
}
