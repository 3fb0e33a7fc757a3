import { readFileSync } from "node:fs";
import { Etcd3, type IOptions } from "etcd3";
import { etcdEndpoints, type NetConf } from "../cni/config.ts";

/**
 * Opens an etcd client as the config describes: endpoints, TLS (CA, client certificate)
 * and username/password. Files are read now, so a bad path fails here with its name.
 * Only the child imports this module: the parent must never load etcd3.
 */
export function openEtcd(conf: NetConf, opts: { dialTimeoutMs?: number } = {}): Etcd3 {
  const options: IOptions = {
    hosts: etcdEndpoints(conf),
    dialTimeout: opts.dialTimeoutMs ?? 3000,
  };
  if (conf.etcd_ca_file || conf.etcd_cert_file) {
    options.credentials = {
      rootCertificate: conf.etcd_ca_file ? readFileSync(conf.etcd_ca_file) : Buffer.alloc(0),
      ...(conf.etcd_cert_file ? { certChain: readFileSync(conf.etcd_cert_file) } : {}),
      ...(conf.etcd_key_file ? { privateKey: readFileSync(conf.etcd_key_file) } : {}),
    };
  }
  if (conf.etcd_username && conf.etcd_password_file) {
    options.auth = {
      username: conf.etcd_username,
      password: readFileSync(conf.etcd_password_file, "utf8").trim(),
    };
  }
  return new Etcd3(options);
}
