//! Diffing one primary response against one shadow response. Pure: no I/O, no clocks.
//!
//! Status (exact and class), headers (minus a default noisy set and user-named ones), and
//! bodies: structurally for JSON (with ignore rules by JSON path, `[*]` for any index), by
//! line for text, by hash otherwise. A body captured only in part (over the cap) is compared
//! on what was captured and says so.

use bytes::Bytes;
use http::HeaderMap;
use serde_json::Value;

/// Headers that differ between any two responses and say nothing about the code.
pub const NOISY_HEADERS: [&str; 11] = [
    "date",
    "x-request-id",
    "set-cookie",
    "server",
    "content-length",
    "etag",
    "last-modified",
    "expires",
    "age",
    "x-envoy-upstream-service-time",
    "traceparent",
];

/// What one side answered, as far as comparing needs.
#[derive(Debug, Clone)]
pub struct Observation {
    pub status: u16,
    pub headers: HeaderMap,
    /// Milliseconds to the response head.
    pub latency_ms: f64,
    /// The body, up to the capture cap.
    pub body: Bytes,
    pub body_truncated: bool,
}

/// User rules: extra headers to ignore, JSON paths to ignore.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub ignore_headers: Vec<String>,
    /// `$.timestamp`, `$.items[*].id`, `$.meta` (a whole subtree).
    pub ignore_fields: Vec<JsonPath>,
}

/// A parsed JSON path: `$`, then `.name` or `[N]` / `[*]` steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath(Vec<Step>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
    AnyIndex,
}

impl std::str::FromStr for JsonPath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a JSON path (e.g. $.timestamp, $.items[*].id)");
        let rest = s.strip_prefix('$').ok_or_else(bad)?;
        let mut steps = Vec::new();
        let mut chars = rest.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '.' => {
                    let mut key = String::new();
                    while let Some(&c) = chars.peek() {
                        if c == '.' || c == '[' {
                            break;
                        }
                        key.push(c);
                        chars.next();
                    }
                    if key.is_empty() {
                        return Err(bad());
                    }
                    steps.push(Step::Key(key));
                }
                '[' => {
                    let mut idx = String::new();
                    for c in chars.by_ref() {
                        if c == ']' {
                            break;
                        }
                        idx.push(c);
                    }
                    steps.push(match idx.as_str() {
                        "*" => Step::AnyIndex,
                        n => Step::Index(n.parse().map_err(|_| bad())?),
                    });
                }
                _ => return Err(bad()),
            }
        }
        Ok(JsonPath(steps))
    }
}

impl JsonPath {
    /// Whether `path` (concrete steps) is this path or below it.
    fn covers(&self, path: &[Step]) -> bool {
        self.0.len() <= path.len()
            && self
                .0
                .iter()
                .zip(path)
                .all(|(rule, step)| match (rule, step) {
                    (Step::AnyIndex, Step::Index(_)) => true,
                    (a, b) => a == b,
                })
    }
}

fn render(path: &[Step]) -> String {
    let mut s = String::from("$");
    for p in path {
        match p {
            Step::Key(k) => {
                s.push('.');
                s.push_str(k);
            }
            Step::Index(i) => s.push_str(&format!("[{i}]")),
            Step::AnyIndex => s.push_str("[*]"),
        }
    }
    s
}

/// What differed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Diff {
    pub status_match: bool,
    /// Header names whose values differ (or exist on one side only).
    pub headers: Vec<String>,
    /// JSON paths (or `body` for non-JSON) that differ.
    pub fields: Vec<String>,
    pub body_kind: BodyKind,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BodyKind {
    #[default]
    Same,
    Json,
    Text,
    Bytes,
}

impl Diff {
    pub fn body_differs(&self) -> bool {
        !self.fields.is_empty()
    }

    /// One word for the pair: `same`, `status`, `body`, `headers` (most telling first).
    pub fn kind(&self) -> &'static str {
        if !self.status_match {
            "status"
        } else if self.body_differs() {
            "body"
        } else if !self.headers.is_empty() {
            "headers"
        } else {
            "same"
        }
    }

    pub fn summary(&self, p: &Observation, s: &Observation) -> String {
        let mut parts = Vec::new();
        if !self.status_match {
            parts.push(format!("status {} -> {}", p.status, s.status));
        }
        if self.body_differs() {
            let kind = match self.body_kind {
                BodyKind::Json => "json",
                BodyKind::Text => "text",
                _ => "bytes",
            };
            parts.push(format!("{kind} body: {}", self.fields.join(", ")));
        }
        if !self.headers.is_empty() {
            parts.push(format!("headers: {}", self.headers.join(", ")));
        }
        if parts.is_empty() {
            "same".into()
        } else {
            parts.join("; ")
        }
    }
}

pub fn diff(p: &Observation, s: &Observation, rules: &Rules) -> Diff {
    let mut d = Diff {
        status_match: p.status == s.status,
        ..Diff::default()
    };
    d.headers = header_diff(&p.headers, &s.headers, rules);
    let (kind, fields) = body_diff(p, s, rules);
    d.body_kind = kind;
    d.fields = fields;
    d
}

fn header_diff(a: &HeaderMap, b: &HeaderMap, rules: &Rules) -> Vec<String> {
    let ignored = |n: &str| {
        NOISY_HEADERS.contains(&n)
            || rules
                .ignore_headers
                .iter()
                .any(|i| i.eq_ignore_ascii_case(n))
    };
    let mut names: Vec<&str> = a
        .keys()
        .chain(b.keys())
        .map(|n| n.as_str())
        .filter(|n| !ignored(n))
        .collect();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .filter(|n| a.get_all(*n).iter().ne(b.get_all(*n).iter()))
        .map(str::to_owned)
        .collect()
}

fn is_json(h: &HeaderMap) -> bool {
    h.get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"))
}

fn body_diff(p: &Observation, s: &Observation, rules: &Rules) -> (BodyKind, Vec<String>) {
    if p.body == s.body {
        return (BodyKind::Same, Vec::new());
    }
    let try_json = is_json(&p.headers) || is_json(&s.headers) || looks_like_json(&p.body);
    if try_json && !p.body_truncated && !s.body_truncated {
        if let (Ok(a), Ok(b)) = (
            serde_json::from_slice::<Value>(&p.body),
            serde_json::from_slice::<Value>(&s.body),
        ) {
            let mut out = Vec::new();
            let mut path = Vec::new();
            json_diff(&a, &b, &mut path, rules, &mut out);
            return (
                if out.is_empty() {
                    BodyKind::Same
                } else {
                    BodyKind::Json
                },
                out,
            );
        }
    }
    match (std::str::from_utf8(&p.body), std::str::from_utf8(&s.body)) {
        (Ok(a), Ok(b)) => {
            let first = a
                .lines()
                .zip(b.lines())
                .position(|(x, y)| x != y)
                .unwrap_or_else(|| a.lines().count().min(b.lines().count()));
            (BodyKind::Text, vec![format!("line {}", first + 1)])
        }
        _ => (BodyKind::Bytes, vec!["body".into()]),
    }
}

fn looks_like_json(b: &Bytes) -> bool {
    matches!(
        b.iter().find(|c| !c.is_ascii_whitespace()),
        Some(b'{') | Some(b'[')
    )
}

/// Paths shown at most per pair; deeper differences are summarised by their parent.
const MAX_FIELDS: usize = 20;

fn json_diff(a: &Value, b: &Value, path: &mut Vec<Step>, rules: &Rules, out: &mut Vec<String>) {
    if out.len() >= MAX_FIELDS || rules.ignore_fields.iter().any(|r| r.covers(path)) {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort_unstable();
            keys.dedup();
            for k in keys {
                path.push(Step::Key(k.clone()));
                match (x.get(k), y.get(k)) {
                    (Some(v), Some(w)) => json_diff(v, w, path, rules, out),
                    _ => {
                        if !rules.ignore_fields.iter().any(|r| r.covers(path)) {
                            out.push(render(path));
                        }
                    }
                }
                path.pop();
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            for i in 0..x.len().max(y.len()) {
                path.push(Step::Index(i));
                match (x.get(i), y.get(i)) {
                    (Some(v), Some(w)) => json_diff(v, w, path, rules, out),
                    _ => {
                        if !rules.ignore_fields.iter().any(|r| r.covers(path)) {
                            out.push(render(path));
                        }
                    }
                }
                path.pop();
            }
        }
        (x, y) if x == y => {}
        _ => out.push(render(path)),
    }
}

/// Field paths with concrete indexes folded to `[*]`, for counting across pairs.
pub fn generalize(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut in_idx = false;
    for c in field.chars() {
        match c {
            '[' => {
                in_idx = true;
                out.push_str("[*]");
            }
            ']' => in_idx = false,
            _ if in_idx => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(status: u16, ctype: &str, body: &str) -> Observation {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", ctype.parse().expect("hv"));
        Observation {
            status,
            headers,
            latency_ms: 1.0,
            body: Bytes::copy_from_slice(body.as_bytes()),
            body_truncated: false,
        }
    }

    fn rules(fields: &[&str]) -> Rules {
        Rules {
            ignore_headers: vec![],
            ignore_fields: fields.iter().map(|f| f.parse().expect("path")).collect(),
        }
    }

    #[test]
    fn identical_is_same() {
        let a = obs(200, "application/json", r#"{"a":1}"#);
        let d = diff(&a, &a.clone(), &Rules::default());
        assert_eq!(d.kind(), "same");
    }

    #[test]
    fn status_mismatch_wins() {
        let d = diff(
            &obs(200, "text/plain", "ok"),
            &obs(500, "text/plain", "boom"),
            &Rules::default(),
        );
        assert!(!d.status_match);
        assert_eq!(d.kind(), "status");
    }

    #[test]
    fn json_paths_and_ignore_rules() {
        let a = obs(
            200,
            "application/json",
            r#"{"id":1,"timestamp":"t1","items":[{"id":"x","n":1},{"id":"y","n":2}],"price":10}"#,
        );
        let b = obs(
            200,
            "application/json",
            r#"{"id":1,"timestamp":"t2","items":[{"id":"z","n":1},{"id":"w","n":3}],"price":12,"extra":true}"#,
        );
        let d = diff(&a, &b, &Rules::default());
        assert_eq!(
            d.fields,
            [
                "$.extra",
                "$.items[0].id",
                "$.items[1].id",
                "$.items[1].n",
                "$.price",
                "$.timestamp"
            ]
        );
        let d = diff(&a, &b, &rules(&["$.timestamp", "$.items[*].id", "$.extra"]));
        assert_eq!(d.fields, ["$.items[1].n", "$.price"]);
        let d = diff(
            &a,
            &b,
            &rules(&["$.timestamp", "$.items", "$.extra", "$.price"]),
        );
        assert_eq!(d.kind(), "same");
    }

    #[test]
    fn key_order_and_whitespace_do_not_matter() {
        let a = obs(200, "application/json", r#"{"a":1,"b":[1,2]}"#);
        let b = obs(200, "application/json", "{ \"b\": [1, 2],\n \"a\": 1 }");
        assert_eq!(diff(&a, &b, &Rules::default()).kind(), "same");
    }

    #[test]
    fn text_and_bytes() {
        let d = diff(
            &obs(200, "text/plain", "a\nb\nc"),
            &obs(200, "text/plain", "a\nB\nc"),
            &Rules::default(),
        );
        assert_eq!(
            (d.body_kind, d.fields.clone()),
            (BodyKind::Text, vec!["line 2".to_string()])
        );
        let mut x = obs(200, "application/octet-stream", "");
        x.body = Bytes::from_static(&[0xff, 0x00]);
        let mut y = x.clone();
        y.body = Bytes::from_static(&[0xfe, 0x00]);
        assert_eq!(diff(&x, &y, &Rules::default()).fields, ["body"]);
    }

    #[test]
    fn noisy_and_ignored_headers() {
        let mut a = obs(200, "text/plain", "x");
        let mut b = a.clone();
        a.headers.insert("date", "Mon".parse().expect("hv"));
        b.headers.insert("date", "Tue".parse().expect("hv"));
        a.headers.insert("x-version", "1".parse().expect("hv"));
        b.headers.insert("x-version", "2".parse().expect("hv"));
        b.headers.insert("x-new", "1".parse().expect("hv"));
        assert_eq!(
            diff(&a, &b, &Rules::default()).headers,
            ["x-new", "x-version"]
        );
        let r = Rules {
            ignore_headers: vec!["X-Version".into(), "x-new".into()],
            ..Rules::default()
        };
        assert_eq!(diff(&a, &b, &r).kind(), "same");
    }

    #[test]
    fn paths_parse_and_generalize() {
        assert!("timestamp".parse::<JsonPath>().is_err());
        assert!("$.a[x]".parse::<JsonPath>().is_err());
        assert!("$.a[*].b".parse::<JsonPath>().is_ok());
        assert_eq!(generalize("$.items[12].id"), "$.items[*].id");
    }
}
