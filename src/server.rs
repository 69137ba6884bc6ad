//! Starts the shards for `pushgate serve` and stops them on a signal.

use crate::config::Config;

/// A start-up or run failure, worded to tell the operator what to do.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Startup(String),
}

pub fn serve(_config: Config) -> Result<(), ServeError> {
    Err(ServeError::Startup("not yet implemented".into()))
}
