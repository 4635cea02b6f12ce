pub mod apply;
pub mod artifact;
pub mod audit;
pub mod crds;
pub mod get;
pub mod keys;
pub mod rollout;
pub mod sign;
pub mod up;
pub mod validate;
pub mod verify;

/// Output format shared by commands that print results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    #[default]
    Text,
    Json,
}
