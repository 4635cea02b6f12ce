//! `fabric-node-agent-next`: the node-agent built as another version, the
//! "next" build `fabricctl up --rollout next` rolls out (its digest and the
//! version it reports differ from `fabric-node-agent`'s).

mod agent_main;

fn main() -> anyhow::Result<()> {
    agent_main::run(agent_main::Build {
        version: concat!(env!("CARGO_PKG_VERSION"), "-next"),
        broken: false,
    })
}
