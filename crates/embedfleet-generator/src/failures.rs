//! The chunks a run gave up on, one JSON object a line, so a user can see why and rerun just those.

use crate::LlmError;
use embedfleet_core::generate::ChunkFailure;
use std::io::Write;
use std::path::Path;

/// Writes `failures` to `path` as JSON Lines (`{"chunk_id": …, "error": …}`), replacing the file;
/// an empty list leaves an empty file so "no failures" is visible too.
pub fn write_failures(path: &Path, failures: &[ChunkFailure]) -> Result<(), LlmError> {
    let io = |source| LlmError::WriteFailures { path: path.to_owned(), source };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    for failure in failures {
        serde_json::to_writer(&mut out, failure).expect("failures serialize");
        out.write_all(b"\n").map_err(io)?;
    }
    out.flush().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out/failures.jsonl");
        let failures = vec![
            ChunkFailure { chunk_id: "d1-0000".into(), error: "HTTP 500".into() },
            ChunkFailure { chunk_id: "d1-0001".into(), error: "timeout\nafter 60 s".into() },
        ];
        write_failures(&path, &failures).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let back: Vec<ChunkFailure> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(back, failures);
    }
}
