//! Loading a user's scraped documents: a JSON array of objects, JSON Lines, or a directory of
//! `.txt`, `.md` and `.html` files.

use crate::html::html_to_text;
use crate::ids::DocId;
use serde_json::Value;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Field names tried, in order, when the user does not name the text field.
pub const TEXT_FIELDS: &[&str] = &["content", "text", "page_content", "body"];

#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub id: DocId,
    pub text: String,
    pub url: Option<String>,
    pub title: Option<String>,
    /// Where it came from: `file.json#12` or a path relative to the input directory.
    pub source: String,
}

#[derive(Debug, Clone, Default)]
pub struct IngestOptions {
    /// The field that holds the text; None tries [`TEXT_FIELDS`].
    pub text_field: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("input {path} does not exist; pass a JSON/JSONL file or a directory of .txt/.md/.html files")]
    NotFound { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("malformed JSON in {path} at line {line}, column {column}: {message}")]
    Json { path: PathBuf, line: usize, column: usize, message: String },
    #[error("{path}: record {index} is not a JSON object or string; expected objects with a text field")]
    NotAnObject { path: PathBuf, index: usize },
    #[error("{path}: record {index} has no text field {wanted}; its fields are [{present}]. Name the field with --text-field")]
    TextFieldMissing { path: PathBuf, index: usize, wanted: String, present: String },
    #[error("{path}: no text found (no documents, or every document is empty); nothing to fine-tune on")]
    EmptyCorpus { path: PathBuf },
}

pub fn load_documents(path: &Path, options: &IngestOptions) -> Result<Vec<Document>, IngestError> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => IngestError::NotFound { path: path.to_owned() },
        _ => IngestError::Io { path: path.to_owned(), source: e },
    })?;
    let docs = if meta.is_dir() { load_dir(path)? } else { load_json_file(path, options)? };
    let docs = dedupe_ids(docs);
    if docs.is_empty() {
        return Err(IngestError::EmptyCorpus { path: path.to_owned() });
    }
    Ok(docs)
}

/// Parses JSON documents from bytes already in memory (the fleet reads the corpus from S3). Ids
/// are unique, as [`load_documents`] makes them, so the fleet chunks a corpus exactly as
/// `embedfleet generate` does.
pub fn parse_json_documents(path: &Path, raw: &str, options: &IngestOptions) -> Result<Vec<Document>, IngestError> {
    let trimmed = raw.trim_start_matches('\u{feff}').trim_start();
    let records: Vec<Value> = if trimmed.starts_with('[') {
        serde_json::from_str(trimmed).map_err(|e| json_error(path, raw, trimmed, &e))?
    } else {
        let mut records = Vec::new();
        for (line_no, line) in raw.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let value = serde_json::from_str(line).map_err(|e| IngestError::Json {
                path: path.to_owned(),
                line: line_no + 1,
                column: e.column(),
                message: e.to_string(),
            })?;
            records.push(value);
        }
        records
    };
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut docs = Vec::with_capacity(records.len());
    for (index, record) in records.into_iter().enumerate() {
        let source = format!("{file_name}#{index}");
        let doc = match record {
            Value::String(text) => Some(Document { id: DocId::from_identity(&source), text, url: None, title: None, source }),
            Value::Object(map) => {
                let text = match &options.text_field {
                    Some(field) => map.get(field).map(value_text),
                    None => TEXT_FIELDS.iter().find_map(|f| map.get(*f)).map(value_text),
                };
                let Some(text) = text else {
                    let wanted = match &options.text_field {
                        Some(f) => format!("'{f}'"),
                        None => format!("(tried {})", TEXT_FIELDS.join(", ")),
                    };
                    return Err(IngestError::TextFieldMissing {
                        path: path.to_owned(),
                        index,
                        wanted,
                        present: map.keys().cloned().collect::<Vec<_>>().join(", "),
                    });
                };
                let url = map.get("url").map(value_text).filter(|s| !s.is_empty());
                let title = map.get("title").map(value_text).filter(|s| !s.is_empty());
                let identity =
                    map.get("id").map(value_text).filter(|s| !s.is_empty()).or_else(|| url.clone()).unwrap_or_else(|| source.clone());
                // Scraped JSON often carries raw HTML in the text field.
                let text = if looks_like_html(&text) { html_to_text(&text).text } else { text };
                Some(Document { id: DocId::from_identity(&identity), text, url, title, source })
            }
            _ => return Err(IngestError::NotAnObject { path: path.to_owned(), index }),
        };
        docs.extend(doc.filter(|d| !d.text.trim().is_empty()));
    }
    Ok(dedupe_ids(docs))
}

fn load_json_file(path: &Path, options: &IngestOptions) -> Result<Vec<Document>, IngestError> {
    let raw = std::fs::read_to_string(path).map_err(|e| IngestError::Io { path: path.to_owned(), source: e })?;
    parse_json_documents(path, &raw, options)
}

fn load_dir(root: &Path) -> Result<Vec<Document>, IngestError> {
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(root).follow_links(true).sort_by_file_name() {
        let entry = match entry {
            Ok(entry) => entry,
            // Documentation packages link their scripts and styles into other packages, which may
            // not be installed: a link to nothing has no text to lose, so it is not worth failing for.
            Err(e) if e.path().is_some_and(is_dangling_link) => {
                let path = e.path().unwrap_or(root);
                if kind_of(path).is_some() {
                    tracing::warn!(path = %path.display(), "skipping a symbolic link whose target does not exist");
                }
                continue;
            }
            Err(e) => {
                return Err(IngestError::Io {
                    path: e.path().unwrap_or(root).to_owned(),
                    source: e.into_io_error().unwrap_or_else(|| std::io::Error::other("directory loop")),
                });
            }
        };
        if entry.file_type().is_file() && kind_of(entry.path()).is_some() {
            files.push(entry.into_path());
        }
    }
    let mut docs = Vec::with_capacity(files.len());
    for path in files {
        let bytes = std::fs::read(&path).map_err(|e| IngestError::Io { path: path.clone(), source: e })?;
        let relative = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().replace('\\', "/");
        docs.extend(parse_file_document(&relative, &bytes));
    }
    Ok(docs)
}

/// One file of a corpus directory, named by its path relative to the directory: HTML (by its
/// extension) becomes clean text, anything else is taken as text. Bytes that are not UTF-8 are
/// replaced rather than refused, since scraped files often mix encodings. None when the file holds
/// no text, or its extension is not one the corpus reads.
pub fn parse_file_document(relative: &str, bytes: &[u8]) -> Option<Document> {
    let kind = kind_of(Path::new(relative))?;
    let raw = String::from_utf8_lossy(bytes);
    let (text, title) = match kind {
        FileKind::Html => {
            let page = html_to_text(&raw);
            (page.text, page.title)
        }
        FileKind::Text => (raw.into_owned(), None),
    };
    if text.trim().is_empty() {
        return None;
    }
    Some(Document { id: DocId::from_identity(relative), text, url: None, title, source: relative.to_owned() })
}

fn is_dangling_link(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) && std::fs::metadata(path).is_err()
}

#[derive(Clone, Copy)]
enum FileKind {
    Text,
    Html,
}

fn kind_of(path: &Path) -> Option<FileKind> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    match ext.as_str() {
        "txt" | "md" | "markdown" => Some(FileKind::Text),
        "html" | "htm" | "xhtml" => Some(FileKind::Html),
        _ => None,
    }
}

fn value_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Whether a record's text is a whole HTML page, judged by its first 512 characters (characters,
/// not bytes: a byte offset can fall inside a multi-byte character).
pub fn looks_like_html(text: &str) -> bool {
    let head = text.trim_start();
    let end = head.char_indices().nth(512).map_or(head.len(), |(i, _)| i);
    let head = head[..end].to_ascii_lowercase();
    head.starts_with("<!doctype html") || head.starts_with("<html") || head.contains("<body")
}

/// Two records with the same id or url would collide; later ones get a positional suffix.
fn dedupe_ids(mut docs: Vec<Document>) -> Vec<Document> {
    let mut seen = HashSet::new();
    for doc in &mut docs {
        if !seen.insert(doc.id.clone()) {
            doc.id = DocId::from_identity(&format!("{}#{}", doc.id, doc.source));
            seen.insert(doc.id.clone());
        }
    }
    docs
}

fn json_error(path: &Path, raw: &str, trimmed: &str, e: &serde_json::Error) -> IngestError {
    // serde_json counts lines from the trimmed text; add back the lines trimmed away.
    let skipped_lines = raw[..raw.len() - trimmed.len()].matches('\n').count();
    IngestError::Json { path: path.to_owned(), line: e.line() + skipped_lines, column: e.column(), message: e.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::File::create(&path).unwrap().write_all(body.as_bytes()).unwrap();
        path
    }

    #[test]
    fn json_array_with_metadata_and_fallback_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "c.json",
            r#"[{"url":"https://a","title":"A","content":"alpha"},{"page_content":"beta","id":7},{"text":""}]"#,
        );
        let docs = load_documents(&path, &IngestOptions::default()).unwrap();
        assert_eq!(docs.len(), 2, "empty documents are skipped");
        assert_eq!(docs[0].text, "alpha");
        assert_eq!(docs[0].url.as_deref(), Some("https://a"));
        assert_eq!(docs[0].id, DocId::from_identity("https://a"));
        assert_eq!(docs[1].id, DocId::from_identity("7"));
    }

    #[test]
    fn json_lines_and_named_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "c.jsonl", "{\"md\":\"one\"}\n\n{\"md\":\"two\"}\n");
        let opts = IngestOptions { text_field: Some("md".into()) };
        let docs = load_documents(&path, &opts).unwrap();
        assert_eq!(docs.iter().map(|d| d.text.as_str()).collect::<Vec<_>>(), ["one", "two"]);
    }

    #[test]
    fn bad_inputs_say_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let missing = load_documents(&dir.path().join("nope.json"), &IngestOptions::default()).unwrap_err();
        assert!(matches!(missing, IngestError::NotFound { .. }), "{missing}");

        let bad = write(dir.path(), "bad.json", "[\n {\"content\": \"a\"},\n {\"content\": }\n]");
        match load_documents(&bad, &IngestOptions::default()).unwrap_err() {
            IngestError::Json { line, .. } => assert_eq!(line, 3),
            other => panic!("{other}"),
        }
        let bad_lines = write(dir.path(), "bad.jsonl", "{\"text\":\"a\"}\n{oops\n");
        match load_documents(&bad_lines, &IngestOptions::default()).unwrap_err() {
            IngestError::Json { line, .. } => assert_eq!(line, 2),
            other => panic!("{other}"),
        }

        let empty = write(dir.path(), "empty.json", "[]");
        assert!(matches!(load_documents(&empty, &IngestOptions::default()), Err(IngestError::EmptyCorpus { .. })));

        let nofield = write(dir.path(), "nofield.json", r#"[{"html":"x","url":"u"}]"#);
        let err = load_documents(&nofield, &IngestOptions::default()).unwrap_err();
        assert!(err.to_string().contains("--text-field"), "{err}");
        assert!(err.to_string().contains("html, url"), "{err}");
    }

    #[test]
    fn non_ascii_text_past_512_bytes_is_not_cut_inside_a_character() {
        // Byte 512 falls inside the 171st "日" (3 bytes each): slicing there used to panic.
        let text = "日".repeat(200);
        assert!(!looks_like_html(&text));
        let html = format!("<html><body><p>{}</p></body></html>", "é".repeat(400));
        assert!(looks_like_html(&html));
        let corpus = serde_json::json!([{ "content": text }, { "content": html }]).to_string();
        let docs = parse_json_documents(Path::new("c.json"), &corpus, &IngestOptions::default()).unwrap();
        assert_eq!(docs[0].text, "日".repeat(200));
        assert_eq!(docs[1].text, "é".repeat(400), "the HTML record became its text");
        // "<body" beyond the first 512 characters does not count, however many bytes they take.
        let late = format!("{}<body>", "ü".repeat(600));
        assert!(!looks_like_html(&late));
    }

    #[test]
    fn records_sharing_a_url_get_distinct_ids_in_memory_too() {
        // The fleet's coordinator parses the corpus from S3 with parse_json_documents: two records
        // with one url (a page scraped twice) must not become two documents with one id.
        let raw = r#"[{"url":"https://a","content":"one"},{"url":"https://a","content":"two"}]"#;
        let docs = parse_json_documents(Path::new("c.json"), raw, &IngestOptions::default()).unwrap();
        assert_ne!(docs[0].id, docs[1].id);
        assert_eq!(docs[0].id, DocId::from_identity("https://a"), "the first keeps the plain id");
    }

    #[test]
    fn file_documents_by_extension() {
        let page = parse_file_document("a/b.HTML", b"<title>T</title><p>text</p>").unwrap();
        assert_eq!((page.text.as_str(), page.title.as_deref(), page.source.as_str()), ("text", Some("T"), "a/b.HTML"));
        let lossy = parse_file_document("n.txt", b"caf\xe9 ok").unwrap();
        assert_eq!(lossy.text, "caf\u{fffd} ok", "bytes that are not UTF-8 are replaced, not refused");
        assert!(parse_file_document("blank.md", b" \n\t").is_none());
        assert!(parse_file_document("image.png", b"text").is_none());
        assert!(parse_file_document("no-extension", b"text").is_none());
    }

    #[test]
    fn directory_of_text_markdown_and_html() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        write(dir.path(), "a.txt", "plain text");
        write(dir.path(), "sub/b.md", "# Title\nbody");
        write(dir.path(), "c.html", "<html><head><title>C</title></head><body><nav>menu</nav><p>page</p></body></html>");
        write(dir.path(), "ignored.bin", "zzz");
        let docs = load_documents(dir.path(), &IngestOptions::default()).unwrap();
        let sources: Vec<_> = docs.iter().map(|d| d.source.as_str()).collect();
        assert_eq!(sources, ["a.txt", "c.html", "sub/b.md"]);
        assert_eq!(docs[1].text, "page");
        assert_eq!(docs[1].title.as_deref(), Some("C"));
    }

    #[cfg(unix)]
    #[test]
    fn links_to_nothing_are_skipped() {
        // As in Debian's python3.11-doc: _static/jquery.js links into a package that is not installed.
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "page.html", "<p>text</p>");
        std::os::unix::fs::symlink("/nonexistent/jquery.js", dir.path().join("jquery.js")).unwrap();
        std::os::unix::fs::symlink("/nonexistent/gone.html", dir.path().join("gone.html")).unwrap();
        std::os::unix::fs::symlink("/nonexistent/dir", dir.path().join("fonts")).unwrap();
        let docs = load_documents(dir.path(), &IngestOptions::default()).unwrap();
        assert_eq!(docs.iter().map(|d| d.source.as_str()).collect::<Vec<_>>(), ["page.html"]);
    }
}
