//! Line numbers of fields in YAML documents, so errors found after parsing can still point at the
//! line that caused them.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// One YAML document of a file: where it starts and the line of every field path in it.
///
/// Paths are written the way serde_yaml writes them in its errors: `spec.http[0].route[1].weight`.
#[derive(Debug, Default)]
pub struct DocumentLines {
    /// Byte offset of the document in its file.
    pub start: usize,
    /// Line (1-based) of the document's first event.
    pub first_line: usize,
    lines: HashMap<String, usize>,
}

impl DocumentLines {
    /// The line of `path`, or of its closest ancestor that is known.
    pub fn line_of(&self, path: &str) -> usize {
        let mut path = path;
        loop {
            if let Some(line) = self.lines.get(path) {
                return *line;
            }
            match path.rfind(['.', '[']) {
                Some(cut) => path = &path[..cut],
                None => return self.first_line,
            }
        }
    }
}

/// A YAML syntax error with its position.
#[derive(Debug, thiserror::Error)]
#[error("line {line} column {column}: {message}")]
pub struct SyntaxError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What the scanner said.
    pub message: String,
}

/// Splits `text` into documents and records the line of every field.
///
/// # Errors
/// The first YAML syntax error in the text.
pub fn index_documents(text: &str) -> Result<Vec<DocumentLines>, SyntaxError> {
    let mut indexer = Indexer::new(text);
    Parser::new_from_str(text).load(&mut indexer, true).map_err(|err| SyntaxError {
        line: err.marker().line(),
        column: err.marker().col() + 1,
        message: err.info().to_owned(),
    })?;
    Ok(indexer.documents)
}

/// Where the walk is inside the current node.
enum Frame {
    /// In a mapping; `key` is set after a key scalar was read and before its value.
    Map { key: Option<String> },
    /// In a sequence, at element `next`.
    Seq { next: usize },
}

struct Indexer<'a> {
    text: &'a str,
    documents: Vec<DocumentLines>,
    stack: Vec<(String, Frame)>,
}

impl<'a> Indexer<'a> {
    fn new(text: &'a str) -> Self {
        Self { text, documents: Vec::new(), stack: Vec::new() }
    }

    /// The path of the node that starts now, advancing the parent past it.
    fn enter_node(&mut self) -> Option<String> {
        let (parent, frame) = self.stack.last_mut()?;
        let path = match frame {
            Frame::Map { key } => {
                let key = key.take()?;
                if parent.is_empty() {
                    key
                } else {
                    format!("{parent}.{key}")
                }
            }
            Frame::Seq { next } => {
                *next += 1;
                format!("{parent}[{}]", *next - 1)
            }
        };
        Some(path)
    }

    fn record(&mut self, path: &str, mark: Marker) {
        if let Some(doc) = self.documents.last_mut() {
            doc.lines.entry(path.to_owned()).or_insert(mark.line());
        }
    }

    fn byte_offset(&self, char_index: usize) -> usize {
        self.text.char_indices().nth(char_index).map_or(self.text.len(), |(at, _)| at)
    }
}

impl MarkedEventReceiver for Indexer<'_> {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::DocumentStart => {
                let start = if self.documents.is_empty() { 0 } else { self.byte_offset(mark.index()) };
                self.documents.push(DocumentLines { start, first_line: mark.line(), ..Default::default() });
                self.stack.clear();
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let path = if self.stack.is_empty() { Some(String::new()) } else { self.enter_node() };
                let path = path.unwrap_or_default();
                self.record(&path, mark);
                let frame = match event {
                    Event::MappingStart(..) => Frame::Map { key: None },
                    _ => Frame::Seq { next: 0 },
                };
                self.stack.push((path, frame));
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::Scalar(value, ..) => {
                if let Some((_, Frame::Map { key })) = self.stack.last_mut() {
                    if key.is_none() {
                        // A key of the enclosing mapping: record the line where the field is written.
                        *key = Some(value);
                        if let Some(path) = self.pending_key_path() {
                            self.record(&path, mark);
                        }
                        return;
                    }
                }
                if let Some(path) = self.enter_node() {
                    self.record(&path, mark);
                }
            }
            Event::Alias(_) => {
                self.enter_node();
            }
            _ => {}
        }
    }
}

impl Indexer<'_> {
    fn pending_key_path(&self) -> Option<String> {
        let (parent, Frame::Map { key: Some(key) }) = self.stack.last()? else {
            return None;
        };
        Some(if parent.is_empty() { key.clone() } else { format!("{parent}.{key}") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_DOCS: &str = "\
apiVersion: v1
kind: A
spec:
  http:
  - route:
    - destination:
        host: a
      weight: 90
---
kind: B
spec:
  host: b
";

    #[test]
    fn finds_lines_of_nested_fields_per_document() {
        let docs = index_documents(TWO_DOCS).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].line_of("kind"), 2);
        assert_eq!(docs[0].line_of("spec.http[0].route[0].destination.host"), 7);
        assert_eq!(docs[0].line_of("spec.http[0].route[0].weight"), 8);
        assert_eq!(docs[1].line_of("spec.host"), 12);
        assert_eq!(&TWO_DOCS[docs[1].start..docs[1].start + 3], "---");
    }

    #[test]
    fn unknown_paths_fall_back_to_the_closest_ancestor() {
        let docs = index_documents(TWO_DOCS).unwrap();
        assert_eq!(docs[0].line_of("spec.http[0].route[0].weight.nope"), 8);
        assert_eq!(docs[0].line_of("spec.http[3]"), 4);
    }

    #[test]
    fn syntax_errors_carry_their_line() {
        let err = index_documents("a: b\nc: [d\n").unwrap_err();
        assert!(err.line >= 2, "{err}");
    }
}
