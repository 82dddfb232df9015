//! The profile's YAML reader: a parse tree that remembers where every node came from,
//! `${VAR}` expansion at the scalar level, and a serde `Deserializer` over that tree whose
//! every error names the line, the column and the key path.
//!
//! Why not a stock YAML-to-serde crate: an operator who mistypes a key in a 400-line
//! profile needs `servers.github.restart.max_restarts` *and* `line 31, column 22`, and
//! environment expansion has to happen per scalar (after parsing), so that a variable's
//! value can never change the structure of the document.
//!
//! Rules, chosen for operators rather than for YAML lawyers:
//! - Keys must be unique within a mapping; anchors and aliases work, bounded by
//!   [`MAX_NODES`] so a "billion laughs" document cannot exhaust memory.
//! - A target asking for a number or a boolean parses the scalar's text whatever its
//!   quoting, so `port: "${PORT}"` works. `deserialize_any` follows the YAML core schema.
//! - A blank value (`servers:` with nothing under it) is an empty mapping or list where
//!   one is expected, and `None` for an `Option`.
//! - Internally tagged and untagged enums buffer their input and lose locations; the
//!   profile types do not use them.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Upper bound on nodes after alias expansion.
pub const MAX_NODES: usize = 100_000;
/// Upper bound on nesting depth.
pub const MAX_DEPTH: usize = 64;

/// A place in the source text (1-based line and column).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mark {
    pub line: u32,
    pub col: u32,
}

impl Mark {
    fn from_marker(m: &Marker) -> Self {
        Mark {
            line: m.line() as u32,
            // yaml-rust2 columns are 0-based.
            col: m.col() as u32 + 1,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Node {
    pub kind: NodeKind,
    pub mark: Mark,
}

#[derive(Clone, Debug)]
pub enum NodeKind {
    Scalar { text: String, plain: bool },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    fn describe(&self) -> String {
        match &self.kind {
            NodeKind::Scalar { text, plain } if *plain && is_null(text) => "nothing".into(),
            NodeKind::Scalar { text, .. } => {
                let shown: String = text.chars().take(40).collect();
                let ellipsis = if text.chars().count() > 40 { "…" } else { "" };
                format!("`{shown}{ellipsis}`")
            }
            NodeKind::Seq(_) => "a list".into(),
            NodeKind::Map(_) => "a mapping".into(),
        }
    }

    fn is_blank(&self) -> bool {
        matches!(&self.kind, NodeKind::Scalar { text, plain: true } if is_null(text))
    }
}

fn is_null(text: &str) -> bool {
    matches!(text, "" | "~" | "null" | "Null" | "NULL")
}

/// An error with its position. `path` is the dotted key path (`servers.a.args[2]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located {
    pub mark: Mark,
    pub path: String,
    pub message: String,
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}:{}: {}", self.mark.line, self.mark.col, self.message)
        } else {
            write!(
                f,
                "{}:{}: {}: {}",
                self.mark.line, self.mark.col, self.path, self.message
            )
        }
    }
}

// ---------------------------------------------------------------------------------------
// Parsing into a marked tree
// ---------------------------------------------------------------------------------------

/// Parses one YAML document into a marked tree. An empty document is an empty mapping.
pub fn parse(text: &str) -> Result<Node, Located> {
    let mut parser = Parser::new_from_str(text);
    let mut builder = Builder::default();
    loop {
        let (event, marker) = parser.next_token().map_err(|e| Located {
            mark: Mark::from_marker(e.marker()),
            path: String::new(),
            message: format!("invalid YAML: {}", e.info()),
        })?;
        let mark = Mark::from_marker(&marker);
        match event {
            Event::StreamEnd => break,
            Event::DocumentStart if builder.documents > 0 => {
                return Err(Located {
                    mark,
                    path: String::new(),
                    message: "a profile holds one YAML document; found a second `---`".into(),
                });
            }
            Event::DocumentStart => builder.documents += 1,
            other => builder.event(other, mark)?,
        }
    }
    Ok(builder.root.unwrap_or(Node {
        kind: NodeKind::Map(Vec::new()),
        mark: Mark { line: 1, col: 1 },
    }))
}

#[derive(Default)]
struct Builder {
    stack: Vec<(Node, usize)>,
    root: Option<Node>,
    anchors: HashMap<usize, Node>,
    nodes: usize,
    documents: usize,
}

impl Builder {
    fn event(&mut self, event: Event, mark: Mark) -> Result<(), Located> {
        let too_big = |mark| Located {
            mark,
            path: String::new(),
            message: format!("document too large: more than {MAX_NODES} nodes after aliases"),
        };
        match event {
            Event::Scalar(text, style, anchor, _tag) => {
                let plain = matches!(style, TScalarStyle::Plain);
                self.push(
                    Node {
                        kind: NodeKind::Scalar { text, plain },
                        mark,
                    },
                    anchor,
                )?;
            }
            Event::SequenceStart(anchor, _) => {
                self.open(NodeKind::Seq(Vec::new()), mark, anchor)?
            }
            Event::MappingStart(anchor, _) => self.open(NodeKind::Map(Vec::new()), mark, anchor)?,
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((node, anchor)) = self.stack.pop() {
                    self.push(node, anchor)?;
                }
            }
            Event::Alias(id) => {
                let node = self.anchors.get(&id).cloned().ok_or(Located {
                    mark,
                    path: String::new(),
                    message: "alias refers to an unknown anchor".into(),
                })?;
                self.nodes += count_nodes(&node);
                if self.nodes > MAX_NODES {
                    return Err(too_big(mark));
                }
                self.attach(node, mark)?;
            }
            _ => {}
        }
        if self.nodes > MAX_NODES {
            return Err(too_big(mark));
        }
        Ok(())
    }

    fn open(&mut self, kind: NodeKind, mark: Mark, anchor: usize) -> Result<(), Located> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(Located {
                mark,
                path: String::new(),
                message: format!("nesting deeper than {MAX_DEPTH} levels"),
            });
        }
        self.stack.push((Node { kind, mark }, anchor));
        Ok(())
    }

    fn push(&mut self, node: Node, anchor: usize) -> Result<(), Located> {
        self.nodes += 1;
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        let mark = node.mark;
        self.attach(node, mark)
    }

    fn attach(&mut self, node: Node, mark: Mark) -> Result<(), Located> {
        let Some((parent, _)) = self.stack.last_mut() else {
            self.root = Some(node);
            return Ok(());
        };
        match &mut parent.kind {
            NodeKind::Seq(items) => items.push(node),
            NodeKind::Map(entries) => {
                // Keys and values arrive alternately; a pending key has a placeholder value.
                match entries.last_mut() {
                    Some((_, value)) if is_placeholder(value) => *value = node,
                    _ => {
                        if !matches!(node.kind, NodeKind::Scalar { .. }) {
                            return Err(Located {
                                mark,
                                path: String::new(),
                                message: "mapping keys must be plain scalars".into(),
                            });
                        }
                        entries.push((node, placeholder()));
                    }
                }
            }
            NodeKind::Scalar { .. } => unreachable!("scalars are never on the builder stack"),
        }
        Ok(())
    }
}

const PLACEHOLDER_LINE: u32 = u32::MAX;

fn placeholder() -> Node {
    Node {
        kind: NodeKind::Seq(Vec::new()),
        mark: Mark {
            line: PLACEHOLDER_LINE,
            col: 0,
        },
    }
}

fn is_placeholder(node: &Node) -> bool {
    node.mark.line == PLACEHOLDER_LINE
}

fn count_nodes(node: &Node) -> usize {
    match &node.kind {
        NodeKind::Scalar { .. } => 1,
        NodeKind::Seq(items) => 1 + items.iter().map(count_nodes).sum::<usize>(),
        NodeKind::Map(entries) => {
            1 + entries
                .iter()
                .map(|(k, v)| count_nodes(k) + count_nodes(v))
                .sum::<usize>()
        }
    }
}

// ---------------------------------------------------------------------------------------
// ${VAR} expansion
// ---------------------------------------------------------------------------------------

/// Expands `${VAR}` and `${VAR:-default}` in every scalar value (never in keys), using
/// `lookup`. `$${` stands for a literal `${`. Every unset variable is reported, not just
/// the first. An expanded scalar is treated as plain, so `port: ${PORT}` is an integer.
pub fn expand_env(
    node: &mut Node,
    lookup: &dyn Fn(&str) -> Option<String>,
    path: &mut Path,
    errors: &mut Vec<Located>,
) {
    match &mut node.kind {
        NodeKind::Scalar { text, plain } => {
            if text.contains('$') {
                match expand_str(text, lookup) {
                    Ok(Some(expanded)) => {
                        *text = expanded;
                        *plain = true;
                    }
                    Ok(None) => {}
                    Err(message) => errors.push(Located {
                        mark: node.mark,
                        path: path.to_string(),
                        message,
                    }),
                }
            }
        }
        NodeKind::Seq(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                path.push(Segment::Index(index));
                expand_env(item, lookup, path, errors);
                path.pop();
            }
        }
        NodeKind::Map(entries) => {
            for (key, value) in entries.iter_mut() {
                path.push(Segment::Key(scalar_text(key).to_owned()));
                expand_env(value, lookup, path, errors);
                path.pop();
            }
        }
    }
}

/// Returns `Ok(None)` when the text holds no expansion at all.
fn expand_str(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<String>, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut changed = false;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
            changed = true;
        } else if let Some(after) = tail.strip_prefix("${") {
            let end = after
                .find('}')
                .ok_or_else(|| format!("unterminated `${{` in `{text}`"))?;
            let expr = &after[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (expr, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("`${{{expr}}}` is not a valid variable reference"));
            }
            match (lookup(name), default) {
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => {
                    return Err(format!(
                        "environment variable `{name}` is not set (write `${{{name}:-default}}` to give a default)"
                    ));
                }
            }
            rest = &after[end + 1..];
            changed = true;
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(changed.then_some(out))
}

fn scalar_text(node: &Node) -> &str {
    match &node.kind {
        NodeKind::Scalar { text, .. } => text,
        _ => "",
    }
}

/// The place of the node at dotted `path` (`server.listen`, `hooks[2].name`): the value
/// when it exists, else the deepest ancestor found. For errors found after parsing.
pub fn mark_at(root: &Node, path: &str) -> Option<Mark> {
    if path.is_empty() {
        return None;
    }
    let mut node = root;
    for segment in path.split('.') {
        let (key, indexes) = match segment.find('[') {
            Some(i) => (&segment[..i], &segment[i..]),
            None => (segment, ""),
        };
        if !key.is_empty() {
            let NodeKind::Map(entries) = &node.kind else {
                return Some(node.mark);
            };
            match entries.iter().find(|(k, _)| scalar_text(k) == key) {
                Some((_, value)) => node = value,
                None => return Some(node.mark),
            }
        }
        for index in indexes.split(['[', ']']).filter(|s| !s.is_empty()) {
            let (NodeKind::Seq(items), Ok(index)) = (&node.kind, index.parse::<usize>()) else {
                return Some(node.mark);
            };
            match items.get(index) {
                Some(item) => node = item,
                None => return Some(node.mark),
            }
        }
    }
    Some(node.mark)
}

// ---------------------------------------------------------------------------------------
// Key paths
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// A key path under construction (`servers.github.args[0]`).
#[derive(Clone, Debug, Default)]
pub struct Path(Vec<Segment>);

impl Path {
    pub fn push(&mut self, segment: Segment) {
        self.0.push(segment);
    }
    pub fn pop(&mut self) {
        self.0.pop();
    }
    fn with(&self, segment: Segment) -> Path {
        let mut path = self.clone();
        path.push(segment);
        path
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) if i == 0 => write!(f, "{key}")?,
                Segment::Key(key) => write!(f, ".{key}")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// serde
// ---------------------------------------------------------------------------------------

/// The deserializer's error: a message, and the place once a deserializer has seen it.
#[derive(Debug)]
pub struct Error {
    message: String,
    located: Option<(Mark, String)>,
}

impl Error {
    pub fn into_located(self) -> Located {
        let (mark, path) = self.located.unwrap_or_default();
        Located {
            mark,
            path,
            message: self.message,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error {
            message: msg.to_string(),
            located: None,
        }
    }
}

/// Deserializes `T` from a marked tree.
pub fn from_node<T: de::DeserializeOwned>(node: &Node) -> Result<T, Located> {
    from_node_at(node, Path::default())
}

/// Deserializes `T` from a subtree that sits at `path` in the document.
pub fn from_node_at<T: de::DeserializeOwned>(node: &Node, path: Path) -> Result<T, Located> {
    T::deserialize(NodeDeserializer { node, path }).map_err(Error::into_located)
}

/// The magic struct name [`Spanned`] asks for; the deserializer answers it with the node's
/// position and path alongside its value.
pub const SPANNED_NAME: &str = "$warden::config::Spanned";
const SPANNED_FIELDS: &[&str] = &["line", "col", "path", "value"];

/// Reads the YAML frontmatter of a Markdown file (between `---` lines at its top) into
/// `T`: exported items, skills. Errors name the line, counted from the top
/// of the file.
pub fn frontmatter<T: de::DeserializeOwned>(text: &str) -> Result<T, String> {
    let Some(rest) = text.strip_prefix("---\n") else {
        return Err("line 1: expected `---` (a Markdown file with YAML frontmatter)".into());
    };
    let Some(end) = rest
        .find("\n---\n")
        .or_else(|| rest.ends_with("\n---").then(|| rest.len() - "\n---".len()))
    else {
        return Err("the frontmatter has no closing `---` line".into());
    };
    let node = parse(&rest[..=end]).map_err(|problem| shifted(problem, 1))?;
    from_node(&node).map_err(|problem| shifted(problem, 1))
}

/// A problem's message with its line moved down by the `---` line above the YAML.
fn shifted(problem: Located, lines: u32) -> String {
    let place = if problem.path.is_empty() {
        String::new()
    } else {
        format!("{}: ", problem.path)
    };
    format!(
        "line {}: {place}{}",
        problem.mark.line + lines,
        problem.message
    )
}

/// A value with the place it was written (line, column, key path), for checks that run
/// after deserialisation and still need to point at the source.
#[derive(Clone, Debug, PartialEq)]
pub struct Spanned<T> {
    pub value: T,
    pub mark: Mark,
    pub path: String,
}

impl<T> Spanned<T> {
    pub fn error(&self, message: impl Into<String>) -> Located {
        Located {
            mark: self.mark,
            path: self.path.clone(),
            message: message.into(),
        }
    }
}

impl<'de, T: de::Deserialize<'de>> de::Deserialize<'de> for Spanned<T> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SpannedVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: de::Deserialize<'de>> Visitor<'de> for SpannedVisitor<T> {
            type Value = Spanned<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value read from the profile")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut line = 0u32;
                let mut col = 0u32;
                let mut path = String::new();
                let mut value = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "line" => line = map.next_value()?,
                        "col" => col = map.next_value()?,
                        "path" => path = map.next_value()?,
                        _ => value = Some(map.next_value()?),
                    }
                }
                let value = value.ok_or_else(|| de::Error::missing_field("value"))?;
                Ok(Spanned {
                    value,
                    mark: Mark { line, col },
                    path,
                })
            }
        }
        deserializer.deserialize_struct(
            SPANNED_NAME,
            SPANNED_FIELDS,
            SpannedVisitor(std::marker::PhantomData),
        )
    }
}

struct NodeDeserializer<'a> {
    node: &'a Node,
    path: Path,
}

impl<'a> NodeDeserializer<'a> {
    fn locate(&self, mut error: Error) -> Error {
        if error.located.is_none() {
            error.located = Some((self.node.mark, self.path.to_string()));
        }
        error
    }

    fn expected(&self, what: &str) -> Error {
        self.locate(de::Error::custom(format!(
            "expected {what}, found {}",
            self.node.describe()
        )))
    }

    fn scalar(&self) -> Option<&'a str> {
        match &self.node.kind {
            NodeKind::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    fn integer(&self) -> Result<Integer, Error> {
        let text = self.scalar().ok_or_else(|| self.expected("an integer"))?;
        parse_integer(text).ok_or_else(|| self.expected("an integer"))
    }

    fn float(&self) -> Result<f64, Error> {
        let text = self.scalar().ok_or_else(|| self.expected("a number"))?;
        parse_float(text).ok_or_else(|| self.expected("a number"))
    }

    fn boolean(&self) -> Result<bool, Error> {
        match self.scalar() {
            Some("true" | "True" | "TRUE") => Ok(true),
            Some("false" | "False" | "FALSE") => Ok(false),
            _ => Err(self.expected("a boolean (true or false)")),
        }
    }
}

enum Integer {
    Signed(i64),
    Unsigned(u64),
}

fn parse_integer(text: &str) -> Option<Integer> {
    let cleaned: String = text.chars().filter(|c| *c != '_').collect();
    if let Some(hex) = cleaned.strip_prefix("0x") {
        return u64::from_str_radix(hex, 16).ok().map(Integer::Unsigned);
    }
    if cleaned.starts_with('-') {
        cleaned.parse::<i64>().ok().map(Integer::Signed)
    } else {
        cleaned
            .strip_prefix('+')
            .unwrap_or(&cleaned)
            .parse::<u64>()
            .ok()
            .map(Integer::Unsigned)
    }
}

fn parse_float(text: &str) -> Option<f64> {
    match text {
        ".inf" | ".Inf" | "+.inf" => Some(f64::INFINITY),
        "-.inf" | "-.Inf" => Some(f64::NEG_INFINITY),
        ".nan" | ".NaN" => Some(f64::NAN),
        _ => text.replace('_', "").parse().ok(),
    }
}

macro_rules! deserialize_integer {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            let result = match self.integer()? {
                Integer::Signed(v) => visitor.visit_i64(v),
                Integer::Unsigned(v) => visitor.visit_u64(v),
            };
            result.map_err(|e| self.locate(e))
        }
    )*};
}

impl<'de, 'a> de::Deserializer<'de> for NodeDeserializer<'a> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let result = match &self.node.kind {
            NodeKind::Scalar { text, plain: true } => {
                if is_null(text) {
                    visitor.visit_unit()
                } else if let Ok(b) = self.boolean() {
                    visitor.visit_bool(b)
                } else if let Some(i) = parse_integer(text) {
                    match i {
                        Integer::Signed(v) => visitor.visit_i64(v),
                        Integer::Unsigned(v) => visitor.visit_u64(v),
                    }
                } else if let Some(f) = parse_float(text).filter(|_| looks_numeric(text)) {
                    visitor.visit_f64(f)
                } else {
                    visitor.visit_str(text)
                }
            }
            NodeKind::Scalar { text, plain: false } => visitor.visit_str(text),
            NodeKind::Seq(_) => return self.deserialize_seq(visitor),
            NodeKind::Map(_) => return self.deserialize_map(visitor),
        };
        result.map_err(|e| self.locate(e))
    }

    deserialize_integer!(deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64);

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let b = self.boolean()?;
        visitor.visit_bool(b).map_err(|e| self.locate(e))
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let f = self.float()?;
        visitor.visit_f64(f).map_err(|e| self.locate(e))
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let text = self.scalar().ok_or_else(|| self.expected("a string"))?;
        visitor.visit_str(text).map_err(|e| self.locate(e))
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.node.is_blank() {
            visitor.visit_none().map_err(|e| self.locate(e))
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.node.is_blank() {
            visitor.visit_unit().map_err(|e| self.locate(e))
        } else {
            Err(self.expected("nothing"))
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let empty = Vec::new();
        let items = match &self.node.kind {
            NodeKind::Seq(items) => items,
            _ if self.node.is_blank() => &empty,
            _ => return Err(self.expected("a list")),
        };
        let access = SeqAccess {
            items: items.iter().enumerate(),
            path: &self.path,
        };
        visitor.visit_seq(access).map_err(|e| self.locate(e))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let empty = Vec::new();
        let entries = match &self.node.kind {
            NodeKind::Map(entries) => entries,
            _ if self.node.is_blank() => &empty,
            _ => return Err(self.expected("a mapping")),
        };
        let access = MapAccess {
            entries: entries.iter(),
            path: &self.path,
            seen: HashSet::new(),
            value: None,
        };
        visitor.visit_map(access).map_err(|e| self.locate(e))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        if name == SPANNED_NAME {
            return visitor.visit_map(SpannedAccess {
                node: self.node,
                path: &self.path,
                step: 0,
            });
        }
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match &self.node.kind {
            NodeKind::Scalar { text, .. } => visitor
                .visit_enum(text.as_str().into_deserializer())
                .map_err(|e: Error| self.locate(e)),
            NodeKind::Map(entries) if entries.len() == 1 => {
                let (key, value) = &entries[0];
                visitor
                    .visit_enum(EnumAccess {
                        key,
                        value,
                        path: &self.path,
                    })
                    .map_err(|e| self.locate(e))
            }
            _ => Err(self.expected("one of the listed names")),
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
}

fn looks_numeric(text: &str) -> bool {
    text.starts_with(|c: char| c.is_ascii_digit() || matches!(c, '-' | '+' | '.'))
}

struct SeqAccess<'a, 'p> {
    items: std::iter::Enumerate<std::slice::Iter<'a, Node>>,
    path: &'p Path,
}

impl<'de, 'a, 'p> de::SeqAccess<'de> for SeqAccess<'a, 'p> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        match self.items.next() {
            None => Ok(None),
            Some((index, node)) => seed
                .deserialize(NodeDeserializer {
                    node,
                    path: self.path.with(Segment::Index(index)),
                })
                .map(Some),
        }
    }
}

struct MapAccess<'a, 'p> {
    entries: std::slice::Iter<'a, (Node, Node)>,
    path: &'p Path,
    seen: HashSet<&'a str>,
    value: Option<(&'a Node, Path)>,
}

impl<'de, 'a, 'p> de::MapAccess<'de> for MapAccess<'a, 'p> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        let name = scalar_text(key);
        let path = self.path.with(Segment::Key(name.to_owned()));
        if !self.seen.insert(name) {
            return Err(Error {
                message: format!("duplicate key `{name}`"),
                located: Some((key.mark, path.to_string())),
            });
        }
        let key_value = seed.deserialize(NodeDeserializer {
            node: key,
            path: path.clone(),
        })?;
        self.value = Some((value, path));
        Ok(Some(key_value))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let (node, path) = self
            .value
            .take()
            .ok_or_else(|| de::Error::custom("value requested before key"))?;
        seed.deserialize(NodeDeserializer { node, path })
    }
}

struct EnumAccess<'a, 'p> {
    key: &'a Node,
    value: &'a Node,
    path: &'p Path,
}

impl<'de, 'a, 'p> de::EnumAccess<'de> for EnumAccess<'a, 'p> {
    type Error = Error;
    type Variant = NodeDeserializer<'a>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), Error> {
        let path = self
            .path
            .with(Segment::Key(scalar_text(self.key).to_owned()));
        let variant = seed.deserialize(NodeDeserializer {
            node: self.key,
            path: path.clone(),
        })?;
        Ok((
            variant,
            NodeDeserializer {
                node: self.value,
                path,
            },
        ))
    }
}

impl<'de, 'a> de::VariantAccess<'de> for NodeDeserializer<'a> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        if self.node.is_blank() {
            Ok(())
        } else {
            Err(self.expected("nothing after this name"))
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_seq(self, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_map(self, visitor)
    }
}

struct SpannedAccess<'a, 'p> {
    node: &'a Node,
    path: &'p Path,
    step: usize,
}

impl<'de, 'a, 'p> de::MapAccess<'de> for SpannedAccess<'a, 'p> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some(name) = SPANNED_FIELDS.get(self.step) else {
            return Ok(None);
        };
        seed.deserialize(de::value::BorrowedStrDeserializer::new(name))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let step = self.step;
        self.step += 1;
        match step {
            0 => seed.deserialize(self.node.mark.line.into_deserializer()),
            1 => seed.deserialize(self.node.mark.col.into_deserializer()),
            2 => seed.deserialize(self.path.to_string().into_deserializer()),
            _ => seed.deserialize(NodeDeserializer {
                node: self.node,
                path: self.path.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Restart {
        max_restarts: u32,
        #[serde(default)]
        policy: Option<Policy>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "lowercase")]
    enum Policy {
        Permanent,
        Transient,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Server {
        #[serde(default)]
        args: Vec<String>,
        restart: Option<Restart>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Profile {
        #[serde(default)]
        servers: BTreeMap<String, Server>,
        #[serde(default)]
        port: Option<u16>,
    }

    fn load<T: de::DeserializeOwned>(text: &str) -> Result<T, Located> {
        let mut node = parse(text)?;
        let mut errors = Vec::new();
        let env = |name: &str| match name {
            "PORT" => Some("8080".to_string()),
            "NAME" => Some("a: b".to_string()),
            _ => None,
        };
        expand_env(&mut node, &env, &mut Path::default(), &mut errors);
        if let Some(first) = errors.into_iter().next() {
            return Err(first);
        }
        from_node(&node)
    }

    #[test]
    fn wrong_type_names_line_column_and_path() {
        let text = "servers:\n  github:\n    restart:\n      max_restarts: five\n";
        let err = load::<Profile>(text).unwrap_err();
        assert_eq!(err.path, "servers.github.restart.max_restarts");
        assert_eq!(err.mark, Mark { line: 4, col: 21 });
        assert!(err.message.contains("expected an integer"), "{err}");
    }

    #[test]
    fn unknown_key_points_at_the_key() {
        let text = "servers:\n  github:\n    argz: [a]\n";
        let err = load::<Profile>(text).unwrap_err();
        assert_eq!(err.path, "servers.github.argz");
        assert_eq!(err.mark, Mark { line: 3, col: 5 });
        assert!(err.message.contains("unknown field `argz`"), "{err}");
    }

    #[test]
    fn duplicate_keys_are_rejected() {
        let err = load::<Profile>("port: 1\nport: 2\n").unwrap_err();
        assert!(err.message.contains("duplicate key `port`"));
        assert_eq!(err.mark.line, 2);
    }

    #[test]
    fn env_expansion_is_typed_after_expansion_and_cannot_inject_structure() {
        let profile: Profile = load("port: ${PORT}\nservers:\n  a:\n    args: [\"${NAME}\", \"${MISSING:-x}\", \"$${HOME}\"]\n").unwrap();
        assert_eq!(profile.port, Some(8080));
        assert_eq!(profile.servers["a"].args, vec!["a: b", "x", "${HOME}"]);
    }

    #[test]
    fn unset_variable_is_named() {
        let err = load::<Profile>("servers:\n  a:\n    args: [\"${NOPE}\"]\n").unwrap_err();
        assert_eq!(err.path, "servers.a.args[0]");
        assert!(err.message.contains("`NOPE` is not set"), "{err}");
    }

    #[test]
    fn enum_errors_list_the_variants() {
        let err =
            load::<Profile>("servers:\n  a:\n    restart: {max_restarts: 1, policy: sometimes}\n")
                .unwrap_err();
        assert_eq!(err.path, "servers.a.restart.policy");
        assert!(err.message.contains("permanent"), "{err}");
    }

    #[test]
    fn spanned_values_carry_their_place() {
        #[derive(Deserialize)]
        struct Hooks {
            hooks: Vec<Spanned<String>>,
        }
        let hooks: Hooks = load("hooks:\n  - one\n  - two\n").unwrap();
        assert_eq!(hooks.hooks[1].value, "two");
        assert_eq!(hooks.hooks[1].mark.line, 3);
        assert_eq!(hooks.hooks[1].path, "hooks[1]");
    }

    #[test]
    fn billion_laughs_is_bounded() {
        let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..8 {
            let prev = if i == 0 {
                "a".to_string()
            } else {
                format!("l{}", i - 1)
            };
            text.push_str(&format!(
                "l{i}: &l{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
        }
        let err = parse(&text).unwrap_err();
        assert!(err.message.contains("too large"), "{err}");
    }

    #[test]
    fn blank_sections_are_empty() {
        let profile: Profile = load("servers:\n").unwrap();
        assert!(profile.servers.is_empty());
        let profile: Profile = load("").unwrap();
        assert_eq!(profile.port, None);
    }
}
