//! YAML with line numbers: a small document tree built from `yaml-rust2`'s marked events, so
//! every error about a CircleCI config can name its line.
//!
//! # Design
//! serde's YAML value types drop positions, and CircleCI files lean on anchors, aliases and
//! merge keys (`<<: *base`), which a typed deserializer sees as unknown fields. The tree keeps
//! each node's line, resolves aliases by copying the anchored node, and applies merge keys the
//! way YAML 1.1 defines them: keys written in the map win over merged ones, and of several
//! merged maps the first wins.

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// One node and the line (1-based) it starts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Where the node starts.
    pub line: usize,
    /// What it holds.
    pub value: Value,
}

/// The content of a node.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `~`, `null`, or nothing at all.
    Null,
    /// A scalar; `plain` when it was written without quotes (so `true` is a boolean).
    Scalar {
        /// The text.
        text: String,
        /// Unquoted.
        plain: bool,
    },
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in the order written (merge keys applied).
    Map(Vec<(Node, Node)>),
}

/// A YAML syntax error.
#[derive(Debug, Clone, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct YamlError {
    /// Where.
    pub line: usize,
    /// What.
    pub message: String,
}

impl Node {
    /// The scalar text, if this is a scalar.
    pub fn str(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// The entries, if this is a mapping.
    pub fn map(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The items, if this is a sequence.
    pub fn seq(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(s) => Some(s),
            _ => None,
        }
    }

    /// Whether this is null.
    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    /// The value of `key` in a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.map()?.iter().find(|(k, _)| k.str() == Some(key)).map(|(_, v)| v)
    }

    /// A plain `true`/`false` (YAML 1.1's `yes`/`no`/`on`/`off` too, as CircleCI accepts them).
    pub fn bool(&self) -> Option<bool> {
        match &self.value {
            Value::Scalar { text, plain: true } => match text.as_str() {
                "true" | "True" | "TRUE" | "yes" | "Yes" | "on" | "On" => Some(true),
                "false" | "False" | "FALSE" | "no" | "No" | "off" | "Off" => Some(false),
                _ => None,
            },
            _ => None,
        }
    }

    /// A scalar as a short description for error messages.
    pub fn kind(&self) -> &'static str {
        match &self.value {
            Value::Null => "nothing",
            Value::Scalar { .. } => "a scalar",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a map",
        }
    }
}

/// Parses one YAML document. An empty document is [`Value::Null`].
///
/// # Errors
/// [`YamlError`] with the line of a syntax error or an alias to an unknown anchor.
pub fn parse(text: &str) -> Result<Node, YamlError> {
    let mut b = Builder::default();
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut b, false).map_err(|e| YamlError { line: e.marker().line(), message: e.info().to_string() })?;
    if let Some(e) = b.error {
        return Err(e);
    }
    Ok(b.root.unwrap_or(Node { line: 1, value: Value::Null }))
}

enum Open {
    Seq(usize, usize, Vec<Node>),
    Map(usize, usize, Vec<(Node, Node)>, Option<Node>),
}

#[derive(Default)]
struct Builder {
    stack: Vec<Open>,
    anchors: std::collections::HashMap<usize, Node>,
    root: Option<Node>,
    error: Option<YamlError>,
}

impl Builder {
    fn push(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Open::Seq(_, _, items)) => items.push(node),
            Some(Open::Map(_, _, entries, key)) => match key.take() {
                None => *key = Some(node),
                Some(k) => entries.push((k, node)),
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        let line = mark.line();
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                let plain = style == TScalarStyle::Plain && tag.is_none();
                let value = if plain && matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL") {
                    Value::Null
                } else {
                    Value::Scalar { text, plain }
                };
                self.push(Node { line, value }, anchor);
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Open::Seq(line, anchor, Vec::new())),
            Event::MappingStart(anchor, _) => self.stack.push(Open::Map(line, anchor, Vec::new(), None)),
            Event::SequenceEnd => {
                if let Some(Open::Seq(line, anchor, items)) = self.stack.pop() {
                    self.push(Node { line, value: Value::Seq(items) }, anchor);
                }
            }
            Event::MappingEnd => {
                if let Some(Open::Map(line, anchor, entries, _)) = self.stack.pop() {
                    match merge(entries) {
                        Ok(entries) => self.push(Node { line, value: Value::Map(entries) }, anchor),
                        Err(e) => self.error = Some(e),
                    }
                }
            }
            Event::Alias(id) => match self.anchors.get(&id) {
                Some(n) => {
                    // The alias stands where it is written, with the anchored content.
                    let node = n.clone();
                    self.push(node, 0);
                }
                None => self.error = Some(YamlError { line, message: "alias to an unknown anchor".into() }),
            },
            _ => {}
        }
    }
}

/// Applies `<<` merge keys: a map or a list of maps whose keys are added unless already present.
fn merge(entries: Vec<(Node, Node)>) -> Result<Vec<(Node, Node)>, YamlError> {
    if !entries.iter().any(|(k, _)| is_merge_key(k)) {
        return Ok(entries);
    }
    let mut own = Vec::new();
    let mut merged: Vec<(Node, Node)> = Vec::new();
    for (k, v) in entries {
        if !is_merge_key(&k) {
            own.push((k, v));
            continue;
        }
        let sources: Vec<Node> = match v.value {
            Value::Map(_) => vec![v],
            Value::Seq(items) => items,
            _ => {
                return Err(YamlError {
                    line: k.line,
                    message: "a merge key (<<) takes a map or a list of maps".into(),
                })
            }
        };
        for src in sources {
            let Value::Map(m) = src.value else {
                return Err(YamlError {
                    line: src.line,
                    message: "a merge key (<<) takes a map or a list of maps".into(),
                });
            };
            for (mk, mv) in m {
                if !merged.iter().any(|(x, _)| x.value == mk.value) {
                    merged.push((mk, mv));
                }
            }
        }
    }
    let mut out =
        merged.into_iter().filter(|(mk, _)| !own.iter().any(|(k, _)| k.value == mk.value)).collect::<Vec<_>>();
    out.extend(own);
    Ok(out)
}

fn is_merge_key(k: &Node) -> bool {
    matches!(&k.value, Value::Scalar { text, plain: true } if text == "<<")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_anchors_and_merge_keys() {
        let doc = parse("base: &b\n  a: 1\n  b: 2\nuse:\n  <<: *b\n  b: 3\nlist: [x, 'y']\n").expect("parses");
        let u = doc.get("use").expect("use");
        assert_eq!(u.get("a").and_then(Node::str), Some("1"));
        assert_eq!(u.get("b").and_then(Node::str), Some("3"));
        assert_eq!(doc.get("list").expect("list").line, 7);
        assert_eq!(doc.get("base").and_then(|b| b.get("b")).map(|n| n.line), Some(3));
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let e = parse("a: 1\nb: [1, 2\nc: 3\n").expect_err("unclosed");
        assert!(e.line >= 2, "{e}");
        let e = parse("a: *nope\n").expect_err("unknown alias");
        assert_eq!(e.line, 1);
    }

    #[test]
    fn quoted_true_is_a_string_and_empty_is_null() {
        let doc = parse("a: 'true'\nb: true\nc:\n").expect("parses");
        assert_eq!(doc.get("a").and_then(Node::bool), None);
        assert_eq!(doc.get("b").and_then(Node::bool), Some(true));
        assert!(doc.get("c").expect("c").is_null());
    }
}
