//! Reading a manifest file: every YAML document in it, decoded strictly, the VirtualMachine
//! defaulted and validated.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::field::FieldError;
use super::schema::{
    NAD_API_VERSION, NetworkAttachmentDefinition, Secret, VM_API_VERSION, VirtualMachine,
};
use super::{defaults, validate};

/// Manifests larger than this are refused before parsing.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// A loaded manifest: the defaulted VirtualMachine and the objects that came with it.
#[derive(Clone, Debug)]
pub struct Manifest {
    /// The VirtualMachine, with every default filled in.
    pub vm: VirtualMachine,
    /// NetworkAttachmentDefinitions from the file, standing in for cluster objects.
    pub network_attachments: Vec<NetworkAttachmentDefinition>,
    /// Secrets from the file, for `cloudInit.*SecretName`.
    pub secrets: Vec<Secret>,
    /// Kubernetes-only fields the user set, which `vmm` accepts and ignores.
    pub ignored_fields: Vec<String>,
    /// Other cluster objects in the file (ConfigMap, DataVolume, ...), which `vmm` accepts
    /// and ignores: `ConfigMap "name" (document 2)`.
    pub ignored_documents: Vec<String>,
    /// The directory relative paths in the manifest are resolved against.
    pub base_dir: PathBuf,
}

impl Manifest {
    /// The NetworkAttachmentDefinition in the file that multus network `network_name`
    /// (`name` or `namespace/name`) refers to.
    pub fn network_attachment(&self, network_name: &str) -> Option<&NetworkAttachmentDefinition> {
        self.network_attachments.iter().find(|n| {
            n.metadata.name == network_name
                || network_name.ends_with(&format!("/{}", n.metadata.name))
        })
    }
}

/// Why a manifest cannot be used. Every variant means exit code 1.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot read manifest {path}")]
    Read {
        /// The manifest path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_MANIFEST_BYTES`].
    #[error("manifest {path} is larger than {MAX_MANIFEST_BYTES} bytes")]
    TooLarge {
        /// The manifest path.
        path: PathBuf,
    },
    /// `VM_DATA` (or `--vm-data`) is not base64 of a JSON object.
    #[error(
        "{origin} is not a VirtualMachine as Virtink hands it over (base64 of its JSON): {message}"
    )]
    VmData {
        /// `VM_DATA` or `--vm-data`.
        origin: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The file is not YAML.
    #[error("manifest {path} is not valid YAML: {message}")]
    Yaml {
        /// The manifest path.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// The documents do not decode: unknown fields, wrong types, unknown kinds, not exactly
    /// one VirtualMachine.
    #[error("manifest {path} cannot be decoded:{}", list(.problems))]
    Decode {
        /// The manifest path.
        path: PathBuf,
        /// One line per problem.
        problems: Vec<String>,
    },
    /// The VirtualMachine breaks validation rules.
    #[error("VirtualMachine {name:?} is invalid:{}", list(.errors))]
    Invalid {
        /// The VM's name.
        name: String,
        /// Every rule broken.
        errors: Vec<FieldError>,
    },
}

fn list<T: fmt::Display>(items: &[T]) -> String {
    items.iter().map(|i| format!("\n  * {i}")).collect()
}

/// Reads, decodes, defaults and validates the manifest at `path`.
pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
    let text = read_limited(path)?;
    let base_dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    parse(&text, path, base_dir)
}

fn read_limited(path: &Path) -> Result<String, ManifestError> {
    let read_err = |source| ManifestError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut text = String::new();
    file.take(MAX_MANIFEST_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(read_err)?;
    if text.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(ManifestError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(text)
}

/// Cluster objects a Virtink user keeps beside a VirtualMachine, accepted in a manifest and
/// ignored: kind and the API group of its `apiVersion` (empty for the core group).
const IGNORED_KINDS: &[(&str, &str)] = &[
    ("ConfigMap", ""),
    ("PersistentVolumeClaim", ""),
    ("Service", ""),
    ("Namespace", ""),
    ("DataVolume", "cdi.kubevirt.io"),
];

/// Parses manifest `text` (read from `path`, for messages): YAML, or JSON (which is YAML).
pub fn parse(text: &str, path: &Path, base_dir: PathBuf) -> Result<Manifest, ManifestError> {
    let documents: Vec<Value> =
        serde_saphyr::from_multiple(text).map_err(|e| ManifestError::Yaml {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    from_documents(documents, path, base_dir)
}

/// Decodes a VirtualMachine as Virtink's controller hands it to the VM pod: `data` is the
/// base64 of the whole object's JSON (metadata and status included; `kind` and `apiVersion`
/// may be missing, as in an object read from a client's cache). `origin` names where it came
/// from, for messages.
pub fn from_vm_data(
    data: &str,
    origin: &'static str,
    base_dir: PathBuf,
) -> Result<Manifest, ManifestError> {
    use base64::Engine as _;
    let bad = |message: String| ManifestError::VmData { origin, message };
    let data = data.trim();
    if data.len() as u64 > MAX_MANIFEST_BYTES / 3 * 4 + 4 {
        return Err(bad(format!("larger than {MAX_MANIFEST_BYTES} bytes")));
    }
    let json = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| bad(format!("not base64: {e}")))?;
    let mut value: Value =
        serde_json::from_slice(&json).map_err(|e| bad(format!("not JSON: {e}")))?;
    let Value::Object(map) = &mut value else {
        return Err(bad("not a JSON object".into()));
    };
    for (key, default) in [("kind", "VirtualMachine"), ("apiVersion", VM_API_VERSION)] {
        if map
            .get(key)
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            map.insert(key.into(), Value::String(default.into()));
        }
    }
    from_documents(vec![value], Path::new(origin), base_dir)
}

fn from_documents(
    documents: Vec<Value>,
    path: &Path,
    base_dir: PathBuf,
) -> Result<Manifest, ManifestError> {
    let mut problems = Vec::new();
    let mut ignored_documents = Vec::new();
    let mut vms = Vec::new();
    let mut network_attachments = Vec::new();
    let mut secrets = Vec::new();
    let mut vm_documents = 0;
    for (index, doc) in documents.into_iter().enumerate() {
        if doc.is_null() {
            continue;
        }
        let where_ = format!("document {}", index + 1);
        let (api_version, kind) = match &doc {
            Value::Object(map) => (
                map.get("apiVersion").and_then(Value::as_str).unwrap_or(""),
                map.get("kind").and_then(Value::as_str).unwrap_or(""),
            ),
            _ => {
                problems.push(format!("{where_}: not a mapping"));
                continue;
            }
        };
        match (kind, api_version) {
            ("VirtualMachine", VM_API_VERSION) => {
                vm_documents += 1;
                if let Some(vm) = decode::<VirtualMachine>(doc, &where_, &mut problems) {
                    vms.push(vm);
                }
            }
            ("NetworkAttachmentDefinition", NAD_API_VERSION) => {
                if let Some(nad) =
                    decode::<NetworkAttachmentDefinition>(doc, &where_, &mut problems)
                {
                    check_nad(&nad, &where_, &mut problems);
                    network_attachments.push(nad);
                }
            }
            ("Secret", "v1") => {
                if let Some(secret) = decode::<Secret>(doc, &where_, &mut problems) {
                    secrets.push(secret);
                }
            }
            ("VirtualMachine" | "NetworkAttachmentDefinition" | "Secret", other) => {
                let want = match kind {
                    "VirtualMachine" => VM_API_VERSION,
                    "NetworkAttachmentDefinition" => NAD_API_VERSION,
                    _ => "v1",
                };
                problems.push(format!(
                    "{where_}: apiVersion {other:?} is not supported for kind {kind} (want {want:?})"
                ));
            }
            ("", _) => problems.push(format!("{where_}: kind is missing")),
            (other, api_version)
                if IGNORED_KINDS.iter().any(|(kind, group)| {
                    *kind == other && api_group(api_version) == Some(*group)
                }) =>
            {
                let name = doc
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                ignored_documents.push(format!("{other} {name:?} ({where_})"));
            }
            (other, _) => problems.push(format!(
                "{where_}: kind {other:?} is not supported (want VirtualMachine, \
                 NetworkAttachmentDefinition or Secret; {} are accepted and ignored)",
                IGNORED_KINDS
                    .iter()
                    .map(|(kind, _)| *kind)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
    if vm_documents != 1 {
        problems.push(format!(
            "want exactly one VirtualMachine document ({VM_API_VERSION}), found {vm_documents}"
        ));
    }
    check_unique_names(&network_attachments, &secrets, &mut problems);
    let mut vm = match vms.pop() {
        Some(vm) if problems.is_empty() => vm,
        _ => {
            return Err(ManifestError::Decode {
                path: path.to_path_buf(),
                problems,
            });
        }
    };
    let ignored_fields = ignored_fields(&vm);
    defaults::apply(&mut vm);
    let errors = validate::validate(&vm);
    if !errors.is_empty() {
        return Err(ManifestError::Invalid {
            name: vm.metadata.name.clone(),
            errors,
        });
    }
    Ok(Manifest {
        vm,
        network_attachments,
        secrets,
        ignored_fields,
        ignored_documents,
        base_dir,
    })
}

/// The API group of an `apiVersion` (`""` for the core group's `v1`), or `None` when it has
/// no version.
fn api_group(api_version: &str) -> Option<&str> {
    match api_version.split_once('/') {
        Some((group, version)) if !version.is_empty() => Some(group),
        None if !api_version.is_empty() => Some(""),
        _ => None,
    }
}

/// Decodes one document strictly: every unknown field is a problem, reported as kubectl does
/// (`strict decoding error: unknown field "spec.instance.interfacs"`), and a type error names
/// its field.
fn decode<T: DeserializeOwned>(doc: Value, where_: &str, problems: &mut Vec<String>) -> Option<T> {
    let mut unknown = Vec::new();
    let result = {
        let mut on_unknown = |path: serde_ignored::Path<'_>| unknown.push(k8s_path(&path));
        let ignored = serde_ignored::Deserializer::new(doc, &mut on_unknown);
        serde_path_to_error::deserialize::<_, T>(ignored)
    };
    if !unknown.is_empty() {
        let fields: Vec<String> = unknown
            .iter()
            .map(|f| format!("unknown field {f:?}"))
            .collect();
        problems.push(format!(
            "{where_}: strict decoding error: {}",
            fields.join(", ")
        ));
    }
    match result {
        Ok(value) if unknown.is_empty() => Some(value),
        Ok(_) => None,
        Err(e) => {
            let field = e.path().to_string();
            problems.push(format!("{where_}: {field}: {}", e.inner()));
            None
        }
    }
}

/// A serde_ignored path in Kubernetes' form: `spec.volumes[0].containerDisk.imag`.
fn k8s_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path as P;
    match path {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", k8s_path(parent)),
        P::Map { parent, key } => {
            let parent = k8s_path(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            k8s_path(parent)
        }
    }
}

fn check_nad(nad: &NetworkAttachmentDefinition, where_: &str, problems: &mut Vec<String>) {
    let name = &nad.metadata.name;
    if name.is_empty() {
        problems.push(format!(
            "{where_}: NetworkAttachmentDefinition metadata.name: Required value"
        ));
    }
    if nad.spec.config.is_empty() {
        return;
    }
    match serde_json::from_str::<Value>(&nad.spec.config) {
        Ok(Value::Object(_)) => {}
        Ok(_) => problems.push(format!(
            "{where_}: NetworkAttachmentDefinition {name:?} spec.config: must be a JSON object"
        )),
        Err(e) => problems.push(format!(
            "{where_}: NetworkAttachmentDefinition {name:?} spec.config: invalid JSON: {e}"
        )),
    }
}

fn check_unique_names(
    nads: &[NetworkAttachmentDefinition],
    secrets: &[Secret],
    problems: &mut Vec<String>,
) {
    let mut seen = std::collections::HashSet::new();
    for nad in nads {
        let key = (nad.metadata.namespace.as_str(), nad.metadata.name.as_str());
        if !seen.insert(key) {
            problems.push(format!(
                "NetworkAttachmentDefinition {:?} appears twice",
                nad.metadata.name
            ));
        }
    }
    let mut seen = std::collections::HashSet::new();
    for secret in secrets {
        if !seen.insert(secret.metadata.name.as_str()) {
            problems.push(format!("Secret {:?} appears twice", secret.metadata.name));
        }
    }
}

/// The Kubernetes-only fields the user set: accepted, and reported as ignored.
fn ignored_fields(vm: &VirtualMachine) -> Vec<String> {
    let Some(spec) = &vm.spec else {
        return Vec::new();
    };
    let mut fields = Vec::new();
    let mut note = |set: bool, name: &str| {
        if set {
            fields.push(format!("spec.{name}"));
        }
    };
    note(spec.node_selector.is_some(), "nodeSelector");
    note(spec.affinity.is_some(), "affinity");
    note(spec.tolerations.is_some(), "tolerations");
    note(!spec.resources.is_empty(), "resources");
    note(spec.liveness_probe.is_some(), "livenessProbe");
    note(spec.readiness_probe.is_some(), "readinessProbe");
    if vm.status.is_some() {
        fields.push("status".to_string());
    }
    fields
}
