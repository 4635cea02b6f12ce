//! `fabricctl audit`: the fleet audit from the Control API.

use std::process::ExitCode;

use anyhow::Context;
use fabric_reconciler::audit::AuditReport;

use super::apply::ServerArgs;
use super::Output;

#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    server: ServerArgs,
    /// A heartbeat older than this many seconds is stale (server default: 90).
    #[arg(long)]
    freshness_secs: Option<u64>,
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

/// Exit 0 when all six acceptance criteria pass, 1 when any fails, 2 on errors.
pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let client = args.server.client()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let freshness = args
        .freshness_secs
        .map(|s| i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX));
    let report = runtime.block_on(client.audit(freshness))?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Text => print_table(&report),
    }
    Ok(if report.converged {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.join(", ")
    }
}

fn print_table(r: &AuditReport) {
    println!("NODE                 FRESH  AGE(s)  AGENT            CONTRACT  VIA             REGISTRY        UPDATER  WAKE  CONTROL ENDPOINT");
    for n in &r.nodes {
        println!(
            "{:<20} {:<6} {:>6}  {:<16} {:<9} {:<15} {:<15} {:<8} {:<5} {}",
            n.node,
            if n.fresh { "yes" } else { "STALE" },
            n.heartbeat_age_ms / 1000,
            n.agent_version,
            n.control_contract,
            n.received_via.as_deref().unwrap_or("-"),
            n.registry_status,
            n.updater_subscription,
            if n.supports_hint_wake { "yes" } else { "no" },
            n.fabric_control_endpoint.as_deref().unwrap_or("-"),
        );
    }
    println!();
    println!(
        "compat_control_dependency_nodes   {}",
        list(&r.compat_control_dependency_nodes)
    );
    println!(
        "registry_candidate_only_nodes     {}",
        list(&r.registry_candidate_only_nodes)
    );
    println!(
        "registry_missing_nodes            {}",
        list(&r.registry_missing_nodes)
    );
    println!(
        "updater_subscription_alert_nodes  {}",
        list(&r.updater_subscription_alert_nodes)
    );
    println!(
        "updater_wake_unsupported_nodes    {}",
        list(&r.updater_wake_unsupported_nodes)
    );
    println!(
        "bridge_hold_required              {}",
        r.bridge_hold_required
    );
    for reason in &r.bridge_hold_reasons {
        println!("  - {reason}");
    }
    let reg = &r.fabric_registry_runtime_report;
    println!(
        "fabric_registry_runtime_report    status={} (active {}/{} fresh)",
        reg.status, reg.active_nodes, reg.fresh_nodes
    );
    let stale: Vec<String> = r
        .stale_heartbeats
        .iter()
        .map(|s| format!("{} ({}s)", s.node, s.age_ms / 1000))
        .collect();
    println!("stale_heartbeats                  {}", list(&stale));
    println!(
        "nodes_without_heartbeat           {}",
        list(&r.nodes_without_heartbeat)
    );
    let below: Vec<String> = r
        .critical_nodes_below_resilience_target
        .iter()
        .map(|b| {
            if b.shortfalls.is_empty() {
                format!("{} ({})", b.node, b.reason)
            } else {
                let s: Vec<String> = b
                    .shortfalls
                    .iter()
                    .map(|s| format!("{} {}<{}", s.metric, s.actual, s.target))
                    .collect();
                format!("{} ({})", b.node, s.join(", "))
            }
        })
        .collect();
    println!("critical_nodes_below_target       {}", list(&below));
    println!();
    println!("TCP LISTENERS");
    println!(
        "OWNER                ROLE                 CLASS          BIND                   TARGET"
    );
    for l in &r.tcp_listeners {
        let class = match l.class {
            fabric_reconciler::audit::ListenerClass::ServiceEdge => "service-edge",
            fabric_reconciler::audit::ListenerClass::Unclassified => "UNCLASSIFIED",
        };
        println!(
            "{:<20} {:<20} {:<14} {:<22} {}{}",
            l.owner,
            l.role,
            class,
            l.bind,
            l.target,
            l.anomaly
                .as_deref()
                .map(|a| format!("  !! {a}"))
                .unwrap_or_default()
        );
    }
    println!();
    println!("ACCEPTANCE CRITERIA (seed section 5)");
    for c in &r.acceptance_criteria {
        println!(
            "  {}. {:<42} {}{}",
            c.id,
            c.name,
            if c.passed { "PASS" } else { "FAIL" },
            if c.passed {
                String::new()
            } else {
                format!("  {}", c.detail)
            }
        );
    }
    let g = &r.fabric_only_recovery_gate;
    println!();
    println!(
        "fabric-only recovery gate (P4.3): {}",
        if g.open { "OPEN" } else { "closed" }
    );
    for b in &g.blockers {
        println!("  - {b}");
    }
    println!("converged: {}", r.converged);
}
