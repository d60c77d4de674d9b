//! Rows of a `COPY ... TO STDOUT` (text format) as they stream in. A task per stream
//! reads and splits lines while the caller compares, so both sides and the merge overlap;
//! memory stays bounded (a few batches in flight) whatever the table size.

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::CopyOutStream;

const BATCH_LINES: usize = 4096;
const BATCHES_IN_FLIGHT: usize = 4;

pub struct CopyLines {
    batches: mpsc::Receiver<Result<Vec<Bytes>, tokio_postgres::Error>>,
    current: std::vec::IntoIter<Bytes>,
}

impl CopyLines {
    pub fn new(stream: CopyOutStream) -> Self {
        let (tx, rx) = mpsc::channel(BATCHES_IN_FLIGHT);
        tokio::spawn(split_lines(stream, tx));
        Self { batches: rx, current: Vec::new().into_iter() }
    }

    /// The next row without its newline, or None at the end.
    pub async fn next_line(&mut self) -> Result<Option<Bytes>, tokio_postgres::Error> {
        loop {
            if let Some(line) = self.current.next() {
                return Ok(Some(line));
            }
            match self.batches.recv().await {
                Some(batch) => self.current = batch?.into_iter(),
                None => return Ok(None),
            }
        }
    }
}

async fn split_lines(stream: CopyOutStream, tx: mpsc::Sender<Result<Vec<Bytes>, tokio_postgres::Error>>) {
    futures::pin_mut!(stream);
    let mut buffer = BytesMut::with_capacity(1 << 16);
    let mut batch = Vec::with_capacity(BATCH_LINES);
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        buffer.extend_from_slice(&chunk);
        let mut start = 0;
        let frozen = buffer.split().freeze();
        for (i, &b) in frozen.iter().enumerate() {
            if b == b'\n' {
                batch.push(frozen.slice(start..i));
                start = i + 1;
            }
        }
        buffer.extend_from_slice(&frozen[start..]);
        if batch.len() >= BATCH_LINES && tx.send(Ok(std::mem::replace(&mut batch, Vec::with_capacity(BATCH_LINES)))).await.is_err() {
            return; // the reader stopped early
        }
    }
    if !buffer.is_empty() {
        batch.push(buffer.freeze());
    }
    if !batch.is_empty() {
        let _ = tx.send(Ok(batch)).await;
    }
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
