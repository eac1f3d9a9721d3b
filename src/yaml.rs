//! YAML with line numbers and a budget: a small document tree built from `yaml-rust2`'s marked
//! events, so every error about a CircleCI config can name its line, and every reader of YAML
//! (CircleCI configs, the configuration, policy files) can bound what one document costs.
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

    /// The nodes in this subtree, itself included.
    pub fn size(&self) -> usize {
        1 + match &self.value {
            Value::Seq(items) => items.iter().map(Node::size).sum(),
            Value::Map(entries) => entries.iter().map(|(k, v)| k.size() + v.size()).sum(),
            _ => 0,
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

/// What one document may cost: every reader of operator or user YAML gives one, so no single
/// input can exhaust memory or stall the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The document's size in bytes.
    pub bytes: usize,
    /// Nodes in the tree, every alias counted as the copy it becomes.
    pub nodes: usize,
    /// Bytes of scalar text in the tree, aliases counted the same way.
    pub text: usize,
    /// Nesting of sequences and maps.
    pub depth: usize,
}

impl Limits {
    /// A CircleCI config: the largest of the shared real configs has about 1,000 nodes.
    pub const CIRCLECI: Self = Self { bytes: 4 << 20, nodes: 200_000, text: 16 << 20, depth: 64 };
}

/// Parses one YAML document within [`Limits::CIRCLECI`]. An empty document is [`Value::Null`].
///
/// # Errors
/// [`YamlError`] with the line of a syntax error, an alias to an unknown anchor, or the place
/// where the document passed one of its limits (the limit named).
pub fn parse(text: &str) -> Result<Node, YamlError> {
    parse_within(text, Limits::CIRCLECI)
}

/// Parses one YAML document within `limits`: parsing stops at the first node past a limit.
///
/// # Errors
/// As [`parse`].
pub fn parse_within(text: &str, limits: Limits) -> Result<Node, YamlError> {
    if text.len() > limits.bytes {
        return Err(YamlError {
            line: 1,
            message: format!("the document is {} bytes; the limit is {} bytes", text.len(), limits.bytes),
        });
    }
    let mut b = Builder { limits, ..Builder::default() };
    let mut parser = Parser::new_from_str(text);
    loop {
        let (ev, mark) = parser.next_token().map_err(|e| YamlError {
            line: e.marker().line(),
            message: match e.info() {
                // The scanner's own bound on `[`/`{` nesting, which comes before ours.
                "recursion limit exceeded" => {
                    format!("sequences and maps nest deeper than {} levels, the limit", limits.depth)
                }
                info => info.to_string(),
            },
        })?;
        let done = matches!(ev, Event::DocumentEnd | Event::StreamEnd);
        b.on_event(ev, mark);
        if let Some(e) = b.error {
            return Err(e);
        }
        if done {
            break;
        }
    }
    Ok(b.root.unwrap_or(Node { line: 1, value: Value::Null }))
}

enum Open {
    Seq(usize, usize, Vec<Node>, Cost),
    Map(usize, usize, Vec<(Node, Node)>, Option<Node>, Cost),
}

/// What a subtree has produced: nodes and scalar bytes.
#[derive(Debug, Clone, Copy, Default)]
struct Cost {
    nodes: usize,
    text: usize,
}

#[derive(Default)]
struct Builder {
    stack: Vec<Open>,
    anchors: std::collections::HashMap<usize, (Node, Cost)>,
    root: Option<Node>,
    error: Option<YamlError>,
    limits: Limits,
    /// The whole tree so far.
    spent: Cost,
}

impl Default for Limits {
    fn default() -> Self {
        Self::CIRCLECI
    }
}

impl Builder {
    /// Counts `cost` against the limits before the node it stands for is built.
    fn charge(&mut self, cost: Cost, line: usize, what: &str) -> bool {
        let nodes = self.spent.nodes.saturating_add(cost.nodes);
        let text = self.spent.text.saturating_add(cost.text);
        let message = if nodes > self.limits.nodes {
            format!("{what} takes the document past {} nodes (aliases count as copies), its limit", self.limits.nodes)
        } else if text > self.limits.text {
            format!(
                "{what} takes the document past {} bytes of text (aliases count as copies), its limit",
                self.limits.text
            )
        } else {
            self.spent = Cost { nodes, text };
            return true;
        };
        self.error = Some(YamlError { line, message });
        false
    }

    fn push(&mut self, node: Node, anchor: usize, cost: Cost) {
        if anchor > 0 {
            self.anchors.insert(anchor, (node.clone(), cost));
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Open::Seq(_, _, items, c)) => {
                items.push(node);
                c.add(cost);
            }
            Some(Open::Map(_, _, entries, key, c)) => {
                c.add(cost);
                match key.take() {
                    None => *key = Some(node),
                    Some(k) => entries.push((k, node)),
                }
            }
        }
    }

    fn open(&mut self, line: usize, container: Open) {
        if self.stack.len() >= self.limits.depth {
            self.error = Some(YamlError {
                line,
                message: format!("sequences and maps nest deeper than {} levels, the limit", self.limits.depth),
            });
        } else if self.charge(Cost { nodes: 1, text: 0 }, line, "this node") {
            self.stack.push(container);
        }
    }
}

impl Cost {
    fn add(&mut self, o: Cost) {
        self.nodes = self.nodes.saturating_add(o.nodes);
        self.text = self.text.saturating_add(o.text);
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
                let cost = Cost { nodes: 1, text: text.len() };
                if !self.charge(cost, line, "this scalar") {
                    return;
                }
                let plain = style == TScalarStyle::Plain && tag.is_none();
                let value = if plain && matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL") {
                    Value::Null
                } else {
                    Value::Scalar { text, plain }
                };
                self.push(Node { line, value }, anchor, cost);
            }
            Event::SequenceStart(anchor, _) => {
                self.open(line, Open::Seq(line, anchor, Vec::new(), Cost { nodes: 1, text: 0 }));
            }
            Event::MappingStart(anchor, _) => {
                self.open(line, Open::Map(line, anchor, Vec::new(), None, Cost { nodes: 1, text: 0 }));
            }
            Event::SequenceEnd => {
                if let Some(Open::Seq(line, anchor, items, cost)) = self.stack.pop() {
                    self.push(Node { line, value: Value::Seq(items) }, anchor, cost);
                }
            }
            Event::MappingEnd => {
                if let Some(Open::Map(line, anchor, entries, _, cost)) = self.stack.pop() {
                    match merge(entries) {
                        Ok(entries) => self.push(Node { line, value: Value::Map(entries) }, anchor, cost),
                        Err(e) => self.error = Some(e),
                    }
                }
            }
            Event::Alias(id) => match self.anchors.get(&id) {
                Some((_, cost)) => {
                    // The alias stands where it is written, with the anchored content: charged
                    // as the copy it is before the copy is made.
                    let cost = *cost;
                    if self.charge(cost, line, "this alias") {
                        let node = self.anchors[&id].0.clone();
                        self.push(node, 0, cost);
                    }
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
    let mut seen = Keys::default();
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
                if seen.insert(&mk) {
                    merged.push((mk, mv));
                }
            }
        }
    }
    let mut written = Keys::default();
    for (k, _) in &own {
        written.insert(k);
    }
    let mut out = merged.into_iter().filter(|(mk, _)| !written.contains(mk)).collect::<Vec<_>>();
    out.extend(own);
    Ok(out)
}

/// A set of map keys: scalars hashed (maps can hold many keys), anything else compared in turn.
#[derive(Default)]
struct Keys {
    scalars: std::collections::HashSet<(String, bool)>,
    nulls: bool,
    others: Vec<Value>,
}

impl Keys {
    /// Adds `k`; false when it was already there.
    fn insert(&mut self, k: &Node) -> bool {
        if self.contains(k) {
            return false;
        }
        match &k.value {
            Value::Scalar { text, plain } => {
                self.scalars.insert((text.clone(), *plain));
            }
            Value::Null => self.nulls = true,
            v => self.others.push(v.clone()),
        }
        true
    }

    fn contains(&self, k: &Node) -> bool {
        match &k.value {
            Value::Scalar { text, plain } => self.scalars.contains(&(text.clone(), *plain)),
            Value::Null => self.nulls,
            v => self.others.contains(v),
        }
    }
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

    #[test]
    fn aliases_count_as_the_copies_they_become() {
        let small = Limits { bytes: 1 << 20, nodes: 100, text: 1000, depth: 8 };
        // 1 + 10 + 10 + 1 (list) ... the third level passes 100 nodes.
        let doc = "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: [*b]\n";
        let e = parse_within(doc, small).expect_err("too many nodes");
        assert_eq!(e.line, 2, "{e}");
        assert!(e.message.contains("past 100 nodes") && e.message.contains("limit"), "{e}");
        let doc = format!("a: &a '{}'\nb: [*a, *a, *a]\n", "x".repeat(300));
        let e = parse_within(&doc, small).expect_err("too much text");
        assert!(e.message.contains("past 1000 bytes of text"), "{e}");
        let e = parse_within("a: [[[[[[[[[1]]]]]]]]]\n", small).expect_err("too deep");
        assert!(e.message.contains("deeper than 8 levels"), "{e}");
        let e = parse_within(&"x".repeat(2 << 20), small).expect_err("too big");
        assert!(e.message.contains("the limit is 1048576 bytes"), "{e}");
        assert!(parse_within("a: &a [x, x]\nb: [*a, *a]\n", small).is_ok());
    }

    #[test]
    fn merge_keys_over_many_keys_keep_yaml_order_rules() {
        let base: String = (0..20_000).map(|i| format!("  k{i}: base\n")).collect();
        let doc = format!("base: &b\n{base}  1: one\nuse:\n  <<: [*b, {{k0: second, extra: second}}]\n  k1: own\n");
        let doc = parse(&doc).expect("parses");
        let u = doc.get("use").expect("use");
        assert_eq!(u.map().map(<[_]>::len), Some(20_002));
        assert_eq!(u.get("k0").and_then(Node::str), Some("base"), "the first merged map wins");
        assert_eq!(u.get("k1").and_then(Node::str), Some("own"), "keys written in the map win");
        assert_eq!(u.get("extra").and_then(Node::str), Some("second"));
    }
}
