//! haproxy.cfg as HAProxy reads it: lines cut into words (whitespace separates; `#` starts a
//! comment; `\` escapes a space, `#`, quote or backslash and writes `\r`, `\n`, `\t`, `\xHH`;
//! `"..."` keeps spaces and still escapes, `'...'` keeps everything), and lines grouped into
//! sections (`global`, `defaults`, `frontend`, `backend`, `listen`, and the others, which are
//! kept only to be reported).

/// One directive: its line number (1-based), its words (bytes: `\xHH` may write any) and the
/// line as written (for the report).
#[derive(Debug, Clone)]
pub(super) struct Line {
    pub(super) no: usize,
    pub(super) words: Vec<Vec<u8>>,
    pub(super) text: String,
}

impl Line {
    /// Word `i` as text (lossy), empty past the end.
    pub(super) fn word(&self, i: usize) -> String {
        self.words
            .get(i)
            .map(|w| String::from_utf8_lossy(w).into_owned())
            .unwrap_or_default()
    }
}

/// A section: its keyword, its name (may be empty), its header line, and its directives.
#[derive(Debug, Clone)]
pub(super) struct Section {
    pub(super) kind: String,
    pub(super) name: String,
    pub(super) header: Line,
    pub(super) lines: Vec<Line>,
}

/// The keywords that open a section in HAProxy.
const SECTIONS: &[&str] = &[
    "global",
    "defaults",
    "frontend",
    "backend",
    "listen",
    "userlist",
    "peers",
    "resolvers",
    "mailers",
    "program",
    "http-errors",
    "ring",
    "cache",
    "log-forward",
    "crt-store",
    "traces",
    "acme",
];

/// Splits the file into sections; directives before the first section come back in the
/// second list (HAProxy refuses them).
pub(super) fn sections(text: &str) -> (Vec<Section>, Vec<Line>) {
    let mut out: Vec<Section> = Vec::new();
    let mut orphans = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let words = split(raw);
        if words.is_empty() {
            continue;
        }
        let line = Line {
            no: i + 1,
            words,
            text: printable(raw.trim()),
        };
        let first = line.word(0);
        if SECTIONS.contains(&first.as_str()) {
            out.push(Section {
                kind: first,
                name: line.word(1),
                header: line.clone(),
                lines: Vec::new(),
            });
        } else if let Some(s) = out.last_mut() {
            s.lines.push(line);
        } else {
            orphans.push(line);
        }
    }
    (out, orphans)
}

/// The line with control characters shown as `?` (it goes into a TOML comment).
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// One line's words, as HAProxy's parser cuts them.
pub(super) fn split(line: &str) -> Vec<Vec<u8>> {
    let b = line.as_bytes();
    let mut words = Vec::new();
    let mut cur: Option<Vec<u8>> = None;
    let (mut single, mut double) = (false, false);
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        i += 1;
        if single {
            if c == b'\'' {
                single = false;
            } else {
                cur.get_or_insert_with(Vec::new).push(c);
            }
            continue;
        }
        match c {
            b'\'' if !double => {
                single = true;
                cur.get_or_insert_with(Vec::new);
            }
            b'"' => {
                double = !double;
                cur.get_or_insert_with(Vec::new);
            }
            b'#' if !double => break,
            b' ' | b'\t' if !double => {
                if let Some(w) = cur.take() {
                    words.push(w);
                }
            }
            b'\\' if i < b.len() => {
                let w = cur.get_or_insert_with(Vec::new);
                let e = b[i];
                i += 1;
                match e {
                    b'r' => w.push(b'\r'),
                    b'n' => w.push(b'\n'),
                    b't' => w.push(b'\t'),
                    b'x' if i + 2 <= b.len() => match hex2(b[i], b[i + 1]) {
                        Some(v) => {
                            w.push(v);
                            i += 2;
                        }
                        None => w.extend_from_slice(b"\\x"),
                    },
                    b' ' | b'#' | b'\\' | b'"' | b'\'' | b'$' => w.push(e),
                    other => {
                        w.push(b'\\');
                        w.push(other);
                    }
                }
            }
            other => cur.get_or_insert_with(Vec::new).push(other),
        }
    }
    if let Some(w) = cur {
        words.push(w);
    }
    words
}

fn hex2(hi: u8, lo: u8) -> Option<u8> {
    let d = |c: u8| (c as char).to_digit(16);
    Some((d(hi)? * 16 + d(lo)?) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        split(s)
            .into_iter()
            .map(|w| String::from_utf8_lossy(&w).into_owned())
            .collect()
    }

    #[test]
    fn words_escapes_quotes_and_comments_as_haproxy_reads_them() {
        assert_eq!(
            words("  tcp-check send info\\ replication\\r\\n  # the role"),
            ["tcp-check", "send", "info replication\r\n"]
        );
        assert_eq!(
            words("a \"b c\\r\" 'd\\n e' f\\#g"),
            ["a", "b c\r", "d\\n e", "f#g"]
        );
        assert_eq!(
            words("send-binary \\x2b\\x4fK \\xZZ"),
            ["send-binary", "+OK", "\\xZZ"]
        );
        assert_eq!(words("x \"\" ''"), ["x", "", ""]);
        assert!(words("# only a comment").is_empty());
        assert_eq!(words("trailing\\"), ["trailing\\"]);
        assert_eq!(
            words("\"unterminated # not a comment"),
            ["unterminated # not a comment"]
        );
    }

    #[test]
    fn sections_group_their_directives() {
        let (s, orphans) = sections("maxconn 1\nglobal\n  daemon\n\nbackend b\n server s 1:2\n");
        assert_eq!(orphans.len(), 1);
        assert_eq!(orphans[0].no, 1);
        assert_eq!(s.len(), 2);
        assert_eq!((s[1].kind.as_str(), s[1].name.as_str()), ("backend", "b"));
        assert_eq!(s[1].lines[0].no, 6);
        assert_eq!(s[1].lines[0].text, "server s 1:2");
    }
}
