//! Loading a user's scraped documents: a JSON array of objects, JSON Lines, or a directory of
//! `.txt`, `.md` and `.html` files.

use crate::html::html_to_text;
use crate::ids::DocId;
use serde_json::Value;
use std::collections::HashSet;
use std::io::{BufRead, Read};
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

/// Every document of a corpus, in memory. For corpora of any size use [`for_each_document`],
/// which holds one document at a time.
pub fn load_documents(path: &Path, options: &IngestOptions) -> Result<Vec<Document>, IngestError> {
    let mut docs = Vec::new();
    for_each_document(path, options, |doc| {
        docs.push(doc);
        Ok::<(), IngestError>(())
    })?;
    Ok(docs)
}

/// Calls `sink` with each document of a corpus (a JSON array, JSON Lines, or a directory), in
/// order, with unique ids, reading one document at a time: memory does not grow with the corpus.
/// Returns how many there were; a corpus without text is an error.
pub fn for_each_document<E: From<IngestError>>(
    path: &Path,
    options: &IngestOptions,
    mut sink: impl FnMut(Document) -> Result<(), E>,
) -> Result<u64, E> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => IngestError::NotFound { path: path.to_owned() },
        _ => IngestError::Io { path: path.to_owned(), source: e },
    })?;
    let count = if meta.is_dir() {
        let mut ids = UniqueIds::default();
        let mut count = 0;
        for doc in load_dir(path)? {
            count += 1;
            sink(ids.assign(doc))?;
        }
        count
    } else {
        let file = std::fs::File::open(path).map_err(|e| IngestError::Io { path: path.to_owned(), source: e })?;
        for_each_json_document(std::io::BufReader::with_capacity(1 << 20, file), path, options, sink)?
    };
    if count == 0 {
        return Err(IngestError::EmptyCorpus { path: path.to_owned() }.into());
    }
    Ok(count)
}

/// Parses JSON documents from bytes already in memory. Ids are unique, as [`load_documents`]
/// makes them, so every caller chunks a corpus alike.
pub fn parse_json_documents(path: &Path, raw: &str, options: &IngestOptions) -> Result<Vec<Document>, IngestError> {
    let mut docs = Vec::new();
    for_each_json_document(raw.as_bytes(), path, options, |doc| {
        docs.push(doc);
        Ok::<(), IngestError>(())
    })?;
    Ok(docs)
}

/// Calls `sink` with each non-empty document of a JSON array of records, or of JSON Lines (one
/// record a line), read from `reader` one record at a time. `path` names the corpus in errors and
/// in each document's `source` (`file.json#12`). Returns how many documents there were (none is
/// not an error here; [`for_each_document`] says so for a file).
pub fn for_each_json_document<E: From<IngestError>>(
    mut reader: impl BufRead,
    path: &Path,
    options: &IngestOptions,
    mut sink: impl FnMut(Document) -> Result<(), E>,
) -> Result<u64, E> {
    let io = |e: std::io::Error| IngestError::Io { path: path.to_owned(), source: e };
    // A byte-order mark is not JSON; editors on Windows write one.
    if reader.fill_buf().map_err(io)?.starts_with(b"\xEF\xBB\xBF") {
        reader.consume(3);
    }
    // Leading white space, kept (it holds newlines the line numbers of errors count), then the
    // first byte says which form this is.
    let mut leading = Vec::new();
    let is_array = loop {
        let buf = reader.fill_buf().map_err(io)?;
        let Some(&first) = buf.first() else { break false };
        if first.is_ascii_whitespace() {
            leading.push(first);
            reader.consume(1);
            continue;
        }
        break first == b'[';
    };
    let mut records = RecordReader { path, options, file_name: file_name(path), ids: UniqueIds::default(), index: 0, count: 0 };
    let reader = std::io::Cursor::new(leading).chain(reader);
    if is_array {
        records.array(reader, &mut sink)?;
    } else {
        records.lines(reader, &mut sink)?;
    }
    Ok(records.count)
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Turns the records of one JSON file into documents, one at a time.
struct RecordReader<'a> {
    path: &'a Path,
    options: &'a IngestOptions,
    file_name: String,
    ids: UniqueIds,
    /// The position of the next record in the file.
    index: usize,
    /// Documents given to the sink.
    count: u64,
}

impl RecordReader<'_> {
    fn record<E: From<IngestError>>(&mut self, record: Value, sink: &mut impl FnMut(Document) -> Result<(), E>) -> Result<(), E> {
        let index = self.index;
        self.index += 1;
        if let Some(doc) = document_of(record, index, &self.file_name, self.path, self.options)? {
            self.count += 1;
            sink(self.ids.assign(doc))?;
        }
        Ok(())
    }

    /// JSON Lines: one record per line; blank lines are skipped.
    fn lines<E: From<IngestError>>(&mut self, mut reader: impl BufRead, sink: &mut impl FnMut(Document) -> Result<(), E>) -> Result<(), E> {
        let mut line = Vec::new();
        let mut line_no = 0;
        loop {
            line.clear();
            let read = reader.read_until(b'\n', &mut line).map_err(|e| IngestError::Io { path: self.path.to_owned(), source: e })?;
            if read == 0 {
                return Ok(());
            }
            line_no += 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let value = serde_json::from_slice(&line).map_err(|e| IngestError::Json {
                path: self.path.to_owned(),
                line: line_no,
                column: e.column(),
                message: e.to_string(),
            })?;
            self.record(value, sink)?;
        }
    }

    /// A JSON array, parsed element by element: only one record is in memory at a time.
    fn array<E: From<IngestError>>(
        &mut self,
        reader: impl std::io::Read,
        sink: &mut impl FnMut(Document) -> Result<(), E>,
    ) -> Result<(), E> {
        struct Elements<'r, 'a, S, E> {
            records: &'r mut RecordReader<'a>,
            sink: &'r mut S,
            /// The sink's own error, which stopped the parse.
            stopped: &'r mut Option<E>,
        }
        impl<'de, S: FnMut(Document) -> Result<(), E>, E: From<IngestError>> serde::de::Visitor<'de> for Elements<'_, '_, S, E> {
            type Value = ();
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array of records")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
                while let Some(record) = seq.next_element::<Value>()? {
                    if let Err(e) = self.records.record(record, self.sink) {
                        *self.stopped = Some(e);
                        return Err(serde::de::Error::custom("stopped by the sink"));
                    }
                }
                Ok(())
            }
        }
        let mut stopped = None;
        let mut de = serde_json::Deserializer::from_reader(reader);
        let parsed =
            serde::Deserializer::deserialize_seq(&mut de, Elements { records: self, sink, stopped: &mut stopped }).and_then(|()| de.end());
        if let Some(e) = stopped {
            return Err(e);
        }
        parsed.map_err(|e| {
            IngestError::Json { path: self.path.to_owned(), line: e.line(), column: e.column(), message: e.to_string() }.into()
        })
    }
}

/// One record of a JSON corpus as a document; None when it holds no text.
fn document_of(
    record: Value,
    index: usize,
    file_name: &str,
    path: &Path,
    options: &IngestOptions,
) -> Result<Option<Document>, IngestError> {
    let source = format!("{file_name}#{index}");
    let doc = match record {
        Value::String(text) => Document { id: DocId::from_identity(&source), text, url: None, title: None, source },
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
            Document { id: DocId::from_identity(&identity), text, url, title, source }
        }
        _ => return Err(IngestError::NotAnObject { path: path.to_owned(), index }),
    };
    Ok(Some(doc).filter(|d| !d.text.trim().is_empty()))
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

/// Two records with the same id or url would collide; later ones get a positional suffix. Holds
/// one id per document seen (not their text).
#[derive(Default)]
struct UniqueIds {
    seen: HashSet<DocId>,
}

impl UniqueIds {
    fn assign(&mut self, mut doc: Document) -> Document {
        if !self.seen.insert(doc.id.clone()) {
            doc.id = DocId::from_identity(&format!("{}#{}", doc.id, doc.source));
            self.seen.insert(doc.id.clone());
        }
        doc
    }
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
