//! `apply`: server-side validation of a manifest set and one atomic write.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use fabric_schemas::kinds::{Kind, Spec};
use fabric_schemas::manifest::{
    check_object, check_references, parse_str, ManifestError, Object, Source,
};
use serde::{Deserialize, Serialize};

use crate::store::{Applied, NewEvent, Op, PutObject, Store, StoreError, StoredObject};

/// The file name given to objects loaded from the store for reference checks;
/// errors located there are not the submitter's and are not reported.
const STORED: &str = "<stored>";

/// One manifest file of an apply request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Shown in errors (`manifests/prod/nodes.yaml`).
    pub name: String,
    /// Multi-document YAML, or JSON when the name ends in `.json`.
    pub text: String,
}

/// An apply request body in the bundle form (several files, errors keep
/// their file names). Content type [`BUNDLE_CONTENT_TYPE`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyBundle {
    /// The manifest files, in order.
    pub files: Vec<ManifestFile>,
}

/// Content type of an [`ApplyBundle`] body.
pub const BUNDLE_CONTENT_TYPE: &str = "application/vnd.fabric.apply+json";

/// How an apply request is carried out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyOptions {
    /// Validate and report what would change, write nothing.
    pub dry_run: bool,
    /// Delete stored objects of the kinds present in the request that the
    /// request does not contain (kubectl's `--prune` with a kind allowlist:
    /// a request without `UpdateIntent`s never deletes one).
    pub prune: bool,
}

/// What happened (or would happen) to one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplyAction {
    /// The object was not stored before.
    Created,
    /// The stored object's spec, labels or annotations changed.
    Configured,
    /// The stored object already matched.
    Unchanged,
    /// Deleted: absent from a `prune` request that has objects of its kind.
    Pruned,
}

/// What happened (or would happen) to one object of an apply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyItem {
    /// The object's kind.
    pub kind: Kind,
    /// The object's name.
    pub name: String,
    /// What happened to it.
    pub action: ApplyAction,
    /// `metadata.generation` after the apply (before, for dry runs and prunes).
    pub generation: Option<i64>,
}

/// The outcome of an accepted apply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyResult {
    /// Whether this was a dry run (nothing written).
    pub dry_run: bool,
    /// One item per object, created, configured, unchanged or pruned.
    pub items: Vec<ApplyItem>,
}

impl ApplyResult {
    /// True when nothing was (or would be) written.
    pub fn unchanged(&self) -> bool {
        self.items
            .iter()
            .all(|i| i.action == ApplyAction::Unchanged)
    }
}

/// Why an apply was refused; in every case nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The request's own manifest errors.
    #[error("{} manifest error(s); nothing was applied", .0.len())]
    Invalid(Vec<ManifestError>),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// Validates `files` against themselves and what is stored, then writes every
/// object in one `apply_batch` (all or nothing). Generation moves only for
/// objects whose spec changed (the store's rule).
pub async fn apply(
    store: &dyn Store,
    files: &[ManifestFile],
    opts: ApplyOptions,
) -> Result<ApplyResult, ApplyError> {
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for f in files {
        let (objs, errs) = parse_str(Path::new(&f.name), &f.text);
        errors.extend(errs);
        for o in objs {
            let e = check_object(&o);
            if e.is_empty() {
                objects.push(o);
            } else {
                errors.extend(e);
            }
        }
    }
    if objects.is_empty() && errors.is_empty() {
        errors.push(ManifestError {
            file: files
                .first()
                .map(|f| f.name.clone())
                .unwrap_or_else(|| "request".into()),
            line: None,
            column: None,
            kind: None,
            name: None,
            field: String::new(),
            message: "no objects to apply".into(),
        });
    }

    // Everything stored, by kind: for references, for prune and for the
    // created/configured/unchanged report.
    let mut stored: BTreeMap<(Kind, String), StoredObject> = BTreeMap::new();
    for kind in Kind::ALL {
        for o in store.list_objects(kind).await? {
            stored.insert((kind, o.name().to_owned()), o);
        }
    }
    let submitted: BTreeSet<(Kind, String)> = objects
        .iter()
        .map(|o| (o.kind, o.name().to_owned()))
        .collect();
    let kinds_in_request: BTreeSet<Kind> = objects.iter().map(|o| o.kind).collect();
    let pruned: Vec<&StoredObject> = if opts.prune {
        stored
            .iter()
            .filter(|(k, _)| kinds_in_request.contains(&k.0) && !submitted.contains(k))
            .map(|(_, o)| o)
            .collect()
    } else {
        Vec::new()
    };

    // References are checked against the submitted set plus what stays stored.
    let mut combined = objects.clone();
    for (key, o) in &stored {
        if submitted.contains(key) || pruned.iter().any(|p| p.kind == key.0 && p.name() == key.1) {
            continue;
        }
        if let Some(obj) = as_object(o) {
            combined.push(obj);
        }
    }
    // Errors on stored objects count only when this request causes them (a
    // prune or a rename leaving a dangling reference); breakage that was
    // already stored is not the submitter's to fix here.
    let baseline: BTreeSet<String> = {
        let all: Vec<Object> = stored.values().filter_map(as_object).collect();
        check_references(&all)
            .iter()
            .map(|e| e.to_string())
            .collect()
    };
    for e in check_references(&combined) {
        if e.file != STORED {
            errors.push(e);
        } else if !baseline.contains(&e.to_string()) {
            errors.push(ManifestError {
                message: format!("{} (stored object; this apply would break it)", e.message),
                ..e
            });
        }
    }
    if !errors.is_empty() {
        return Err(ApplyError::Invalid(errors));
    }

    let mut items = Vec::new();
    let mut ops = Vec::new();
    for o in &objects {
        let put = PutObject::from_object(o)?;
        let before = stored.get(&(o.kind, o.name().to_owned()));
        let action = match before {
            None => ApplyAction::Created,
            Some(b)
                if b.spec == put.spec
                    && b.metadata.labels == put.labels
                    && b.metadata.annotations == put.annotations =>
            {
                ApplyAction::Unchanged
            }
            Some(_) => ApplyAction::Configured,
        };
        items.push(ApplyItem {
            kind: o.kind,
            name: o.name().to_owned(),
            action,
            generation: before.map(|b| b.generation()),
        });
        if action != ApplyAction::Unchanged {
            ops.push(Op::PutObject(put));
        }
    }
    for p in &pruned {
        items.push(ApplyItem {
            kind: p.kind,
            name: p.name().to_owned(),
            action: ApplyAction::Pruned,
            generation: Some(p.generation()),
        });
        ops.push(Op::DeleteObject {
            kind: p.kind,
            name: p.name().to_owned(),
            expected_version: Some(p.resource_version),
        });
    }
    if opts.dry_run || ops.is_empty() {
        return Ok(ApplyResult {
            dry_run: opts.dry_run,
            items,
        });
    }
    let changed = items
        .iter()
        .filter(|i| i.action != ApplyAction::Unchanged)
        .count();
    let mut event = NewEvent::new(
        "apply",
        "Applied",
        format!("{changed} object(s) changed by apply"),
    );
    event.data = serde_json::to_value(&items).unwrap_or_default();
    ops.push(Op::AppendEvent(event));
    let applied = store.apply_batch(ops).await?;
    // Report the generation each written object ended at.
    let mut written = applied.into_iter().filter_map(|a| match a {
        Applied::Object(o) => Some(o),
        _ => None,
    });
    for item in items
        .iter_mut()
        .filter(|i| matches!(i.action, ApplyAction::Created | ApplyAction::Configured))
    {
        if let Some(o) = written.next() {
            item.generation = Some(o.generation());
        }
    }
    Ok(ApplyResult {
        dry_run: false,
        items,
    })
}

/// A stored object as a manifest object, for reference checks.
fn as_object(o: &StoredObject) -> Option<Object> {
    let spec = Spec::from_json(o.kind, o.spec.clone()).ok()?;
    Some(Object {
        kind: o.kind,
        metadata: o.metadata.clone(),
        spec,
        status: None,
        source: Source {
            file: PathBuf::from(STORED),
            line: 1,
        },
    })
}

/// Parses a kind as operators type it: `FabricNode`, `fabricnode`,
/// `fabricnodes`, or the CRD short name (`fnode`).
pub fn parse_kind(s: &str) -> Option<Kind> {
    let l = s.to_ascii_lowercase();
    let short = |k: Kind| match k {
        Kind::FabricNode => "fnode",
        Kind::ServiceRecord => "fsvc",
        Kind::UpdateIntent => "fui",
        Kind::RolloutPolicy => "frp",
        Kind::RolloutLease => "flease",
        Kind::TrustRoot => "ftrust",
    };
    // kubectl-style everyday names.
    let alias = |k: Kind| -> &'static [&'static str] {
        match k {
            Kind::FabricNode => &["node", "nodes", "no", "fnodes"],
            Kind::ServiceRecord => &["service", "services", "svc"],
            Kind::UpdateIntent => &["intent", "intents"],
            Kind::RolloutPolicy => &["policy", "policies"],
            Kind::RolloutLease => &["lease", "leases"],
            Kind::TrustRoot => &["trust"],
        }
    };
    Kind::ALL.into_iter().find(|k| {
        let n = k.as_str().to_ascii_lowercase();
        l == n || l == format!("{n}s") || l == short(*k) || alias(*k).contains(&l.as_str())
    })
}
