import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { CniError } from "../../src/cni/errors.ts";
// Messages render values with show(); expectations use it too, so they follow its format.
import { parseCidr, parseIpAddress, show } from "../../src/cni/names.ts";
import {
  linkDifferences,
  linkKey,
  MAX_ANNOTATION_BYTES,
  MAX_LINKS,
  podLinks,
  reverseLink,
  sameLink,
  type LinkSpec,
  type PodMeta,
} from "../../src/pods/podspec.ts";
import { REPO } from "../support/env.ts";
import { EXAMPLE_LINKS, podMeta, readPodYaml } from "../support/pods.ts";

const OPTS = { defaultPrefix: 24 };

function pod(
  labels: Record<string, string>,
  annotations: Record<string, string> = {},
  name = "pod-a",
  namespace = "default",
): PodMeta {
  return { namespace, name, labels, annotations };
}
const annotated = (links: unknown, labels: Record<string, string> = {}) =>
  pod({ ratchet: "true", ...labels }, { "ratchet/links": JSON.stringify(links) });

function failure(fn: () => unknown): CniError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(CniError);
    return err as CniError;
  }
  throw new Error("expected a CniError, nothing was thrown");
}

describe("the original example pair (pod_specs/example.yaml)", () => {
  const pods = readPodYaml(join(REPO, "pod_specs", "example.yaml")).map(podMeta);
  const [primary, pair] = pods as [PodMeta, PodMeta];

  test("primary-pod: in1 192.168.2.100/24 to pair-pod in2 192.168.2.101/24, primary", () => {
    expect(podLinks(primary, OPTS)).toEqual({
      eligible: true,
      links: [EXAMPLE_LINKS["primary-pod"]],
    });
  });

  test("pair-pod only opts in (ratchet, pod_name, primary false): a ratchet pod linked by its primary", () => {
    expect(podLinks(pair, OPTS)).toEqual({ eligible: true, links: [] });
  });

  test("a pair pod that mirrors the primary's labels declares the same link, and the two agree", () => {
    const a = podLinks(primary, OPTS).links[0] as LinkSpec;
    const mirror = pod(
      {
        ...pair.labels,
        "ratchet.local_ip": "192.168.2.101",
        "ratchet.local_ifname": "in2",
        "ratchet.pair_name": "primary-pod",
        "ratchet.pair_ip": "192.168.2.100",
        "ratchet.pair_ifname": "in1",
      },
      {},
      "pair-pod",
    );
    const b = podLinks(mirror, OPTS).links[0] as LinkSpec;
    expect(b).toEqual({
      local: { namespace: "default", pod: "pair-pod", ifname: "in2", ips: ["192.168.2.101/24"] },
      peer: { namespace: "default", pod: "primary-pod", ifname: "in1", ips: ["192.168.2.100/24"] },
      source: "labels",
    });
    expect(linkKey(a)).toBe("default/pair-pod/in2:default/primary-pod/in1");
    expect(linkKey(b)).toBe(linkKey(a));
    expect(linkDifferences(a, b)).toEqual([]);
    expect(sameLink(a, b)).toBe(true);
  });

  test.each([
    ["ratchet.primary alone", { "ratchet.primary": "true" }],
    ["ratchet.pod_name alone", { "ratchet.pod_name": "pod-a" }],
    [
      "the ignored labels alone",
      { "ratchet.public_ip": "1.1.1.1", "ratchet.target_pod": "x", "ratchet.target_container": "y" },
    ],
  ])("%s describes no link: eligible, no links", (_what, labels) => {
    expect(podLinks(pod({ ratchet: "true", ...labels }), OPTS)).toEqual({ eligible: true, links: [] });
  });

  test("default_prefix applies to label addresses", () => {
    const l = podLinks(primary, { defaultPrefix: 16 }).links[0] as LinkSpec;
    expect(l.local.ips).toEqual(["192.168.2.100/16"]);
    expect(l.peer.ips).toEqual(["192.168.2.101/16"]);
  });
});

describe("eligibility", () => {
  test.each(
    (
      [{}, { ratchet: "false" }, { ratchet: "True" }, { ratchet: "yes" }] as Array<Record<string, string>>
    ).map((l) => [JSON.stringify(l), l] as const),
  )("%s is not eligible and nothing else is checked", (_name, labels) => {
    // Bad link labels on an ineligible pod are none of our business.
    expect(podLinks(pod({ ...labels, "ratchet.local_ifname": "bad/name" }), OPTS)).toEqual({
      eligible: false,
      links: [],
    });
  });

  test("ratchet=true with no link labels: eligible, no links of its own", () => {
    expect(
      podLinks(pod({ ratchet: "true", "ratchet.public_ip": "", "ratchet.target_pod": "x" }), OPTS),
    ).toEqual({ eligible: true, links: [] });
  });

  test("empty ip labels mean no address on that end", () => {
    const r = podLinks(
      pod({
        ratchet: "true",
        "ratchet.pair_name": "pod-b",
        "ratchet.local_ifname": "in1",
        "ratchet.pair_ifname": "in2",
        "ratchet.local_ip": "",
      }),
      OPTS,
    );
    expect(r.links[0]?.local.ips).toEqual([]);
    expect(r.links[0]?.peer.ips).toEqual([]);
  });
});

describe("the ratchet/links annotation", () => {
  test("several links: IPv4, IPv6, lists, MTU, MACs, peer_namespace", () => {
    const r = podLinks(
      annotated([
        {
          peer: "pod-b",
          peer_namespace: "default",
          local_ifname: "eth1",
          local_ip: "10.10.0.1/30",
          peer_ifname: "eth1",
          peer_ip: "10.10.0.2/30",
          mtu: 1400,
          local_mac: "02:00:00:00:00:01",
        },
        {
          peer: "pod-c",
          peer_namespace: "lab-2",
          local_ifname: "eth2",
          local_ip: ["10.20.0.1/24", "FD00:0:0:0::0001/64"],
          peer_ifname: "net0",
          peer_ip: ["10.20.0.2/24", "fd00::2/64"],
          peer_mac: "0A:00:00:00:00:02",
        },
        { peer: "pod-d", local_ifname: "eth3", peer_ifname: "eth0" },
      ]),
      OPTS,
    );
    expect(r).toEqual({
      eligible: true,
      links: [
        {
          local: {
            namespace: "default",
            pod: "pod-a",
            ifname: "eth1",
            ips: ["10.10.0.1/30"],
            mac: "02:00:00:00:00:01",
          },
          peer: { namespace: "default", pod: "pod-b", ifname: "eth1", ips: ["10.10.0.2/30"] },
          mtu: 1400,
          source: "annotation",
        },
        {
          local: { namespace: "default", pod: "pod-a", ifname: "eth2", ips: ["10.20.0.1/24", "fd00::1/64"] },
          peer: {
            namespace: "lab-2",
            pod: "pod-c",
            ifname: "net0",
            ips: ["10.20.0.2/24", "fd00::2/64"],
            mac: "0a:00:00:00:00:02",
          },
          source: "annotation",
        },
        {
          local: { namespace: "default", pod: "pod-a", ifname: "eth3", ips: [] },
          peer: { namespace: "default", pod: "pod-d", ifname: "eth0", ips: [] },
          source: "annotation",
        },
      ],
    });
  });

  test("labels and annotation both contribute", () => {
    const r = podLinks(
      annotated([{ peer: "pod-c", local_ifname: "eth2", peer_ifname: "eth2" }], {
        "ratchet.pair_name": "pod-b",
        "ratchet.local_ifname": "in1",
        "ratchet.pair_ifname": "in2",
      }),
      OPTS,
    );
    expect(r.links.map((l) => [l.source, l.peer.pod])).toEqual([
      ["labels", "pod-b"],
      ["annotation", "pod-c"],
    ]);
  });

  test("the same link in labels and annotation, agreeing, counts once and takes the MTU", () => {
    const r = podLinks(
      annotated(
        [
          {
            peer: "pod-b",
            local_ifname: "in1",
            peer_ifname: "in2",
            local_ip: "10.0.0.1/24",
            peer_ip: "10.0.0.2/24",
            mtu: 9000,
          },
        ],
        {
          "ratchet.pair_name": "pod-b",
          "ratchet.local_ifname": "in1",
          "ratchet.pair_ifname": "in2",
          "ratchet.local_ip": "10.0.0.1",
          "ratchet.pair_ip": "10.0.0.2",
        },
      ),
      OPTS,
    );
    expect(r.links).toHaveLength(1);
    expect(r.links[0]?.mtu).toBe(9000);
  });

  test("a link declared from both pods: same key; differences are reported", () => {
    const a = podLinks(
      annotated([
        {
          peer: "pod-b",
          local_ifname: "eth1",
          peer_ifname: "eth9",
          local_ip: "fd00::1/64",
          peer_ip: "fd00::2/64",
          mtu: 1400,
          primary: true,
        },
      ]),
      OPTS,
    ).links[0] as LinkSpec;
    const fromB = podLinks(
      pod(
        { ratchet: "true" },
        {
          "ratchet/links": JSON.stringify([
            {
              peer: "pod-a",
              local_ifname: "eth9",
              peer_ifname: "eth1",
              local_ip: "fd00::2/64",
              peer_ip: "fd00:0::1/64",
            },
          ]),
        },
        "pod-b",
      ),
      OPTS,
    ).links[0] as LinkSpec;
    expect(linkKey(fromB)).toBe(linkKey(a));
    expect(linkDifferences(a, fromB)).toEqual([]);
    expect(linkDifferences(a, reverseLink(a))).toEqual(["both ends are primary"]);
    const other: LinkSpec = {
      ...reverseLink(a),
      primary: false,
      mtu: 1500,
      local: { ...a.peer, ips: ["fd00::3/64"], mac: "02:00:00:00:00:09" },
      peer: { ...a.local, mac: "02:00:00:00:00:01" },
    };
    expect(linkDifferences(a, other)).toEqual([
      'addresses of default/pod-b/eth9: ["fd00::2/64"] vs ["fd00::3/64"]',
      "MTU: 1400 vs 1500",
    ]);
    expect(linkDifferences({ ...a, local: { ...a.local, mac: "02:00:00:00:00:02" } }, other)).toContain(
      'MAC of default/pod-a/eth1: "02:00:00:00:00:02" vs "02:00:00:00:00:01"',
    );
  });
});

describe("every invalid input is code 103 naming pod, field, value and problem", () => {
  const L = (extra: Record<string, string>) =>
    pod({
      ratchet: "true",
      "ratchet.pair_name": "pod-b",
      "ratchet.local_ifname": "in1",
      "ratchet.pair_ifname": "in2",
      ...extra,
    });
  const A = (item: Record<string, unknown>, extra: unknown[] = []) =>
    annotated([...extra, { peer: "pod-b", local_ifname: "eth1", peer_ifname: "eth1", ...item }]);

  const cases: Array<[string, PodMeta, string]> = [
    [
      "ratchet.pod_name not the pod's own",
      L({ "ratchet.pod_name": "someone-else" }),
      'label ratchet.pod_name "someone-else" does not match the pod\'s name "pod-a"',
    ],
    [
      "pair_name missing with other link labels",
      pod({ ratchet: "true", "ratchet.local_ifname": "in1" }),
      "label ratchet.pair_name (missing) is required",
    ],
    ["local_ifname missing", L({ "ratchet.local_ifname": "" }), 'label ratchet.local_ifname "" is required'],
    [
      "pair_name not DNS-1123",
      L({ "ratchet.pair_name": "Pod_B" }),
      'label ratchet.pair_name "Pod_B" is not a valid pod name: it is not a DNS-1123 subdomain',
    ],
    [
      "pair_name is the pod itself",
      L({ "ratchet.pair_name": "pod-a" }),
      'label ratchet.pair_name "pod-a" names the pod itself',
    ],
    [
      "interface name too long",
      L({ "ratchet.local_ifname": "abcdefghijklmnop" }),
      'label ratchet.local_ifname "abcdefghijklmnop" is not a ' +
        "valid interface name: it is 16 bytes long, the limit is 15",
    ],
    [
      "interface name '..'",
      L({ "ratchet.pair_ifname": ".." }),
      "label ratchet.pair_ifname \"..\" is not a valid interface name: it may not be '.' or '..'",
    ],
    [
      "label IP not IPv4",
      L({ "ratchet.local_ip": "192.168.2.300" }),
      'label ratchet.local_ip "192.168.2.300" is not an IPv4 address',
    ],
    [
      "label IP with leading zero",
      L({ "ratchet.pair_ip": "10.0.0.01" }),
      'label ratchet.pair_ip "10.0.0.01" is not an IPv4 address',
    ],
    [
      "primary neither true nor false",
      L({ "ratchet.primary": "yes" }),
      'label ratchet.primary "yes" must be "true" or "false"',
    ],
    [
      "primary neither true nor false, without link labels",
      pod({ ratchet: "true", "ratchet.primary": "yes" }),
      'label ratchet.primary "yes" must be "true" or "false"',
    ],
    [
      "annotation not JSON",
      pod({ ratchet: "true" }, { "ratchet/links": "[{peer: pod-b}]" }),
      'annotation ratchet/links "[{peer: pod-b}]" is not valid JSON',
    ],
    [
      "annotation not a list",
      pod({ ratchet: "true" }, { "ratchet/links": '{"peer":"pod-b"}' }),
      `annotation ratchet/links ${show({ peer: "pod-b" })} must be a JSON list of links`,
    ],
    [
      "annotation field missing",
      annotated([{ peer: "pod-b", local_ifname: "eth1" }]),
      "annotation ratchet/links[0].peer_ifname (missing) is required",
    ],
    [
      "annotation unknown field",
      A({ peer_ips: "10.0.0.1/24" }),
      'annotation ratchet/links[0].peer_ips "10.0.0.1/24" is not a known field (known: peer, ' +
        "peer_namespace, local_ifname, peer_ifname, local_ip, peer_ip, local_mac, peer_mac, mtu, primary, " +
        "state, netem, local_netem, peer_netem)",
    ],
    [
      "state not up or down",
      A({ state: "off" }),
      'annotation ratchet/links[0].state "off" must be "up" or "down"',
    ],
    [
      "netem: a percent out of range",
      A({ netem: { loss_percent: 101 } }),
      "annotation ratchet/links[0].netem.loss_percent 101 must be 0..100",
    ],
    [
      "netem: an unknown field",
      A({ local_netem: { delay: 5 } }),
      "annotation ratchet/links[0].local_netem.delay 5 is not a known field (known: delay_ms, jitter_ms, loss_percent, " +
        "duplicate_percent, corrupt_percent, reorder_percent, rate_kbit)",
    ],
    [
      "netem: jitter without delay",
      A({ netem: { jitter_ms: 2 } }),
      'annotation ratchet/links[0].netem {"jitter_ms":2} jitter_ms needs delay_ms',
    ],
    [
      "netem: rate below 8",
      A({ peer_netem: { rate_kbit: 4 } }),
      "links[0].peer_netem.rate_kbit 4 must be 8..100000000",
    ],
    [
      "netem: delay finer than 1 us",
      A({ netem: { delay_ms: 1.0004 } }),
      "links[0].netem.delay_ms 1.0004 must be a multiple of 0.001 (1 us)",
    ],
    ["annotation wrong type", A({ mtu: "1400" }), 'annotation ratchet/links[0].mtu "1400" must be a number'],
    ["peer not DNS-1123", A({ peer: "-b" }), 'annotation ratchet/links[0].peer "-b" is not a valid pod name'],
    [
      "peer_namespace not a DNS-1123 label",
      A({ peer_namespace: "a.b" }),
      'annotation ratchet/links[0].peer_namespace "a.b" is not a valid namespace: it is not a DNS-1123 label',
    ],
    ["link to itself", A({ peer: "pod-a" }), 'annotation ratchet/links[0].peer "pod-a" names the pod itself'],
    [
      "interface name with ':'",
      A({ local_ifname: "eth1:0" }),
      'annotation ratchet/links[0].local_ifname "eth1:0" is not a ' +
        "valid interface name: it may not contain '/', ':', NUL or whitespace",
    ],
    [
      "interface name with a control character",
      A({ peer_ifname: "eth\u0007" }),
      'annotation ratchet/links[0].peer_ifname "eth\\u0007" is not ' +
        "a valid interface name: it may not contain control characters",
    ],
    [
      "IP without prefix",
      A({ local_ip: "10.0.0.1" }),
      'annotation ratchet/links[0].local_ip "10.0.0.1" needs a prefix length',
    ],
    [
      "IPv4 prefix > 32",
      A({ local_ip: "10.0.0.1/33" }),
      'annotation ratchet/links[0].local_ip "10.0.0.1/33" has a bad prefix length: IPv4 allows 0..32',
    ],
    [
      "IPv6 prefix > 128",
      A({ peer_ip: ["10.0.0.2/24", "fd00::2/129"] }),
      'annotation ratchet/links[0].peer_ip[1] "fd00::2/129" has a bad prefix length: IPv6 allows 0..128',
    ],
    [
      "bad IPv6",
      A({ peer_ip: "fd00:::2/64" }),
      'annotation ratchet/links[0].peer_ip "fd00:::2/64" is not an IPv4 or IPv6 address',
    ],
    [
      "repeated address",
      A({ local_ip: ["10.0.0.1/24", "10.0.0.1/30"] }),
      'annotation ratchet/links[0].local_ip[1] "10.0.0.1/30" repeats an address of this end',
    ],
    [
      "MTU too small",
      A({ mtu: 67 }),
      `annotation ratchet/links[0].mtu ${show(67)} is out of range 68..65535`,
    ],
    [
      "MTU too large",
      A({ mtu: 65536 }),
      `annotation ratchet/links[0].mtu ${show(65536)} is out of range 68..65535`,
    ],
    [
      "MTU not an integer",
      A({ mtu: 1400.5 }),
      `annotation ratchet/links[0].mtu ${show(1400.5)} is not an integer`,
    ],
    [
      "MAC malformed",
      A({ local_mac: "02:00:00:00:00" }),
      'annotation ratchet/links[0].local_mac "02:00:00:00:00" is not a MAC address',
    ],
    [
      "MAC multicast",
      A({ local_mac: "01:00:5e:00:00:01" }),
      'annotation ratchet/links[0].local_mac "01:00:5e:00:00:01" is a multicast address',
    ],
    [
      "MAC broadcast",
      A({ peer_mac: "ff:ff:ff:ff:ff:ff" }),
      'annotation ratchet/links[0].peer_mac "ff:ff:ff:ff:ff:ff" is the broadcast address',
    ],
    [
      "MAC all zeros",
      A({ peer_mac: "00:00:00:00:00:00" }),
      'annotation ratchet/links[0].peer_mac "00:00:00:00:00:00" is all zeros',
    ],
    [
      "duplicate local interface",
      A({ peer: "pod-c" }, [{ peer: "pod-b", local_ifname: "eth1", peer_ifname: "eth1" }]),
      'annotation ratchet/links[1].local_ifname "eth1" is also used by ' +
        "annotation ratchet/links[0]: interface names must be unique in a pod",
    ],
    [
      "duplicate peer interface",
      A({ local_ifname: "eth2" }, [{ peer: "pod-b", local_ifname: "eth1", peer_ifname: "eth1" }]),
      'annotation ratchet/links[1].peer_ifname "eth1" is also used on default/pod-b ' +
        "by annotation ratchet/links[0]: interface names must be unique in a pod",
    ],
    [
      "duplicate between labels and annotation",
      annotated([{ peer: "pod-c", local_ifname: "in1", peer_ifname: "x" }], {
        "ratchet.pair_name": "pod-b",
        "ratchet.local_ifname": "in1",
        "ratchet.pair_ifname": "in2",
      }),
      'annotation ratchet/links[0].local_ifname "in1" is also used by labels ratchet.*',
    ],
    [
      "same link twice, conflicting",
      A({ mtu: 1500, local_ip: "10.0.0.1/24" }, [
        { peer: "pod-b", local_ifname: "eth1", peer_ifname: "eth1", mtu: 1400, local_ip: "10.0.0.1/24" },
      ]),
      'annotation ratchet/links[1] "default/pod-a/eth1:default/pod-b/eth1" declares ' +
        "the same link as annotation ratchet/links[0] with other values: MTU: 1400 vs 1500",
    ],
    [
      "annotation over 256 KiB",
      pod({ ratchet: "true" }, { "ratchet/links": `[${" ".repeat(MAX_ANNOTATION_BYTES)}]` }),
      'annotation ratchet/links "[      ',
    ],
    [
      "more than 4096 links",
      annotated(
        Array.from({ length: MAX_LINKS + 1 }, (_, i) => ({
          peer: `p${i}`,
          local_ifname: `e${i}`,
          peer_ifname: "e0",
        })),
      ),
      'annotation ratchet/links "[4097 links]" lists 4097 links, the limit is 4096',
    ],
  ];

  test.each(cases)("%s", (_what, input, expected) => {
    const err = failure(() => podLinks(input, OPTS));
    expect(err.code).toBe(103);
    expect(err.message).toStartWith(`pod ${input.namespace}/${input.name}: `);
    expect(err.message).toContain(expected);
  });

  test("the over-size message gives the size and the limit", () => {
    const err = failure(() =>
      podLinks(pod({ ratchet: "true" }, { "ratchet/links": `[${" ".repeat(MAX_ANNOTATION_BYTES)}]` }), OPTS),
    );
    expect(err.message).toEndWith("is 262146 bytes long, the limit is 262144");
  });

  test("labels and annotation together over 4096 links", () => {
    const items = Array.from({ length: MAX_LINKS }, (_, i) => ({
      peer: `p${i}`,
      local_ifname: `e${i}`,
      peer_ifname: "e0",
    }));
    const err = failure(() =>
      podLinks(
        annotated(items, {
          "ratchet.pair_name": "pod-b",
          "ratchet.local_ifname": "in1",
          "ratchet.pair_ifname": "in2",
        }),
        OPTS,
      ),
    );
    expect(err.code).toBe(103);
    expect(err.message).toContain("makes 4097 links, the limit is 4096");
  });

  test("the pod's own name and namespace are checked", () => {
    const err = failure(() => podLinks(pod({ ratchet: "true" }, {}, "pod-a", "Bad_NS"), OPTS));
    expect(err.message).toBe(
      'pod "Bad_NS/pod-a": namespace "Bad_NS" is not a valid namespace: ' +
        "it is not a DNS-1123 label (lower-case letters, digits and '-')",
    );
  });

  test("a pod name with control characters is quoted in the message", () => {
    const err = failure(() => podLinks(pod({ ratchet: "true" }, {}, "a\nb"), OPTS));
    expect(err.message).toStartWith('pod "default/a\\nb": name "a\\nb" is not a valid pod name');
    expect(err.message).not.toContain("\n");
  });

  test("4096 links to one peer fit the annotation and are read", () => {
    const items = Array.from({ length: MAX_LINKS }, (_, i) => ({
      peer: "pod-b",
      local_ifname: `e${i}`,
      peer_ifname: `f${i}`,
    }));
    expect(JSON.stringify(items).length).toBeLessThan(MAX_ANNOTATION_BYTES);
    expect(podLinks(annotated(items), OPTS).links).toHaveLength(MAX_LINKS);
  });
});

describe("address parsing", () => {
  test.each([
    ["10.0.0.1", "10.0.0.1"],
    ["::", "::"],
    ["::1", "::1"],
    ["FD00:0:0:0:0:0:0:1", "fd00::1"],
    ["2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"],
    ["2001:0db8:0000:0000:0000:ff00:0042:8329", "2001:db8::ff00:42:8329"],
    ["::ffff:192.0.2.1", "::ffff:c000:201"],
    ["1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8"],
  ])("%s -> %s", (input, canonical) => {
    expect(parseIpAddress(input)?.address).toBe(canonical);
  });

  test.each([
    "",
    "1.2.3",
    "1.2.3.4.5",
    "256.1.1.1",
    "1:2:3:4:5:6:7:8:9",
    "1::2::3",
    "fe80::1%eth0",
    "12345::",
    "1.2.3.4/24",
  ])("%p is not an address", (input) => {
    expect(parseIpAddress(input)).toBeUndefined();
  });

  test("CIDR", () => {
    expect(parseCidr("fd00::1/64")).toEqual({
      family: 6,
      address: "fd00::1",
      prefix: 64,
      text: "fd00::1/64",
    });
    expect(parseCidr("10.0.0.1/08")).toEqual({ problem: "has a bad prefix length: IPv4 allows 0..32" });
  });
});

describe("impairments and state in the annotation", () => {
  const base = { peer: "b", local_ifname: "x0", peer_ifname: "x1" };
  const parse = (link: Record<string, unknown>) =>
    podLinks(pod({ ratchet: "true" }, { "ratchet/links": JSON.stringify([{ ...base, ...link }]) }, "a"), OPTS)
      .links[0] as LinkSpec;

  test("netem goes on both ends; local_netem and peer_netem replace it for their end", () => {
    const l = parse({ netem: { delay_ms: 10 }, peer_netem: { rate_kbit: 1000 }, state: "down" });
    expect(l.local.netem).toEqual({ delay_ms: 10 });
    expect(l.peer.netem).toEqual({ rate_kbit: 1000 });
    expect(l.state).toBe("down");
  });

  test("null or {} declares no impairment; absent declares nothing", () => {
    expect(parse({ netem: null }).local.netem).toEqual({});
    expect(parse({ local_netem: {} }).local.netem).toEqual({});
    expect(parse({}).local.netem).toBeUndefined();
  });

  test("two declarations agree when one pod's local_netem is the other's peer_netem", () => {
    const a = parse({ local_netem: { loss_percent: 1 } });
    const b = podLinks(
      pod(
        { ratchet: "true" },
        {
          "ratchet/links": JSON.stringify([
            { peer: "a", local_ifname: "x1", peer_ifname: "x0", peer_netem: { loss_percent: 1 } },
          ]),
        },
        "b",
      ),
      OPTS,
    ).links[0] as LinkSpec;
    expect(linkDifferences(a, b)).toEqual([]);
    const c = { ...b, peer: { ...b.peer, netem: { loss_percent: 2 } } };
    expect(linkDifferences(a, c)[0]).toContain("netem of default/a/x0");
  });
});
