//! `fabricctl`: the operator's command line for Fabric.

mod cmd;
mod context;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Steer a Fabric fleet: run a local fleet, validate and sign manifests,
/// manage trust keys, generate CRDs.
///
/// Logs go to stderr; set FABRIC_LOG (e.g. FABRIC_LOG=info) to see more.
#[derive(Parser)]
#[command(name = "fabricctl", version, about, long_about = None)]
struct Cli {
    /// Log lines as `text` or `json` (one object per event); the filter is FABRIC_LOG.
    #[arg(long, global = true, default_value = "text", value_parser = clap::builder::ValueParser::new(|s: &str| s.parse::<fabric_runtime::logging::LogFormat>()))]
    log_format: fabric_runtime::logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole fleet on this machine (loopback, embedded defaults) and show it converge.
    Up(cmd::up::Args),
    /// Check manifests: every error names file, object, field and line.
    Validate(cmd::validate::Args),
    /// Write the CustomResourceDefinitions generated from the types.
    Crds(cmd::crds::Args),
    /// Manage the trust root and role keys.
    #[command(subcommand)]
    Keys(cmd::keys::Command),
    /// Sign manifest objects into envelopes.
    Sign(cmd::sign::Args),
    /// Check envelopes against a trust root, as a node would.
    Verify(cmd::verify::Args),
    /// Apply manifests through the Control API (server-side validation; atomic).
    Apply(cmd::apply::Args),
    /// Show stored objects from the Control API.
    Get(cmd::get::Args),
    /// The fleet audit: compat dependency, registry, updater, resilience, TCP edges, acceptance criteria.
    Audit(cmd::audit::Args),
    /// Control a rollout: pause, resume, abort, status.
    #[command(subcommand)]
    Rollout(cmd::rollout::Command),
    /// Put builds into an update store; print the sha256, size and piece root an intent names.
    #[command(subcommand)]
    Artifact(cmd::artifact::Command),
    /// Faults on demand against a running `fabricctl up`: kill a node, stop the control plane, heal.
    #[command(subcommand)]
    Fault(cmd::fault::Command),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    fabric_runtime::logging::init(cli.log_format, "warn,fabric::transport=error");
    let result = match cli.command {
        Command::Up(a) => cmd::up::run(a),
        Command::Validate(a) => cmd::validate::run(a),
        Command::Crds(a) => cmd::crds::run(a),
        Command::Keys(c) => cmd::keys::run(c),
        Command::Sign(a) => cmd::sign::run(a),
        Command::Verify(a) => cmd::verify::run(a),
        Command::Apply(a) => cmd::apply::run(a),
        Command::Get(a) => cmd::get::run(a),
        Command::Audit(a) => cmd::audit::run(a),
        Command::Rollout(c) => cmd::rollout::run(c),
        Command::Artifact(c) => cmd::artifact::run(c),
        Command::Fault(c) => cmd::fault::run(c),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
