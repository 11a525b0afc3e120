//! Names that end up in object-store keys, local paths, NATS subjects and KV keys: a run's id and a
//! checkpoint's label. They are checked once, where they enter (the CLI, message decoding), so no
//! code below can be handed `x/../..` and reach `remove_dir_all` with it.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The longest name accepted: plenty for a timestamped id, short enough for any key scheme.
pub const MAX_NAME_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} '{value}': {problem}; use 1 to {MAX_NAME_LEN} of A-Z a-z 0-9 . _ -, not starting or ending with a dot")]
pub struct InvalidName {
    pub what: &'static str,
    /// The offending value, shortened and escaped so a hostile one cannot garble the message.
    pub value: String,
    pub problem: &'static str,
}

/// Why `s` is not a safe name, if it is not. Besides the allowed characters, no leading dot (hidden
/// files, `..`), no trailing dot and no empty dot-separated token (NATS subjects and KV keys refuse
/// both).
fn check(what: &'static str, s: &str) -> Result<(), InvalidName> {
    let problem = if s.is_empty() {
        Some("it is empty")
    } else if s.len() > MAX_NAME_LEN {
        Some("it is too long")
    } else if !s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        Some("it has a character outside the allowed set")
    } else if s.starts_with('.') || s.ends_with('.') {
        Some("it starts or ends with a dot")
    } else if s.contains("..") {
        Some("it has two dots in a row")
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(problem) => {
            let mut value: String = s.chars().take(MAX_NAME_LEN + 8).collect::<String>().escape_debug().to_string();
            if s.chars().count() > MAX_NAME_LEN + 8 {
                value.push('…');
            }
            Err(InvalidName { what, value, problem })
        }
    }
}

macro_rules! safe_name {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn new(s: impl Into<String>) -> Result<Self, InvalidName> {
                let s = s.into();
                check($what, &s)?;
                Ok(Self(s))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidName;
            fn try_from(s: String) -> Result<Self, InvalidName> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidName;
            fn from_str(s: &str) -> Result<Self, InvalidName> {
                Self::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        // Ordering, equality and hashing are the string's, so sets and maps can be asked by &str.
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

safe_name!(
    /// A fleet run: `run-1764583200-1a2b`, or whatever the user passed to `submit --run-id`.
    RunId,
    "run id"
);
safe_name!(
    /// A checkpoint of a run: `step-<n>`, where `step-0` is the base model.
    CheckpointLabel,
    "checkpoint label"
);

impl CheckpointLabel {
    pub fn step(step: u64) -> Self {
        Self(format!("step-{step}"))
    }

    /// The step of a `step-<n>` label.
    pub fn step_number(&self) -> Option<u64> {
        Self::step_in(&self.0)
    }

    /// The step a `step-<n>` name (a folder, a key's last part) stands for; None for any other
    /// name. The one place the `step-` form is read.
    pub fn step_in(name: &str) -> Option<u64> {
        name.strip_prefix("step-")?.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_names_pass() {
        for ok in ["run-1", "a", "run_2026.12.01", "A-Z_a-z.0-9", &"x".repeat(MAX_NAME_LEN)] {
            assert!(RunId::new(ok).is_ok(), "{ok}");
        }
        assert_eq!(CheckpointLabel::step(40).step_number(), Some(40));
        assert_eq!(CheckpointLabel::new("best").unwrap().step_number(), None);
        assert_eq!(CheckpointLabel::step_in("step-7"), Some(7));
        assert_eq!(CheckpointLabel::step_in("step-x"), None);
    }

    #[test]
    fn names_that_could_escape_or_break_nats_are_refused() {
        let long = "x".repeat(MAX_NAME_LEN + 1);
        for bad in [
            "",
            "x/../..",
            "a/../b",
            "..",
            ".hidden",
            "trailing.",
            "a..b",
            "sp ace",
            "a*b",
            "a>b",
            "tab\t",
            "é",
            "a\\b",
            long.as_str(),
            "run\n",
        ] {
            let err = RunId::new(bad).unwrap_err();
            assert_eq!(err.what, "run id");
            assert!(!err.to_string().contains('\n'), "the message stays on one line: {err}");
        }
    }

    #[test]
    fn serde_validates() {
        assert_eq!(serde_json::from_str::<RunId>("\"run-1\"").unwrap(), "run-1");
        let err = serde_json::from_str::<RunId>("\"../etc\"").unwrap_err().to_string();
        assert!(err.contains("invalid run id"), "{err}");
        assert_eq!(serde_json::to_string(&CheckpointLabel::step(3)).unwrap(), "\"step-3\"");
    }
}
