//! Adapters that make the `gotmpl` crate behave like Go's template packages where the two
//! differ. Pure text processing.

use std::borrow::Cow;
use std::collections::BTreeMap;

/// Empty comment inserted to stop gotmpl's extra trimming; it produces no output and
/// trims nothing.
const NEUTRAL: &str = "{{/**/}}";

/// gotmpl trims the whitespace *after* a comment that has only a left trim marker
/// (`{{- /* c */}}`), Go trims only before it. Templates written for the original
/// controller rely on Go's behaviour, so after each such comment we insert an empty
/// comment: the whitespace then follows a comment without trim markers and survives.
///
/// The scan skips string, raw string and character literals inside actions, so that a
/// `{{- /*` inside a quoted string is left alone. Malformed input is passed through for
/// the parser to report.
pub(crate) fn fix_left_trim_comments(src: &str) -> Cow<'_, str> {
    let mut out = String::new();
    let mut copied = 0;
    let mut i = 0;
    while let Some(offset) = src[i..].find("{{") {
        let open = i + offset;
        let mut j = open + 2;
        let left_trim =
            src[j..].starts_with('-') && src[j + 1..].starts_with([' ', '\t', '\r', '\n']);
        if left_trim {
            j += 2;
        }
        let k = j + whitespace_len(&src[j..]);
        if src[k..].starts_with("/*") {
            let Some(end) = src[k + 2..].find("*/") else {
                break;
            };
            let after_comment = k + 2 + end + 2;
            let ws = whitespace_len(&src[after_comment..]);
            let rest = &src[after_comment + ws..];
            let (close, right_trim) = if ws > 0 && rest.starts_with("-}}") {
                (after_comment + ws + 3, true)
            } else if rest.starts_with("}}") {
                (after_comment + ws + 2, false)
            } else {
                break;
            };
            if left_trim && !right_trim {
                out.push_str(&src[copied..close]);
                out.push_str(NEUTRAL);
                copied = close;
            }
            i = close;
        } else {
            i = skip_action(src, j);
        }
    }
    if copied == 0 {
        Cow::Borrowed(src)
    } else {
        out.push_str(&src[copied..]);
        Cow::Owned(out)
    }
}

/// gotmpl stops parsing at an `{{end}}` or `{{else}}` outside any block and silently drops
/// the rest of the template, and accepts an `if`, `range`, `with`, `define` or `block`
/// without `{{end}}`; Go reports "unexpected {{end}}" and "unexpected EOF". A typo would
/// then render a truncated routing object (a VirtualService without routes) that the
/// controller would apply, so such templates are refused here, with Go's message and the
/// line of the culprit.
///
/// Comments and quoted literals inside actions are skipped. Anything else malformed is left
/// for the parser to report.
pub(crate) fn check_block_balance(src: &str) -> Result<(), String> {
    let line_of = |pos: usize| src[..pos].matches('\n').count() + 1;
    // Open blocks, each with the `else if`/`else with` links of its chain: gotmpl's parser,
    // escaper and executor recurse once per link, so they count towards the depth.
    let mut open: Vec<(&str, usize, usize)> = Vec::new();
    let depth =
        |open: &[(&str, usize, usize)]| open.iter().map(|(_, _, links)| 1 + links).sum::<usize>();
    for Action {
        start,
        body: k,
        word,
        end,
    } in actions(src)
    {
        // The escaper's own functions are in gotmpl's function map once a template is escaped;
        // called directly they would build text past the work budget (Go refuses them too).
        if let Some(name) = RESERVED.iter().find(|r| src[k..end].contains(**r)) {
            return Err(format!(
                "line {}: {name}* functions are reserved for the escaper",
                line_of(start)
            ));
        }
        match word {
            "if" | "range" | "with" | "define" | "block" => {
                open.push((word, start, 0));
                if open.len() > MAX_NESTING {
                    return Err(format!(
                        "line {}: blocks nested more than {MAX_NESTING} deep",
                        line_of(start)
                    ));
                }
            }
            "end" if open.pop().is_none() => {
                return Err(format!("line {}: unexpected {{{{end}}}}", line_of(start)))
            }
            "else" if open.is_empty() => {
                return Err(format!("line {}: unexpected {{{{else}}}}", line_of(start)))
            }
            "else" => {
                let next = src[k + 4..].trim_start();
                if next.starts_with("if ") || next.starts_with("with ") {
                    if let Some(top) = open.last_mut() {
                        top.2 += 1;
                    }
                    if depth(&open) > MAX_DEPTH {
                        return Err(format!(
                            "line {}: blocks and else-if chains nested more than {MAX_DEPTH} deep",
                            line_of(start)
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    match open.last() {
        Some((word, start, _)) => Err(format!(
            "line {}: unexpected EOF: {{{{{word}}}}} has no {{{{end}}}}",
            line_of(*start)
        )),
        None => Ok(()),
    }
}

/// Deepest nesting of `if`, `range`, `with`, `define` and `block`. The html/template escaper
/// gotmpl ports analyses a nested block's body twice per level, so its time doubles with every
/// level (26 nested ranges take minutes); real routing templates nest two or three deep.
pub(crate) const MAX_NESTING: usize = 10;

/// Deepest recursion of gotmpl's parser: nested blocks plus the links of `else if` chains.
pub(crate) const MAX_DEPTH: usize = 64;

/// Function names gotmpl's escaper registers for itself.
const RESERVED: [&str; 2] = ["_html_template_", "_eval_args_"];

/// Most `{{template}}` invocations one execution may make, counting the templates they
/// invoke in turn (a `{{range}}` around a call multiplies it, within the range budget).
pub(crate) const MAX_TEMPLATE_CALLS: usize = 100;

/// gotmpl limits nesting depth (200) but not fan-out: `{{define "a"}}` invoking `b` twice,
/// `b` invoking `c` twice, and so on, runs 2^n templates, and a template that invokes
/// itself twice runs 2^200. So the `{{template}}` and `{{block}}` calls are read before
/// parsing, and a template that calls itself (directly or through others) or expands to
/// more than [`MAX_TEMPLATE_CALLS`] invocations is refused.
pub(crate) fn check_template_calls(src: &str, own_name: &str) -> Result<(), String> {
    // Calls made by the main body ("") and by each `{{define}}`d template.
    let mut calls: BTreeMap<String, Vec<String>> = BTreeMap::new();
    // Open blocks; `Some(name)` for a define (or block) whose body is `name`.
    let mut open: Vec<Option<String>> = Vec::new();
    for Action {
        body: k, word, end, ..
    } in actions(src)
    {
        let scope = open
            .iter()
            .rev()
            .flatten()
            .next()
            .cloned()
            .unwrap_or_default();
        // The template itself answers to its own name too.
        let named = || {
            quoted_name(&src[k + word.len()..])
                .map(|n| if n == own_name { String::new() } else { n })
        };
        if matches!(word, "define" | "block" | "template") && src[k..end].contains('\\') {
            return Err(
                "template names with escapes are not supported; write them plainly".to_string(),
            );
        }
        match word {
            "define" => open.push(Some(named().unwrap_or_default())),
            "block" => {
                let name = named().unwrap_or_default();
                calls.entry(scope).or_default().push(name.clone());
                open.push(Some(name));
            }
            "template" => {
                if let Some(name) = named() {
                    calls.entry(scope).or_default().push(name);
                }
            }
            "if" | "range" | "with" => open.push(None),
            "end" => {
                open.pop();
            }
            _ => {}
        }
    }
    let mut expansions: BTreeMap<String, usize> = BTreeMap::new();
    let mut path: Vec<String> = Vec::new();
    let total = expand("", &calls, &mut expansions, &mut path)?;
    if total > MAX_TEMPLATE_CALLS + 1 {
        return Err(format!(
            "invokes templates {} times (through {{{{template}}}} and {{{{block}}}}), more than \
             the limit of {MAX_TEMPLATE_CALLS}",
            total - 1
        ));
    }
    Ok(())
}

/// How many templates running `name` runs, itself included; an error on a cycle.
fn expand(
    name: &str,
    calls: &BTreeMap<String, Vec<String>>,
    memo: &mut BTreeMap<String, usize>,
    path: &mut Vec<String>,
) -> Result<usize, String> {
    if let Some(n) = memo.get(name) {
        return Ok(*n);
    }
    if path.iter().any(|p| p == name) {
        return Err(format!(
            "template {name:?} invokes itself (through {}); recursive templates are not supported",
            path.iter()
                .skip_while(|p| *p != name)
                .map(|p| format!("{p:?}"))
                .collect::<Vec<_>>()
                .join(" -> ")
        ));
    }
    if path.len() > MAX_TEMPLATE_CALLS {
        return Err(format!(
            "templates invoke each other more than {MAX_TEMPLATE_CALLS} deep"
        ));
    }
    path.push(name.to_string());
    let mut n: usize = 1;
    for callee in calls.get(name).map(Vec::as_slice).unwrap_or_default() {
        n = n.saturating_add(expand(callee, calls, memo, path)?);
        // Stop early: the exact count does not matter once over the limit.
        if n > MAX_TEMPLATE_CALLS + 1 {
            break;
        }
    }
    path.pop();
    memo.insert(name.to_string(), n);
    Ok(n)
}

/// The quoted name after `define`, `template` or `block`.
fn quoted_name(rest: &str) -> Option<String> {
    let rest = rest.trim_start();
    let quote = rest.chars().next().filter(|c| *c == '"' || *c == '`')?;
    let body = &rest[1..];
    let end = body.find(quote)?;
    Some(body[..end].to_string())
}

/// One `{{ ... }}` action of a template's source.
struct Action<'a> {
    /// Where `{{` is.
    start: usize,
    /// Where its body starts, after `{{`, a trim marker and spaces.
    body: usize,
    /// Its first word (`if`, `end`, `template`, ...; empty for `$x := ...` or `.Name`).
    word: &'a str,
    /// Just after its `}}`.
    end: usize,
}

/// The actions of `src` in order, comments left out; stops at an unclosed comment, which the
/// parser reports.
fn actions(src: &str) -> impl Iterator<Item = Action<'_>> {
    let mut i = 0;
    std::iter::from_fn(move || loop {
        let start = i + src[i..].find("{{")?;
        let mut j = start + 2;
        if src[j..].starts_with('-') && src[j + 1..].starts_with([' ', '\t', '\r', '\n']) {
            j += 2;
        }
        let body = j + whitespace_len(&src[j..]);
        if src[body..].starts_with("/*") {
            let end = src[body + 2..].find("*/")?;
            i = body + 2 + end + 2;
            continue;
        }
        let word = src[body..]
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .next()
            .unwrap_or_default();
        let end = skip_action(src, body);
        i = end;
        return Some(Action {
            start,
            body,
            word,
            end,
        });
    })
}

fn whitespace_len(s: &str) -> usize {
    s.len() - s.trim_start_matches([' ', '\t', '\r', '\n']).len()
}

/// Index just after the `}}` closing the action whose body starts at `from`, skipping
/// quoted literals; the end of `src` if there is none.
fn skip_action(src: &str, from: usize) -> usize {
    let bytes = src.as_bytes();
    let mut i = from;
    while i < bytes.len() {
        match bytes[i] {
            b'}' if bytes.get(i + 1) == Some(&b'}') => return i + 2,
            quote @ (b'"' | b'\'') => {
                i += 1;
                while i < bytes.len() && bytes[i] != quote && bytes[i] != b'\n' {
                    // A backslash escapes the next byte (multi-byte characters never
                    // contain ASCII bytes, so byte stepping is safe).
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'`' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'`' {
                    i += 1;
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaper_functions_and_long_else_if_chains_are_refused() {
        let direct = r#"{{$y := "x"}}{{range 64}}{{$y = _eval_args_ $y $y}}{{end}}"#;
        assert!(check_block_balance(direct)
            .unwrap_err()
            .contains("reserved"));
        let escaper = r#"{{_html_template_htmlescaper "<"}}"#;
        assert!(check_block_balance(escaper)
            .unwrap_err()
            .contains("reserved"));
        let chain = |n: usize| format!("{{{{if 1}}}}{}{{{{end}}}}", "{{else if 1}}".repeat(n));
        assert_eq!(check_block_balance(&chain(20)), Ok(()));
        assert!(check_block_balance(&chain(20_000))
            .unwrap_err()
            .contains("more than 64 deep"));
    }

    #[test]
    fn nesting_is_bounded() {
        let nested = |n: usize| format!("{}x{}", "{{range .}}".repeat(n), "{{end}}".repeat(n));
        assert_eq!(check_block_balance(&nested(MAX_NESTING)), Ok(()));
        assert_eq!(
            check_block_balance(&nested(MAX_NESTING + 1)),
            Err("line 1: blocks nested more than 10 deep".to_string())
        );
    }

    #[test]
    fn template_calls_are_bounded_and_never_recursive() {
        let ok = r#"{{define "route"}}r{{end}}{{template "route" .}}{{template "route" .}}{{block "b" .}}x{{end}}"#;
        assert_eq!(check_template_calls(ok, "t"), Ok(()));
        // Through its own name, or a name written with escapes, it is still recursion.
        let by_own_name = r#"{{if .}}{{template "t" .}}{{template "t" .}}{{end}}"#;
        assert!(check_template_calls(by_own_name, "t")
            .unwrap_err()
            .contains("invokes itself"));
        let escaped = r#"{{define "r\x65c"}}{{template "rec" .}}{{end}}{{template "rec" .}}"#;
        assert!(check_template_calls(escaped, "t")
            .unwrap_err()
            .contains("escapes"));
        // A long chain of defines is refused before walking it to the bottom.
        let mut chain = String::new();
        for i in 0..5000 {
            chain.push_str(&format!(
                "{{{{define \"d{i}\"}}}}{{{{template \"d{}\" .}}}}{{{{end}}}}",
                i + 1
            ));
        }
        chain.push_str(r#"{{template "d0" .}}"#);
        assert!(check_template_calls(&chain, "t").is_err());
        let recursive = r#"{{define "a"}}{{template "b" .}}{{end}}{{define "b"}}{{if .}}{{template "a" .}}{{end}}{{end}}{{template "a" .}}"#;
        let err = check_template_calls(recursive, "t").unwrap_err();
        assert!(
            err.contains("\"a\" invokes itself (through \"a\" -> \"b\")"),
            "{err}"
        );
        // Fan-out 2 over 8 levels: 510 invocations.
        let mut wide = String::new();
        for level in 0..8 {
            wide.push_str(&format!(
                "{{{{define \"t{level}\"}}}}{{{{template \"t{n}\" .}}}}{{{{template \"t{n}\" .}}}}{{{{end}}}}",
                n = level + 1
            ));
        }
        wide.push_str(r#"{{define "t8"}}x{{end}}{{template "t0" .}}"#);
        let err = check_template_calls(&wide, "t").unwrap_err();
        assert!(err.contains("more than the limit of 100"), "{err}");
    }

    #[test]
    fn inserts_after_left_only_trim_comments() {
        let cases = [
            ("a {{- /* c */}} b", "a {{- /* c */}}{{/**/}} b"),
            ("a {{-  /* c */}}\n b", "a {{-  /* c */}}{{/**/}}\n b"),
            ("a {{- /* c */ -}} b", "a {{- /* c */ -}} b"),
            ("a {{/* c */}} b", "a {{/* c */}} b"),
            ("a {{/* c */ -}} b", "a {{/* c */ -}} b"),
            (
                "{{ print \"{{- /* c */}}\" }} b",
                "{{ print \"{{- /* c */}}\" }} b",
            ),
            (
                "{{ print `{{- /* c */}}` }} b",
                "{{ print `{{- /* c */}}` }} b",
            ),
            (
                "{{ print \"\\\"}}\" }}{{- /* c */}} b",
                "{{ print \"\\\"}}\" }}{{- /* c */}}{{/**/}} b",
            ),
            ("{{-3}}{{- /* */}}x", "{{-3}}{{- /* */}}{{/**/}}x"),
            ("{{- /* unclosed", "{{- /* unclosed"),
            ("no actions", "no actions"),
        ];
        for (src, want) in cases {
            assert_eq!(fix_left_trim_comments(src), want, "{src}");
        }
    }

    #[test]
    fn stray_end_and_else_are_refused() {
        assert!(check_block_balance("a {{ if .X }}b{{ else }}c{{ end }} d").is_ok());
        assert!(check_block_balance("{{ range .V }}{{ if . }}x{{ end }}{{ end }}").is_ok());
        assert!(check_block_balance("{{/* {{ end }} */}}{{ print \"{{ end }}\" }}").is_ok());
        let err = check_block_balance("a\n{{- if .X }}b{{- end }}{{ end }}\nrest").unwrap_err();
        assert!(
            err.contains("line 2") && err.contains("unexpected {{end}}"),
            "{err}"
        );
        assert!(check_block_balance("{{ else }}")
            .unwrap_err()
            .contains("{{else}}"));
        assert!(check_block_balance("{{end}}").is_err());
    }

    #[test]
    fn unbalanced_blocks() {
        let ok = [
            "",
            "plain",
            "{{ if .A }}a{{ else if .B }}b{{ else }}c{{ end }}",
            "{{- range .W }}{{ with . }}x{{ end }}{{- end -}}",
            "{{ define \"t\" }}x{{ end }}{{ block \"b\" . }}y{{ end }}",
            "{{/* {{ if }} */}}{{ print \"{{ if\" }}{{ print `{{end}}` }}",
            "{{ .end }}{{ endx }}{{ iffy }}",
            "{{ if .A }}{{ break }}{{ end }}",
        ];
        for src in ok {
            assert_eq!(check_block_balance(src), Ok(()), "{src}");
        }
        let bad = [
            (
                "kind: {{ if .W }}x",
                "line 1: unexpected EOF: {{if}} has no {{end}}",
            ),
            (
                "a\n{{- range .W }}\n{{ if . }}{{ end }}",
                "line 2: unexpected EOF: {{range}} has no {{end}}",
            ),
            ("a\nb {{ end }} c", "line 2: unexpected {{end}}"),
            (
                "{{ if . }}{{ end }}{{- end -}}",
                "line 1: unexpected {{end}}",
            ),
        ];
        for (src, want) in bad {
            assert_eq!(check_block_balance(src).unwrap_err(), want, "{src}");
        }
    }

    #[test]
    fn matches_go_output() {
        let render = |src: &str| {
            let fixed = fix_left_trim_comments(src);
            gotmpl::html::Template::new("t")
                .parse(&fixed)
                .and_then(|t| t.execute_to_string(&gotmpl::Value::Nil))
                .unwrap()
        };
        // Expected values are what Go's text/template prints.
        assert_eq!(render("a  {{- /* c */}}  b"), "a  b");
        assert_eq!(render("a  {{- /* c */ -}}  b"), "ab");
        assert_eq!(render("a  {{/* c */ -}}  b"), "a  b");
        assert_eq!(render("a\n{{- /* c */}}\n  {{- if true }}x{{ end }}"), "ax");
    }
}
