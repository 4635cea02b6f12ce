//! The Prometheus text exposition format (version 0.0.4), written by every
//! `/metrics` endpoint of the fleet: the reconciler's (the audit, rollouts)
//! and each node-agent's (its own figures).
//!
//! Only gauges are written: every figure is a measurement of the current
//! state (counts of nodes, peers, records), recomputed on each scrape from
//! the code that owns it, so nothing here keeps state. Families are grouped
//! with one `# HELP` and `# TYPE` line each, as the format requires; label
//! values are escaped.

use std::collections::BTreeMap;
use std::fmt::Write;

/// The content type a `/metrics` response carries.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A scrape being written.
#[derive(Debug, Default)]
pub struct Exposition {
    /// Family name -> (help, samples), in name order.
    families: BTreeMap<String, (String, Vec<String>)>,
}

impl Exposition {
    /// An empty exposition.
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// Adds one sample of the gauge `name` with `labels`. The first call for
    /// a family sets its help text.
    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        let family = self
            .families
            .entry(name.to_owned())
            .or_insert_with(|| (help.to_owned(), Vec::new()));
        let mut line = name.to_owned();
        if !labels.is_empty() {
            line.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    line.push(',');
                }
                let _ = write!(line, "{k}=\"{}\"", escape(v));
            }
            line.push('}');
        }
        let _ = write!(line, " {}", format_value(value));
        family.1.push(line);
    }

    /// A gauge that is 1 when `on`, else 0.
    pub fn flag(&mut self, name: &str, help: &str, labels: &[(&str, &str)], on: bool) {
        self.gauge(name, help, labels, if on { 1.0 } else { 0.0 });
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, (help, samples)) in &self.families {
            let _ = writeln!(out, "# HELP {name} {}", help.replace('\n', " "));
            let _ = writeln!(out, "# TYPE {name} gauge");
            for s in samples {
                out.push_str(s);
                out.push('\n');
            }
        }
        out
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn format_value(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else if v.is_nan() {
        "NaN".into()
    } else {
        format!("{v}")
    }
}

/// Parses an exposition back into `(name, labels, value)` samples; for tests
/// and for tools that compare a scrape with another figure.
pub fn parse(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((head, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match head.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (head, ""),
        };
        let mut map = BTreeMap::new();
        let mut rest = labels;
        while let Some((k, after)) = rest.split_once("=\"") {
            let mut val = String::new();
            let mut chars = after.char_indices();
            let mut end = after.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            val.push(if n == 'n' { '\n' } else { n });
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => val.push(c),
                }
            }
            map.insert(k.trim_start_matches(',').to_owned(), val);
            rest = &after[end..];
        }
        out.push((name.to_owned(), map, value));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_grouped_and_labels_escaped_and_parse_back() {
        let mut e = Exposition::new();
        e.gauge("b_total_nodes", "nodes", &[], 12.0);
        e.gauge("a_peers", "peers per node", &[("node", "alpha-1")], 3.0);
        e.gauge("a_peers", "ignored", &[("node", "we\"ird\\")], 0.5);
        e.flag("c_on", "on", &[("id", "1")], true);
        let text = e.render();
        assert_eq!(text.matches("# TYPE a_peers gauge").count(), 1);
        assert!(text.contains("# HELP a_peers peers per node\n"));
        assert!(text.find("a_peers").unwrap_or(usize::MAX) < text.find("b_total").unwrap_or(0));
        assert!(
            text.contains("a_peers{node=\"we\\\"ird\\\\\"} 0.5"),
            "{text}"
        );
        let samples = parse(&text);
        assert_eq!(samples.len(), 4);
        assert!(samples.iter().any(|(n, l, v)| n == "a_peers"
            && l.get("node").map(String::as_str) == Some("we\"ird\\")
            && *v == 0.5));
        assert!(samples
            .iter()
            .any(|(n, l, v)| n == "b_total_nodes" && l.is_empty() && *v == 12.0));
        assert!(samples.iter().any(|(n, _, v)| n == "c_on" && *v == 1.0));
    }
}
