use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use fabric_schemas::keys::{
    generate_trust_root, write_atomic, write_private_key, write_trust_root_manifest, TrustRootPlan,
};
use fabric_schemas::kinds::Spec;
use fabric_schemas::time::{now_unix, parse_duration};
use fabric_schemas::trust::Role;
use fabric_schemas::{Envelope, Record, Scope};

#[derive(clap::Subcommand)]
pub(crate) enum Command {
    /// Generate role keys and a trust root into DIR.
    ///
    /// Writes DIR/keys/<role>-<n>.pem (private, mode 0600), DIR/trust-root.yaml
    /// (the TrustRoot manifest nodes are bootstrapped with) and
    /// DIR/trust-root.fabenv (the same trust root signed by the root keys).
    Init(InitArgs),
}

#[derive(clap::Args)]
pub(crate) struct InitArgs {
    dir: PathBuf,
    /// Number of root keys.
    #[arg(long, default_value_t = 1)]
    root_keys: u32,
    /// Root signatures needed to rotate the trust root.
    #[arg(long, default_value_t = 1)]
    root_threshold: u32,
    /// Number of control keys.
    #[arg(long, default_value_t = 1)]
    control_keys: u32,
    /// Control signatures needed on registry records and intents.
    #[arg(long, default_value_t = 1)]
    control_threshold: u32,
    /// Lifetime of the trust root (e.g. 365d, 12h).
    #[arg(long, default_value = "365d")]
    expires_in: String,
    /// Overwrite an existing trust root in DIR.
    #[arg(long)]
    force: bool,
}

pub(crate) fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Init(a) => init(a),
    }
}

fn init(a: InitArgs) -> anyhow::Result<ExitCode> {
    if a.root_threshold > a.root_keys || a.root_threshold == 0 {
        bail!(
            "--root-threshold {} must be between 1 and --root-keys {}",
            a.root_threshold,
            a.root_keys
        );
    }
    if a.control_threshold > a.control_keys || a.control_threshold == 0 {
        bail!(
            "--control-threshold {} must be between 1 and --control-keys {}",
            a.control_threshold,
            a.control_keys
        );
    }
    let lifetime = parse_duration(&a.expires_in).context("--expires-in")?;
    let trust_file = a.dir.join("trust-root.yaml");
    if trust_file.exists() && !a.force {
        bail!(
            "{} already exists; refusing to replace a trust root (pass --force to overwrite)",
            trust_file.display()
        );
    }
    let now = now_unix();
    let plan = TrustRootPlan {
        root_keys: a.root_keys,
        root_threshold: a.root_threshold,
        control_keys: a.control_keys,
        control_threshold: a.control_threshold,
        version: 1,
        expires_at: now + lifetime,
    };
    let (spec, keys) = generate_trust_root(&plan);
    let key_dir = a.dir.join("keys");
    std::fs::create_dir_all(&key_dir).with_context(|| format!("creating {}", key_dir.display()))?;
    for k in &keys {
        let path = key_dir.join(format!("{}.pem", k.id));
        write_private_key(&path, &k.key)?;
    }
    write_trust_root_manifest(&trust_file, &spec)?;
    let root_signers: Vec<_> = keys
        .iter()
        .filter(|k| k.role == Role::Root)
        .take(a.root_threshold as usize)
        .map(|k| &k.key)
        .collect();
    let record = Record::new(
        &Spec::TrustRoot(spec),
        "fleet",
        plan.version,
        now,
        plan.expires_at,
        Scope::any(),
    )?;
    let env = Envelope::sign(record, &root_signers);
    write_atomic(&a.dir.join("trust-root.fabenv"), &env.encode(), 0o644)?;
    print_summary(&a.dir, &keys);
    Ok(ExitCode::SUCCESS)
}

fn print_summary(dir: &Path, keys: &[fabric_schemas::keys::RoleKey]) {
    println!(
        "trust root written to {}",
        dir.join("trust-root.yaml").display()
    );
    for k in keys {
        println!(
            "  {:<18} {:<15} {}",
            k.id,
            k.role.as_str(),
            hex::encode(k.key.verifying_key().to_bytes())
        );
    }
    println!(
        "private keys are in {} (mode 0600); keep the root keys offline",
        dir.join("keys").display()
    );
}
