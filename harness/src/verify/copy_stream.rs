//! Rows of a `COPY ... TO STDOUT` (text format) as they stream in: memory stays bounded by
//! one network chunk whatever the table size.

use std::pin::Pin;

use bytes::{Buf, Bytes, BytesMut};
use futures::StreamExt;
use tokio_postgres::CopyOutStream;

pub struct CopyLines {
    stream: Pin<Box<CopyOutStream>>,
    buffer: BytesMut,
    done: bool,
}

impl CopyLines {
    pub fn new(stream: CopyOutStream) -> Self {
        Self { stream: Box::pin(stream), buffer: BytesMut::with_capacity(1 << 16), done: false }
    }

    /// The next row without its newline, or None at the end.
    pub async fn next_line(&mut self) -> Result<Option<Bytes>, tokio_postgres::Error> {
        loop {
            if let Some(pos) = memchr(b'\n', &self.buffer) {
                let line = self.buffer.split_to(pos + 1).freeze();
                return Ok(Some(line.slice(..pos)));
            }
            if self.done {
                if self.buffer.is_empty() {
                    return Ok(None);
                }
                let rest = self.buffer.split().freeze();
                return Ok(Some(rest));
            }
            match self.stream.next().await {
                Some(chunk) => {
                    let mut chunk = chunk?;
                    self.buffer.extend_from_slice(chunk.chunk());
                    chunk.advance(chunk.remaining());
                }
                None => self.done = true,
            }
        }
    }
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
}

/// Splits a COPY text row into its raw (still escaped) fields.
pub fn fields(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(|&b| b == b'\t')
}

/// A field's value: None for `\N`, else the unescaped text.
pub fn unescape(field: &[u8]) -> Option<String> {
    if field == b"\\N" {
        return None;
    }
    if !field.contains(&b'\\') {
        return Some(String::from_utf8_lossy(field).into_owned());
    }
    let mut out = Vec::with_capacity(field.len());
    let mut iter = field.iter().copied();
    while let Some(b) = iter.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match iter.next() {
            Some(b'n') => out.push(b'\n'),
            Some(b't') => out.push(b'\t'),
            Some(b'r') => out.push(b'\r'),
            Some(b'b') => out.push(8),
            Some(b'f') => out.push(12),
            Some(b'v') => out.push(11),
            Some(other) => out.push(other),
            None => out.push(b'\\'),
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_escapes_round_trip() {
        assert_eq!(unescape(b"\\N"), None);
        assert_eq!(unescape(b"a\\tb\\nc\\\\d").as_deref(), Some("a\tb\nc\\d"));
        let row: Vec<&[u8]> = fields(b"1\t\\N\tx").collect();
        assert_eq!(row, vec![&b"1"[..], b"\\N", b"x"]);
    }
}
