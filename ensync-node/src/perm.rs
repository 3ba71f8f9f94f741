//! Event-name permission patterns: an exact name, `*` for every name, or `prefix/*` for
//! every name under `prefix/` (the subtree, at any depth; `prefix` itself is not included).

use ensync_proto::validate;

/// One parsed permission pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// `*`: every event name.
    All,
    /// `prefix/*`: every name that starts with `prefix/` (the stored string ends in `/`).
    Subtree(String),
    /// An exact event name.
    Exact(String),
}

impl Pattern {
    /// Parses a pattern; the error says why it is not one.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "*" {
            return Ok(Self::All);
        }
        if let Some(prefix) = text.strip_suffix("/*") {
            check_name(prefix).map_err(|e| format!("pattern {text:?}: {e}"))?;
            return Ok(Self::Subtree(format!("{prefix}/")));
        }
        check_name(text).map_err(|e| format!("pattern {text:?}: {e}"))?;
        Ok(Self::Exact(text.to_owned()))
    }

    /// Whether `name` is covered.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Self::All => true,
            Self::Subtree(prefix) => name.len() > prefix.len() && name.starts_with(prefix.as_str()),
            Self::Exact(exact) => exact == name,
        }
    }
}

fn check_name(name: &str) -> Result<(), String> {
    validate::event_name(name).map_err(|e| e.to_string())?;
    if name.contains('*') {
        return Err("`*` is only allowed alone or as a trailing `/*`".to_owned());
    }
    Ok(())
}

/// A list of patterns; a name is allowed when any pattern matches it.
#[derive(Debug, Clone, Default)]
pub struct Permissions(Vec<Pattern>);

impl Permissions {
    /// Parses every pattern.
    pub fn parse(patterns: &[String]) -> Result<Self, String> {
        patterns
            .iter()
            .map(|p| Pattern::parse(p))
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    /// Whether `name` is allowed.
    pub fn allows(&self, name: &str) -> bool {
        self.0.iter().any(|p| p.matches(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_forms() {
        let all = Pattern::parse("*").unwrap();
        assert!(all.matches("a") && all.matches("a/b/c"));
        let sub = Pattern::parse("orders/*").unwrap();
        assert!(sub.matches("orders/new"));
        assert!(sub.matches("orders/new/eu"));
        assert!(!sub.matches("orders"));
        assert!(!sub.matches("ordersx/new"));
        assert!(!sub.matches("billing/orders/new"));
        let exact = Pattern::parse("orders/new").unwrap();
        assert!(exact.matches("orders/new"));
        assert!(!exact.matches("orders/new/x"));
        assert!(!exact.matches("orders/ne"));
    }

    #[test]
    fn bad_patterns() {
        for bad in ["", "/*", "a/*/b", "a*", "a b", "a//*", "**"] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn permission_lists() {
        let p = Permissions::parse(&["a/x".to_owned(), "b/*".to_owned()]).unwrap();
        assert!(p.allows("a/x") && p.allows("b/y"));
        assert!(!p.allows("a/y") && !p.allows("b"));
        assert!(!Permissions::default().allows("a"));
    }
}
