//! Table-driven tests of manifest decoding, defaulting and validation: one case per rule at
//! least, each checking the exact messages.

// An integration test crate: its tests are its top level.
#![allow(clippy::tests_outside_test_module)]

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use vmm::config::{self, Binding, Manifest, ManifestError, NetworkSource, RunPolicy, VmConfig};

const BASE: &str = r#"
apiVersion: virt.virtink.smartx.com/v1alpha1
kind: VirtualMachine
metadata:
  name: demo
spec:
  instance:
    memory:
      size: 1Gi
    kernel:
      image: vmlinuz
      cmdline: console=ttyS0
    disks:
      - name: root
    interfaces:
      - name: pod
  volumes:
    - name: root
      containerDisk:
        image: disk.img
  networks:
    - name: pod
      pod: {}
"#;

fn base() -> Value {
    serde_saphyr::from_str(BASE).unwrap()
}

/// Sets (or, for `Value::Null`, removes) the field at JSON pointer `ptr`, creating parents.
fn set(doc: &mut Value, ptr: &str, value: Value) {
    let mut parts: Vec<&str> = ptr.split('/').skip(1).collect();
    let last = parts.pop().unwrap();
    let mut node = doc;
    for part in parts {
        node = match part.parse::<usize>() {
            Ok(i) => &mut node[i],
            Err(_) => {
                if node.get(part).is_none() {
                    node[part] = json!({});
                }
                &mut node[part]
            }
        };
    }
    match (last.parse::<usize>(), value) {
        (Ok(i), v) => {
            let list = node.as_array_mut().unwrap();
            if i == list.len() {
                list.push(v);
            } else {
                list[i] = v;
            }
        }
        (Err(_), Value::Null) => {
            node.as_object_mut().unwrap().remove(last);
        }
        (Err(_), v) => node[last] = v,
    }
}

fn load_text(text: &str) -> Result<Manifest, ManifestError> {
    config::documents::parse(text, Path::new("vm.yaml"), PathBuf::from("/manifests"))
}

fn load_value(doc: &Value) -> Result<Manifest, ManifestError> {
    load_text(&serde_json::to_string(doc).unwrap())
}

fn with(patches: &[(&str, Value)]) -> Value {
    let mut doc = base();
    for (ptr, v) in patches {
        set(&mut doc, ptr, v.clone());
    }
    doc
}

/// The validation messages of `doc`, which must fail validation.
fn errors(doc: &Value) -> Vec<String> {
    match load_value(doc) {
        Err(ManifestError::Invalid { errors, .. }) => {
            errors.iter().map(ToString::to_string).collect()
        }
        Err(e) => panic!("expected validation errors, got {e}"),
        Ok(_) => panic!("expected validation errors, got a valid manifest"),
    }
}

/// The decode problems of `text`, which must fail decoding.
fn problems(text: &str) -> Vec<String> {
    match load_text(text) {
        Err(ManifestError::Decode { problems, .. }) => problems,
        Err(e) => panic!("expected decode problems, got {e}"),
        Ok(_) => panic!("expected decode problems, got a valid manifest"),
    }
}

struct Case {
    name: &'static str,
    patches: Vec<(&'static str, Value)>,
    want: Vec<&'static str>,
}

fn case(name: &'static str, patches: Vec<(&'static str, Value)>, want: Vec<&'static str>) -> Case {
    Case {
        name,
        patches,
        want,
    }
}

#[test]
fn each_rule_reports_its_message() {
    let iface0 = "/spec/instance/interfaces/0";
    let cases = vec![
        case(
            "queue pairs annotation",
            vec![(
                "/metadata/annotations",
                json!({"vmm.virtink.smartx.com/network-queue-pairs": "9"}),
            )],
            vec![
                "metadata.annotations[vmm.virtink.smartx.com/network-queue-pairs]: Invalid value: \"9\": must be \"vcpus\" or a number from 1 to 8",
            ],
        ),
        case(
            "vhost-net annotation",
            vec![(
                "/metadata/annotations",
                json!({"vmm.virtink.smartx.com/vhost-net": "yes"}),
            )],
            vec![
                "metadata.annotations[vmm.virtink.smartx.com/vhost-net]: Invalid value: \"yes\": must be \"true\" or \"false\"",
            ],
        ),
        case(
            "vhost-net has one queue pair",
            vec![(
                "/metadata/annotations",
                json!({
                    "vmm.virtink.smartx.com/vhost-net": "true",
                    "vmm.virtink.smartx.com/network-queue-pairs": "vcpus",
                }),
            )],
            vec![
                "metadata.annotations[vmm.virtink.smartx.com/vhost-net]: Invalid value: \"true\": a vhost-net NIC has one queue pair: vmm.virtink.smartx.com/network-queue-pairs must be \"1\" or absent",
            ],
        ),
        case(
            "memory size must be positive",
            vec![("/spec/instance/memory/size", json!("-1Gi"))],
            vec!["spec.instance.memory.size: Invalid value: -1073741824: must be greater than 0"],
        ),
        case(
            "memory size must be whole pages",
            vec![("/spec/instance/memory/size", json!("1000"))],
            vec!["spec.instance.memory.size: Invalid value: 1000: must be a multiple of 4Ki"],
        ),
        case(
            "hugepage size enum",
            vec![(
                "/spec/instance/memory/hugepages",
                json!({"pageSize": "4Mi"}),
            )],
            vec![
                "spec.instance.memory.hugepages.pageSize: Unsupported value: \"4Mi\": supported values: \"2Mi\", \"1Gi\"",
            ],
        ),
        case(
            "memory a multiple of the hugepage size",
            vec![
                ("/spec/instance/memory/size", json!("1536Mi")),
                ("/spec/instance/memory/hugepages", json!({})),
            ],
            vec![
                "spec.instance.memory.size: Invalid value: 1610612736: 1610612736 is not positive integer multiple of 1Gi",
            ],
        ),
        case(
            "hugepages request equals memory, limit equals request",
            vec![
                (
                    "/spec/instance/memory/hugepages",
                    json!({"pageSize": "2Mi"}),
                ),
                (
                    "/spec/resources",
                    json!({"requests": {"hugepages-2Mi": "512Mi"}}),
                ),
            ],
            vec![
                "spec.resources.requests.hugepages-2Mi: Invalid value: \"512Mi\": must equal to instance memory size",
                "spec.resources.limits.hugepages-2Mi: Invalid value: \"1Gi\": must equal to hugepages request",
            ],
        ),
        case(
            "dedicated CPUs: request equals vCPUs, limit equals request",
            vec![
                ("/spec/instance/cpu", json!({"dedicatedCPUPlacement": true})),
                ("/spec/resources", json!({"requests": {"cpu": "2"}})),
            ],
            vec![
                "spec.resources.requests.cpu: Invalid value: \"2\": must equal to number of vCPUs",
                "spec.resources.limits.cpu: Invalid value: \"1\": must equal to CPU request",
            ],
        ),
        case(
            "dedicated CPUs: memory request covers guest RAM and overhead",
            vec![
                ("/spec/instance/cpu", json!({"dedicatedCPUPlacement": true})),
                (
                    "/spec/resources",
                    json!({"requests": {"memory": "1Gi"}, "limits": {"memory": "2Gi"}}),
                ),
            ],
            vec![
                "spec.resources.requests.memory: Invalid value: \"1Gi\": must not be less than 1280Mi",
                "spec.resources.limits.memory: Invalid value: \"2Gi\": must equal to memory request",
            ],
        ),
        case(
            "kernel image and cmdline required",
            vec![("/spec/instance/kernel", json!({}))],
            vec![
                "spec.instance.kernel.image: Required value",
                "spec.instance.kernel.cmdline: Required value",
            ],
        ),
        case(
            "disk names unique and required",
            vec![(
                "/spec/instance/disks",
                json!([{"name": "root"}, {"name": "root"}, {}]),
            )],
            vec![
                "spec.instance.disks[1].name: Duplicate value: \"root\"",
                "spec.instance.disks[2].name: Required value",
            ],
        ),
        case(
            "file systems not supported",
            vec![("/spec/instance/fileSystems", json!([{"name": "fs"}]))],
            vec!["spec.instance.fileSystems: Forbidden: not supported by vmm yet"],
        ),
        case(
            "interface names unique",
            vec![(
                "/spec/instance/interfaces",
                json!([{"name": "pod"}, {"name": "pod", "mac": "52:54:00:00:00:09"}]),
            )],
            vec!["spec.instance.interfaces[1].name: Duplicate value: \"pod\""],
        ),
        case(
            "interface name required",
            vec![(
                "/spec/instance/interfaces/1",
                json!({"mac": "52:54:00:00:00:09"}),
            )],
            vec!["spec.instance.interfaces[1].name: Required value"],
        ),
        case(
            "malformed MAC, in Go's words",
            vec![(iface0, json!({"name": "pod", "mac": "01:1c:ba:0a:45:8"}))],
            vec![
                "spec.instance.interfaces[0].mac: Invalid value: \"01:1c:ba:0a:45:8\": address 01:1c:ba:0a:45:8: invalid MAC address",
            ],
        ),
        case(
            "multicast MAC",
            vec![(iface0, json!({"name": "pod", "mac": "01:1c:ba:0a:45:88"}))],
            vec![
                "spec.instance.interfaces[0].mac: Invalid value: \"01:1c:ba:0a:45:88\": must be a unicast address (the least significant bit of the first octet must be 0)",
            ],
        ),
        case(
            "all-zero MAC",
            vec![(iface0, json!({"name": "pod", "mac": "00:00:00:00:00:00"}))],
            vec![
                "spec.instance.interfaces[0].mac: Invalid value: \"00:00:00:00:00:00\": must not be all zeros",
            ],
        ),
        case(
            "EUI-64 MAC",
            vec![(
                iface0,
                json!({"name": "pod", "mac": "02:00:5e:10:00:00:00:01"}),
            )],
            vec![
                "spec.instance.interfaces[0].mac: Invalid value: \"02:00:5e:10:00:00:00:01\": must be a 48-bit Ethernet MAC address",
            ],
        ),
        case(
            "duplicate MACs",
            vec![
                (
                    "/spec/instance/interfaces/1",
                    json!({"name": "net1", "mac": "52:54:00:00:00:01"}),
                ),
                (iface0, json!({"name": "pod", "mac": "52:54:00:00:00:01"})),
                (
                    "/spec/networks/1",
                    json!({"name": "net1", "multus": {"networkName": "x"}}),
                ),
            ],
            vec!["spec.instance.interfaces[1].mac: Duplicate value: \"52:54:00:00:00:01\""],
        ),
        case(
            "one binding method",
            vec![(
                iface0,
                json!({"name": "pod", "bridge": {}, "masquerade": {}}),
            )],
            vec![
                "spec.instance.interfaces[0].masquerade: Forbidden: may not specify more than 1 binding method",
            ],
        ),
        case(
            "unparsable CIDR, reported twice as Virtink does",
            vec![(
                iface0,
                json!({"name": "pod", "masquerade": {"cidr": "10.0.2.0/33"}}),
            )],
            vec![
                "spec.instance.interfaces[0].masquerade.cidr: Invalid value: \"10.0.2.0/33\": invalid CIDR address: 10.0.2.0/33",
                "spec.instance.interfaces[0].masquerade.cidr: Invalid value: \"10.0.2.0/33\": must specify subnet",
            ],
        ),
        case(
            "CIDR holds at least 4 addresses",
            vec![(
                iface0,
                json!({"name": "pod", "masquerade": {"cidr": "10.0.2.0/31"}}),
            )],
            vec![
                "spec.instance.interfaces[0].masquerade.cidr: Invalid value: \"10.0.2.0/31\": must contain at least 4 IPs",
            ],
        ),
        case(
            "masquerade CIDR is IPv4",
            vec![(
                iface0,
                json!({"name": "pod", "masquerade": {"cidr": "fd00::/64"}}),
            )],
            vec![
                "spec.instance.interfaces[0].masquerade.cidr: Invalid value: \"fd00::/64\": must be an IPv4 CIDR: the masquerade network is IPv4",
            ],
        ),
        case(
            "masquerade IPv6 CIDR is IPv6, /64 to /126",
            vec![(
                iface0,
                json!({"name": "pod", "masquerade": {"ipv6Cidr": "fd00::/127"}}),
            )],
            vec![
                "spec.instance.interfaces[0].masquerade.ipv6Cidr: Invalid value: \"fd00::/127\": the prefix length must be 64 to 126",
            ],
        ),
        case(
            "masquerade CIDRs are unicast ranges",
            vec![(
                iface0,
                json!({"name": "pod", "masquerade": {"cidr": "224.0.0.0/24", "ipv6Cidr": "ff02::/120"}}),
            )],
            vec![
                "spec.instance.interfaces[0].masquerade.cidr: Invalid value: \"224.0.0.0/24\": must be a unicast range: the gateway and the guest take addresses in it",
                "spec.instance.interfaces[0].masquerade.ipv6Cidr: Invalid value: \"ff02::/120\": must be a global or unique local unicast range, such as fd10:0:2::/120",
            ],
        ),
        case(
            "masquerade IPv6 CIDR holds no loopback",
            vec![(
                iface0,
                json!({"name": "pod", "masquerade": {"cidr": "127.0.0.0/30", "ipv6Cidr": "::/120"}}),
            )],
            vec![
                "spec.instance.interfaces[0].masquerade.cidr: Invalid value: \"127.0.0.0/30\": must be a unicast range: the gateway and the guest take addresses in it",
                "spec.instance.interfaces[0].masquerade.ipv6Cidr: Invalid value: \"::/120\": must be a global or unique local unicast range, such as fd10:0:2::/120",
            ],
        ),
        case(
            "masquerade IPv6 CIDR is not IPv4",
            vec![(
                iface0,
                json!({"name": "pod", "masquerade": {"ipv6Cidr": "10.0.2.0/30"}}),
            )],
            vec![
                "spec.instance.interfaces[0].masquerade.ipv6Cidr: Invalid value: \"10.0.2.0/30\": must be an IPv6 CIDR such as fd10:0:2::/120",
            ],
        ),
        case(
            "masquerade ports in range, known protocol, no duplicates",
            vec![(
                iface0,
                json!({"name": "pod", "masquerade": {"ports": [
                    {"port": 0},
                    {"port": 53, "protocol": "SCTP"},
                    {"port": 80, "protocol": "TCP"},
                    {"name": "http", "port": 80},
                    {"port": 80, "protocol": "UDP"},
                ]}}),
            )],
            vec![
                "spec.instance.interfaces[0].masquerade.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive",
                "spec.instance.interfaces[0].masquerade.ports[1].protocol: Unsupported value: \"SCTP\": supported values: \"TCP\", \"UDP\"",
                "spec.instance.interfaces[0].masquerade.ports[3]: Duplicate value: \"80/TCP\"",
            ],
        ),
        case(
            "masquerade only on the pod network",
            vec![
                (iface0, json!({"name": "pod", "masquerade": {}})),
                (
                    "/spec/networks/0",
                    json!({"name": "pod", "multus": {"networkName": "x"}}),
                ),
            ],
            vec![
                "spec.instance.interfaces[0].masquerade: Forbidden: may only be used with a pod network",
            ],
        ),
        case(
            "sriov only on a multus network",
            vec![(iface0, json!({"name": "pod", "sriov": {}}))],
            vec![
                "spec.instance.interfaces[0].sriov: Forbidden: may only be used with a multus network",
            ],
        ),
        case(
            "vdpa and vhostUser not supported",
            vec![
                (iface0, json!({"name": "pod", "vdpa": {"numQueues": 2}})),
                (
                    "/spec/instance/interfaces/1",
                    json!({"name": "net1", "vhostUser": {}}),
                ),
                (
                    "/spec/networks/1",
                    json!({"name": "net1", "multus": {"networkName": "x"}}),
                ),
            ],
            vec![
                "spec.instance.interfaces[0].vdpa: Forbidden: not supported by vmm yet",
                "spec.instance.interfaces[1].vhostUser: Forbidden: not supported by vmm yet",
            ],
        ),
        case(
            "volume names unique and required, one source",
            vec![(
                "/spec/volumes",
                json!([
                    {"name": "root", "containerDisk": {"image": "a"}},
                    {"name": "root", "containerDisk": {"image": "b"}},
                    {"containerDisk": {"image": "c"}},
                    {"name": "none"},
                    {"name": "two", "containerDisk": {"image": "d"}, "dataVolume": {"volumeName": "e"}},
                ]),
            )],
            vec![
                "spec.volumes[1].name: Duplicate value: \"root\"",
                "spec.volumes[2].name: Required value",
                "spec.volumes[3]: Required value: at least 1 volume source is required",
                "spec.volumes[4].dataVolume: Forbidden: may not specify more than 1 volume source",
            ],
        ),
        case(
            "each volume source's required fields",
            vec![(
                "/spec/volumes",
                json!([
                    {"name": "root", "containerDisk": {}},
                    {"name": "b", "containerRootfs": {"image": "x"}},
                    {"name": "c", "persistentVolumeClaim": {}},
                    {"name": "d", "dataVolume": {}},
                    {"name": "e", "containerRootfs": {"size": "0"}},
                ]),
            )],
            vec![
                "spec.volumes[0].containerDisk.image: Required value",
                "spec.volumes[1].containerRootfs.size: Invalid value: 0: must be greater than 0",
                "spec.volumes[2].persistentVolumeClaim.claimName: Required value",
                "spec.volumes[3].dataVolume.volumeName: Required value",
                "spec.volumes[4].containerRootfs.image: Required value",
                "spec.volumes[4].containerRootfs.size: Invalid value: 0: must be greater than 0",
            ],
        ),
        case(
            "cloud-init: one user data, one network data",
            vec![(
                "/spec/volumes/1",
                json!({"name": "ci", "cloudInit": {
                    "userData": "a", "userDataBase64": "Yg==", "userDataSecretName": "s",
                    "networkData": "n", "networkDataSecretName": "t"}}),
            )],
            vec![
                "spec.volumes[1].cloudInit.userDataBase64: Forbidden: may not specify more than 1 user data",
                "spec.volumes[1].cloudInit.userDataSecretName: Forbidden: may not specify more than 1 user data",
                "spec.volumes[1].cloudInit.networkDataSecretName: Forbidden: may not specify more than 1 network data",
            ],
        ),
        case(
            "no kernel needs a disk to boot",
            vec![
                ("/spec/instance/kernel", Value::Null),
                ("/spec/instance/disks", json!([])),
                ("/spec/volumes", json!([])),
            ],
            vec!["spec.instance.kernel: Required value: a VM without disks needs a kernel"],
        ),
        case(
            "cloud-init: base64 fields must decode",
            vec![(
                "/spec/volumes/1",
                json!({"name": "ci", "cloudInit": {
                    "userDataBase64": "not base64!", "networkDataBase64": "dmVyc2lvbjogMgo="}}),
            )],
            vec![
                "spec.volumes[1].cloudInit.userDataBase64: Invalid value: \"not base64!\": not valid base64",
            ],
        ),
        case(
            "network names unique and required, one source, networkName required",
            vec![
                (
                    "/spec/networks",
                    json!([
                        {"name": "pod", "pod": {}},
                        {"name": "pod", "multus": {"networkName": "a"}},
                        {"pod": {}},
                        {"name": "x"},
                        {"name": "y", "pod": {}, "multus": {"networkName": "b"}},
                        {"name": "z", "multus": {}},
                    ]),
                ),
                (
                    "/spec/instance/interfaces",
                    json!([
                        {"name": "pod"},
                        {"name": "x", "mac": "52:54:00:00:00:0a"},
                        {"name": "y", "mac": "52:54:00:00:00:0b"},
                        {"name": "z", "mac": "52:54:00:00:00:0c"},
                    ]),
                ),
            ],
            vec![
                "spec.networks[1].name: Duplicate value: \"pod\"",
                "spec.networks[2].name: Required value",
                "spec.networks[2].pod: Forbidden: may not specify more than 1 pod network",
                "spec.networks[3]: Required value: at least 1 network source is required",
                "spec.networks[4].pod: Forbidden: may not specify more than 1 pod network",
                "spec.networks[4].multus: Forbidden: may not specify more than 1 network source",
                "spec.networks[5].multus.networkName: Required value",
            ],
        ),
        case(
            "interfaces and networks pair up by name",
            vec![
                ("/spec/instance/interfaces/0/name", json!("eth")),
                ("/spec/networks/0/name", json!("pod")),
            ],
            vec![
                "spec.instance.interfaces[0].name: Invalid value: \"eth\": must match the name of a network in spec.networks",
                "spec.networks[0].name: Invalid value: \"pod\": must match the name of an interface in spec.instance.interfaces",
            ],
        ),
        case(
            "a disk needs a volume",
            vec![("/spec/instance/disks/1", json!({"name": "data"}))],
            vec![
                "spec.instance.disks[1].name: Invalid value: \"data\": must match the name of a volume in spec.volumes",
            ],
        ),
        case(
            "runPolicy enum",
            vec![("/spec/runPolicy", json!("Sometimes"))],
            vec![
                "spec.runPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"RerunOnFailure\", \"Once\", \"Manual\", \"Halted\"",
            ],
        ),
        case(
            "name required",
            vec![("/metadata/name", Value::Null)],
            vec!["metadata.name: Required value: name or generateName is required"],
        ),
        case(
            "name is a DNS subdomain",
            vec![("/metadata/name", json!("Demo_VM"))],
            vec![
                "metadata.name: Invalid value: \"Demo_VM\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
            ],
        ),
        case(
            "at most 254 vCPUs",
            vec![(
                "/spec/instance/cpu",
                json!({"sockets": 4, "coresPerSocket": 64}),
            )],
            vec![
                "spec.instance.cpu: Invalid value: 256: sockets × coresPerSocket must not exceed 254 vCPUs",
            ],
        ),
        case(
            "spec required",
            vec![("/spec", Value::Null)],
            vec!["spec: Required value"],
        ),
        case(
            "instance required",
            vec![
                ("/spec/instance", Value::Null),
                ("/spec/networks", json!([])),
            ],
            vec!["spec.instance: Required value"],
        ),
        case(
            "every error at once",
            vec![
                ("/spec/runPolicy", json!("Never")),
                ("/spec/instance/kernel/image", json!("")),
                (iface0, json!({"name": "pod", "mac": "zz"})),
                ("/spec/volumes/0/containerDisk/image", json!("")),
            ],
            vec![
                "spec.runPolicy: Unsupported value: \"Never\": supported values: \"Always\", \"RerunOnFailure\", \"Once\", \"Manual\", \"Halted\"",
                "spec.instance.kernel.image: Required value",
                "spec.instance.interfaces[0].mac: Invalid value: \"zz\": address zz: invalid MAC address",
                "spec.volumes[0].containerDisk.image: Required value",
            ],
        ),
    ];
    let mut failures = Vec::new();
    for c in &cases {
        let got = errors(&with(&c.patches));
        if got != c.want {
            failures.push(format!(
                "case {:?}:\n  want {:#?}\n  got  {:#?}",
                c.name, c.want, got
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn defaults_follow_virtink() {
    let m = load_value(&base()).unwrap();
    let spec = m.vm.spec.as_ref().unwrap();
    assert_eq!(spec.run_policy, "Once");
    let instance = spec.instance.as_ref().unwrap();
    assert_eq!(
        (instance.cpu.sockets, instance.cpu.cores_per_socket),
        (1, 1)
    );
    let iface = &instance.interfaces[0];
    assert!(iface.bridge.is_some());
    assert_eq!(iface.mac, net::MacAddr::derived("demo", "pod").to_string());

    let cfg = VmConfig::from_manifest(&m);
    assert_eq!(cfg.memory_bytes, 1 << 30);
    assert_eq!(cfg.topology.vcpus(), 1);
    assert_eq!(cfg.run_policy, RunPolicy::Once);
    assert_eq!(
        cfg.kernel.as_ref().unwrap().image,
        PathBuf::from("/manifests/vmlinuz")
    );
    assert_eq!(cfg.interfaces[0].binding, Binding::Bridge);
    assert_eq!(cfg.interfaces[0].pod_link(), "eth0");
}

#[test]
fn memory_defaults_to_the_memory_request_then_1gi() {
    let doc = with(&[
        ("/spec/instance/memory", json!({})),
        ("/spec/resources", json!({"requests": {"memory": "512Mi"}})),
    ]);
    let m = load_value(&doc).unwrap();
    assert_eq!(VmConfig::from_manifest(&m).memory_bytes, 512 << 20);
    let doc = with(&[("/spec/instance/memory", json!({}))]);
    assert_eq!(
        VmConfig::from_manifest(&load_value(&doc).unwrap()).memory_bytes,
        1 << 30
    );
}

#[test]
fn masquerade_defaults_and_resolves() {
    let doc = with(&[(
        "/spec/instance/interfaces/0",
        json!({"name": "pod", "masquerade": {"ports": [{"port": 8080}]}}),
    )]);
    let m = load_value(&doc).unwrap();
    let masq =
        m.vm.spec
            .as_ref()
            .unwrap()
            .instance
            .as_ref()
            .unwrap()
            .interfaces[0]
            .masquerade
            .clone()
            .unwrap();
    assert_eq!(masq.cidr, "10.0.2.0/30");
    assert_eq!(masq.ports.unwrap()[0].protocol, "TCP");
    let cfg = VmConfig::from_manifest(&m);
    assert_eq!(
        cfg.interfaces[0].binding,
        Binding::Masquerade {
            network: "10.0.2.0".parse().unwrap(),
            prefix: 30,
            ports: Some(vec![(8080, config::Protocol::Tcp)]),
            ipv6: ("fd10:0:2::".parse().unwrap(), 120),
        }
    );
    assert_eq!(masq.ipv6_cidr, "", "KubeVirt's default is not written in");
    let doc = with(&[(
        "/spec/instance/interfaces/0",
        json!({"name": "pod", "masquerade": {"ipv6Cidr": "fd12:3456::77/64"}}),
    )]);
    let cfg = VmConfig::from_manifest(&load_value(&doc).unwrap());
    let Binding::Masquerade { ipv6, .. } = &cfg.interfaces[0].binding else {
        panic!("{:?}", cfg.interfaces[0].binding);
    };
    assert_eq!(
        *ipv6,
        ("fd12:3456::".parse().unwrap(), 64),
        "host bits cleared"
    );
}

#[test]
fn dedicated_cpus_and_hugepages_get_virtinks_resources() {
    let doc = with(&[
        (
            "/spec/instance/cpu",
            json!({"sockets": 2, "coresPerSocket": 2, "dedicatedCPUPlacement": true}),
        ),
        (
            "/spec/instance/memory/hugepages",
            json!({"pageSize": "2Mi"}),
        ),
    ]);
    let m = load_value(&doc).unwrap();
    let res = &m.vm.spec.as_ref().unwrap().resources;
    let q = |list: &std::collections::BTreeMap<String, config::quantity::Quantity>, k: &str| {
        list[k].to_string()
    };
    assert_eq!(q(&res.requests, "cpu"), "4");
    assert_eq!(q(&res.limits, "cpu"), "4");
    // With hugepages the guest RAM is not part of the memory request.
    assert_eq!(q(&res.requests, "memory"), "256Mi");
    assert_eq!(q(&res.limits, "hugepages-2Mi"), "1Gi");
    assert_eq!(q(&res.requests, "hugepages-2Mi"), "1Gi");
    let cfg = VmConfig::from_manifest(&m);
    assert_eq!(cfg.hugepage_bytes, Some(2 << 20));
    assert!(cfg.dedicated_cpus);
    assert_eq!(cfg.topology.vcpus(), 4);
}

#[test]
fn multus_interface_uses_net_index_link() {
    let doc = with(&[
        (
            "/spec/instance/interfaces/1",
            json!({"name": "data", "mac": "52:54:00:00:00:09", "sriov": {}}),
        ),
        (
            "/spec/networks/1",
            json!({"name": "data", "multus": {"networkName": "sriov-net"}}),
        ),
    ]);
    let cfg = VmConfig::from_manifest(&load_value(&doc).unwrap());
    assert_eq!(cfg.interfaces[1].pod_link(), "net1");
    assert_eq!(cfg.interfaces[1].binding, Binding::Sriov);
    assert_eq!(
        cfg.interfaces[1].network,
        NetworkSource::Multus {
            network_name: "sriov-net".into()
        }
    );
}

#[test]
fn unknown_fields_are_all_reported_with_their_path() {
    let text = BASE
        .replace("    interfaces:\n", "    interfacs:\n")
        .replace(
            "      containerDisk:\n",
            "      containerDisk:\n        imag: x\n",
        );
    let p = problems(&text);
    assert_eq!(
        p,
        vec![
            "document 1: strict decoding error: unknown field \"spec.instance.interfacs\", \
             unknown field \"spec.volumes[0].containerDisk.imag\""
        ]
    );
}

#[test]
fn wrong_types_name_the_field() {
    let text = BASE.replace("      size: 1Gi", "      size: [1]");
    let p = problems(&text);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].starts_with("document 1: spec.instance.memory.size: invalid type: sequence"),
        "{p:?}"
    );
    let text = BASE.replace(
        "    memory:\n",
        "    cpu:\n      sockets: two\n    memory:\n",
    );
    let p = problems(&text);
    assert!(
        p[0].starts_with("document 1: spec.instance.cpu.sockets: invalid type: string \"two\""),
        "{p:?}"
    );
}

#[test]
fn document_kinds_and_counts() {
    assert_eq!(
        problems("apiVersion: v1\nkind: Pod\n"),
        vec![
            "document 1: kind \"Pod\" is not supported (want VirtualMachine, \
             NetworkAttachmentDefinition or Secret; ConfigMap, PersistentVolumeClaim, Service, \
             Namespace, DataVolume are accepted and ignored)",
            "want exactly one VirtualMachine document (virt.virtink.smartx.com/v1alpha1), found 0",
        ]
    );
    let two = format!("{BASE}\n---\n{BASE}");
    assert_eq!(
        problems(&two),
        vec![
            "want exactly one VirtualMachine document (virt.virtink.smartx.com/v1alpha1), found 2"
        ]
    );
    let wrong_version = BASE.replace("/v1alpha1", "/v1");
    assert_eq!(
        problems(&wrong_version)[0],
        "document 1: apiVersion \"virt.virtink.smartx.com/v1\" is not supported for kind \
         VirtualMachine (want \"virt.virtink.smartx.com/v1alpha1\")"
    );
    assert_eq!(problems("- a\n- b\n")[0], "document 1: not a mapping");
}

#[test]
fn companions_are_parsed_and_kept() {
    let text = format!(
        "{BASE}---\n{}---\n{}",
        r#"apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata:
  name: br1
  annotations:
    k8s.v1.cni.cncf.io/resourceName: intel.com/sriov
spec:
  config: '{"cniVersion": "0.3.1", "type": "bridge", "bridge": "br1"}'
"#,
        r##"apiVersion: v1
kind: Secret
metadata:
  name: ci
stringData:
  userdata: "#cloud-config"
"##
    );
    let m = load_text(&text).unwrap();
    assert_eq!(m.network_attachments[0].metadata.name, "br1");
    assert_eq!(m.secrets[0].string_data["userdata"], "#cloud-config");
    let printed = config::to_yaml(&m).unwrap();
    let again = load_text(&printed).unwrap();
    assert_eq!(again.vm, m.vm);
    assert_eq!(again.network_attachments, m.network_attachments);
    assert_eq!(again.secrets, m.secrets);
}

#[test]
fn bad_nad_config_is_refused() {
    let text = format!(
        "{BASE}---\napiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\n\
         metadata:\n  name: bad\nspec:\n  config: '{{not json'\n"
    );
    let p = problems(&text);
    assert!(
        p[0].starts_with(
            "document 2: NetworkAttachmentDefinition \"bad\" spec.config: invalid JSON"
        ),
        "{p:?}"
    );
}

#[test]
fn kubernetes_only_fields_are_accepted_and_reported() {
    let doc = with(&[
        ("/spec/nodeSelector", json!({"kubernetes.io/os": "linux"})),
        ("/spec/tolerations", json!([{"operator": "Exists"}])),
        ("/spec/readinessProbe", json!({"tcpSocket": {"port": 22}})),
        ("/status", json!({"phase": "Running"})),
    ]);
    let m = load_value(&doc).unwrap();
    assert_eq!(
        m.ignored_fields,
        vec![
            "spec.nodeSelector",
            "spec.tolerations",
            "spec.readinessProbe",
            "status"
        ]
    );
}

#[test]
fn quantities_may_be_numbers() {
    let doc = with(&[("/spec/instance/memory/size", json!(536_870_912))]);
    let cfg = VmConfig::from_manifest(&load_value(&doc).unwrap());
    assert_eq!(cfg.memory_bytes, 512 << 20);
}

#[test]
fn yaml_syntax_errors_are_refused() {
    let err = load_text("spec: [unclosed\n").unwrap_err();
    assert!(matches!(err, ManifestError::Yaml { .. }), "{err}");
}

#[test]
fn virtink_samples_load() {
    let sample = r#"apiVersion: virt.virtink.smartx.com/v1alpha1
kind: VirtualMachine
metadata:
  name: ubuntu-container-rootfs
spec:
  instance:
    memory:
      size: 1Gi
    kernel:
      image: smartxworks/virtink-kernel-5.15.12
      cmdline: "console=ttyS0 root=/dev/vda rw"
    disks:
      - name: ubuntu
      - name: cloud-init
    interfaces:
      - name: pod
  volumes:
    - name: ubuntu
      containerRootfs:
        image: smartxworks/virtink-container-rootfs-ubuntu
        size: 4Gi
    - name: cloud-init
      cloudInit:
        userData: |-
          #cloud-config
          password: password
          chpasswd: { expire: False }
          ssh_pwauth: True
  networks:
    - name: pod
      pod: {}
"#;
    let m = load_text(sample).unwrap();
    assert_eq!(VmConfig::from_manifest(&m).disks.len(), 2);
}

#[test]
fn other_cluster_objects_are_accepted_and_reported_as_ignored() {
    let text = format!(
        "{BASE}---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  a: b\n\
         ---\napiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata:\n  name: root\n\
         spec:\n  source:\n    http:\n      url: http://example.invalid/disk.img\n"
    );
    let m = load_text(&text).unwrap();
    assert_eq!(
        m.ignored_documents,
        vec![
            "ConfigMap \"settings\" (document 2)",
            "DataVolume \"root\" (document 3)"
        ]
    );
    // The kind must still come with its own API group.
    let wrong = format!("{BASE}---\napiVersion: apps/v1\nkind: ConfigMap\n");
    assert!(problems(&wrong)[0].contains("kind \"ConfigMap\" is not supported"));
}

#[test]
fn a_json_manifest_loads_as_yaml_does() {
    let json = serde_json::to_string_pretty(&base()).unwrap();
    let m = load_text(&json).unwrap();
    assert_eq!(m.vm, load_text(BASE).unwrap().vm);
}

/// The VirtualMachine as Virtink's controller marshals it into `VM_DATA`: the whole object,
/// Go's empty structs and Kubernetes' bookkeeping included, with no `kind` when the object
/// came from a client's cache.
fn virtink_vm_json() -> Value {
    json!({
        "metadata": {
            "name": "ubuntu-container-disk",
            "namespace": "default",
            "uid": "0b6e1c36-5c5e-4a8b-9a5e-3c0c4d5d1f00",
            "resourceVersion": "12345",
            "generation": 1,
            "creationTimestamp": "2026-12-05T10:00:00Z",
            "labels": {"virtink.io/vm.name": "ubuntu-container-disk"},
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": "{\"apiVersion\":\"v1\"}"
            },
            "finalizers": ["virtink.smartx.com/vm"],
            "managedFields": [{"manager": "kubectl", "operation": "Update"}]
        },
        "spec": {
            "resources": {
                "limits": {"devices.virtink.io/kvm": "1", "devices.virtink.io/tun": "1"},
                "requests": {"devices.virtink.io/kvm": "1", "devices.virtink.io/tun": "1"}
            },
            "runPolicy": "Once",
            "instance": {
                "cpu": {"sockets": 1, "coresPerSocket": 2},
                "memory": {"size": "1Gi"},
                "kernel": {
                    "image": "smartxworks/virtink-kernel-5.15.12",
                    "imagePullPolicy": "IfNotPresent",
                    "cmdline": "console=ttyS0 root=/dev/vda rw"
                },
                "disks": [{"name": "ubuntu"}, {"name": "cloud-init"}],
                "interfaces": [{"name": "pod", "mac": "52:54:00:6b:1e:0c", "bridge": {}}]
            },
            "volumes": [
                {"name": "ubuntu", "containerDisk": {
                    "image": "smartxworks/virtink-container-disk-ubuntu",
                    "imagePullPolicy": "IfNotPresent"}},
                {"name": "cloud-init", "cloudInit": {"userData": "#cloud-config\npassword: x\n"}}
            ],
            "networks": [{"name": "pod", "pod": {}}]
        },
        "status": {"phase": "Scheduling", "vmPodName": "vm-ubuntu-container-disk-x7k2p"}
    })
}

fn vm_data(value: &Value) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(value).unwrap())
}

#[test]
fn vm_data_is_the_whole_object_as_virtinks_controller_sends_it() {
    let m = config::documents::from_vm_data(
        &vm_data(&virtink_vm_json()),
        "VM_DATA",
        PathBuf::from("/"),
    )
    .unwrap();
    assert_eq!(m.vm.kind, "VirtualMachine");
    assert_eq!(m.vm.api_version, "virt.virtink.smartx.com/v1alpha1");
    let cfg = VmConfig::from_manifest(&m);
    assert_eq!(cfg.name, "ubuntu-container-disk");
    assert_eq!(cfg.topology.vcpus(), 2);
    assert_eq!(cfg.memory_bytes, 1 << 30);
    assert_eq!(cfg.disks.len(), 2);
    assert_eq!(cfg.interfaces[0].mac.to_string(), "52:54:00:6b:1e:0c");
    assert_eq!(m.ignored_fields, vec!["spec.resources", "status"]);
    // With kind and apiVersion, the same.
    let mut typed = virtink_vm_json();
    typed["kind"] = json!("VirtualMachine");
    typed["apiVersion"] = json!("virt.virtink.smartx.com/v1alpha1");
    let again =
        config::documents::from_vm_data(&vm_data(&typed), "VM_DATA", PathBuf::from("/")).unwrap();
    assert_eq!(again.vm, m.vm);
}

#[test]
fn bad_vm_data_names_where_it_came_from_and_why() {
    let err = |data: &str| {
        config::documents::from_vm_data(data, "--vm-data", PathBuf::from("/"))
            .unwrap_err()
            .to_string()
    };
    assert!(
        err("not base64!").contains("--vm-data is not a VirtualMachine as Virtink hands it over")
    );
    assert!(err("not base64!").contains("not base64"));
    assert!(
        err("bm90IGpzb24=").contains("not JSON"),
        "{}",
        err("bm90IGpzb24=")
    );
    assert!(err(&vm_data(&json!([1, 2]))).contains("not a JSON object"));
    // A VM the webhook would refuse is refused with the webhook's message.
    let mut invalid = virtink_vm_json();
    invalid["spec"]["instance"]["interfaces"][0]["mac"] = json!("01:00:00:00:00:01");
    let message = err(&vm_data(&invalid));
    assert!(
        message.contains("spec.instance.interfaces[0].mac"),
        "{message}"
    );
    // An unknown field is still an error, with its path.
    let mut unknown = virtink_vm_json();
    unknown["spec"]["instance"]["disks"][0]["bus"] = json!("virtio");
    let message = err(&vm_data(&unknown));
    assert!(message.contains("spec.instance.disks[0].bus"), "{message}");
}

#[test]
fn generate_name_alone_names_the_vm_the_same_on_every_run() {
    let mut doc = base();
    set(&mut doc, "/metadata/name", Value::Null);
    set(&mut doc, "/metadata/generateName", json!("web-"));
    let m = load_value(&doc).unwrap();
    let name = &m.vm.metadata.name;
    assert!(name.starts_with("web-") && name.len() == 9, "{name}");
    assert!(
        name[4..]
            .bytes()
            .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b))
    );
    assert_eq!(load_value(&doc).unwrap().vm.metadata.name, *name);
    assert_eq!(VmConfig::from_manifest(&m).name, *name);
    // A long prefix is cut as the API server cuts it, so the name stays valid.
    set(&mut doc, "/metadata/generateName", json!("a".repeat(80)));
    assert_eq!(load_value(&doc).unwrap().vm.metadata.name.len(), 63);
}

#[test]
fn vhost_net_is_off_unless_the_annotation_says_true() {
    let key = "vmm.virtink.smartx.com/vhost-net";
    let vhost = |annotations: Value| {
        let doc = with(&[("/metadata/annotations", annotations)]);
        VmConfig::from_manifest(&load_value(&doc).unwrap()).vhost_net
    };
    assert!(!vhost(json!({})));
    assert!(!vhost(json!({ key: "false" })));
    assert!(vhost(json!({ key: "true" })));
    assert!(vhost(
        json!({ key: "true", "vmm.virtink.smartx.com/network-queue-pairs": "1" })
    ));
}

#[test]
fn nics_get_one_queue_pair_unless_the_annotation_asks_for_more() {
    let key = "vmm.virtink.smartx.com/network-queue-pairs";
    let cpu = json!({"sockets": 1, "coresPerSocket": 4});
    let pairs = |annotation: Option<&str>| {
        let mut patches = vec![("/spec/instance/cpu", cpu.clone())];
        if let Some(v) = annotation {
            patches.push(("/metadata/annotations", json!({ key: v })));
        }
        VmConfig::from_manifest(&load_value(&with(&patches)).unwrap()).nic_queue_pairs()
    };
    assert_eq!(pairs(None), 1);
    assert_eq!(pairs(Some("vcpus")), 4);
    assert_eq!(pairs(Some("2")), 2);
    let big = json!({"sockets": 2, "coresPerSocket": 8});
    let doc = with(&[
        ("/spec/instance/cpu", big),
        ("/metadata/annotations", json!({ key: "vcpus" })),
    ]);
    assert_eq!(
        VmConfig::from_manifest(&load_value(&doc).unwrap()).nic_queue_pairs(),
        8,
        "at most 8"
    );
}
