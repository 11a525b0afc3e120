//! Files of queries people asked (a query log): CSV with a header row, or JSON Lines, one query a
//! row. `evaluate --queries` reads them with a label saying what answered each query;
//! `--example-queries` reads only the `query` column.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The label columns, in the order they are tried.
pub const LABELS: [&str; 4] = ["url", "doc_id", "answer", "chunk_id"];

#[derive(Debug, thiserror::Error)]
pub enum QueryLogError {
    #[error("cannot read the query log {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("query log {path}, line {line}: {problem}")]
    Line { path: PathBuf, line: usize, problem: String },
    #[error(
        "query file {path} lacks a `query` column, or (for evaluation) a label column; each row needs `query`, and to evaluate one of url, doc_id, answer, chunk_id (found: {found})"
    )]
    Columns { path: PathBuf, found: String },
    #[error("query log {path} holds no queries")]
    Empty { path: PathBuf },
}

/// One row of the log, as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoggedQuery {
    /// 1-based line of the file (for CSV, the line the row starts on).
    pub line: usize,
    pub query: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub doc_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunk_id: Option<String>,
}

impl LoggedQuery {
    fn set(&mut self, column: &str, value: String) {
        let value = Some(value.trim().to_owned()).filter(|v| !v.is_empty());
        match column {
            "query" => self.query = value.unwrap_or_default(),
            "url" => self.url = value,
            "doc_id" => self.doc_id = value,
            "answer" => self.answer = value,
            "chunk_id" => self.chunk_id = value,
            _ => {}
        }
    }

    fn has_label(&self) -> bool {
        self.url.is_some() || self.doc_id.is_some() || self.answer.is_some() || self.chunk_id.is_some()
    }
}

/// Whether each row must say what answered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Labels {
    /// An evaluation log: every row has url, doc_id, answer or chunk_id.
    Required,
    /// Example queries: only `query` is read.
    Ignored,
}

/// Reads a query log: JSON Lines when the first non-blank character is `{`, CSV otherwise.
pub fn read_query_log(path: &Path) -> Result<Vec<LoggedQuery>, QueryLogError> {
    read_queries(path, Labels::Required)
}

/// Reads a file of queries, with or without labels.
pub fn read_queries(path: &Path, labels: Labels) -> Result<Vec<LoggedQuery>, QueryLogError> {
    let bytes = std::fs::read(path).map_err(|source| QueryLogError::Read { path: path.to_owned(), source })?;
    let text = String::from_utf8_lossy(&bytes);
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let rows = if text.trim_start().starts_with('{') { parse_jsonl(text, path, labels)? } else { parse_csv(text, path, labels)? };
    if rows.is_empty() {
        return Err(QueryLogError::Empty { path: path.to_owned() });
    }
    Ok(rows)
}

fn parse_jsonl(text: &str, path: &Path, labels: Labels) -> Result<Vec<LoggedQuery>, QueryLogError> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let problem = |problem: String| QueryLogError::Line { path: path.to_owned(), line: i + 1, problem };
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| problem(format!("not JSON: {e}")))?;
        let object =
            value.as_object().ok_or_else(|| problem("not a JSON object; each line is one {\"query\": ..., \"url\": ...}".into()))?;
        let mut row = LoggedQuery { line: i + 1, ..Default::default() };
        for column in std::iter::once("query").chain(LABELS) {
            match object.get(column) {
                None | Some(serde_json::Value::Null) => {}
                Some(serde_json::Value::String(s)) => row.set(column, s.clone()),
                Some(serde_json::Value::Number(n)) => row.set(column, n.to_string()),
                Some(other) => return Err(problem(format!("`{column}` is {other}; it must be a string"))),
            }
        }
        check_row(&row, path, labels)?;
        rows.push(row);
    }
    Ok(rows)
}

fn check_row(row: &LoggedQuery, path: &Path, labels: Labels) -> Result<(), QueryLogError> {
    let problem = |problem: &str| QueryLogError::Line { path: path.to_owned(), line: row.line, problem: problem.to_owned() };
    if row.query.is_empty() {
        return Err(problem("no `query`, or it is empty"));
    }
    if labels == Labels::Required && !row.has_label() {
        return Err(problem("no label: give one of url, doc_id, answer, chunk_id"));
    }
    Ok(())
}

/// RFC 4180 records: fields separated by commas, `"` quotes a field (`""` is a quote), quoted fields
/// may hold commas and line breaks. Returns each record with the line it starts on.
/// A CSV record: the line it starts on and its fields.
type Record = (usize, Vec<String>);

/// Where a CSV text stops parsing: the line, and what is wrong there.
type CsvProblem = (usize, &'static str);

fn csv_records(text: &str) -> Result<Vec<Record>, CsvProblem> {
    let mut records = Vec::new();
    let (mut record, mut field) = (Vec::new(), String::new());
    let (mut line, mut start_line) = (1, 1);
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    let mut field_started = false;
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                '\n' => {
                    line += 1;
                    field.push(c);
                }
                c => field.push(c),
            }
            continue;
        }
        match c {
            '"' if !field_started => {
                quoted = true;
                field_started = true;
            }
            '"' => return Err((line, "a quote inside an unquoted field; quote the whole field and double the quote")),
            ',' => {
                record.push(std::mem::take(&mut field));
                field_started = false;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                record.push(std::mem::take(&mut field));
                field_started = false;
                if record.iter().any(|f| !f.is_empty()) {
                    records.push((start_line, std::mem::take(&mut record)));
                }
                record.clear();
                line += 1;
                start_line = line;
            }
            c => {
                field.push(c);
                field_started = true;
            }
        }
    }
    if quoted {
        return Err((start_line, "a quoted field is never closed"));
    }
    record.push(field);
    if record.iter().any(|f| !f.is_empty()) {
        records.push((start_line, record));
    }
    Ok(records)
}

fn parse_csv(text: &str, path: &Path, labels: Labels) -> Result<Vec<LoggedQuery>, QueryLogError> {
    let records =
        csv_records(text).map_err(|(line, problem)| QueryLogError::Line { path: path.to_owned(), line, problem: problem.to_owned() })?;
    let Some(((_, header), body)) = records.split_first() else { return Ok(Vec::new()) };
    let header: Vec<String> = header.iter().map(|h| h.trim().to_ascii_lowercase()).collect();
    let labelled = header.iter().any(|h| LABELS.contains(&h.as_str()));
    if !header.iter().any(|h| h == "query") || (labels == Labels::Required && !labelled) {
        return Err(QueryLogError::Columns { path: path.to_owned(), found: header.join(", ") });
    }
    let mut rows = Vec::with_capacity(body.len());
    for (line, fields) in body {
        if fields.len() != header.len() {
            return Err(QueryLogError::Line {
                path: path.to_owned(),
                line: *line,
                problem: format!("{} fields where the header has {}; quote fields that hold commas", fields.len(), header.len()),
            });
        }
        let mut row = LoggedQuery { line: *line, ..Default::default() };
        for (column, value) in header.iter().zip(fields) {
            row.set(column, value.clone());
        }
        check_row(&row, path, labels)?;
        rows.push(row);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_quote_commas_quotes_and_line_breaks() {
        let records = csv_records("query,answer\r\n\"a, b\",\"say \"\"hi\"\"\nthere\"\nplain,x\n\n").unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(records[1], (2, vec!["a, b".to_owned(), "say \"hi\"\nthere".to_owned()]));
        assert_eq!(records[2].0, 4, "the row after a quoted line break starts on line 4");
        assert!(csv_records("q\n\"open").is_err());
        assert!(csv_records("q\nab\"c").is_err());
    }

    #[test]
    fn example_queries_need_no_label_and_a_log_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.csv");
        std::fs::write(&path, "query\nhow do I undo a commit\n").unwrap();
        assert_eq!(read_queries(&path, Labels::Ignored).unwrap()[0].query, "how do I undo a commit");
        assert!(matches!(read_query_log(&path), Err(QueryLogError::Columns { .. })));
        std::fs::write(&path, "{\"query\": \"x\"}\n{\"query\": 3, \"url\": \"u\"}\n").unwrap();
        let err = read_query_log(&path).unwrap_err().to_string();
        assert!(err.contains("line 1") && err.contains("no label"), "{err}");
        std::fs::write(&path, "{\"query\": \"x\", \"url\": [1]}\n").unwrap();
        assert!(read_query_log(&path).unwrap_err().to_string().contains("must be a string"));
        std::fs::write(&path, "query,url\n\"unclosed,u\n").unwrap();
        assert!(read_query_log(&path).unwrap_err().to_string().contains("never closed"));
        std::fs::write(&path, "").unwrap();
        assert!(matches!(read_query_log(&path), Err(QueryLogError::Empty { .. })));
        assert!(matches!(read_query_log(&dir.path().join("missing.csv")), Err(QueryLogError::Read { .. })));
    }
}
