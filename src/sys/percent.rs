//! Percent-encoding (RFC 3986) of one URL component: a path segment, a query value, a file name
//! in an `sqlite://` URL.

/// `bytes` with every byte but the unreserved ones (`A-Z a-z 0-9 - _ . ~`) written `%XX`
/// (uppercase hex): safe as one path segment or query value. A `/` is encoded too; to keep a
/// path's slashes, encode each segment.
pub fn percent_encode(bytes: impl AsRef<[u8]>) -> String {
    let bytes = bytes.as_ref();
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::percent_encode;

    #[test]
    fn unreserved_bytes_pass_through() {
        assert_eq!(percent_encode("AZaz09-_.~"), "AZaz09-_.~");
        assert_eq!(percent_encode(""), "");
    }

    #[test]
    fn everything_else_is_uppercase_hex() {
        assert_eq!(percent_encode("a b/c?d=e&f"), "a%20b%2Fc%3Fd%3De%26f");
        assert_eq!(percent_encode("%"), "%25");
        // UTF-8 byte by byte; bytes that are not UTF-8 too.
        assert_eq!(percent_encode("é"), "%C3%A9");
        assert_eq!(percent_encode([0x00u8, 0xff, b'x']), "%00%FFx");
    }
}
