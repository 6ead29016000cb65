//! What one client can cost the coordinator: the admin listener cuts off
//! slow headers, refuses oversized bodies and connections beyond its caps
//! (its memory stays flat), and an agent cannot open more assignment
//! streams than its cap, however many it opens at once.
//!
//! Timeouts are set short here (1 s) and every check waits for the outcome
//! against a generous deadline, so a loaded machine only makes them slower.

mod support;
use mailloop_proto::pb;
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Tight bounds for the tests that probe them.
const TIGHT: &str = r#"
http_header_timeout = "1s"
http_request_timeout = "5s"
http_idle_timeout = "10s"
http_max_body_bytes = 65536
"#;

/// How long a bound may take to act on this loaded machine.
const GENEROUS: Duration = Duration::from_secs(30);

/// Reads until the server closes the connection (EOF or reset), at most
/// `within`: what it sent, or None if it was still open at the deadline.
async fn until_closed(s: &mut TcpStream, within: Duration) -> Option<String> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// One `GET /healthz` on an open connection, keeping it open; true on a 200.
async fn healthz_on(s: &mut TcpStream) -> bool {
    if s.write_all(b"GET /healthz HTTP/1.1\r\nhost: test\r\n\r\n").await.is_err() {
        return false;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("\"ok\"") {
        match tokio::time::timeout(GENEROUS, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => return false,
        }
    }
    String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200")
}

#[tokio::test]
async fn headers_sent_one_byte_at_a_time_are_cut_off_at_the_header_timeout() {
    let c = Coordinator::start(TIGHT, "");
    let mut s = TcpStream::connect(c.http).await.unwrap();
    // At one byte per 50 ms these headers would take minutes to finish.
    let request = format!("GET /healthz HTTP/1.1\r\nhost: test\r\n{}\r\n", "x-pad: slowloris\r\n".repeat(200));
    let started = Instant::now();
    let mut sent = 0;
    let mut closed = false;
    while started.elapsed() < GENEROUS && sent < request.len() {
        if s.write_all(&request.as_bytes()[sent..sent + 1]).await.is_err() {
            closed = true;
            break;
        }
        sent += 1;
        // The attacker's pace, and a look at whether the server hung up.
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(_)) | Err(_) => {}
        }
    }
    let took = started.elapsed();
    println!("slow headers: connection closed after {took:?}, {sent} of {} bytes sent", request.len());
    assert!(closed, "the connection was still open after {took:?} of slow headers");
    assert!(sent < request.len(), "closed only after the headers were complete");
    // Everyone else is still served.
    expect_ok(c.api().get("/healthz").await);
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed() {
    let c = Coordinator::start(TIGHT, "");
    let mut s = TcpStream::connect(c.http).await.unwrap();
    let started = Instant::now();
    assert!(until_closed(&mut s, GENEROUS).await.is_some(), "a silent connection was kept open for {GENEROUS:?}");
    println!("silent connection closed after {:?}", started.elapsed());
}

#[tokio::test]
async fn a_declared_oversized_body_gets_413_json_without_being_read() {
    let c = Coordinator::start(TIGHT, "");
    let mut s = TcpStream::connect(c.http).await.unwrap();
    let head = format!(
        "POST /api/v1/checks HTTP/1.1\r\nhost: test\r\nauthorization: Bearer {ADMIN_TOKEN}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        100 * 1024 * 1024
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // Not a byte of the 100 MiB body is sent: the answer comes anyway.
    let answer = until_closed(&mut s, GENEROUS).await.expect("the connection is closed after the 413");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("application/json") && answer.contains("http_max_body_bytes"), "{answer}");
}

#[tokio::test]
async fn headers_far_past_64_kib_get_431() {
    let c = Coordinator::start(TIGHT, "");
    let mut s = TcpStream::connect(c.http).await.unwrap();
    let request = format!("GET /healthz HTTP/1.1\r\nhost: test\r\nx-pad: {}\r\n\r\n", "y".repeat(256 * 1024));
    let _ = s.write_all(request.as_bytes()).await; // the server may hang up part way
    let answer = until_closed(&mut s, GENEROUS).await.expect("the connection is closed");
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(!answer.contains("200 OK"), "{answer}");
}

#[tokio::test]
async fn a_chunked_body_past_the_limit_gets_413_json() {
    let c = Coordinator::start(TIGHT, "");
    let mut s = TcpStream::connect(c.http).await.unwrap();
    let head = format!(
        "POST /api/v1/checks HTTP/1.1\r\nhost: test\r\nauthorization: Bearer {ADMIN_TOKEN}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    // 1 MiB in 8 KiB chunks, no length announced; the server may hang up
    // before it is all sent.
    let writer = tokio::spawn(async move {
        let chunk = format!("2000\r\n{}\r\n", "x".repeat(0x2000));
        for _ in 0..128 {
            if wr.write_all(chunk.as_bytes()).await.is_err() {
                return;
            }
        }
        let _ = wr.write_all(b"0\r\n\r\n").await;
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + GENEROUS;
    while !String::from_utf8_lossy(&got).contains("http_max_body_bytes") && Instant::now() < deadline {
        match tokio::time::timeout(GENEROUS, rd.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    writer.abort();
    let answer = String::from_utf8_lossy(&got);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("application/json") && answer.contains("65536 bytes"), "{answer}");
    // A body within the limit is read and judged on its content.
    let small = c.api().post("/api/v1/checks", &check_table("small", &["eu-west"], "1m")).await.unwrap();
    assert_eq!(small.status, 201, "{small:?}");
}

#[tokio::test]
async fn a_body_that_stops_arriving_gets_503_at_the_request_timeout() {
    let c = Coordinator::start(TIGHT, "");
    let mut s = TcpStream::connect(c.http).await.unwrap();
    let head = format!(
        "POST /api/v1/checks HTTP/1.1\r\nhost: test\r\nauthorization: Bearer {ADMIN_TOKEN}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{{\"name\":"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // The rest of the 1,000 bytes never comes.
    let started = Instant::now();
    let answer = until_closed(&mut s, GENEROUS).await.expect("the stalled request is answered and closed");
    println!("stalled body answered after {:?}", started.elapsed());
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("http_request_timeout"), "{answer}");
}

#[tokio::test]
async fn a_client_that_stops_reading_its_answer_is_cut_off_at_the_idle_timeout() {
    let c = Coordinator::start(
        "http_request_timeout = \"1s\"\nhttp_idle_timeout = \"2s\"\n",
        &check_toml("corp", &["eu-west"], "1m"),
    );
    // Five reports of 950 KiB: a 4.6 MiB page, more than the kernel
    // buffers on both sides (4 MiB to send, a few KiB to receive) hold.
    let mut eu1 = c.agent("eu-1").await;
    let mut reports = Reports::open(&mut eu1).await;
    for i in 0..5 {
        let mut r = result(&format!("big-{i}"), "corp", i + 1);
        let mut report: serde_json::Value = serde_json::from_str(&r.report_json).unwrap();
        report["steps"][0]["detail"] = serde_json::Value::String("x".repeat(950 * 1024));
        r.report_json = report.to_string();
        let ack = reports.send(r).await;
        assert!(ack.stored, "{ack:?}");
    }
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(c.http).await.unwrap();
    s.write_all(format!("GET /api/v1/results?check=corp&limit=5 HTTP/1.1\r\nhost: test\r\nauthorization: Bearer {ADMIN_TOKEN}\r\n\r\n").as_bytes()).await.unwrap();
    // Read nothing until the coordinator has given up on the connection.
    let deadline = Instant::now() + GENEROUS;
    while !c.log().contains("no byte either way for http_idle_timeout") {
        assert!(Instant::now() < deadline, "a stalled reader was kept for {GENEROUS:?}:\n{}", c.log());
        tokio::time::sleep(Duration::from_millis(50)).await; // poll interval
    }
    let got = until_closed(&mut s, GENEROUS).await.expect("the connection is closed");
    assert!(got.starts_with("HTTP/1.1 200"), "{}", &got[..got.len().min(200)]);
    let (head, body) = got.split_once("\r\n\r\n").expect("the headers arrived");
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_string))
        .and_then(|v| v.trim().parse().ok())
        .expect("a content-length");
    assert!(body.len() < length, "only part of the answer was sent ({} of {length} bytes)", body.len());
    println!("stalled reader: {} of {length} bytes delivered before the close", body.len());
}

#[tokio::test]
async fn connections_beyond_the_caps_are_refused_and_memory_stays_flat() {
    let c = Coordinator::start(
        "http_max_connections = 24\nhttp_max_connections_per_client = 24\nhttp_header_timeout = \"5m\"\nhttp_idle_timeout = \"10m\"\n",
        "",
    );
    // Warm up (first requests allocate pools), then the baseline.
    expect_ok(c.api().get("/api/v1/checks").await);
    let (rss_before, _) = c.rss();
    // Fill the cap with kept-alive connections, each proven admitted.
    let mut held = Vec::new();
    for _ in 0..24 {
        let mut s = TcpStream::connect(c.http).await.unwrap();
        assert!(healthz_on(&mut s).await, "a connection within the cap is served");
        held.push(s);
    }
    // 400 more, each refused: a 503 that names the cap, or just closed.
    let mut named_the_cap = 0;
    for i in 0..400 {
        let mut s = TcpStream::connect(c.http).await.unwrap();
        let answer = until_closed(&mut s, GENEROUS)
            .await
            .unwrap_or_else(|| panic!("connection {} beyond the cap was kept open", 25 + i));
        assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 503"), "{answer}");
        if answer.contains("http_max_connections") {
            named_the_cap += 1;
        }
    }
    let (rss_after, _) = c.rss();
    let grew = rss_after.saturating_sub(rss_before);
    println!(
        "424 connections against a cap of 24: {named_the_cap} of 400 refusals carried the 503; coordinator RSS {} -> {} KiB",
        rss_before / 1024,
        rss_after / 1024
    );
    assert!(named_the_cap > 0, "refusals say which cap was hit");
    assert!(grew < 32 * 1024 * 1024, "RSS grew by {} KiB holding 24 connections and refusing 400", grew / 1024);
    // The held connections still work, and closing them frees their places.
    assert!(healthz_on(&mut held[0]).await);
    drop(held);
    let deadline = Instant::now() + GENEROUS;
    loop {
        let mut s = TcpStream::connect(c.http).await.unwrap();
        if healthz_on(&mut s).await {
            break;
        }
        assert!(Instant::now() < deadline, "closed connections never gave their places back");
        tokio::time::sleep(Duration::from_millis(20)).await; // poll interval
    }
}

#[tokio::test]
async fn one_client_address_cannot_take_every_connection() {
    let c = Coordinator::start("http_max_connections = 64\nhttp_max_connections_per_client = 3\n", "");
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(c.http).await.unwrap();
        assert!(healthz_on(&mut s).await);
        held.push(s);
    }
    let mut fourth = TcpStream::connect(c.http).await.unwrap();
    let answer = until_closed(&mut fourth, GENEROUS).await.expect("the fourth connection is refused");
    assert!(answer.is_empty() || answer.contains("http_max_connections_per_client"), "{answer}");
    let log = c.log();
    assert!(log.contains("admin API connection refused"), "the refusal is logged:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_assignment_streams_never_exceed_the_per_agent_cap() {
    let c = Coordinator::start("", &check_toml("corp", &["eu-west"], "1m"));
    let mut first = c.agent("eu-1").await;
    register(&mut first, "eu-1").await;
    // 12 calls at once, each on its own connection; the cap is 4.
    let mut clients = Vec::new();
    for _ in 0..12 {
        clients.push(c.agent("eu-1").await);
    }
    let go = std::sync::Arc::new(tokio::sync::Barrier::new(clients.len()));
    let calls: Vec<_> = clients
        .into_iter()
        .map(|mut agent| {
            let go = go.clone();
            tokio::spawn(async move {
                go.wait().await;
                let r = agent.watch_assignments(pb::WatchRequest { agent_id: String::new(), known: Vec::new() }).await;
                (agent, r)
            })
        })
        .collect();
    let mut open = Vec::new();
    let mut refused = 0;
    for call in calls {
        let (agent, r) = call.await.unwrap();
        match r {
            Ok(stream) => open.push((agent, stream.into_inner())),
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                refused += 1;
            }
        }
    }
    assert_eq!((open.len(), refused), (4, 8), "exactly the cap is admitted");
    let agent = expect_ok(c.api().get("/api/v1/agents/eu-1").await);
    assert_eq!(agent["sessions"], 4, "{agent}");
    // A closed stream gives its place back.
    drop(open.pop());
    let deadline = Instant::now() + GENEROUS;
    loop {
        let r = first.watch_assignments(pb::WatchRequest { agent_id: String::new(), known: Vec::new() }).await;
        if r.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the closed stream's place never came back: {r:?}");
        tokio::time::sleep(Duration::from_millis(20)).await; // poll interval
    }
}
