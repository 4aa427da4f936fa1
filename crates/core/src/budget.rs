//! The work one template execution may do, bounded whatever the template says. gotmpl caps
//! `{{range}}` iterations, nesting depth and printf widths, but not what functions build: a
//! template that doubles a string in a loop (`{{$s = printf "%s%s" $s $s}}`) would fill memory
//! before anything reaches the output cap. The string-building and comparing builtins are
//! therefore replaced by metered copies that charge, before running, an upper bound of the
//! bytes they will build or read against a budget per execution; the first call over the
//! budget fails the template. Deterministic: the same template and data always pass or fail
//! at the same call. Pure.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use gotmpl::{FuncMap, TemplateError, Value};

/// Bytes the metered functions of one execution may build or compare in total. Real routing
/// templates use a few kilobytes.
pub const WORK_BUDGET: usize = 8 * 1024 * 1024;

/// Largest padding one printf verb can add (gotmpl clamps widths to this).
const MAX_WIDTH: usize = u16::MAX as usize;

/// Most one call may build: as much as a whole rendered object may hold.
pub const MAX_CALL: usize = 1024 * 1024;

/// The budget of one execution.
pub(crate) struct Budget {
    used: AtomicUsize,
    limit: usize,
}

impl Budget {
    pub(crate) fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            used: AtomicUsize::new(0),
            limit,
        })
    }

    fn charge(&self, name: &str, cost: usize) -> Result<(), TemplateError> {
        if cost > MAX_CALL {
            return Err(TemplateError::Exec(format!(
                "{name}: one call would build more than {} MiB of text; refusing",
                MAX_CALL / (1024 * 1024)
            )));
        }
        let used = self
            .used
            .fetch_add(cost, Ordering::Relaxed)
            .saturating_add(cost);
        if used > self.limit {
            return Err(TemplateError::Exec(format!(
                "{name}: the template builds more than {} MiB of text; refusing to go on",
                self.limit / (1024 * 1024)
            )));
        }
        Ok(())
    }
}

/// The metered replacements, to register on a template before it is parsed.
pub(crate) fn metered_funcs(budget: &Arc<Budget>) -> FuncMap {
    let mut funcs = FuncMap::new();
    for (name, cost) in [
        ("printf", printf_cost as fn(&[Value]) -> usize),
        ("print", print_cost),
        ("println", print_cost),
        ("html", escape_cost),
        ("js", escape_cost),
        ("urlquery", escape_cost),
        ("eq", print_cost),
        ("ne", print_cost),
        ("lt", print_cost),
        ("le", print_cost),
        ("gt", print_cost),
        ("ge", print_cost),
    ] {
        let budget = budget.clone();
        let builtin = Builtin::new(name);
        funcs.insert(
            name.to_string(),
            Arc::new(move |args: &[Value]| {
                budget.charge(name, cost(args))?;
                builtin.call(args)
            }),
        );
    }
    // `slice` copies (a substring), so it is charged what it copies; it keeps its value's
    // type, so it is not called through a text template like the others.
    let budget = budget.clone();
    funcs.insert(
        "slice".to_string(),
        Arc::new(move |args: &[Value]| {
            budget.charge("slice", args.first().map_or(0, printed_len))?;
            slice(args)
        }),
    );
    funcs
}

/// Go's `slice x [i [j [k]]]` over strings (bytes) and lists.
fn slice(args: &[Value]) -> Result<Value, TemplateError> {
    let index = |v: &Value| match v {
        Value::Int(n) => Ok(*n),
        Value::Uint(n) => i64::try_from(*n)
            .map_err(|_| TemplateError::Exec(format!("slice: index out of range: {n}"))),
        other => Err(TemplateError::Exec(format!(
            "slice: index must be integer, got {}",
            other.type_name()
        ))),
    };
    let Some(v) = args.first() else {
        return Err(TemplateError::Exec(
            "wrong number of args for slice: want 1-4 got 0".into(),
        ));
    };
    match args.len() {
        1 => v.slice(None, None),
        2 => v.slice(Some(index(&args[1])?), None),
        3 => v.slice(Some(index(&args[1])?), Some(index(&args[2])?)),
        4 => {
            let (i, j, k) = (index(&args[1])?, index(&args[2])?, index(&args[3])?);
            match v {
                Value::List(list) if 0 <= i && i <= j && j <= k && k <= list.len() as i64 => {
                    v.slice(Some(i), Some(j))
                }
                Value::List(list) => Err(TemplateError::Exec(format!(
                    "slice: index out of range [{i}:{j}:{k}] with length {}",
                    list.len()
                ))),
                Value::String(_) => Err(TemplateError::Exec(
                    "slice: cannot 3-index slice a string".into(),
                )),
                other => Err(TemplateError::Exec(format!(
                    "slice: cannot slice type {}",
                    other.type_name()
                ))),
            }
        }
        n => Err(TemplateError::Exec(format!(
            "wrong number of args for slice: want 1-4 got {n}"
        ))),
    }
}

/// A builtin of gotmpl, called through a one-action template (gotmpl does not export its
/// builtins); parsed once per arity.
struct Builtin {
    name: &'static str,
    by_arity: Mutex<HashMap<usize, Arc<gotmpl::Template>>>,
}

impl Builtin {
    fn new(name: &'static str) -> Builtin {
        Builtin {
            name,
            by_arity: Mutex::default(),
        }
    }

    fn call(&self, args: &[Value]) -> Result<Value, TemplateError> {
        let template = {
            let mut cache = self.by_arity.lock().unwrap_or_else(|e| e.into_inner());
            match cache.get(&args.len()) {
                Some(t) => t.clone(),
                None => {
                    let call: String = (0..args.len()).map(|i| format!(" (index . {i})")).collect();
                    let t = Arc::new(
                        gotmpl::Template::new(self.name)
                            .parse(&format!("{{{{{}{call}}}}}", self.name))?,
                    );
                    cache.insert(args.len(), t.clone());
                    t
                }
            }
        };
        let text = template.execute_to_string(&Value::List(args.to_vec().into()))?;
        Ok(match self.name {
            "eq" | "ne" | "lt" | "le" | "gt" | "ge" => Value::Bool(text == "true"),
            _ => Value::String(text.into()),
        })
    }
}

/// An upper bound of how long `v` prints.
fn printed_len(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len(),
        Value::List(_) | Value::Map(_) => v.to_string().len(),
        _ => 24,
    }
}

fn print_cost(args: &[Value]) -> usize {
    args.iter().map(printed_len).sum::<usize>() + args.len()
}

/// Escapers write at most six bytes per input byte (`\u003c`).
fn escape_cost(args: &[Value]) -> usize {
    print_cost(args).saturating_mul(6)
}

/// The format, and for each verb the longest argument (a verb can print any of them:
/// `%[1]s%[1]s` prints the first twice) plus, when it gives a width or precision, the most
/// padding that may add.
fn printf_cost(args: &[Value]) -> usize {
    let Some(Value::String(format)) = args.first() else {
        return print_cost(args);
    };
    let longest = args.iter().skip(1).map(printed_len).max().unwrap_or(0);
    let mut cost = print_cost(args);
    let mut rest: &str = format;
    while let Some(i) = rest.find('%') {
        rest = &rest[i + 1..];
        // Flags and an explicit argument index come before width and precision.
        let spec = rest.trim_start_matches(['+', '-', '#', ' ', '0']);
        let spec = match spec.strip_prefix('[') {
            Some(after) => after.split_once(']').map_or(after, |(_, r)| r),
            None => spec,
        };
        let padded = spec.starts_with(|c: char| c.is_ascii_digit() || c == '*' || c == '.');
        let verb_cost = longest + 24 + if padded { MAX_WIDTH } else { 0 };
        cost = cost.saturating_add(verb_cost);
    }
    cost
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `src` with `.` a list of `n` items (something to range over).
    fn run_n(src: &str, limit: usize, n: usize) -> Result<String, TemplateError> {
        let budget = Budget::new(limit);
        gotmpl::html::Template::new("t")
            .funcs(metered_funcs(&budget))
            .parse(src)?
            .execute_to_string(&Value::List(vec![Value::Nil; n].into()))
    }

    fn run(src: &str, limit: usize) -> Result<String, TemplateError> {
        run_n(src, limit, 0)
    }

    #[test]
    fn metered_builtins_behave_like_the_originals() {
        for (src, want) in [
            (r#"{{printf "%s-%03d" "a" 7}}"#, "a-007"),
            (r#"{{print "a" 1 2 "b"}}"#, "a1 2b"),
            (r#"{{println "a"}}"#, "a\n"),
            (
                r#"{{if eq 1 1}}y{{end}}{{if ne "a" "b"}}y{{end}}{{if lt 1 2}}y{{end}}"#,
                "yyy",
            ),
            (
                r#"{{if eq "a" "b" "a"}}y{{end}}{{if ge 2 2}}y{{end}}{{if gt 1 2}}n{{end}}"#,
                "yy",
            ),
            (r#"{{html "<a>"}}"#, "&lt;a&gt;"),
            (r#"{{urlquery "a b"}}"#, "a&#43;b"),
        ] {
            assert_eq!(run(src, WORK_BUDGET).expect(src), want, "{src}");
            let plain = gotmpl::html::Template::new("t")
                .parse(src)
                .expect(src)
                .execute_to_string(&Value::Nil)
                .expect(src);
            assert_eq!(plain, want, "gotmpl itself: {src}");
        }
    }

    #[test]
    fn a_string_doubling_loop_stops_at_the_budget() {
        let src = r#"{{$s := "x"}}{{range .}}{{$s = printf "%s%s" $s $s}}{{end}}{{len $s}}"#;
        assert_eq!(run_n(src, WORK_BUDGET, 10).expect("small"), "1024");
        let err = run_n(src, WORK_BUDGET, 40).expect_err("a 2^40 byte string");
        assert!(err.to_string().contains("refusing"), "{err}");
    }

    #[test]
    fn slice_is_go_slice_and_is_charged() {
        for (src, want) in [
            (r#"{{slice "abcdef" 1 3}}"#, "bc"),
            (r#"{{slice "abcdef" 2}}"#, "cdef"),
            (r#"{{range slice .Xs 1 2}}{{.}}{{end}}"#, "b"),
            (r#"{{len (slice .Xs 0 1 2)}}"#, "1"),
        ] {
            let budget = Budget::new(WORK_BUDGET);
            let data = gotmpl::tmap! { "Xs" => vec!["a", "b", "c"] };
            let got = gotmpl::html::Template::new("t")
                .funcs(metered_funcs(&budget))
                .parse(src)
                .expect(src)
                .execute_to_string(&data)
                .expect(src);
            assert_eq!(got, want, "{src}");
        }
        // Copying a long string again and again is charged.
        let src = r#"{{$s := printf "%65535s" ""}}{{range 1000}}{{$t := slice $s 1}}{{end}}"#;
        assert!(run(src, WORK_BUDGET).is_err());
    }

    #[test]
    fn printing_one_argument_many_times_is_charged_per_verb() {
        let src = format!(
            r#"{{{{$s := printf "%65535s" ""}}}}{{{{$t := printf "{}" $s}}}}"#,
            "%[1]s".repeat(20)
        );
        let err = run(&src, WORK_BUDGET).expect_err("charged per verb");
        assert!(err.to_string().contains("one call"), "{err}");
    }

    #[test]
    fn wide_verbs_are_charged_before_they_pad() {
        let src = r#"{{range .}}{{$x := printf "%65535d%65535d" 1 2}}{{end}}"#;
        assert!(run_n(src, 1024 * 1024, 10).is_err());
        assert!(run_n(src, WORK_BUDGET, 10).is_ok());
    }
}
