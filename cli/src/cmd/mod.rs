pub(crate) mod apply;
pub(crate) mod artifact;
pub(crate) mod audit;
pub(crate) mod crds;
pub(crate) mod fault;
pub(crate) mod get;
pub(crate) mod keys;
pub(crate) mod rollout;
pub(crate) mod sign;
pub(crate) mod up;
pub(crate) mod validate;
pub(crate) mod verify;

/// Output format shared by commands that print results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Output {
    #[default]
    Text,
    Json,
}
