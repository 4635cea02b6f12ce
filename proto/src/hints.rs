//! Update hints: the one rule for "which intent generations should this node
//! know about", computed by the Control API for every heartbeat reply (from
//! the store or from its reply snapshot).

use std::collections::BTreeMap;

use fabric_schemas::kinds::{FabricNodeSpec, UpdateIntentSpec};

/// The newest `UpdateIntent` generation per component (`node-agent`,
/// `host-agent`) among `intents` whose target selects the node `name` with
/// `spec`. A node that has not seen that generation wakes its updater.
pub fn update_hints<'a>(
    name: &str,
    spec: &FabricNodeSpec,
    intents: impl IntoIterator<Item = (&'a UpdateIntentSpec, i64)>,
) -> BTreeMap<String, i64> {
    let mut hints = BTreeMap::new();
    for (intent, generation) in intents {
        if intent.target.matches(name, spec) {
            let e = hints
                .entry(intent.component.as_str().to_owned())
                .or_insert(0);
            *e = (*e).max(generation);
        }
    }
    hints
}
