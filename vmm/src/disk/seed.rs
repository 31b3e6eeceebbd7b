//! The cloud-init NoCloud seed of a `cloudInit` volume, built in memory: an ISO 9660 image
//! labelled `cidata` (as Virtink's `genisoimage -volid cidata -joliet -rock`) holding
//!
//! - `meta-data`: `instance-id` (the VM's `metadata.uid`, else its name, so that it is
//!   stable across runs and cloud-init's once-per-instance modules run once) and
//!   `local-hostname` (the VM's name);
//! - `user-data`: `userData`, `userDataBase64` decoded, or the `value` key of the Secret
//!   named by `userDataSecretName` (a `v1` Secret document in the manifest file; Virtink mounts
//!   the same key);
//! - `network-config`, from the `networkData*` fields the same way, when one is given.

use base64::Engine;

use super::iso9660::{self, DateTime};
use crate::config::schema::{CloudInit, Secret};

/// The Secret key Virtink reads user and network data from.
pub const SECRET_KEY: &str = "value";

/// Why a seed cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeedError {
    /// A `*SecretName` names no Secret in the manifest.
    #[error(
        "{field}: Secret {name:?} is not in the manifest file (add it as a v1 Secret document)"
    )]
    NoSecret {
        /// The field, such as `cloudInit.userDataSecretName`.
        field: String,
        /// The Secret's name.
        name: String,
    },
    /// The Secret has no `value` key, or its value is not base64.
    #[error("{field}: Secret {name:?} has no usable {SECRET_KEY:?} key (it has: {keys})")]
    SecretKey {
        /// The field.
        field: String,
        /// The Secret's name.
        name: String,
        /// The keys it has.
        keys: String,
    },
    /// A `*Base64` field is not base64.
    #[error("{field}: not valid base64")]
    Base64 {
        /// The field.
        field: String,
    },
    /// The image.
    #[error("the seed image")]
    Image(#[source] iso9660::IsoError),
}

/// One of the two documents (user data, network data) as the manifest gives it.
struct Source<'a> {
    plain: &'a str,
    base64: &'a str,
    secret: &'a str,
    /// Field name stem: `userData` or `networkData`.
    field: &'static str,
}

impl Source<'_> {
    fn resolve(&self, secrets: &[Secret]) -> Result<Option<Vec<u8>>, SeedError> {
        let field = |suffix: &str| format!("cloudInit.{}{suffix}", self.field);
        if !self.plain.is_empty() {
            return Ok(Some(self.plain.as_bytes().to_vec()));
        }
        if !self.base64.is_empty() {
            return decode(self.base64)
                .map(Some)
                .ok_or_else(|| SeedError::Base64 {
                    field: field("Base64"),
                });
        }
        if self.secret.is_empty() {
            return Ok(None);
        }
        let secret = secrets
            .iter()
            .find(|s| s.metadata.name == self.secret)
            .ok_or_else(|| SeedError::NoSecret {
                field: field("SecretName"),
                name: self.secret.to_string(),
            })?;
        if let Some(v) = secret.string_data.get(SECRET_KEY) {
            return Ok(Some(v.as_bytes().to_vec()));
        }
        secret
            .data
            .get(SECRET_KEY)
            .and_then(|v| decode(v))
            .map(Some)
            .ok_or_else(|| SeedError::SecretKey {
                field: field("SecretName"),
                name: self.secret.to_string(),
                keys: secret
                    .data
                    .keys()
                    .chain(secret.string_data.keys())
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

/// Standard base64, whitespace (line breaks) ignored.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .ok()
}

/// The seed's files, in the order they are written: (name, contents).
pub fn files(
    ci: &CloudInit,
    vm_name: &str,
    instance_id: &str,
    secrets: &[Secret],
) -> Result<Vec<(&'static str, Vec<u8>)>, SeedError> {
    let user = Source {
        plain: &ci.user_data,
        base64: &ci.user_data_base64,
        secret: &ci.user_data_secret_name,
        field: "userData",
    };
    let network = Source {
        plain: &ci.network_data,
        base64: &ci.network_data_base64,
        secret: &ci.network_data_secret_name,
        field: "networkData",
    };
    let meta = format!("instance-id: {instance_id}\nlocal-hostname: {vm_name}\n");
    let mut files = vec![
        ("meta-data", meta.into_bytes()),
        ("user-data", user.resolve(secrets)?.unwrap_or_default()),
    ];
    if let Some(n) = network.resolve(secrets)? {
        files.push(("network-config", n));
    }
    Ok(files)
}

/// The seed image for `files`, dated `now` (seconds since the epoch).
pub fn image(files: &[(&'static str, Vec<u8>)], now: u64) -> Result<Vec<u8>, SeedError> {
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (*n, d.as_slice())).collect();
    iso9660::build("cidata", &refs, DateTime::from_unix(now)).map_err(SeedError::Image)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::disk::iso9660::tests::read_back;

    fn secret(name: &str, data: &[(&str, &str)], string_data: &[(&str, &str)]) -> Secret {
        let map = |kv: &[(&str, &str)]| -> BTreeMap<String, String> {
            kv.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
        };
        let mut s = Secret::default();
        s.metadata.name = name.into();
        s.data = map(data);
        s.string_data = map(string_data);
        s
    }

    #[test]
    fn meta_user_and_network_data_from_each_source() {
        let ci = CloudInit {
            user_data: "#cloud-config\npassword: pw\n".into(),
            network_data_base64: "dmVyc2lvbjogMgo=".into(), // "version: 2\n"
            ..CloudInit::default()
        };
        let f = files(&ci, "vm1", "uid-1", &[]).unwrap();
        assert_eq!(
            f,
            vec![
                (
                    "meta-data",
                    b"instance-id: uid-1\nlocal-hostname: vm1\n".to_vec()
                ),
                ("user-data", b"#cloud-config\npassword: pw\n".to_vec()),
                ("network-config", b"version: 2\n".to_vec()),
            ]
        );
        let image = image(&f, 0).unwrap();
        let (label, entries) = read_back(&image, 16);
        assert_eq!(label, "cidata");
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["meta-data", "user-data", "network-config"]);
        assert_eq!(entries[2].data, b"version: 2\n");
    }

    #[test]
    fn secrets_give_their_value_key() {
        let secrets = [
            secret("ud", &[("value", "I2Nsb3VkLWNvbmZpZwo=")], &[]), // "#cloud-config\n"
            secret("nd", &[], &[("value", "version: 1\n")]),
            secret("other", &[("userdata", "eA==")], &[]),
        ];
        let ci = CloudInit {
            user_data_secret_name: "ud".into(),
            network_data_secret_name: "nd".into(),
            ..CloudInit::default()
        };
        let f = files(&ci, "vm", "vm", &secrets).unwrap();
        assert_eq!(f[1].1, b"#cloud-config\n");
        assert_eq!(f[2].1, b"version: 1\n");

        let ci = CloudInit {
            user_data_secret_name: "other".into(),
            ..CloudInit::default()
        };
        let err = files(&ci, "vm", "vm", &secrets).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cloudInit.userDataSecretName: Secret \"other\" has no usable \"value\" key (it has: userdata)"
        );
        let ci = CloudInit {
            network_data_secret_name: "missing".into(),
            ..CloudInit::default()
        };
        assert!(matches!(
            files(&ci, "vm", "vm", &secrets),
            Err(SeedError::NoSecret { .. })
        ));
    }

    #[test]
    fn no_network_data_means_no_network_config_file() {
        let f = files(&CloudInit::default(), "vm", "vm", &[]).unwrap();
        let names: Vec<&str> = f.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["meta-data", "user-data"]);
        let ci = CloudInit {
            user_data_base64: "not base64!".into(),
            ..CloudInit::default()
        };
        assert_eq!(
            files(&ci, "vm", "vm", &[]),
            Err(SeedError::Base64 {
                field: "cloudInit.userDataBase64".into()
            })
        );
    }
}
