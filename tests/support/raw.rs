//! A client that sends requests exactly as a given real client writes them (header names,
//! their case and order, the query's percent-encoding) over one keep-alive connection, and
//! parses the answers with `httparse`. For replaying real integrations byte for byte.

use std::net::SocketAddr;
use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What `URLSearchParams` (WHATWG `application/x-www-form-urlencoded`) leaves unescaped:
/// ASCII letters and digits, `*`, `-`, `.`, `_` (a space would be `+`; none occurs here).
const FORM: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'*')
    .remove(b'-')
    .remove(b'.')
    .remove(b'_');

/// `new URLSearchParams(pairs).toString()`, as Node writes it.
pub fn url_search_params(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(name, value)| {
            format!(
                "{}={}",
                utf8_percent_encode(name, FORM),
                utf8_percent_encode(value, FORM)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// One answer, as read off the wire.
#[derive(Debug, Clone)]
pub struct RawAnswer {
    pub status: u16,
    /// Header names lower-cased, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as the client reads it: decoded when it came gzip-encoded (the clients replayed
    /// here ask for gzip and decode it without their callers seeing it).
    pub fn content(&self) -> Vec<u8> {
        if self.header("content-encoding") != Some("gzip") {
            return self.body.clone();
        }
        let mut decoded = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(&self.body[..]),
            &mut decoded,
        )
        .expect("a gzip body decodes");
        decoded
    }

    pub fn json(&self) -> serde_json::Value {
        let content = self.content();
        serde_json::from_slice(&content)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&content)))
    }
}

/// One keep-alive connection.
pub struct RawClient {
    addr: SocketAddr,
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> RawClient {
        RawClient {
            addr,
            stream: TcpStream::connect(addr).await.expect("connect"),
            buffer: Vec::new(),
        }
    }

    /// Sends `GET target` with `host` first and then `headers`, exactly as given, and reads
    /// the answer (bounded to 10 s).
    pub async fn get(&mut self, target: &str, headers: &[(&str, &str)]) -> RawAnswer {
        let mut request = format!("GET {target} HTTP/1.1\r\nhost: {}\r\n", self.addr);
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        self.stream
            .write_all(request.as_bytes())
            .await
            .expect("write request");
        tokio::time::timeout(Duration::from_secs(10), self.read_answer())
            .await
            .unwrap_or_else(|_| panic!("no answer to GET {target} within 10 s"))
    }

    async fn read_answer(&mut self) -> RawAnswer {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&self.buffer).expect("a well-formed answer") {
                httparse::Status::Complete(head) => {
                    let status = response.code.expect("a status");
                    let headers: Vec<(String, String)> = response
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_ascii_lowercase(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect();
                    let length: usize = headers
                        .iter()
                        .find(|(n, _)| n == "content-length")
                        .and_then(|(_, v)| v.parse().ok())
                        .expect("answers carry a Content-Length");
                    while self.buffer.len() < head + length {
                        self.fill().await;
                    }
                    let body = self.buffer[head..head + length].to_vec();
                    self.buffer.drain(..head + length);
                    return RawAnswer {
                        status,
                        headers,
                        body,
                    };
                }
                httparse::Status::Partial => self.fill().await,
            }
        }
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "the connection closed mid-answer");
        self.buffer.extend_from_slice(&chunk[..n]);
    }
}
