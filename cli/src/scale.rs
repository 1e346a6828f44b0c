//! Parsing of `ps:scale` arguments (`web=2`, `web=2:standard-2x`, `web+1`, `worker-1`).
//!
//! Parsing happens before any request so a typo never half-applies a formation change.

use anyhow::{bail, Result};

/// How the quantity of one process type changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantity {
    /// `web=2`
    Set(u32),
    /// `web+1`
    Add(u32),
    /// `web-1` (floors at zero)
    Remove(u32),
}

/// One parsed `TYPE=N[:SIZE]` / `TYPE+N` / `TYPE-N` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scale {
    pub kind: String,
    pub quantity: Quantity,
    pub size: Option<String>,
}

impl Scale {
    /// The new quantity given the type's current one.
    pub fn resolve(&self, current: u32) -> u32 {
        match self.quantity {
            Quantity::Set(n) => n,
            Quantity::Add(n) => current.saturating_add(n),
            Quantity::Remove(n) => current.saturating_sub(n),
        }
    }
}

/// Procfile process types: letters, digits, `_` and `-`.
fn valid_type(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Sizes look like `standard-1x`; the server decides which exist (422 otherwise).
fn valid_size(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

pub fn parse(arg: &str) -> Result<Scale> {
    let bad = |why: &str| -> Result<Scale> {
        bail!("invalid scale argument `{arg}`: {why} (expected TYPE=N[:SIZE], TYPE+N or TYPE-N)")
    };
    // A type may contain `-` (`queue-worker-1`), so `-` splits at its last occurrence
    // before the size (which contains `-` too).
    let head = arg.split(':').next().unwrap_or(arg);
    let split = arg
        .find('=')
        .or_else(|| arg.find('+'))
        .or_else(|| head.rfind('-'));
    let Some(p) = split else {
        return bad("no =, + or -");
    };
    let (kind, op, rest) = (&arg[..p], &arg[p..=p], &arg[p + 1..]);
    if !valid_type(kind) {
        return bad("bad process type");
    }
    let (count, size) = match rest.split_once(':') {
        Some((c, s)) => (c, Some(s)),
        None => (rest, None),
    };
    let Ok(n) = count.parse::<u32>() else {
        return bad(&format!("`{count}` is not a number of dynos"));
    };
    let size = match size {
        Some(s) if valid_size(s) => Some(s.to_ascii_lowercase()),
        Some(s) => return bad(&format!("`{s}` is not a dyno size")),
        None => None,
    };
    let quantity = match op {
        "=" => Quantity::Set(n),
        "+" => Quantity::Add(n),
        _ => Quantity::Remove(n),
    };
    Ok(Scale {
        kind: kind.to_string(),
        quantity,
        size,
    })
}

/// Parses every argument, refusing the same type twice (the API applies all or none, and
/// two updates for one type would be ambiguous).
pub fn parse_all(args: &[String]) -> Result<Vec<Scale>> {
    let mut out: Vec<Scale> = Vec::new();
    for a in args {
        let s = parse(a)?;
        if out.iter().any(|o| o.kind == s.kind) {
            bail!("process type `{}` is given twice", s.kind);
        }
        out.push(s);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(arg: &str) -> Scale {
        parse(arg).expect(arg)
    }

    #[test]
    fn good_inputs() {
        assert_eq!(
            ok("web=2"),
            Scale {
                kind: "web".into(),
                quantity: Quantity::Set(2),
                size: None
            }
        );
        assert_eq!(
            ok("web=2:Standard-2X"),
            Scale {
                kind: "web".into(),
                quantity: Quantity::Set(2),
                size: Some("standard-2x".into())
            }
        );
        assert_eq!(ok("worker=0").quantity, Quantity::Set(0));
        assert_eq!(ok("web+1").quantity, Quantity::Add(1));
        assert_eq!(ok("web-1").quantity, Quantity::Remove(1));
        let s = ok("queue-worker-3");
        assert_eq!(s.kind, "queue-worker");
        assert_eq!(s.quantity, Quantity::Remove(3));
        assert_eq!(ok("queue-worker=3").kind, "queue-worker");
        assert_eq!(
            ok("web+2:performance-m").size.as_deref(),
            Some("performance-m")
        );
        let s = ok("web-1:standard-2x");
        assert_eq!((s.kind.as_str(), s.quantity), ("web", Quantity::Remove(1)));
    }

    #[test]
    fn bad_inputs_name_the_argument() {
        for arg in [
            "web=two",
            "web",
            "=2",
            "web=",
            "web=2:",
            "web=-1",
            "w eb=1",
            "web=1:st d",
            "web=99999999999",
        ] {
            let err = parse(arg).expect_err(arg).to_string();
            assert!(err.contains(&format!("`{arg}`")), "{err}");
        }
    }

    #[test]
    fn resolve_relative() {
        assert_eq!(ok("web+2").resolve(1), 3);
        assert_eq!(ok("web-2").resolve(1), 0);
        assert_eq!(ok("web=5").resolve(1), 5);
    }

    #[test]
    fn duplicate_type_refused() {
        let args = vec!["web=1".to_string(), "web+1".to_string()];
        assert!(parse_all(&args).is_err());
        let args = vec!["web=1".to_string(), "worker=2".to_string()];
        assert_eq!(parse_all(&args).expect("valid").len(), 2);
    }
}
