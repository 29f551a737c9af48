//! Realtime over real sockets: topics, resume without gaps or duplicates, resync, a stalled
//! subscriber, the connection limit, heartbeats, and the WebSocket transport.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use crate::{Backend, Options, TestApp, Transport};

const WAIT: Duration = Duration::from_secs(10);

/// A minimal SSE reader over reqwest's byte stream.
struct SseClient {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
}

#[derive(Debug)]
enum Frame {
    Event { id: String, data: serde_json::Value },
    Comment(String),
}

impl SseClient {
    async fn connect(app: &TestApp, query: &str, last_event_id: Option<&str>) -> SseClient {
        let mut request =
            reqwest::Client::new().get(format!("http://{}/v1/events{query}", app.addr()));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        SseClient {
            body: Box::pin(response.bytes_stream()),
            buffer: String::new(),
        }
    }

    /// The next frame, or `None` at the end of the stream.
    async fn frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let raw: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut data, mut comment) = (None, String::new(), None);
                for line in raw.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    } else if let Some(v) = line.strip_prefix(':') {
                        comment = Some(v.trim().to_owned());
                    }
                }
                return Some(match (id, comment) {
                    (Some(id), _) => Frame::Event {
                        id,
                        data: serde_json::from_str(&data).unwrap(),
                    },
                    (None, Some(text)) => Frame::Comment(text),
                    (None, None) => continue,
                });
            }
            let chunk = tokio::time::timeout(WAIT, self.body.next())
                .await
                .expect("an SSE frame in time")?;
            self.buffer
                .push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        }
    }

    /// The next event (skipping heartbeats, which must not keep the wait for it alive).
    async fn event(&mut self) -> (String, serde_json::Value) {
        let next = async {
            loop {
                match self.frame().await.expect("the stream is open") {
                    Frame::Event { id, data } => return (id, data),
                    Frame::Comment(_) => continue,
                }
            }
        };
        tokio::time::timeout(WAIT, next)
            .await
            .expect("an SSE event in time")
    }
}

async fn create(app: &TestApp, author: &str) -> String {
    app.create(author, &format!("by {author}"), &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_filters_topics_and_resumes_without_gaps_or_duplicates() {
    let app = TestApp::start(Backend::Sqlite, Transport::Socket).await;
    let mut bob = SseClient::connect(&app, "?topics=author:bob", None).await;
    create(&app, "ann").await;
    let first = create(&app, "bob").await;
    let second = create(&app, "bob").await;
    app.relay().await;
    let (_, one) = bob.event().await;
    let (last_id, two) = bob.event().await;
    assert_eq!(
        (one["type"].as_str(), one["post_id"].as_str()),
        (Some("post.created"), Some(first.as_str()))
    );
    assert_eq!(
        one["post"]["author_id"], "bob",
        "only bob's posts on author:bob"
    );
    assert_eq!(two["post_id"], second.as_str());
    assert_eq!(two["id"], last_id.as_str(), "the SSE id is the event id");
    assert_eq!(
        app.posts.log().narrow_channels(),
        1,
        "author:bob has a channel of its own"
    );
    drop(bob);
    let deadline = std::time::Instant::now() + WAIT;
    while app.posts.log().narrow_channels() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "a topic's channel goes with its last subscriber"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Missed while away: two of bob's, one of ann's.
    let third = create(&app, "bob").await;
    create(&app, "ann").await;
    let fourth = create(&app, "bob").await;
    app.relay().await;
    let mut resumed = SseClient::connect(&app, "?topics=author:bob", Some(&last_id)).await;
    assert_eq!(resumed.event().await.1["post_id"], third.as_str());
    assert_eq!(resumed.event().await.1["post_id"], fourth.as_str());
    let fifth = create(&app, "bob").await;
    app.relay().await;
    assert_eq!(
        resumed.event().await.1["post_id"],
        fifth.as_str(),
        "live after the backlog, nothing twice"
    );

    // post:{id} follows one post through its versions, in order.
    let mut one_post = SseClient::connect(&app, &format!("?topics=post:{fifth}"), None).await;
    for title in ["v2", "v3"] {
        let body = format!(r#"{{"title":"{title}"}}"#);
        let reply = app
            .send(
                axum::http::Method::PATCH,
                &format!("/v1/posts/{fifth}"),
                &[],
                Some(&body),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    app.send(
        axum::http::Method::DELETE,
        &format!("/v1/posts/{fifth}"),
        &[],
        None,
    )
    .await;
    app.relay().await;
    let versions: Vec<(String, i64)> = [
        one_post.event().await,
        one_post.event().await,
        one_post.event().await,
    ]
    .into_iter()
    .map(|(_, e)| {
        (
            e["type"].as_str().unwrap().to_owned(),
            e["version"].as_i64().unwrap(),
        )
    })
    .collect();
    assert_eq!(
        versions,
        [
            ("post.updated".to_owned(), 2),
            ("post.updated".to_owned(), 3),
            ("post.deleted".to_owned(), 4)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_position_gets_a_resync_never_a_silent_gap() {
    let options = Options {
        retention: 3,
        ..Options::default()
    };
    let app = TestApp::with_options(Backend::Sqlite, Transport::Socket, options).await;
    let mut watcher = SseClient::connect(&app, "", None).await;
    for _ in 0..5 {
        create(&app, "ann").await;
    }
    app.relay().await;
    let (oldest, _) = watcher.event().await;
    let mut newest = String::new();
    for _ in 0..4 {
        newest = watcher.event().await.0;
    }
    // The log keeps 3 events: resuming after the first one would skip the second.
    let mut late = SseClient::connect(&app, "", Some(&oldest)).await;
    let (id, resync) = late.event().await;
    assert_eq!(resync["type"], "resync");
    assert_eq!(id, newest, "resync names the position to continue from");
    let next = create(&app, "ann").await;
    app.relay().await;
    assert_eq!(
        late.event().await.1["post_id"],
        next.as_str(),
        "and the stream continues live"
    );

    for unknown in ["nonsense", "1-1"] {
        let mut client = SseClient::connect(&app, "", Some(unknown)).await;
        assert_eq!(client.event().await.1["type"], "resync", "{unknown}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_neither_delays_others_nor_misses_events_silently() {
    let options = Options {
        lag: 8,
        ..Options::default()
    };
    let app = TestApp::with_options(Backend::Sqlite, Transport::Socket, options).await;
    // A client that subscribes and then reads nothing.
    let mut stalled = tokio::net::TcpStream::connect(app.addr()).await.unwrap();
    stalled
        .write_all(b"GET /v1/events HTTP/1.0\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut healthy = SseClient::connect(&app, "", None).await;

    // Events big enough to fill the stalled socket's buffers many times over.
    let body = "x".repeat(60_000);
    let mut ids = Vec::new();
    for i in 0..160 {
        let json =
            serde_json::json!({"author_id": "ann", "title": format!("big {i}"), "body": body});
        let reply = app.post("/v1/posts", &json.to_string()).await;
        ids.push(reply.json()["id"].as_str().unwrap().to_owned());
        if i % 16 == 15 {
            app.relay().await;
            for id in &ids[i - 15..=i] {
                assert_eq!(
                    &healthy.event().await.1["post_id"],
                    id.as_str(),
                    "the healthy subscriber keeps up"
                );
            }
        }
    }

    // The stalled one, reading at last, finds a resync and then the end of its stream.
    let mut received = Vec::new();
    let read = tokio::time::timeout(WAIT, stalled.read_to_end(&mut received)).await;
    assert!(read.is_ok(), "the server closed the stalled connection");
    let text = String::from_utf8_lossy(&received);
    assert!(
        text.contains(r#""type":"resync""#),
        "a lagging subscriber is told to resync"
    );
    let events = text.matches("\ndata:").count() + usize::from(text.starts_with("data:"));
    assert!(
        events < ids.len(),
        "it did not get everything ({events} events), so it had to be told"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_get_503() {
    let options = Options {
        max_connections: 2,
        ..Options::default()
    };
    let app = TestApp::with_options(Backend::Sqlite, Transport::Socket, options).await;
    let first = SseClient::connect(&app, "", None).await;
    let _second = SseClient::connect(&app, "", None).await;
    let third = reqwest::get(format!("http://{}/v1/events", app.addr()))
        .await
        .unwrap();
    assert_eq!(third.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(third.headers().contains_key("retry-after"));
    let body: serde_json::Value = third.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable");

    drop(first);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let retry = reqwest::get(format!("http://{}/v1/events", app.addr()))
            .await
            .unwrap();
        if retry.status() == StatusCode::OK {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a closed connection frees its slot"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_streams_get_heartbeats() {
    let app = TestApp::start(Backend::Sqlite, Transport::Socket).await;
    let mut sse = SseClient::connect(&app, "", None).await;
    match sse.frame().await.unwrap() {
        Frame::Comment(text) => assert_eq!(text, "heartbeat"),
        other => panic!("expected a heartbeat comment, got {other:?}"),
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/v1/ws", app.addr()))
        .await
        .unwrap();
    let frame = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(frame, Message::Ping(_)), "{frame:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_carries_the_same_events_and_resumes_with_since() {
    let app = TestApp::start(Backend::Sqlite, Transport::Socket).await;
    let url = format!("ws://{}/v1/ws?topics=posts", app.addr());
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    let first = create(&app, "ann").await;
    app.relay().await;
    let event = next_text(&mut ws).await;
    assert_eq!(
        (event["type"].as_str(), event["post_id"].as_str()),
        (Some("post.created"), Some(first.as_str()))
    );
    assert_eq!(event["post"]["title"], "by ann");
    let last = event["id"].as_str().unwrap().to_owned();
    ws.close(None).await.unwrap();

    let missed: Vec<String> = vec![create(&app, "ann").await, create(&app, "bob").await];
    app.relay().await;
    let (mut resumed, _) = tokio_tungstenite::connect_async(format!("{url}&since={last}"))
        .await
        .unwrap();
    for id in &missed {
        assert_eq!(next_text(&mut resumed).await["post_id"], id.as_str());
    }

    let bad = reqwest::get(format!("http://{}/v1/events?topics=bogus", app.addr()))
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = bad.json().await.unwrap();
    assert_eq!(body["error"]["field"], "topics");
}

async fn next_text(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> serde_json::Value {
    // One deadline for the event, not one per frame: heartbeat pings must not keep a wait for
    // an event that never comes going for ever.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("an event in time")
            .unwrap()
            .unwrap()
        {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// One thread: the stream's task runs only when the test awaits, so a relay round's events are
/// all queued before it looks (with two threads it may take them one by one as they come).
#[tokio::test(flavor = "current_thread")]
async fn websocket_bursts_arrive_whole_in_order_and_filtered() {
    let (app, first) = burst_app().await;
    // Two topics: the all-events channel, filtered per subscriber.
    let url = format!("ws://{}/v1/ws?topics=author:ann,post:{first}", app.addr());
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    // 120 changes published by one relay round arrive queued at once: they are written in
    // batches (more than one batch's worth: an event taken must be written, also at a batch's
    // end), and bob's (but for the post asked for by id) are passed over inside a batch.
    let wanted = burst(&app, &first).await;
    app.relay().await;
    let mut events = Vec::new();
    for _ in 0..wanted.len() {
        events.push(next_text(&mut ws).await);
    }
    assert_the_burst(&events, &wanted);

    // A subscriber whose queue overflows is told to resync, then the connection closes.
    let app = lagging_app().await;
    let (mut lagging, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/v1/ws", app.addr()).as_str())
            .await
            .unwrap();
    for _ in 0..30 {
        create(&app, "ann").await;
    }
    app.relay().await;
    let mut saw_resync = false;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, lagging.next())
            .await
            .expect("the resync and the close in time")
        {
            Some(Ok(Message::Text(text))) => {
                let event: serde_json::Value = serde_json::from_str(&text).unwrap();
                if event["type"] == "resync" {
                    saw_resync = true;
                }
            }
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(_)) => {}
        }
    }
    assert!(
        saw_resync,
        "the lagging subscriber was told to resync before the close"
    );
}

/// Checks that `events` are the burst's `wanted` events: each once, in order, nothing else.
fn assert_the_burst(events: &[serde_json::Value], wanted: &[String]) {
    for pair in events.windows(2) {
        let (before, after) = (
            pair[0]["id"].as_str().unwrap(),
            pair[1]["id"].as_str().unwrap(),
        );
        assert!(
            position_after(after, before),
            "{after} after {before}: in order"
        );
    }
    let got: Vec<&str> = events
        .iter()
        .map(|e| e["post_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        got, wanted,
        "each wanted event once, in order, nothing else"
    );
}

/// A server whose subscribers may fall far behind, with one post of bob's published.
async fn burst_app() -> (TestApp, String) {
    let options = Options {
        lag: 1000,
        ..Options::default()
    };
    let app = TestApp::with_options(Backend::Sqlite, Transport::Socket, options).await;
    let first = create(&app, "bob").await;
    app.relay().await;
    (app, first)
}

/// A server whose subscribers may fall 4 events behind before they are told to resync.
async fn lagging_app() -> TestApp {
    let options = Options {
        lag: 4,
        ..Options::default()
    };
    TestApp::with_options(Backend::Sqlite, Transport::Socket, options).await
}

/// Publishes 120 changes, half ann's and half bob's, with an edit of `first` among them, and
/// returns the post ids a subscriber of `author:ann,post:{first}` must get, in order.
async fn burst(app: &TestApp, first: &str) -> Vec<String> {
    let mut wanted = Vec::new();
    for i in 0..120 {
        if i % 2 == 0 {
            wanted.push(create(app, "ann").await);
        } else {
            create(app, "bob").await;
        }
        if i == 20 {
            let patch = serde_json::json!({"title": "edited"}).to_string();
            let path = format!("/v1/posts/{first}");
            let reply = app.send(Method::PATCH, &path, &[], Some(&patch)).await;
            assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
            wanted.push(first.to_owned());
        }
    }
    wanted
}

/// The same over SSE, whose writes also carry every event already queued (joined into one
/// chunk): each arrives whole, once, in order, filtered; a lagging subscriber gets its resync,
/// then the stream ends.
#[tokio::test(flavor = "current_thread")]
async fn sse_bursts_arrive_whole_in_order_and_filtered() {
    let (app, first) = burst_app().await;
    let mut sse = SseClient::connect(&app, &format!("?topics=author:ann,post:{first}"), None).await;
    let wanted = burst(&app, &first).await;
    app.relay().await;
    let mut events = Vec::new();
    for _ in 0..wanted.len() {
        let (id, event) = sse.event().await;
        assert_eq!(event["id"], id.as_str(), "the id: line is the event's id");
        events.push(event);
    }
    assert_the_burst(&events, &wanted);

    let app = lagging_app().await;
    let mut lagging = SseClient::connect(&app, "", None).await;
    for _ in 0..30 {
        create(&app, "ann").await;
    }
    app.relay().await;
    let mut saw_resync = false;
    let to_the_end = async {
        while let Some(frame) = lagging.frame().await {
            if let Frame::Event { data, .. } = frame {
                assert!(!saw_resync, "nothing after the resync: {data}");
                saw_resync = data["type"] == "resync";
            }
        }
    };
    tokio::time::timeout(WAIT, to_the_end)
        .await
        .expect("the stream ends in time");
    assert!(
        saw_resync,
        "the lagging subscriber was told to resync, then the stream ended"
    );
}

/// Whether event id `a` comes after `b` (`epoch-seq`).
fn position_after(a: &str, b: &str) -> bool {
    let parse = |s: &str| {
        let (epoch, seq) = s.split_once('-').unwrap();
        (epoch.parse::<u64>().unwrap(), seq.parse::<u64>().unwrap())
    };
    parse(a) > parse(b)
}
