//! The small vocabulary the service's modules share: API scopes and pool keys. It depends on
//! nothing else in the crate, so configuration, authentication and the fleet can all use it.

pub use vmfleet_scaler::pool_key;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Everything.
    Admin,
    /// Fleet operations: VMs, volumes, tasks.
    Operator,
    /// CI agents: request, read and release tasks.
    Agent,
    /// Packer pipelines: register image versions, nothing else.
    ImagePublisher,
    /// Jobs' secrets: project variables, contexts, SSH keys, the secrets key.
    Secrets,
}

impl Scope {
    /// Parses a scope name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Scope::Admin),
            "operator" => Some(Scope::Operator),
            "agent" => Some(Scope::Agent),
            "image-publisher" => Some(Scope::ImagePublisher),
            "secrets" => Some(Scope::Secrets),
            _ => None,
        }
    }

    /// The name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::Operator => "operator",
            Scope::Agent => "agent",
            Scope::ImagePublisher => "image-publisher",
            Scope::Secrets => "secrets",
        }
    }
}
