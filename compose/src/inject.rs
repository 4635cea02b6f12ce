//! The node-side ends of record delivery, as the reconciler's
//! [`RecordInjector`]s: the reconciler knows only the trait, the agents know
//! nothing of it.

use std::sync::Arc;

use fabric_node_agent::AgentHandle;
use fabric_reconciler::publish::{AgentSink, RecordInjector};
use fabric_reconciler::store::BoxFuture;

use crate::fleet::LocalFleet;

/// A running node-agent as an injection target.
pub struct AgentInjector(pub Arc<AgentHandle>);

impl RecordInjector for AgentInjector {
    fn label(&self) -> String {
        self.0.node_id().to_string()
    }

    fn inject(&self, envelope: Vec<u8>) -> BoxFuture<'_, Result<bool, String>> {
        Box::pin(self.0.inject(envelope))
    }
}

/// A member of a [`LocalFleet`], by name (the fleet owns the agent handles).
pub struct FleetMember {
    /// The fleet.
    pub fleet: Arc<LocalFleet>,
    /// The member's node name.
    pub name: String,
}

impl RecordInjector for FleetMember {
    fn label(&self) -> String {
        self.name.clone()
    }

    fn inject(&self, envelope: Vec<u8>) -> BoxFuture<'_, Result<bool, String>> {
        Box::pin(async move {
            match self.fleet.handle(&self.name) {
                Some(h) => h.inject(envelope).await,
                None => Err(format!("node {:?} is stopped", self.name)),
            }
        })
    }
}

/// The named members of a local fleet (every member when `names` is empty)
/// as the targets of one sink.
pub fn fleet_sink(fleet: &Arc<LocalFleet>, names: &[&str]) -> AgentSink {
    let targets = fleet
        .members
        .iter()
        .filter(|m| names.is_empty() || names.contains(&m.name.as_str()))
        .map(|m| {
            Arc::new(FleetMember {
                fleet: fleet.clone(),
                name: m.name.clone(),
            }) as Arc<dyn RecordInjector>
        })
        .collect();
    AgentSink::new(targets)
}
