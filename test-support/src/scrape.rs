//! Reading a Prometheus endpoint the way a scraper does: one plain
//! HTTP/1.1 request, and the value of a sample by name and labels.

use std::io::{Read, Write};

/// One HTTP/1.1 request to `address` (`host:port`): the status code and
/// the body.
pub fn http(address: &str, method: &str, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(address).expect("connect to the metrics listener");
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("send the request");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("read the reply");
    let status = reply.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = reply.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// The sum of the samples of `name` whose labels include every pair of
/// `labels` (0 if there is none). `name` without labels matches the bare
/// sample too.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || (labels.is_empty() && l.starts_with(&format!("{name} "))))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}
