//! Operator manifests: loading YAML/JSON files, strict parsing with precise
//! locations, and the semantic and cross-object checks a reviewer would do.
//!
//! Every problem becomes a [`ManifestError`] naming the file, the object
//! (kind/name), the field path and, where the parser knows it, line and column.
//! Loading never stops at the first problem: a folder with five broken objects
//! reports five errors.

mod checks;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::kinds::{self, Kind, Spec, API_VERSION};

pub use checks::{check_object, check_references};

/// Kubernetes object metadata, restricted to what an operator writes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    /// The object's name; with its kind, its key.
    pub name: String,
    /// Free-form labels, kept as written.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Free-form annotations, kept as written.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Set by the control plane; bumped only when the spec changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
}

/// Where an object came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// The file the object was read from.
    pub file: PathBuf,
    /// 1-based line where the object's document starts.
    pub line: usize,
}

/// One parsed, strictly typed manifest object.
#[derive(Clone, Debug, PartialEq)]
pub struct Object {
    /// The object's `kind:`.
    pub kind: Kind,
    /// Its `metadata`.
    pub metadata: Metadata,
    /// Its spec, strictly parsed as `kind`.
    pub spec: Spec,
    /// Status as written in the file, if any (kept as JSON; the control plane owns it).
    pub status: Option<serde_json::Value>,
    /// Where it was read from.
    pub source: Source,
}

impl Object {
    /// The object's `metadata.name`.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// The object as a Kubernetes-style JSON document.
    pub fn to_json(&self) -> serde_json::Value {
        let mut doc = serde_json::json!({
            "apiVersion": API_VERSION,
            "kind": self.kind.as_str(),
            "metadata": self.metadata,
            "spec": self.spec.to_json().unwrap_or(serde_json::Value::Null),
        });
        if let (Some(status), Some(map)) = (&self.status, doc.as_object_mut()) {
            map.insert("status".into(), status.clone());
        }
        doc
    }
}

/// A problem with a manifest, located as precisely as possible. It travels
/// as JSON too (the Control API returns these for a refused apply).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestError {
    /// The file the problem is in.
    pub file: String,
    /// 1-based line, when the parser knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// 1-based column, when the parser knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    /// Kind of the object concerned, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Name of the object concerned, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Dotted field path inside the object (`spec.endpoints[0].address`); empty for whole-object errors.
    #[serde(default)]
    pub field: String,
    /// What is wrong, for a human.
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        f.write_str(": ")?;
        match (&self.kind, &self.name) {
            (Some(k), Some(n)) => write!(f, "{k} {n:?}: ")?,
            (Some(k), None) => write!(f, "{k}: ")?,
            (None, Some(n)) => write!(f, "{n:?}: ")?,
            (None, None) => {}
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ManifestError {}

/// Everything found under a path: the good objects and every error.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Objects that loaded and passed every check.
    pub objects: Vec<Object>,
    /// Every problem found.
    pub errors: Vec<ManifestError>,
    /// How many manifest files were read.
    pub files: usize,
}

/// Loads a file, or every `.yaml`/`.yml`/`.json` file under a folder (sorted,
/// recursively, skipping hidden entries), then runs the semantic and
/// cross-object checks. Objects with errors are left out of `objects`.
pub fn load_path(path: &Path) -> LoadReport {
    let mut report = LoadReport::default();
    let files = match manifest_files(path) {
        Ok(f) => f,
        Err(e) => {
            report.errors.push(file_error(path, e.to_string()));
            return report;
        }
    };
    if files.is_empty() {
        report.errors.push(file_error(
            path,
            "no .yaml, .yml or .json files found".into(),
        ));
    }
    for file in files {
        report.files += 1;
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                let (objects, errors) = parse_str(&file, &text);
                report.objects.extend(objects);
                report.errors.extend(errors);
            }
            Err(e) => report.errors.push(file_error(&file, e.to_string())),
        }
    }
    let mut good = Vec::with_capacity(report.objects.len());
    for obj in std::mem::take(&mut report.objects) {
        let errs = check_object(&obj);
        if errs.is_empty() {
            good.push(obj);
        } else {
            report.errors.extend(errs);
        }
    }
    report.errors.extend(check_references(&good));
    report.objects = good;
    report
}

fn file_error(path: &Path, message: String) -> ManifestError {
    ManifestError {
        file: path.display().to_string(),
        line: None,
        column: None,
        kind: None,
        name: None,
        field: String::new(),
        message,
    }
}

/// The file, or every `.yaml`/`.yml`/`.json` file under the folder (sorted,
/// recursively, hidden entries skipped): what `validate` and `apply` read.
pub fn manifest_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    collect_files(path, &mut out)?;
    Ok(out)
}

fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let meta = std::fs::metadata(path)?;
    if meta.is_file() {
        out.push(path.to_owned());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            !p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'))
        })
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect_files(&p, out)?;
        } else if matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(p);
        }
    }
    Ok(())
}

/// Parses every document of one file. Syntax errors stop only the file;
/// schema errors stop only their document.
pub fn parse_str(file: &Path, text: &str) -> (Vec<Object>, Vec<ManifestError>) {
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    let file_s = file.display().to_string();
    let is_json = file.extension().and_then(|e| e.to_str()) == Some("json");
    let starts = document_starts(text, is_json);
    // First pass: untyped, to learn each document's kind and name for error messages.
    let mut heads = Vec::new();
    let values: Vec<Result<serde_json::Value, SyntaxError>> = if is_json {
        vec![serde_json::from_str(text).map_err(|e| (Some((e.line(), e.column())), e.to_string()))]
    } else {
        let mut out = Vec::new();
        for doc in serde_norway::Deserializer::from_str(text) {
            let r = serde_json::Value::deserialize(doc).map_err(|e| {
                (
                    e.location().map(|l| (l.line(), l.column())),
                    strip_location(&e.to_string()),
                )
            });
            // After a syntax error the document iterator may never end; stop here.
            let failed = r.is_err();
            out.push(r);
            if failed {
                break;
            }
            if out.len() >= MAX_DOCUMENTS {
                out.push(Err((
                    None,
                    format!("more than {MAX_DOCUMENTS} documents in one file"),
                )));
                break;
            }
        }
        out
    };
    // Empty documents parse as null and have no start line; count only real ones.
    let mut content_index = 0;
    for v in &values {
        let doc_line = starts.get(content_index).copied().unwrap_or(1);
        match v {
            Ok(serde_json::Value::Null) => heads.push(None),
            Ok(v) => {
                content_index += 1;
                heads.push(Some((doc_line, head_of(v))));
            }
            Err((loc, msg)) => {
                errors.push(ManifestError {
                    file: file_s.clone(),
                    line: loc.map(|l| l.0).or(Some(doc_line)),
                    column: loc.map(|l| l.1),
                    kind: None,
                    name: None,
                    field: String::new(),
                    message: format!("not valid {}: {msg}", if is_json { "JSON" } else { "YAML" }),
                });
                // After a syntax error later documents cannot be trusted to line up.
                return (objects, errors);
            }
        }
    }
    // Second pass: strict typed parse with field paths and locations.
    let docs: Vec<TypedParse<'_>> = if is_json {
        let text = text.to_owned();
        vec![Box::new(move |k| typed_json(k, &text))]
    } else {
        serde_norway::Deserializer::from_str(text)
            .take(values.len())
            .map(|doc| -> TypedParse<'_> { Box::new(move |k| typed_yaml(k, doc)) })
            .collect()
    };
    for (doc, head) in docs.into_iter().zip(heads) {
        let Some((doc_line, head)) = head else {
            continue;
        };
        let err = |field: &str, line: Option<usize>, column: Option<usize>, message: String| {
            ManifestError {
                file: file_s.clone(),
                line: line.or(Some(doc_line)),
                column,
                kind: head.kind.clone(),
                name: head.name.clone(),
                field: field.to_owned(),
                message,
            }
        };
        let kind_name = match &head.kind {
            None => {
                errors.push(err("kind", None, None, "missing field `kind`".into()));
                continue;
            }
            Some(k) => k,
        };
        let Some(kind) = Kind::from_name(kind_name) else {
            let known: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
            errors.push(err(
                "kind",
                None,
                None,
                format!(
                    "unknown kind {kind_name:?}, expected one of {}",
                    known.join(", ")
                ),
            ));
            continue;
        };
        match doc(kind) {
            Ok(p) => {
                if p.api_version != API_VERSION {
                    errors.push(err(
                        "apiVersion",
                        None,
                        None,
                        format!("{:?} is not {API_VERSION:?}", p.api_version),
                    ));
                    continue;
                }
                objects.push(Object {
                    kind,
                    metadata: p.metadata,
                    spec: p.spec,
                    status: p.status,
                    source: Source {
                        file: file.to_owned(),
                        line: doc_line,
                    },
                });
            }
            Err(l) => errors.push(err(&l.path, l.line, l.column, l.message)),
        }
    }
    (objects, errors)
}

/// 1-based start line of each document (the line after a `---` separator).
fn document_starts(text: &str, is_json: bool) -> Vec<usize> {
    if is_json {
        return vec![1];
    }
    let mut starts = Vec::new();
    let mut current: Option<usize> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_end();
        if trimmed == "---" || trimmed.starts_with("--- ") {
            if let Some(s) = current.take() {
                starts.push(s);
            }
            continue;
        }
        let content = !trimmed.is_empty() && !trimmed.trim_start().starts_with('#');
        if content && current.is_none() {
            current = Some(i + 1);
        }
    }
    if let Some(s) = current {
        starts.push(s);
    }
    starts
}

/// More documents than any sane manifest file holds; guards against runaway input.
const MAX_DOCUMENTS: usize = 10_000;

/// A syntax error with its (line, column) when known.
type SyntaxError = (Option<(usize, usize)>, String);
/// The deferred strict parse of one document, once its kind is known.
type TypedParse<'a> = Box<dyn FnOnce(Kind) -> Result<Parsed, Located> + 'a>;

#[derive(Default)]
struct Head {
    kind: Option<String>,
    name: Option<String>,
}

fn head_of(v: &serde_json::Value) -> Head {
    Head {
        kind: v.get("kind").and_then(|k| k.as_str()).map(str::to_owned),
        name: v
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(|n| n.as_str())
            .map(str::to_owned),
    }
}

/// Drops the location suffix and the YAML path prefix serde_norway adds; we
/// report both ourselves, more precisely.
fn strip_location(msg: &str) -> String {
    let msg = match msg.rfind(" at line ") {
        Some(i) => &msg[..i],
        None => msg,
    };
    match msg.split_once(": ") {
        Some((prefix, rest)) if !prefix.is_empty() && !prefix.contains(char::is_whitespace) => {
            rest.to_owned()
        }
        _ => msg.to_owned(),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Doc<S> {
    api_version: String,
    #[allow(dead_code)] // checked in the first pass
    kind: String,
    metadata: Metadata,
    spec: S,
    #[serde(default)]
    status: Option<serde_json::Value>,
}

struct Parsed {
    api_version: String,
    metadata: Metadata,
    spec: Spec,
    status: Option<serde_json::Value>,
}

struct Located {
    path: String,
    line: Option<usize>,
    column: Option<usize>,
    message: String,
}

fn parsed<S>(d: Doc<S>, wrap: fn(S) -> Spec) -> Parsed {
    Parsed {
        api_version: d.api_version,
        metadata: d.metadata,
        spec: wrap(d.spec),
        status: d.status,
    }
}

macro_rules! by_kind {
    ($kind:expr, $f:ident, $($arg:expr),*) => {
        match $kind {
            Kind::FabricNode => $f::<kinds::FabricNodeSpec>($($arg),*).map(|d| parsed(d, Spec::FabricNode)),
            Kind::ServiceRecord => $f::<kinds::ServiceRecordSpec>($($arg),*).map(|d| parsed(d, Spec::ServiceRecord)),
            Kind::UpdateIntent => $f::<kinds::UpdateIntentSpec>($($arg),*).map(|d| parsed(d, Spec::UpdateIntent)),
            Kind::RolloutPolicy => $f::<kinds::RolloutPolicySpec>($($arg),*).map(|d| parsed(d, Spec::RolloutPolicy)),
            Kind::RolloutLease => $f::<kinds::RolloutLeaseSpec>($($arg),*).map(|d| parsed(d, Spec::RolloutLease)),
            Kind::TrustRoot => $f::<kinds::TrustRootSpec>($($arg),*).map(|d| parsed(d, Spec::TrustRoot)),
        }
    };
}

fn typed_yaml(kind: Kind, doc: serde_norway::Deserializer<'_>) -> Result<Parsed, Located> {
    fn one<S: DeserializeOwned>(doc: serde_norway::Deserializer<'_>) -> Result<Doc<S>, Located> {
        serde_path_to_error::deserialize(doc).map_err(|e| {
            let path = clean_path(&e.path().to_string());
            let inner = e.into_inner();
            Located {
                path,
                line: inner.location().map(|l| l.line()),
                column: inner.location().map(|l| l.column()),
                message: strip_location(&inner.to_string()),
            }
        })
    }
    by_kind!(kind, one, doc)
}

fn typed_json(kind: Kind, text: &str) -> Result<Parsed, Located> {
    fn one<S: DeserializeOwned>(text: &str) -> Result<Doc<S>, Located> {
        let mut de = serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = clean_path(&e.path().to_string());
            let inner = e.into_inner();
            Located {
                path,
                line: Some(inner.line()),
                column: Some(inner.column()),
                message: strip_location(&inner.to_string()),
            }
        })
    }
    by_kind!(kind, one, text)
}

/// serde_path_to_error writes `.` for the root and `?` for unknown positions.
fn clean_path(p: &str) -> String {
    if p == "." {
        String::new()
    } else {
        p.to_owned()
    }
}

#[cfg(test)]
mod tests;
