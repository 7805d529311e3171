//! Storage adapters: implementations of the `arbor_actors::ports` store traits.
//! One module per backend; the contract tests in `tests/api/stores.rs` run against each.

pub mod sqlite;

use std::str::FromStr;

use arbor_actors::ports::StoreError;

/// Parses an id column; a bad one means the stored data is corrupt.
pub(crate) fn parse_id<T: FromStr>(column: &str, value: &str) -> Result<T, StoreError> {
    value
        .parse()
        .map_err(|_| StoreError::Corrupt(format!("bad {column}: {value:?}")))
}

use std::sync::Arc;

use arbor_actors::ports::{MessageStore, MetadataStore};

/// The two stores the server runs on.
#[derive(Clone)]
pub struct Stores {
    pub metadata: Arc<dyn MetadataStore>,
    pub messages: Arc<dyn MessageStore>,
}
