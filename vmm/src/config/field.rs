//! Field paths and validation errors in the form Kubernetes (and so Virtink's webhook) prints
//! them: `spec.instance.interfaces[0].mac: Invalid value: "01:1c:ba:0a:45:8": ...`.

use std::fmt;

/// A path to a field of the manifest, such as `spec.instance.disks[1].name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldPath(String);

impl FieldPath {
    /// A path starting at a top-level field.
    pub fn new(root: &str) -> Self {
        Self(root.to_string())
    }

    /// The path of child field `name`.
    pub fn child(&self, name: &str) -> Self {
        Self(format!("{}.{name}", self.0))
    }

    /// The path of element `i` of this list.
    pub fn index(&self, i: usize) -> Self {
        Self(format!("{}[{i}]", self.0))
    }

    /// The path of the entry with key `key` of this map, as `field.Path.Key` prints it.
    pub fn key(&self, key: &str) -> Self {
        Self(format!("{}[{key}]", self.0))
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A value quoted in an error the way Go's `%q` / `%d` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BadValue {
    /// A string, printed quoted.
    Str(String),
    /// An integer, printed bare.
    Int(i64),
}

impl fmt::Display for BadValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadValue::Str(s) => write_go_quoted(f, s),
            BadValue::Int(i) => write!(f, "{i}"),
        }
    }
}

impl From<&str> for BadValue {
    fn from(s: &str) -> Self {
        BadValue::Str(s.to_string())
    }
}

impl From<&String> for BadValue {
    fn from(s: &String) -> Self {
        BadValue::Str(s.clone())
    }
}

impl From<i64> for BadValue {
    fn from(i: i64) -> Self {
        BadValue::Int(i)
    }
}

/// Writes `s` as Go's `%q` does for printable text: double quotes, backslash escapes.
fn write_go_quoted(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_str("\"")?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\t' => f.write_str("\\t")?,
            '\r' => f.write_str("\\r")?,
            c if c.is_control() => write!(f, "\\x{:02x}", u32::from(c))?,
            c => write!(f, "{c}")?,
        }
    }
    f.write_str("\"")
}

/// The kinds of `field.Error` Virtink's webhook and the CRD schema produce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// `Required value`.
    Required,
    /// `Invalid value: <value>`.
    Invalid(BadValue),
    /// `Duplicate value: <value>`.
    Duplicate(BadValue),
    /// `Forbidden`.
    Forbidden,
    /// `Unsupported value: <value>: supported values: "a", "b"`.
    NotSupported(BadValue, Vec<&'static str>),
}

/// One validation error: a field, what is wrong, and an optional detail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The field the error is about.
    pub field: FieldPath,
    /// What kind of error.
    pub kind: ErrorKind,
    /// Free text after the kind; empty for none.
    pub detail: String,
}

impl FieldError {
    /// `field: Required value[: detail]`.
    pub fn required(field: FieldPath, detail: &str) -> Self {
        Self::make(field, ErrorKind::Required, detail)
    }

    /// `field: Invalid value: value: detail`.
    pub fn invalid(field: FieldPath, value: impl Into<BadValue>, detail: &str) -> Self {
        Self::make(field, ErrorKind::Invalid(value.into()), detail)
    }

    /// `field: Duplicate value: value`.
    pub fn duplicate(field: FieldPath, value: impl Into<BadValue>) -> Self {
        Self::make(field, ErrorKind::Duplicate(value.into()), "")
    }

    /// `field: Forbidden: detail`.
    pub fn forbidden(field: FieldPath, detail: &str) -> Self {
        Self::make(field, ErrorKind::Forbidden, detail)
    }

    /// `field: Unsupported value: value: supported values: ...`.
    pub fn not_supported(
        field: FieldPath,
        value: impl Into<BadValue>,
        supported: &[&'static str],
    ) -> Self {
        Self::make(
            field,
            ErrorKind::NotSupported(value.into(), supported.to_vec()),
            "",
        )
    }

    fn make(field: FieldPath, kind: ErrorKind, detail: &str) -> Self {
        Self {
            field,
            kind,
            detail: detail.to_string(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.field)?;
        match &self.kind {
            ErrorKind::Required => f.write_str("Required value")?,
            ErrorKind::Forbidden => f.write_str("Forbidden")?,
            ErrorKind::Invalid(v) => write!(f, "Invalid value: {v}")?,
            ErrorKind::Duplicate(v) => write!(f, "Duplicate value: {v}")?,
            ErrorKind::NotSupported(v, supported) => {
                write!(f, "Unsupported value: {v}: supported values: ")?;
                for (i, s) in supported.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write_go_quoted(f, s)?;
                }
            }
        }
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_kubernetes() {
        let mac = FieldPath::new("spec")
            .child("instance")
            .child("interfaces")
            .index(0)
            .child("mac");
        let e = FieldError::invalid(
            mac,
            "01:1c:ba:0a:45:8",
            "address 01:1c:ba:0a:45:8: invalid MAC address",
        );
        assert_eq!(
            e.to_string(),
            "spec.instance.interfaces[0].mac: Invalid value: \"01:1c:ba:0a:45:8\": \
             address 01:1c:ba:0a:45:8: invalid MAC address"
        );
        let size = FieldPath::new("spec.instance.memory.size");
        assert_eq!(
            FieldError::invalid(size, 0, "must be greater than 0").to_string(),
            "spec.instance.memory.size: Invalid value: 0: must be greater than 0"
        );
        assert_eq!(
            FieldError::required(FieldPath::new("spec.instance.kernel.image"), "").to_string(),
            "spec.instance.kernel.image: Required value"
        );
        assert_eq!(
            FieldError::not_supported(FieldPath::new("spec.runPolicy"), "X", &["A", "B"])
                .to_string(),
            "spec.runPolicy: Unsupported value: \"X\": supported values: \"A\", \"B\""
        );
        assert_eq!(
            FieldError::duplicate(FieldPath::new("spec.volumes").index(1).child("name"), "v")
                .to_string(),
            "spec.volumes[1].name: Duplicate value: \"v\""
        );
    }

    #[test]
    fn quotes_like_go() {
        let e = FieldError::invalid(FieldPath::new("a"), "x\"y\n", "d");
        assert_eq!(e.to_string(), "a: Invalid value: \"x\\\"y\\n\": d");
    }
}
