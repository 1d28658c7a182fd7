//! Log field values as plain text: a structured log (`--log-format json`) carries `127.0.0.1:6379`
//! or `none`, never Rust's `Some(127.0.0.1:6379)`, and a list as `a,b,c`. Used with tracing's
//! `%` (Display) sigil: `master = %OrNone(view.master)`.

use std::fmt;

/// An optional value: the value, or `none`.
pub struct OrNone<T>(pub Option<T>);

impl<T: fmt::Display> fmt::Display for OrNone<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("none"),
        }
    }
}

/// A list: its items joined by commas (nothing for an empty list).
pub struct Joined<'a, T>(pub &'a [T]);

impl<T: fmt::Display> fmt::Display for Joined<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            v.fmt(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn values_are_plain() {
        let a: SocketAddr = "127.0.0.1:6379".parse().unwrap();
        let b: SocketAddr = "[::1]:6380".parse().unwrap();
        assert_eq!(OrNone(Some(a)).to_string(), "127.0.0.1:6379");
        assert_eq!(OrNone::<SocketAddr>(None).to_string(), "none");
        assert_eq!(Joined(&[a, b]).to_string(), "127.0.0.1:6379,[::1]:6380");
        assert_eq!(Joined::<SocketAddr>(&[]).to_string(), "");
    }
}
