//! Record scope: which part of the fleet a record is for, and which part a
//! signing key may speak for.

use std::fmt;
use std::str::FromStr;

/// One scope term. `Any` covers everything; the others cover exactly the named
/// failure domain or node.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScopeTerm {
    /// `*`: the whole fleet.
    Any,
    /// `area:NAME`: one area.
    Area(String),
    /// `site:NAME`: one site.
    Site(String),
    /// `nat:NAME`: one NAT group.
    NatGroup(String),
    /// `node:NAME`: one node.
    Node(String),
}

impl ScopeTerm {
    pub(crate) fn tag(&self) -> u8 {
        match self {
            ScopeTerm::Any => 0,
            ScopeTerm::Area(_) => 1,
            ScopeTerm::Site(_) => 2,
            ScopeTerm::NatGroup(_) => 3,
            ScopeTerm::Node(_) => 4,
        }
    }

    pub(crate) fn value(&self) -> &str {
        match self {
            ScopeTerm::Any => "",
            ScopeTerm::Area(v)
            | ScopeTerm::Site(v)
            | ScopeTerm::NatGroup(v)
            | ScopeTerm::Node(v) => v,
        }
    }

    pub(crate) fn from_tag(tag: u8, value: String) -> Option<ScopeTerm> {
        match (tag, value.is_empty()) {
            (0, true) => Some(ScopeTerm::Any),
            (1, false) => Some(ScopeTerm::Area(value)),
            (2, false) => Some(ScopeTerm::Site(value)),
            (3, false) => Some(ScopeTerm::NatGroup(value)),
            (4, false) => Some(ScopeTerm::Node(value)),
            _ => None,
        }
    }

    /// Whether a key granted `self` may sign a record scoped to `wanted`.
    pub fn covers(&self, wanted: &ScopeTerm) -> bool {
        matches!(self, ScopeTerm::Any) || self == wanted
    }
}

impl fmt::Display for ScopeTerm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScopeTerm::Any => f.write_str("*"),
            ScopeTerm::Area(v) => write!(f, "area:{v}"),
            ScopeTerm::Site(v) => write!(f, "site:{v}"),
            ScopeTerm::NatGroup(v) => write!(f, "nat:{v}"),
            ScopeTerm::Node(v) => write!(f, "node:{v}"),
        }
    }
}

/// Text that is not a scope term; holds the text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid scope term {0:?}: expected `*`, `area:NAME`, `site:NAME`, `nat:NAME` or `node:NAME`"
)]
pub struct ScopeParseError(pub String);

impl FromStr for ScopeTerm {
    type Err = ScopeParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "*" {
            return Ok(ScopeTerm::Any);
        }
        let err = || ScopeParseError(s.to_owned());
        let (tag, value) = s.split_once(':').ok_or_else(err)?;
        if value.is_empty() {
            return Err(err());
        }
        let value = value.to_owned();
        match tag {
            "area" => Ok(ScopeTerm::Area(value)),
            "site" => Ok(ScopeTerm::Site(value)),
            "nat" => Ok(ScopeTerm::NatGroup(value)),
            "node" => Ok(ScopeTerm::Node(value)),
            _ => Err(err()),
        }
    }
}

/// A record's scope: a non-empty, sorted, duplicate-free set of terms.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Scope(Vec<ScopeTerm>);

impl Scope {
    /// The scope of a fleet-wide record.
    pub fn any() -> Scope {
        Scope(vec![ScopeTerm::Any])
    }

    /// Normalises `terms` (sort, dedupe); `None` if empty.
    pub fn new(mut terms: Vec<ScopeTerm>) -> Option<Scope> {
        terms.sort();
        terms.dedup();
        (!terms.is_empty()).then_some(Scope(terms))
    }

    /// The terms, sorted and without duplicates.
    pub fn terms(&self) -> &[ScopeTerm] {
        &self.0
    }

    /// The first term of `self` that `grant` does not cover.
    pub fn first_uncovered<'a>(&'a self, grant: &[ScopeTerm]) -> Option<&'a ScopeTerm> {
        self.0.iter().find(|t| !grant.iter().any(|g| g.covers(t)))
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{t}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_every_form() {
        for s in ["*", "area:eu", "site:s1", "nat:n1", "node:a-1"] {
            let t: ScopeTerm = s.parse().expect("parses");
            assert_eq!(t.to_string(), s);
        }
        for bad in ["", "area:", "zone:x", "area"] {
            assert!(bad.parse::<ScopeTerm>().is_err(), "{bad} should fail");
        }
    }

    #[test]
    fn any_covers_all_but_area_covers_only_itself() {
        let eu = ScopeTerm::Area("eu".into());
        assert!(ScopeTerm::Any.covers(&eu));
        assert!(eu.covers(&eu));
        assert!(!eu.covers(&ScopeTerm::Any));
        assert!(!eu.covers(&ScopeTerm::Area("us".into())));
    }

    #[test]
    fn scope_is_normalised() {
        let s = Scope::new(vec![
            ScopeTerm::Node("b".into()),
            ScopeTerm::Area("a".into()),
            ScopeTerm::Node("b".into()),
        ])
        .expect("non-empty");
        assert_eq!(s.to_string(), "area:a,node:b");
        assert!(Scope::new(vec![]).is_none());
    }
}
