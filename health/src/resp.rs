//! A minimal RESP2 reply reader and command encoder, bounded against hostile input.

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`: a status line, without the `+`.
    Simple(String),
    /// `-ERR ...`: the error line (its kind, e.g. `NOAUTH`, first), without the `-`.
    Error(String),
    /// `:42`.
    Integer(i64),
    /// `None` is the null bulk string (`$-1`).
    Bulk(Option<Vec<u8>>),
    /// `None` is the null array (`*-1`).
    Array(Option<Vec<Reply>>),
}

/// Malformed RESP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RespError {
    /// A reply starts with a byte other than `+ - : $ *`: that byte.
    #[error("unknown RESP type byte 0x{0:02x}")]
    UnknownType(u8),
    /// A bulk or array length that is not a number, or is below -1: its text.
    #[error("bad length {0:?}")]
    BadLength(String),
    /// An `:` integer that is not an `i64`: its text.
    #[error("bad integer {0:?}")]
    BadInteger(String),
    /// A bulk string longer than Redis's own 512 MiB limit: its declared length.
    #[error("bulk string of {0} bytes is over the 512 MiB limit")]
    TooLong(i64),
    /// An array of more than a million elements: its declared length.
    #[error("array of {0} elements is over the 1M limit")]
    TooMany(i64),
    /// Arrays nested past the depth limit (which bounds the parser's recursion).
    #[error("replies nested deeper than {MAX_DEPTH}")]
    TooDeep,
    /// The bytes after a bulk string's declared length are not CRLF.
    #[error("bulk string not terminated by CRLF")]
    MissingCrlf,
    /// A simple string or error line that is not UTF-8.
    #[error("line is not UTF-8")]
    NotUtf8,
}

const MAX_BULK: i64 = 512 * 1024 * 1024;
const MAX_ARRAY: i64 = 1_000_000;
const MAX_DEPTH: usize = 16;

/// Parses one reply from the start of `buf`: `Ok(None)` when more bytes are needed,
/// `Ok(Some((reply, consumed)))` when complete.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, RespError> {
    parse_at(buf, 0, 0)
}

/// Tells when the first reply in a growing buffer is whole, in time linear in its size however
/// it arrives (it keeps its place between calls), so that a reader parses a large reply once
/// rather than at every read. It only frames: what it calls ready may still be malformed, which
/// [`parse`] then says.
#[derive(Debug, Default)]
pub struct Framer {
    /// Where the next value's type byte is.
    pos: usize,
    /// Where the search for the CRLF of the line at `pos` goes on.
    scan: usize,
    /// Elements still to come in each open array, innermost last.
    open: Vec<i64>,
    /// The end (past its CRLF) of the bulk string being received.
    bulk_end: Option<usize>,
}

impl Framer {
    /// Whether `buf` (the same bytes as at the last call, and perhaps more) holds a whole reply
    /// at its start, or bytes that cannot be one.
    pub fn ready(&mut self, buf: &[u8]) -> bool {
        loop {
            if let Some(end) = self.bulk_end {
                if buf.len() < end {
                    return false;
                }
                self.bulk_end = None;
                self.pos = end;
                if self.element_done() {
                    return true;
                }
                continue;
            }
            let Some(&kind) = buf.get(self.pos) else {
                return false;
            };
            if !b"+-:$*".contains(&kind) {
                return true; // malformed: let `parse` say so
            }
            let from = self.scan.max(self.pos + 1);
            let Some(i) = buf[from..].windows(2).position(|w| w == b"\r\n") else {
                self.scan = buf.len().saturating_sub(1).max(self.pos + 1);
                return false;
            };
            let (body, next) = (&buf[self.pos + 1..from + i], from + i + 2);
            self.scan = 0;
            self.pos = next;
            match kind {
                b'$' => match len(body) {
                    Ok(-1) => {}
                    Ok(n) if n <= MAX_BULK => {
                        self.bulk_end = Some(next + n as usize + 2);
                        continue;
                    }
                    _ => return true,
                },
                b'*' => match len(body) {
                    Ok(-1 | 0) => {}
                    Ok(n) if n <= MAX_ARRAY && self.open.len() < MAX_DEPTH => {
                        self.open.push(n);
                        continue;
                    }
                    _ => return true,
                },
                _ => {}
            }
            if self.element_done() {
                return true;
            }
        }
    }

    /// One value ended: counts it in its array (closing arrays that are full); true when the
    /// whole reply ended.
    fn element_done(&mut self) -> bool {
        while let Some(left) = self.open.last_mut() {
            *left -= 1;
            if *left > 0 {
                return false;
            }
            self.open.pop();
        }
        true
    }
}

fn line(buf: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(pos..)?;
    let i = rest.windows(2).position(|w| w == b"\r\n")?;
    Some((&rest[..i], pos + i + 2))
}

fn int(s: &[u8]) -> Result<i64, RespError> {
    std::str::from_utf8(s)
        .ok()
        .and_then(|t| t.parse::<i64>().ok())
        .ok_or_else(|| RespError::BadInteger(String::from_utf8_lossy(s).into_owned()))
}

fn len(s: &[u8]) -> Result<i64, RespError> {
    let n = int(s).map_err(|_| RespError::BadLength(String::from_utf8_lossy(s).into_owned()))?;
    if n < -1 {
        return Err(RespError::BadLength(n.to_string()));
    }
    Ok(n)
}

fn parse_at(buf: &[u8], pos: usize, depth: usize) -> Result<Option<(Reply, usize)>, RespError> {
    if depth > MAX_DEPTH {
        return Err(RespError::TooDeep);
    }
    let Some(&kind) = buf.get(pos) else {
        return Ok(None);
    };
    let Some((body, next)) = line(buf, pos + 1) else {
        // Reject an unknown type byte before waiting for a line that may never come.
        return match kind {
            b'+' | b'-' | b':' | b'$' | b'*' => Ok(None),
            other => Err(RespError::UnknownType(other)),
        };
    };
    let text = || {
        std::str::from_utf8(body)
            .map(str::to_string)
            .map_err(|_| RespError::NotUtf8)
    };
    match kind {
        b'+' => Ok(Some((Reply::Simple(text()?), next))),
        b'-' => Ok(Some((Reply::Error(text()?), next))),
        b':' => Ok(Some((Reply::Integer(int(body)?), next))),
        b'$' => {
            let n = len(body)?;
            if n == -1 {
                return Ok(Some((Reply::Bulk(None), next)));
            }
            if n > MAX_BULK {
                return Err(RespError::TooLong(n));
            }
            let n = n as usize;
            let end = next + n;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(RespError::MissingCrlf);
            }
            Ok(Some((Reply::Bulk(Some(buf[next..end].to_vec())), end + 2)))
        }
        b'*' => {
            let n = len(body)?;
            if n == -1 {
                return Ok(Some((Reply::Array(None), next)));
            }
            if n > MAX_ARRAY {
                return Err(RespError::TooMany(n));
            }
            let mut items = Vec::with_capacity((n as usize).min(1024));
            let mut at = next;
            for _ in 0..n {
                match parse_at(buf, at, depth + 1)? {
                    Some((r, used)) => {
                        items.push(r);
                        at = used;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Reply::Array(Some(items)), at)))
        }
        other => Err(RespError::UnknownType(other)),
    }
}

/// Encodes a command as a RESP array of bulk strings (safe for any bytes, spaces included).
pub fn encode_command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_framer_agrees_with_the_parser_byte_by_byte() {
        let replies: [&[u8]; 6] = [
            b"+OK\r\n",
            b"$5\r\nhello\r\n",
            b"*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6380\r\n",
            b"*3\r\n*1\r\n:1\r\n*0\r\n$-1\r\n",
            b"*-1\r\n",
            b"*2\r\n*2\r\n+a\r\n+b\r\n:7\r\n",
        ];
        for r in replies {
            let mut f = Framer::default();
            for n in 0..=r.len() {
                let whole = matches!(parse(&r[..n]), Ok(Some(_)));
                assert_eq!(
                    f.ready(&r[..n]),
                    whole,
                    "{:?} at {n}",
                    String::from_utf8_lossy(r)
                );
            }
        }
        // Malformed input is "ready", for the parser to refuse.
        assert!(Framer::default().ready(b"?x"));
        assert!(Framer::default().ready(b"$abc\r\n"));
    }

    #[test]
    fn parses_each_type() {
        assert_eq!(
            parse(b"+PONG\r\n"),
            Ok(Some((Reply::Simple("PONG".into()), 7)))
        );
        assert_eq!(
            parse(b"-ERR x\r\n"),
            Ok(Some((Reply::Error("ERR x".into()), 8)))
        );
        assert_eq!(parse(b":-42\r\n"), Ok(Some((Reply::Integer(-42), 6))));
        assert_eq!(
            parse(b"$3\r\nabc\r\n+"),
            Ok(Some((Reply::Bulk(Some(b"abc".to_vec())), 9)))
        );
        assert_eq!(parse(b"$-1\r\n"), Ok(Some((Reply::Bulk(None), 5))));
        assert_eq!(parse(b"*-1\r\n"), Ok(Some((Reply::Array(None), 5))));
        assert_eq!(
            parse(b"*2\r\n$1\r\na\r\n:1\r\n"),
            Ok(Some((
                Reply::Array(Some(vec![
                    Reply::Bulk(Some(b"a".to_vec())),
                    Reply::Integer(1)
                ])),
                15
            )))
        );
    }

    #[test]
    fn incomplete_input_asks_for_more() {
        for partial in [
            &b""[..],
            b"+PON",
            b"$3\r\nab",
            b"*2\r\n:1\r\n",
            b"$3\r\nabc",
        ] {
            assert_eq!(parse(partial), Ok(None), "{partial:?}");
        }
    }

    #[test]
    fn hostile_input_is_an_error() {
        assert!(matches!(parse(b"$-2\r\n"), Err(RespError::BadLength(_))));
        assert!(matches!(parse(b"$abc\r\n"), Err(RespError::BadLength(_))));
        assert!(matches!(
            parse(b"$99999999999\r\n"),
            Err(RespError::TooLong(_))
        ));
        assert!(matches!(
            parse(b"*99999999\r\n"),
            Err(RespError::TooMany(_))
        ));
        assert!(matches!(parse(b"$3\r\nabcXY"), Err(RespError::MissingCrlf)));
        assert!(matches!(
            parse(b"?x\r\n"),
            Err(RespError::UnknownType(b'?'))
        ));
        assert!(matches!(parse(b"GET"), Err(RespError::UnknownType(b'G'))));
        assert!(matches!(parse(b":12a\r\n"), Err(RespError::BadInteger(_))));
        let deep = "*1\r\n".repeat(40) + ":1\r\n";
        assert_eq!(parse(deep.as_bytes()), Err(RespError::TooDeep));
    }

    #[test]
    fn encodes_commands() {
        assert_eq!(
            encode_command(&[b"AUTH", b"pass word"]),
            b"*2\r\n$4\r\nAUTH\r\n$9\r\npass word\r\n".to_vec()
        );
        let enc = encode_command(&[b"SET", b"k", b"v"]);
        let (reply, used) = parse(&enc).unwrap().unwrap();
        assert_eq!(used, enc.len());
        assert_eq!(
            reply,
            Reply::Array(Some(vec![
                Reply::Bulk(Some(b"SET".to_vec())),
                Reply::Bulk(Some(b"k".to_vec())),
                Reply::Bulk(Some(b"v".to_vec())),
            ]))
        );
    }
}
