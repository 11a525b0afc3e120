//! Deterministic identifiers. The same input always yields the same ids, so a re-run, a resumed run
//! and a redelivered fleet message all address the same objects.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }
    };
}

string_id!(
    /// A source document: `d` followed by 12 hex digits of the SHA-256 of its identity
    /// (its `id`, else its `url`, else its path or position), safe in file names and S3 keys.
    DocId
);
string_id!(
    /// A chunk: its document's id and its position, `d1a2b3c4d5e6f-0003`, so the document can be
    /// recovered from the id alone (the split by document needs it).
    ChunkId
);
string_id!(
    /// A question: its chunk's id and its position among that chunk's questions, `…-0003-q1`.
    QueryId
);

impl DocId {
    pub fn from_identity(identity: &str) -> Self {
        let digest = Sha256::digest(identity.as_bytes());
        Self(format!("d{}", &hex::encode(digest)[..12]))
    }
}

impl ChunkId {
    pub fn new(doc: &DocId, index: usize) -> Self {
        Self(format!("{doc}-{index:04}"))
    }

    /// The document this chunk came from, when the id has embedfleet's shape.
    pub fn doc_id(&self) -> Option<DocId> {
        let (doc, index) = self.0.rsplit_once('-')?;
        (index.len() >= 4 && index.bytes().all(|b| b.is_ascii_digit())).then(|| DocId(doc.to_owned()))
    }
}

impl QueryId {
    pub fn new(chunk: &ChunkId, index: usize) -> Self {
        Self(format!("{chunk}-q{index}"))
    }
}

/// A 64-bit seed derived from a run seed and a name, so every chunk gets its own reproducible RNG
/// stream whatever order the chunks are processed in.
pub fn derive_seed(seed: u64, name: &str) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(seed.to_le_bytes());
    hasher.update(name.as_bytes());
    let digest = hasher.finalize();
    u64::from_le_bytes(digest[..8].try_into().expect("sha256 has 32 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_id_carries_its_document() {
        let doc = DocId::from_identity("https://example.com/a");
        let chunk = ChunkId::new(&doc, 7);
        assert_eq!(chunk.doc_id(), Some(doc.clone()));
        assert!(chunk.as_str().ends_with("-0007"));
        assert_eq!(QueryId::new(&chunk, 1).as_str(), format!("{chunk}-q1"));
        assert_eq!(ChunkId::from("node-uuid-without-index").doc_id(), None);
    }

    #[test]
    fn ids_are_deterministic() {
        assert_eq!(DocId::from_identity("x"), DocId::from_identity("x"));
        assert_ne!(DocId::from_identity("x"), DocId::from_identity("y"));
        assert_eq!(derive_seed(42, "a"), derive_seed(42, "a"));
        assert_ne!(derive_seed(42, "a"), derive_seed(43, "a"));
    }
}
