//! A job's output on its way to the API, byte for byte: pipes read into chunks that end
//! between whole UTF-8 characters where the bytes allow it, shipped in batches whose
//! *encoded* size stays inside the API's body limit, each chunk's bytes in base64. A batch
//! the API refuses for good is dropped and a note saying so goes in its place; it never
//! holds up the job's result.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use hodei_protocol::{LogShipment, NewChunk, MAX_LOG_CHUNKS};

use crate::session::{Delivery, Session};

/// How much of a pipe one read takes.
const READ_SIZE: usize = 16 * 1024;
/// Most chunks in one shipment: as many as the API takes.
const MAX_SHIPMENT_CHUNKS: usize = MAX_LOG_CHUNKS;
/// Largest shipment body, as sent: well inside the API's 1 MiB limit.
const MAX_SHIPMENT_BYTES: usize = 512 * 1024;
/// A chunk's JSON around its base64: `{"stream":"stdout","data_base64":""},`.
const CHUNK_OVERHEAD: usize = 40;
/// The shipment's JSON around its chunks: `{"attempt":2147483647,"chunks":[]}`.
const SHIPMENT_OVERHEAD: usize = 40;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Bytes one stream wrote, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub stream: Stream,
    pub bytes: Vec<u8>,
}

/// How many bytes at the end of `bytes` begin a UTF-8 character that is not complete yet
/// (0 to 3): they wait for the next read, so a character is never split between chunks.
/// Bytes that cannot become valid UTF-8 are not held back.
pub fn incomplete_utf8_tail(bytes: &[u8]) -> usize {
    for tail in 1..=bytes.len().min(3) {
        let start = bytes.len() - tail;
        // Skip continuation bytes back to the byte that starts the last character.
        if bytes[start] & 0b1100_0000 != 0b1000_0000 {
            return match std::str::from_utf8(&bytes[start..]) {
                Err(error) if error.valid_up_to() == 0 && error.error_len().is_none() => tail,
                _ => 0,
            };
        }
    }
    0
}

/// Reads a pipe to its end (or until the reader is dropped), passing chunks on.
pub async fn read_pipe<R: tokio::io::AsyncRead + Unpin>(
    pipe: Option<R>,
    stream: Stream,
    chunks: tokio::sync::mpsc::Sender<Chunk>,
) {
    use tokio::io::AsyncReadExt;
    let Some(mut pipe) = pipe else { return };
    let mut buffer = vec![0u8; READ_SIZE];
    let mut carried = Vec::new();
    while let Ok(read) = pipe.read(&mut buffer).await {
        if read == 0 {
            break;
        }
        let mut bytes = std::mem::take(&mut carried);
        bytes.extend_from_slice(&buffer[..read]);
        carried = bytes.split_off(bytes.len() - incomplete_utf8_tail(&bytes));
        if !bytes.is_empty() && chunks.send(Chunk { stream, bytes }).await.is_err() {
            return;
        }
    }
    // The stream ended inside a character: what there is goes as it is.
    if !carried.is_empty() {
        let _ = chunks.send(Chunk { stream, bytes: carried }).await;
    }
}

/// One shipment being filled: chunks already encoded, and the size of the body so far.
#[derive(Debug, Default)]
pub struct Batch {
    chunks: Vec<NewChunk>,
    bytes: usize,
    encoded: usize,
}

impl Batch {
    fn encoded_size(chunk: &Chunk) -> usize {
        chunk.bytes.len().div_ceil(3) * 4 + CHUNK_OVERHEAD
    }

    /// Whether `chunk` may join; the first always may (a read is far below the limit).
    pub fn fits(&self, chunk: &Chunk) -> bool {
        self.chunks.is_empty()
            || (self.chunks.len() < MAX_SHIPMENT_CHUNKS
                && SHIPMENT_OVERHEAD + self.encoded + Self::encoded_size(chunk) <= MAX_SHIPMENT_BYTES)
    }

    pub fn push(&mut self, chunk: &Chunk) {
        let data = base64::engine::general_purpose::STANDARD.encode(&chunk.bytes);
        self.encoded += Self::encoded_size(chunk);
        self.bytes += chunk.bytes.len();
        self.chunks.push(NewChunk { stream: chunk.stream.as_str().to_owned(), data: None, data_base64: Some(data) });
    }

    /// Bytes of output in it.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn into_body(self, attempt: i32) -> LogShipment {
        LogShipment { attempt, chunks: self.chunks }
    }
}

/// The note that takes the place of output the API refused.
pub fn lost_output_note(bytes: usize, why: &str) -> Chunk {
    let note = format!("\n[hodei-worker: {bytes} bytes of this job's output were lost: {why}]\n");
    Chunk { stream: Stream::Stderr, bytes: note.into_bytes() }
}

/// A job's output being read and shipped.
#[derive(Debug)]
pub struct Capture {
    readers: tokio::task::JoinSet<()>,
    shipper: tokio::task::JoinHandle<()>,
}

impl Capture {
    /// Starts reading the job's pipes and shipping what they give to `path`.
    pub fn start(
        session: &Arc<Session>,
        path: String,
        attempt: i32,
        stdout: Option<tokio::process::ChildStdout>,
        stderr: Option<tokio::process::ChildStderr>,
    ) -> Self {
        let (chunks, shipped) = tokio::sync::mpsc::channel(64);
        let mut readers = tokio::task::JoinSet::new();
        readers.spawn(read_pipe(stdout, Stream::Stdout, chunks.clone()));
        readers.spawn(read_pipe(stderr, Stream::Stderr, chunks));
        let session = session.clone();
        let send = move |body: LogShipment| {
            let (session, path) = (session.clone(), path.clone());
            async move { session.report(&path, &body).await }
        };
        let shipper = tokio::spawn(ship(send, attempt, shipped));
        Self { readers, shipper }
    }

    /// Waits up to `limit` for both pipes to close; true if they did.
    pub async fn wait_closed(&mut self, limit: Duration) -> bool {
        tokio::time::timeout(limit, async { while self.readers.join_next().await.is_some() {} }).await.is_ok()
    }

    /// Stops reading pipes still open, and waits until all that was read is shipped.
    pub async fn finish(mut self) {
        self.readers.shutdown().await;
        let _ = self.shipper.await;
    }
}

/// Ships chunks in batches until the pipes are done. Output the API refuses for good is
/// replaced by a note; once the attempt is stale or the lease lost, output is read and
/// dropped (never left unread: the job would block writing it).
async fn ship<Send, Sent>(send: Send, attempt: i32, mut shipped: tokio::sync::mpsc::Receiver<Chunk>)
where
    Send: Fn(LogShipment) -> Sent,
    Sent: std::future::Future<Output = Delivery>,
{
    use tokio::sync::mpsc::error::TryRecvError;
    // Read, in order, not shipped yet; a note about lost output goes first.
    let mut pending: VecDeque<Chunk> = VecDeque::new();
    let mut note_first = false;
    let mut open = true;
    let mut dropping = false;
    loop {
        if pending.is_empty() {
            match shipped.recv().await {
                Some(chunk) => pending.push_back(chunk),
                None => break,
            }
        }
        while open && pending.len() < MAX_SHIPMENT_CHUNKS {
            match shipped.try_recv() {
                Ok(chunk) => pending.push_back(chunk),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        if dropping {
            pending.clear();
            continue;
        }
        let mut batch = Batch::default();
        while let Some(chunk) = pending.front() {
            if !batch.fits(chunk) {
                break;
            }
            batch.push(chunk);
            pending.pop_front();
        }
        let with_note = std::mem::take(&mut note_first);
        let bytes = batch.bytes();
        match send(batch.into_body(attempt)).await {
            Delivery::Taken(_) => {}
            Delivery::Stale | Delivery::LeaseLost => dropping = true,
            Delivery::Refused(why) => {
                eprintln!("hodei-worker: {bytes} bytes of a job's output lost: {why}");
                // A note refused in turn is not noted again.
                if !with_note {
                    pending.push_front(lost_output_note(bytes, &why));
                    note_first = true;
                }
            }
        }
        if !open && pending.is_empty() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_character_is_never_split_between_chunks() {
        let euro = "€".as_bytes(); // e2 82 ac
        let cases: [(&[u8], usize); 11] = [
            (b"", 0),
            (b"abc", 0),
            (euro, 0),
            (&euro[..1], 1),
            (&euro[..2], 2),
            (b"a\xe2\x82", 2),
            (b"a\xf0\x9f\x98", 3),
            (b"\xf0\x9f\x98\x80", 0),
            // Not the start of anything valid: nothing is held back.
            (b"a\xff", 0),
            (b"a\x82", 0),
            (b"\xe2\x28", 0),
        ];
        for (bytes, tail) in cases {
            assert_eq!(incomplete_utf8_tail(bytes), tail, "{bytes:x?}");
        }
    }

    #[tokio::test]
    async fn reads_carry_an_incomplete_character_into_the_next_chunk() {
        let text = "€".repeat(200_000);
        let (sender, mut receiver) = tokio::sync::mpsc::channel(1024);
        let pipe = std::io::Cursor::new(text.clone().into_bytes());
        tokio::spawn(read_pipe(Some(pipe), Stream::Stdout, sender));
        let mut chunks = 0;
        let mut read = Vec::new();
        while let Some(chunk) = receiver.recv().await {
            assert!(std::str::from_utf8(&chunk.bytes).is_ok(), "chunk {chunks} splits a character");
            chunks += 1;
            read.extend(chunk.bytes);
        }
        assert!(chunks > 1);
        assert_eq!(read, text.as_bytes());
    }

    /// Ships `chunks` through `answers` (one per request, then `Taken`); returns the bodies sent.
    async fn shipped(chunks: &[&[u8]], answers: Vec<Delivery>) -> Vec<serde_json::Value> {
        let sent = std::sync::Mutex::new(Vec::new());
        let answers = std::sync::Mutex::new(std::collections::VecDeque::from(answers));
        let (sender, receiver) = tokio::sync::mpsc::channel(1024);
        for bytes in chunks {
            sender.send(Chunk { stream: Stream::Stdout, bytes: bytes.to_vec() }).await.expect("queued");
        }
        drop(sender);
        let send = |body: LogShipment| {
            sent.lock().expect("sent").push(serde_json::to_value(&body).expect("serializes"));
            let answer = answers.lock().expect("answers").pop_front().unwrap_or(Delivery::Taken(None));
            async move { answer }
        };
        ship(send, 7, receiver).await;
        sent.into_inner().expect("sent")
    }

    fn decoded(body: &serde_json::Value) -> Vec<(String, Vec<u8>)> {
        let engine = base64::engine::general_purpose::STANDARD;
        let chunks = body["chunks"].as_array().expect("chunks");
        chunks
            .iter()
            .map(|c| {
                (
                    c["stream"].as_str().expect("stream").to_owned(),
                    engine.decode(c["data_base64"].as_str().expect("data")).expect("base64"),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn output_refused_for_good_is_replaced_by_a_note_and_shipping_goes_on() {
        let sent = shipped(&[b"lost", b"!"], vec![Delivery::Refused("HTTP 413 Payload Too Large".to_owned())]).await;
        assert_eq!(sent.len(), 2, "{sent:?}");
        assert_eq!(sent[0]["attempt"], 7);
        assert_eq!(decoded(&sent[0]), [("stdout".to_owned(), b"lost".to_vec()), ("stdout".to_owned(), b"!".to_vec())]);
        let note = b"\n[hodei-worker: 5 bytes of this job's output were lost: HTTP 413 Payload Too Large]\n".to_vec();
        assert_eq!(decoded(&sent[1]), [("stderr".to_owned(), note)]);

        // A note refused in turn is not noted again: shipping ends.
        let refused = || Delivery::Refused("HTTP 422".to_owned());
        assert_eq!(shipped(&[b"x"], vec![refused(), refused()]).await.len(), 2);
    }

    #[tokio::test]
    async fn once_the_attempt_is_stale_output_is_read_and_dropped() {
        let chunks: Vec<Vec<u8>> = (0..300).map(|n| format!("line {n}\n").into_bytes()).collect();
        let chunks: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
        let sent = shipped(&chunks, vec![Delivery::Stale]).await;
        assert_eq!(sent.len(), 1, "nothing is sent after a stale answer");
        let sent = shipped(&chunks, vec![]).await;
        assert_eq!(sent.iter().map(|body| decoded(body).len()).collect::<Vec<_>>(), [256, 44]);
    }

    #[test]
    fn batches_are_capped_by_their_encoded_size() {
        // Control bytes: JSON would escape each sixfold; base64 grows them by a third.
        let chunk = Chunk { stream: Stream::Stdout, bytes: vec![1u8; READ_SIZE] };
        let mut batch = Batch::default();
        while batch.fits(&chunk) {
            batch.push(&chunk);
        }
        let body = serde_json::to_string(&batch.into_body(1)).expect("serializes");
        assert!(body.len() <= MAX_SHIPMENT_BYTES, "{}", body.len());
        assert!(body.len() > MAX_SHIPMENT_BYTES - 2 * READ_SIZE, "{}", body.len());
        assert!(!body.contains("\\u0001"));

        let tiny = Chunk { stream: Stream::Stderr, bytes: b"x".to_vec() };
        let mut batch = Batch::default();
        while batch.fits(&tiny) {
            batch.push(&tiny);
        }
        assert_eq!((batch.chunks.len(), batch.bytes()), (MAX_SHIPMENT_CHUNKS, MAX_SHIPMENT_CHUNKS));
        let body = serde_json::to_value(batch.into_body(3)).expect("serializes");
        let first = &body["chunks"][0];
        assert_eq!((first["stream"].as_str(), first["data_base64"].as_str()), (Some("stderr"), Some("eA==")));
    }
}
