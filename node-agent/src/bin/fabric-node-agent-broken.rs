//! `fabric-node-agent-broken`: a build that fails its health check (it
//! starts, then exits before `READY=1`), for `fabricctl up --rollout broken`
//! and the rollback tests.

mod agent_main;

fn main() -> anyhow::Result<()> {
    agent_main::run(agent_main::Build {
        version: concat!(env!("CARGO_PKG_VERSION"), "-broken"),
        broken: true,
    })
}
