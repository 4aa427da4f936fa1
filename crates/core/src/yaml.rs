//! YAML decoding with a budget. Pure, no I/O.
//!
//! `serde_yaml` (the `serde_norway` crate) replays the events of an anchored node every time
//! an alias names it, and it only limits alias *jumps* (to 100 times the number of events)
//! and nesting (to 128). A 1 MiB document can still name a 50,000-node anchor 50,000 times:
//! billions of nodes, an out-of-memory abort of the whole controller. [`from_str_bounded`]
//! builds the [`serde_json::Value`] through a visitor of its own that counts every node it
//! builds, every byte of string and key it copies and the nesting depth, and stops the
//! decoding as soon as one of the [`Limits`] is passed. Because the parser replays aliases
//! into the visitor, expanded nodes are counted like written ones, so time and memory stay
//! proportional to the limits whatever the aliases do.
//!
//! The parser reads the whole document into a list of events before the visitor sees the
//! first node. That part is linear in the text (about 100 bytes an event: up to some
//! 80 MiB for 1 MiB of one-character scalars), except for deep nesting, which costs more
//! per level and which a depth limit in the visitor would catch too late; a scan of the
//! text before parsing bounds it ([`Limits::max_brackets`], [`Limits::max_column`]).
//!
//! Within the limits the result is exactly what `serde_yaml::from_str::<serde_json::Value>`
//! gives, errors included: same numbers, same strings for non-string scalar keys (`1: a`
//! gives the key `"1"`), same refusal of YAML tags such as `!foo` and of sequence or mapping
//! keys.

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Number, Value};
use std::fmt;

/// How far one document may expand.
///
/// Routemaps and rendered routing objects are small: the tutorial's VirtualService is about
/// a hundred nodes, a routemap a few dozen, and Kubernetes objects nest about ten levels.
/// Their text is at most 1 MiB (the ConfigMap limit and
/// [`MAX_RENDERED_BYTES`](crate::render::MAX_RENDERED_BYTES)). The defaults sit far above
/// that and far below the controller's memory limit (256 MiB in the chart): a
/// [`serde_json::Value`] node costs well under 100 bytes, so the value built from 200,000
/// nodes and 8 MiB of strings stays under about 30 MiB, whatever the aliases do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most nodes (scalars, sequences, mappings and mapping keys) built, aliases expanded.
    /// 200,000 by default: 2,000 times a real routing object. Without aliases a 1 MiB
    /// document rarely gets there: only a flat list of hundreds of thousands of tiny
    /// scalars does, and nothing real looks like that.
    pub max_nodes: usize,
    /// Most bytes of strings and keys copied, aliases expanded. 8 MiB by default: eight
    /// times what a 1 MiB document without aliases can hold.
    pub max_string_bytes: usize,
    /// Deepest nesting of sequences and mappings (the top-level one is depth 1). 64 by
    /// default: Kubernetes objects nest about ten levels; the parser itself stops at 128.
    pub max_depth: usize,
    /// Most `[` and `{` characters in the text, counted before parsing. The parser reads
    /// the whole document before the first node is built, and deep nesting is costly
    /// there: 1 MiB of `[` takes seconds and over 150 MiB before any depth limit can act.
    /// Flow nesting needs one of these characters per level, so counting them bounds it.
    /// 50,000 by default, which keeps that cost near 0.3 s and 10 MiB; a real routemap or
    /// routing object has a few hundred (template actions `{{ }}` included).
    pub max_brackets: usize,
    /// Furthest column (in bytes) at which a line's first node may start, found before
    /// parsing: its indentation plus any compact indicators (`- - -`, `? ? ?`) and node
    /// properties in front of it. Block nesting needs a new column for each level (two
    /// levels at most share one), so this bounds it; 1 MiB of `- ` or `? ` on one line
    /// would otherwise cost the parser 150 to 200 MiB. 2,048 by default (at most about
    /// 4,000 levels, about 1 MiB); real documents stay under a hundred.
    pub max_column: usize,
}

impl Limits {
    /// The limits used for routemaps and rendered routing objects; see [`Limits`].
    /// For one rendered routing object: a real one is a few hundred nodes. Low enough that a
    /// routemap's [`crate::routemap::MAX_TEMPLATES`] outputs together stay small.
    pub const RENDERED: Limits = Limits {
        max_nodes: 20_000,
        max_string_bytes: 1024 * 1024,
        max_depth: 64,
        max_brackets: 20_000,
        max_column: 2048,
    };

    pub const DEFAULT: Limits = Limits {
        max_nodes: 200_000,
        max_string_bytes: 8 * 1024 * 1024,
        max_depth: 64,
        max_brackets: 50_000,
        max_column: 2048,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// Which of the [`Limits`] a document passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    /// [`Limits::max_nodes`]
    Nodes,
    /// [`Limits::max_string_bytes`]
    StringBytes,
    /// [`Limits::max_depth`]
    Depth,
    /// [`Limits::max_brackets`]
    Brackets,
    /// [`Limits::max_column`]
    Column,
}

/// Why a document could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum YamlError {
    /// Not YAML, or YAML that has no JSON form (tags, non-scalar keys, several documents).
    /// The message is the parser's, with line and column.
    #[error("{0}")]
    Invalid(String),
    /// The document expands past one of the [`Limits`]; the message names the limit and
    /// where decoding stopped.
    #[error("{message}")]
    Limit {
        /// The limit passed.
        kind: LimitKind,
        /// What to show the user.
        message: String,
    },
}

/// Decodes one YAML document into a JSON value like `serde_yaml::from_str` would, but fails
/// as soon as the document expands past `limits` (see the module docs).
pub fn from_str_bounded(text: &str, limits: Limits) -> Result<Value, YamlError> {
    decode(text, limits).0
}

/// [`from_str_bounded`], also returning how many nodes were built before it returned (tests
/// use it to show that a bomb stops early).
fn decode(text: &str, limits: Limits) -> (Result<Value, YamlError>, usize) {
    if let Err(err) = scan(text, limits) {
        return (Err(err), 0);
    }
    let mut budget = Budget {
        limits,
        nodes: 0,
        string_bytes: 0,
        exceeded: None,
    };
    let seed = ValueSeed {
        budget: &mut budget,
        depth: 0,
    };
    let result = seed.deserialize(serde_yaml::Deserializer::from_str(text));
    let result = result.map_err(|e| match budget.exceeded.take() {
        // The parser's message would start with the path to the node, which aliases can
        // make very long; the position is enough.
        Some((kind, mut message)) => {
            if let Some(at) = e.location() {
                message = format!("{message} at line {} column {}", at.line(), at.column());
            }
            YamlError::Limit { kind, message }
        }
        None => YamlError::Invalid(e.to_string()),
    });
    (result, budget.nodes)
}

/// Refuses, before the parser reads it, text that could nest deeper than the parser can
/// afford to find out: see [`Limits::max_brackets`] and [`Limits::max_column`]. Both
/// measures can only overestimate the nesting, never miss it.
fn scan(text: &str, limits: Limits) -> Result<(), YamlError> {
    let brackets = text.bytes().filter(|b| matches!(b, b'[' | b'{')).count();
    if brackets > limits.max_brackets {
        return Err(YamlError::Limit {
            kind: LimitKind::Brackets,
            message: format!(
                "yaml has more than {} '[' and '{{' characters (nested too deeply?)",
                limits.max_brackets
            ),
        });
    }
    // Every YAML line break, so that no line hides behind one the scan does not know.
    let lines = text.split(['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}']);
    for (number, line) in lines.enumerate() {
        if first_node_column(line) > limits.max_column {
            return Err(YamlError::Limit {
                kind: LimitKind::Column,
                message: format!(
                    "yaml nests past column {} at line {} (indentation or compact `- - -`)",
                    limits.max_column,
                    number + 1
                ),
            });
        }
    }
    Ok(())
}

/// The byte column after a line's indentation and the indicators, properties and document
/// marker in front of its first node (`  - ? &a !t - x` gives the column of `x`).
fn first_node_column(line: &str) -> usize {
    let bytes = line.as_bytes();
    let blank = |i: usize| bytes.get(i).is_none_or(|b| matches!(b, b' ' | b'\t'));
    let mut i = 0;
    loop {
        match bytes.get(i) {
            Some(b' ' | b'\t') => i += 1,
            // A byte-order mark (any line may start with one: no harm in skipping it).
            Some(0xEF) if line[i..].starts_with('\u{feff}') => i += '\u{feff}'.len_utf8(),
            Some(b'-' | b'?' | b':') if blank(i + 1) => i += 1,
            Some(b'-') if line[i..].starts_with("---") && blank(i + 3) => i += 3,
            Some(b'&' | b'!') => {
                while !blank(i) {
                    i += 1;
                }
            }
            _ => return i,
        }
    }
}

/// What one decoding has used so far.
struct Budget {
    limits: Limits,
    nodes: usize,
    string_bytes: usize,
    /// The limit passed and its message, once one is.
    exceeded: Option<(LimitKind, String)>,
}

impl Budget {
    /// Counts one node about to be built.
    fn node<E: de::Error>(&mut self) -> Result<(), E> {
        self.nodes += 1;
        if self.nodes > self.limits.max_nodes {
            return Err(self.exceed(
                LimitKind::Nodes,
                format!(
                    "yaml expands to more than {} nodes (aliases?)",
                    self.limits.max_nodes
                ),
            ));
        }
        Ok(())
    }

    /// Counts one string or key of `len` bytes about to be copied.
    fn string<E: de::Error>(&mut self, len: usize) -> Result<(), E> {
        self.node()?;
        self.string_bytes = self.string_bytes.saturating_add(len);
        if self.string_bytes > self.limits.max_string_bytes {
            return Err(self.exceed(
                LimitKind::StringBytes,
                format!(
                    "yaml expands to more than {} bytes of strings (aliases?)",
                    self.limits.max_string_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Counts one sequence or mapping at nesting `depth` (1 for the top level).
    fn container<E: de::Error>(&mut self, depth: usize) -> Result<(), E> {
        if depth > self.limits.max_depth {
            return Err(self.exceed(
                LimitKind::Depth,
                format!(
                    "yaml is nested deeper than {} levels",
                    self.limits.max_depth
                ),
            ));
        }
        self.node()
    }

    fn exceed<E: de::Error>(&mut self, kind: LimitKind, message: String) -> E {
        let err = E::custom(&message);
        self.exceeded = Some((kind, message));
        err
    }
}

/// Builds one [`Value`] inside `depth` enclosing sequences or mappings.
struct ValueSeed<'b> {
    budget: &'b mut Budget,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

// Mirrors serde_json's own `Value` visitor (same `expecting` text, so the same error
// messages; no `visit_enum`, so tagged nodes are refused the same way), plus the budget.
impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        self.budget.node()?;
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.budget.node()?;
        Ok(Value::Number(v.into()))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        self.budget.node()?;
        Number::deserialize(de::value::I128Deserializer::new(v)).map(Value::Number)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.budget.node()?;
        Ok(Value::Number(v.into()))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        self.budget.node()?;
        Number::deserialize(de::value::U128Deserializer::new(v)).map(Value::Number)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.budget.node()?;
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.budget.string(v.len())?;
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.budget.string(v.len())?;
        Ok(Value::String(v))
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.budget.node()?;
        Ok(Value::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.budget.node()?;
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let depth = self.depth + 1;
        self.budget.container(depth)?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(ValueSeed {
            budget: &mut *self.budget,
            depth,
        })? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let depth = self.depth + 1;
        self.budget.container(depth)?;
        let mut entries = Map::new();
        while let Some(key) = map.next_key_seed(KeySeed {
            budget: &mut *self.budget,
            first: entries.is_empty(),
        })? {
            let value = map.next_value_seed(ValueSeed {
                budget: &mut *self.budget,
                depth,
            })?;
            // Like serde_json: a repeated key keeps its last value.
            entries.insert(key, value);
        }
        Ok(Value::Object(entries))
    }
}

/// Builds one mapping key. Like serde_json, asks for a string, which the YAML parser gives
/// for every scalar (its text) and refuses for sequences and mappings.
struct KeySeed<'b> {
    budget: &'b mut Budget,
    /// serde_json reads the first key with a visitor of its own ("a string key") and the
    /// others as `String`s ("a string"); the refusals say so.
    first: bool,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = String;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(if self.first {
            "a string key"
        } else {
            "a string"
        })
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        self.budget.string(v.len())?;
        Ok(v.to_owned())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        self.budget.string(v.len())?;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the controller did before this module: no limits.
    fn today(text: &str) -> Result<Value, String> {
        serde_yaml::from_str::<Value>(text).map_err(|e| e.to_string())
    }

    fn ours(text: &str) -> Result<Value, String> {
        from_str_bounded(text, Limits::DEFAULT).map_err(|e| e.to_string())
    }

    #[test]
    fn normal_documents_decode_as_before() {
        let cases = [
            "",
            "~",
            "null",
            "a: 1",
            "a: -1\nb: 0x1F\nc: 0o17\nd: +5\ne: 1_000\nf: 007",
            "a: 1.5\nb: -0.0\nc: 1e3\nd: .inf\ne: -.Inf\nf: .nan",
            "big: 18446744073709551615\nbigger: 18446744073709551616\nneg: -9223372036854775809",
            "huge: 340282366920938463463374607431768211456",
            "a: true\nb: False\nc: yes\nd: no\ne: on",
            "a: 'quoted'\nb: \"esc\\n\\u00e9\"\nc: plain text\nd: ''\ne: '1'\nf: \"true\"",
            "a: |\n  line 1\n  line 2\nb: >-\n  folded\n  text\n",
            "- 1\n- [2, 3]\n- {x: y}\n- - nested\n  - list\n",
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: wisdom\nspec:\n  hosts: [wisdom.default]\n  http:\n  - route:\n    - destination: {host: a, port: {number: 80}}\n      weight: 100\n",
            "base: &b {x: 1, y: [1, 2]}\nuse: *b\nlist: [*b, *b]",
            "s: &s str\nk: {*s : v}",
            "base: &b {x: 1}\nmerged:\n  <<: *b\n  y: 2",
            "1: a\ntrue: b\nnull: c\n~: d\n1.5: e\n0x10: f\n'q': g",
            "? |\n  block key\n: v",
            ": empty key",
            "a: 1\na: 2",
            "a: !!str 5\nb: !!int '7'\nc: !!float '1'\nd: !!bool 'true'\ne: !!null ''",
            "a: !!binary aGVsbG8=\nb: !!timestamp 2001-12-14",
            "a: !!int x",
            "a: !foo bar",
            "a: !foo {x: 1}",
            "a: !foo [1]",
            "!foo\nx: 1",
            "!!map {a: 1}",
            "!!seq [1]",
            "!foo a: b",
            "[a]: b",
            "a: 1\n[b]: c",
            "a: 1\n{b: 1}: c",
            "a: 1\na: 2\n[b]: c",
            "{a: 1}: b",
            "? [a, b]\n: c",
            "a: [",
            "a: b: c",
            "\t- tab",
            "a: 1\n---\nb: 2",
            "---\na: 1\n...\n",
            "a: *nope",
            "- &a a\n- &a b\n- *a",
            "%YAML 1.2\n---\na: 1",
            "a: \"\\xff\"",
        ];
        for text in cases {
            assert_eq!(ours(text), today(text), "for {text:?}");
        }
    }

    /// Aliases of a 1,000-node anchor named 1,000 times: a million nodes, which the parser
    /// itself allows (1,000 jumps for some 2,000 events).
    fn wide_alias_bomb() -> String {
        let items = vec!["x"; 1000].join(", ");
        let aliases = vec!["*a"; 1000].join(", ");
        format!("a: &a [{items}]\nb: [{aliases}]\n")
    }

    /// Billion laughs: nine levels of nine aliases of the level below.
    fn billion_laughs() -> String {
        let mut text = String::from("l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for level in 1..=9 {
            let below = format!("*l{}", level - 1);
            let aliases = [below.as_str(); 9].join(", ");
            text.push_str(&format!("l{level}: &l{level} [{aliases}]\n"));
        }
        text
    }

    /// A 100 KiB string named 1,000 times: 100 MB of strings from few nodes.
    fn string_bomb() -> String {
        let aliases = vec!["*s"; 1000].join(", ");
        format!("s: &s {}\nb: [{aliases}]\n", "x".repeat(100 * 1024))
    }

    /// The same, as keys of a mapping that collapses them: still 100 MB copied.
    fn key_bomb() -> String {
        let entries = vec!["*s : 1"; 1000].join(", ");
        format!("s: &s {}\nb: {{{entries}}}\n", "x".repeat(100 * 1024))
    }

    #[test]
    fn alias_bombs_stop_at_the_limit() {
        let cases = [
            (
                "wide",
                wide_alias_bomb(),
                LimitKind::Nodes,
                "nodes (aliases?)",
            ),
            (
                "strings",
                string_bomb(),
                LimitKind::StringBytes,
                "bytes of strings",
            ),
            (
                "keys",
                key_bomb(),
                LimitKind::StringBytes,
                "bytes of strings",
            ),
        ];
        for (name, text, kind, message) in cases {
            assert!(text.len() < 1024 * 1024, "{name}: fits in a ConfigMap");
            let (result, nodes) = decode(&text, Limits::DEFAULT);
            match result {
                Err(YamlError::Limit {
                    kind: k,
                    message: m,
                }) => {
                    assert_eq!(k, kind, "{name}: {m}");
                    assert!(m.starts_with("yaml expands to more than "), "{name}: {m}");
                    assert!(m.contains(" at line "), "{name}: {m}");
                    assert!(m.contains(message), "{name}: {m}");
                }
                other => panic!("{name}: {other:?}"),
            }
            // The work done is bounded by the budget, not by the expansion.
            assert!(
                nodes <= Limits::DEFAULT.max_nodes + 1,
                "{name}: {nodes} nodes"
            );
        }
        // The position is where the budget ran out: inside the anchor being replayed.
        assert_eq!(
            ours(&wide_alias_bomb()).unwrap_err(),
            "yaml expands to more than 200000 nodes (aliases?) at line 1 column 2396"
        );
    }

    #[test]
    fn rendered_bombs_are_template_errors() {
        let err = crate::render::decode_output("t", &wide_alias_bomb()).unwrap_err();
        assert_eq!(err.category(), "rendered_yaml");
        assert_eq!(
            err.to_string(),
            "routing template t rendered invalid yaml: yaml expands to more than 20000 nodes \
             (aliases?) at line 1 column 2936"
        );
    }

    #[test]
    fn billion_laughs_stop_early() {
        // The parser's own jump limit may fire first; either way it stops early.
        let text = billion_laughs();
        let (result, nodes) = decode(&text, Limits::DEFAULT);
        assert!(result.is_err());
        assert!(nodes <= Limits::DEFAULT.max_nodes + 1, "{nodes} nodes");
        // With a smaller budget it is ours that fires.
        let small = Limits {
            max_nodes: 1000,
            ..Limits::DEFAULT
        };
        let (result, nodes) = decode(&text, small);
        assert!(
            matches!(
                result,
                Err(YamlError::Limit {
                    kind: LimitKind::Nodes,
                    ..
                })
            ),
            "{result:?}"
        );
        assert_eq!(nodes, 1001);
    }

    #[test]
    fn deep_nesting_is_refused() {
        let flow = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let block = |n: usize| {
            (0..n)
                .map(|i| format!("{}a:\n", "  ".repeat(i)))
                .collect::<String>()
        };
        assert_eq!(ours(&flow(64)), today(&flow(64)));
        assert_eq!(
            ours(&block(63)),
            today(&block(63)),
            "63 mappings and a null"
        );
        for text in [flow(65), flow(100), flow(5_000), block(65), block(1000)] {
            match from_str_bounded(&text, Limits::DEFAULT) {
                Err(YamlError::Limit {
                    kind: LimitKind::Depth,
                    message,
                }) => assert!(
                    message.contains("yaml is nested deeper than 64 levels"),
                    "{message}"
                ),
                other => panic!("{:.40}: {other:?}", text),
            }
        }
        // Deeper flow nesting is refused before the parser reads it.
        for text in [flow(50_001), "[".repeat(1024 * 1024)] {
            let (result, nodes) = decode(&text, Limits::DEFAULT);
            assert_eq!(
                result.unwrap_err().to_string(),
                "yaml has more than 50000 '[' and '{' characters (nested too deeply?)"
            );
            assert_eq!(nodes, 0);
        }
        // So is compact block nesting, on any line, whatever the line break.
        let compact = "- ".repeat(1025);
        for (text, line) in [
            (compact.clone(), 1),
            ("? ".repeat(1025), 1),
            (format!("a: 1\r{compact}"), 2),
            (format!("a: 1\u{2028}{compact}"), 2),
            (format!("a: 1\u{85}b: 2\n{compact}"), 3),
            (format!("- &a !t {compact}"), 1),
            (format!("--- {compact}"), 1),
            (format!("\u{feff}{compact}"), 1),
            (format!("{}x", " ".repeat(2049)), 1),
            // An overestimate: this is text in a block scalar. Nothing real looks like it.
            (format!("a: |\n  {compact}\n"), 2),
        ] {
            let (result, nodes) = decode(&text, Limits::DEFAULT);
            assert_eq!(
                result.unwrap_err().to_string(),
                format!(
                    "yaml nests past column 2048 at line {line} (indentation or compact `- - -`)"
                ),
                "{text:.40}"
            );
            assert_eq!(nodes, 0);
        }
        for text in [
            "- ".repeat(1024),
            format!("{}x", " ".repeat(2048)),
            format!("a: {compact}"),
            "- a\n  - b\n- -1 - 2\n? x\n: y".to_string(),
        ] {
            let ours = from_str_bounded(&text, Limits::DEFAULT);
            assert!(
                !matches!(
                    ours,
                    Err(YamlError::Limit {
                        kind: LimitKind::Column,
                        ..
                    })
                ),
                "{text:.40}: {ours:?}"
            );
        }
        // Depth counts containers, not the aliases that lead to them.
        let text = "a: &a [[[1]]]\nb: [[*a]]";
        assert_eq!(ours(text), today(text));
        let shallow = Limits {
            max_depth: 5,
            ..Limits::DEFAULT
        };
        let err = from_str_bounded(text, shallow).unwrap_err();
        assert_eq!(
            err.to_string(),
            "yaml is nested deeper than 5 levels at line 1 column 9"
        );
        // An anchor that contains itself: the parser would stop at its own depth of 128.
        assert!(today("a: &x [*x]").is_err());
        assert_eq!(
            ours("a: &x [*x]").unwrap_err(),
            "yaml is nested deeper than 64 levels at line 1 column 4"
        );
    }
}
