//! A tiny blocking HTTP/1.1 GET client for tests and benchmarks: admin endpoints (`/readyz`,
//! `/metrics`), Envoy's and istiod's admin APIs, model servers. Does network I/O; no TLS, no
//! keep-alive (`Connection: close`), bounded by a connect and a read timeout.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long a connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a read may wait for data.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// One answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header values by lower-case name (the last one wins if a name repeats).
    pub headers: BTreeMap<String, String>,
    /// The body, de-chunked when the answer was chunked.
    pub body: String,
}

/// `GET path` from `addr` with `Host: host`; `None` if nothing answers or the answer is not
/// HTTP.
pub fn get(addr: SocketAddr, host: &str, path: &str) -> Option<Response> {
    let mut s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).ok()?;
    s.set_read_timeout(Some(READ_TIMEOUT)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    parse(&text)
}

/// `GET path` from a server on `127.0.0.1:port` (an admin endpoint).
pub fn get_local(port: u16, path: &str) -> Option<Response> {
    get(
        SocketAddr::from(([127, 0, 0, 1], port)),
        &format!("127.0.0.1:{port}"),
        path,
    )
}

/// Parses a whole HTTP/1.x answer.
fn parse(text: &str) -> Option<Response> {
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = if headers.get("transfer-encoding").map(String::as_str) == Some("chunked") {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Some(Response {
        status,
        headers,
        body,
    })
}

/// Decodes an HTTP/1.1 chunked body (Envoy's admin answers that way).
fn dechunk(mut rest: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(after.get(..size)?);
        rest = after.get(size..)?.strip_prefix("\r\n")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_answers() {
        let plain = parse("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nApp-Version: v0\r\n\r\nok")
            .unwrap_or_else(|| panic!("not parsed"));
        assert_eq!(plain.status, 200);
        assert_eq!(plain.headers["app-version"], "v0");
        assert_eq!(plain.body, "ok");

        let chunked = parse(
            "HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nnot \r\n5\r\nready\r\n0\r\n\r\n",
        )
        .unwrap_or_else(|| panic!("not parsed"));
        assert_eq!(chunked.status, 503);
        assert_eq!(chunked.body, "not ready");

        assert_eq!(parse("garbage"), None);
    }
}
