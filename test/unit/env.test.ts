import { describe, expect, test } from "bun:test";
import { parseCniArgs, parseEnv } from "../../src/cni/env.ts";

const base = {
  CNI_COMMAND: "ADD",
  CNI_CONTAINERID: "c1",
  CNI_NETNS: "/var/run/netns/x",
  CNI_IFNAME: "eth0",
  CNI_PATH: "/opt/cni/bin:/usr/lib/cni",
};

describe("CNI environment", () => {
  test("reads the pod identity from CNI_ARGS and tolerates other keys", () => {
    const env = parseEnv({
      ...base,
      CNI_ARGS:
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-5d.x;" +
        "K8S_POD_UID=u-1;K8S_POD_INFRA_CONTAINER_ID=c1;FOO=a=b",
    });
    expect(env.pod).toEqual({
      namespace: "kube-system",
      name: "coredns-5d.x",
      uid: "u-1",
      infraContainerId: "c1",
    });
    expect(env.path).toEqual(["/opt/cni/bin", "/usr/lib/cni"]);
    expect(env.args.at(-1)).toEqual(["FOO", "a=b"]);
  });

  test("no K8S_POD_* means no pod", () => {
    expect(parseEnv(base).pod).toBeUndefined();
  });

  test("DEL may have an empty netns", () => {
    expect(parseEnv({ ...base, CNI_COMMAND: "DEL", CNI_NETNS: "" }).netns).toBe("");
  });

  test("a relative netns path is refused", () => {
    expect(() => parseEnv({ ...base, CNI_NETNS: "netns/x" })).toThrow(
      'CNI_NETNS "netns/x" must be an absolute path',
    );
  });

  test("empty CNI_ARGS is fine; an empty key is not", () => {
    expect(parseCniArgs("")).toEqual([]);
    expect(() => parseCniArgs("=x")).toThrow('malformed pair "=x"');
  });
});
