//! `fabric-node-agent`: one node of a Fabric fleet.

mod agent_main;

fn main() -> anyhow::Result<()> {
    agent_main::run(agent_main::Build {
        version: env!("CARGO_PKG_VERSION"),
        broken: false,
    })
}
