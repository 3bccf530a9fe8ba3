//! What JetStream provides, tested on JetStream (a real nats-server), through selfheal's own bus:
//! a consumer's ack, nak and ack-wait redelivery; the consumer loop's dead letters (rejected,
//! failed on every delivery, and back once more after its service died on it) and their retry;
//! the notifier telling a sink once per event though the event is delivered again; a watched
//! bucket read from memory, its compare-and-set still decided by JetStream.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use selfheal_bus::{
    Bus, ConsumerSpec, Delivery, Headers, Outgoing,
    consumer::{self, Disposition, Handler},
    nats::{NatsBus, NatsOptions},
};
use selfheal_e2e::{Nats, wait_for};

async fn bus(nats: &Nats) -> anyhow::Result<NatsBus> {
    Ok(NatsBus::connect(NatsOptions::new(nats.url(), "bus-test")).await?)
}

fn message(subject: &str, id: &str) -> Outgoing {
    let mut headers = Headers::new();
    headers.insert("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    Outgoing {
        subject: subject.into(),
        msg_id: id.into(),
        headers,
        payload: id.as_bytes().to_vec().into(),
    }
}

async fn next(deliveries: &mut selfheal_bus::DeliveryStream) -> anyhow::Result<Delivery> {
    Ok(tokio::time::timeout(Duration::from_secs(10), deliveries.next())
        .await
        .context("no delivery in 10 s")?
        .context("the subscription ended")??)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_nak_and_ack_wait_behave_as_jetstream_says() -> anyhow::Result<()> {
    let nats = Nats::start().await?;
    let bus = bus(&nats).await?;
    let mut spec = ConsumerSpec::new("paths", &["selfheal.decisions.>"]);
    spec.ack_wait = Duration::from_secs(1);
    let mut deliveries = bus.subscribe(spec).await?;
    bus.publish(message("selfheal.decisions.a", "one")).await?;
    bus.publish(message("selfheal.decisions.b", "two")).await?;

    // Acked: gone.
    let one = next(&mut deliveries).await?;
    assert_eq!((&one.payload[..], one.delivered), (&b"one"[..], 1));
    one.ack().await?;
    // Nak'ed with a delay: back, once the delay is over, counted as the second delivery.
    let two = next(&mut deliveries).await?;
    assert_eq!((&two.payload[..], two.delivered), (&b"two"[..], 1));
    let naked = tokio::time::Instant::now();
    two.nak(Duration::from_millis(300)).await?;
    let again = next(&mut deliveries).await?;
    assert_eq!((&again.payload[..], again.delivered), (&b"two"[..], 2));
    assert!(naked.elapsed() >= Duration::from_millis(300), "{:?}", naked.elapsed());
    assert_eq!(
        again.headers.get("traceparent"),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
    // Not settled within ack_wait: back again.
    let taken = tokio::time::Instant::now();
    let third = next(&mut deliveries).await?;
    assert_eq!((&third.payload[..], third.delivered), (&b"two"[..], 3));
    assert!(taken.elapsed() >= Duration::from_millis(900), "{:?}", taken.elapsed());
    third.ack().await?;
    wait_for(Duration::from_secs(5), "nothing pending", || async {
        (bus.pending("paths").await.ok()? == 0).then_some(())
    })
    .await?;
    Ok(())
}

/// Rejects `*.poison`, fails `*.failing` until `healed`, handles the rest; counts its calls.
#[derive(Default)]
struct Picky {
    healed: AtomicBool,
    calls: AtomicUsize,
    handled: Mutex<Vec<String>>,
}

#[async_trait]
impl Handler for Picky {
    async fn handle(&self, delivery: &Delivery) -> Disposition {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if delivery.subject.ends_with(".poison") {
            return Disposition::Reject("undecodable Decision".into());
        }
        if delivery.subject.ends_with(".failing") && !self.healed.load(Ordering::SeqCst) {
            return Disposition::Retry(Duration::from_millis(20));
        }
        if let Ok(mut handled) = self.handled.lock() {
            handled.push(delivery.subject.clone());
        }
        Disposition::Ack
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_loop_keeps_what_it_gives_up_on_and_a_retry_carries_it_out() -> anyhow::Result<()> {
    let nats = Nats::start().await?;
    let bus = bus(&nats).await?;
    let shared: selfheal_bus::SharedBus = Arc::new(bus.clone());
    let handler = Arc::new(Picky::default());
    let mut spec = ConsumerSpec::new("picky", &["selfheal.decisions.>"]);
    spec.max_deliver = 3;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(consumer::run(
        shared.clone(),
        spec,
        handler.clone(),
        stopped.map(|_| ()),
    ));
    bus.publish(message("selfheal.decisions.poison", "p")).await?;
    bus.publish(message("selfheal.decisions.failing", "f")).await?;
    bus.publish(message("selfheal.decisions.fine", "ok")).await?;

    let letters = wait_for(Duration::from_secs(20), "two dead letters", || async {
        let letters = bus.dead_letters().await.ok()?;
        (letters.len() == 2).then_some(letters)
    })
    .await?;
    let poison = letters
        .iter()
        .find(|l| l.subject.ends_with(".poison"))
        .context("poison")?;
    let failing = letters
        .iter()
        .find(|l| l.subject.ends_with(".failing"))
        .context("failing")?;
    assert_eq!((poison.deliveries, poison.reason.as_str()), (1, "undecodable Decision"));
    assert_eq!(failing.deliveries, 3);
    assert!(
        failing.reason.contains("each of its 3 deliveries"),
        "{}",
        failing.reason
    );
    for letter in [poison, failing] {
        assert_eq!(letter.consumer, "picky");
        assert_eq!(
            letter.headers.get("traceparent"),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
    }
    // Terminated on the stream: nothing left for the consumer.
    wait_for(Duration::from_secs(5), "nothing pending", || async {
        (bus.pending("picky").await.ok()? == 0).then_some(())
    })
    .await?;
    assert_eq!(handler.calls.load(Ordering::SeqCst), 1 + 3 + 1);

    // The cause fixed, the retry carries the failing one out; its letter is gone.
    handler.healed.store(true, Ordering::SeqCst);
    let retried = bus.retry_dead_letter(failing.sequence).await?.context("the letter")?;
    assert_eq!(retried.subject, "selfheal.decisions.failing");
    wait_for(Duration::from_secs(10), "the retry handled", || async {
        let handled = handler.handled.lock().ok()?.clone();
        handled
            .contains(&"selfheal.decisions.failing".to_string())
            .then_some(())
    })
    .await?;
    let left: Vec<u64> = bus.dead_letters().await?.iter().map(|l| l.sequence).collect();
    assert_eq!(left, [poison.sequence]);
    assert!(bus.retry_dead_letter(failing.sequence).await?.is_none(), "retried once");
    let _ = stop.send(());
    running.await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_its_service_dies_on_every_time_is_kept_without_being_handled_again() -> anyhow::Result<()> {
    let nats = Nats::start().await?;
    let bus = bus(&nats).await?;
    let mut spec = ConsumerSpec::new("crashy", &["selfheal.decisions.>"]);
    spec.ack_wait = Duration::from_millis(500);
    spec.max_deliver = 2;
    bus.publish(message("selfheal.decisions.crash", "c")).await?;
    // Two deliveries taken and never settled: a service that died handling it, twice.
    {
        let mut deliveries = bus.subscribe(spec.clone()).await?;
        for expected in 1..=2 {
            let delivery = next(&mut deliveries).await?;
            assert_eq!(delivery.delivered, expected);
        }
    }
    let handler = Arc::new(Picky::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(consumer::run(
        Arc::new(bus.clone()),
        spec,
        handler.clone(),
        stopped.map(|_| ()),
    ));
    let letters = wait_for(Duration::from_secs(20), "the dead letter", || async {
        let letters = bus.dead_letters().await.ok()?;
        (!letters.is_empty()).then_some(letters)
    })
    .await?;
    assert_eq!(letters[0].deliveries, 3);
    assert!(
        letters[0].reason.contains("never handled to the end"),
        "{}",
        letters[0].reason
    );
    assert_eq!(
        handler.calls.load(Ordering::SeqCst),
        0,
        "the third delivery is not handed to the handler"
    );
    let _ = stop.send(());
    running.await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notifier_tells_once_per_event_though_it_comes_again() -> anyhow::Result<()> {
    use selfheal_notifier::{
        NotifyHandler,
        audit::SqlAuditStore,
        channel::{Channel, Route, WebhookChannel},
    };
    let nats = Nats::start().await?;
    let bus = bus(&nats).await?;
    let dir = tempfile::tempdir()?;
    let store = SqlAuditStore::connect(&format!("sqlite://{}", dir.path().join("audit.db").display())).await?;
    // A sink that fails twice, then records what it gets.
    let received = Arc::new(Mutex::new(Vec::<String>::new()));
    let failures = Arc::new(AtomicUsize::new(2));
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post({
            let (received, failures) = (received.clone(), failures.clone());
            move |body: String| async move {
                if failures
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |f| f.checked_sub(1))
                    .is_ok()
                {
                    return Err(axum::http::StatusCode::BAD_GATEWAY);
                }
                if let Ok(mut received) = received.lock() {
                    received.push(body);
                }
                Ok("ok")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    let webhook: Arc<dyn Channel> = Arc::new(WebhookChannel::new(
        selfheal_config::Secret::new(url),
        None,
        Duration::from_secs(5),
    )?);
    let routes = vec![Route {
        channel: webhook,
        severities: vec![],
        services: vec![],
    }];
    let handler = Arc::new(NotifyHandler::new(Arc::new(store), routes, Duration::from_millis(20)));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(consumer::run(
        Arc::new(bus.clone()),
        ConsumerSpec::new("notifier", &[selfheal_bus::subjects::DECISIONS]),
        handler,
        stopped.map(|_| ()),
    ));
    // An escalation (people are told), published twice under two ids: the second is what a
    // redelivery past the duplicate window brings.
    let decision = selfheal_e2e::decision(
        "esc1",
        &[
            ("alertname", "HighErrorRate"),
            ("service", "checkout"),
            ("severity", "critical"),
        ],
        selfheal_proto::v1::Action::Escalate,
        selfheal_proto::v1::Approval::Required,
    );
    for copy in 0..2 {
        bus.publish(Outgoing {
            subject: selfheal_bus::subjects::decision("checkout"),
            msg_id: format!("decision.esc1.{copy}"),
            headers: Headers::new(),
            payload: prost::Message::encode_to_vec(&decision).into(),
        })
        .await?;
    }
    // Told (after the two failures), then every delivery settled: nothing more can come.
    wait_for(Duration::from_secs(20), "the sink told", || async {
        (!received.lock().ok()?.is_empty()).then_some(())
    })
    .await?;
    wait_for(Duration::from_secs(20), "every delivery settled", || async {
        (bus.pending("notifier").await.ok()? == 0).then_some(())
    })
    .await?;
    let told = received.lock().map(|r| r.clone()).unwrap_or_default();
    assert_eq!(told.len(), 1, "told once, after two failures: {told:?}");
    assert!(told[0].contains("esc1"), "{}", told[0]);
    let _ = stop.send(());
    running.await??;
    Ok(())
}

/// A bucket that counts the reads that reach it.
struct CountedReads {
    bucket: selfheal_bus::kv::SharedKeyValue,
    gets: AtomicUsize,
}

#[async_trait]
impl selfheal_bus::kv::KeyValue for CountedReads {
    async fn get(&self, key: &str) -> Result<Option<selfheal_bus::kv::Entry>, selfheal_bus::kv::KvError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.bucket.get(key).await
    }
    async fn create(&self, key: &str, value: bytes::Bytes) -> Result<u64, selfheal_bus::kv::KvError> {
        self.bucket.create(key, value).await
    }
    async fn update(&self, key: &str, value: bytes::Bytes, revision: u64) -> Result<u64, selfheal_bus::kv::KvError> {
        self.bucket.update(key, value, revision).await
    }
    async fn keys(&self) -> Result<Vec<String>, selfheal_bus::kv::KvError> {
        self.bucket.keys().await
    }
    async fn watch(&self) -> Result<Option<selfheal_bus::kv::Changes>, selfheal_bus::kv::KvError> {
        self.bucket.watch().await
    }
}

/// A watched bucket (`selfheal_bus::watched`) on a JetStream KV bucket another connection writes
/// to: what was there before the watch opened, another replica's writes once the watch brought
/// them, absent keys and its own writes are all read without a round trip; a compare-and-set on
/// a revision another replica has moved past still fails, and the key is then read from the
/// bucket; `create` of a key that exists is refused as the bucket refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_bucket_is_read_from_memory_and_a_stale_compare_and_set_still_fails() -> anyhow::Result<()> {
    use selfheal_bus::kv::{KeyValue as _, KvError};
    let nats = Nats::start().await?;
    let (here, there) = (bus(&nats).await?, bus(&nats).await?);
    let other = there.key_value("watched_test", Duration::ZERO).await?;
    let first = other.create("service.a", "1".into()).await?;
    let counted = Arc::new(CountedReads {
        bucket: here.key_value("watched_test", Duration::ZERO).await?,
        gets: AtomicUsize::new(0),
    });
    let watched = selfheal_bus::watched::Watched::new("watched_test", counted.clone());
    tokio::time::timeout(Duration::from_secs(10), watched.caught_up(first))
        .await
        .context("the watch did not open in 10 s")?;
    let gets = counted.gets.load(Ordering::SeqCst);

    let read = |key: &'static str| {
        let watched = &watched;
        async move {
            anyhow::Ok(
                watched
                    .get(key)
                    .await?
                    .map(|entry| (String::from_utf8_lossy(&entry.value).into_owned(), entry.revision)),
            )
        }
    };
    assert_eq!(
        read("service.a").await?,
        Some(("1".into(), first)),
        "there before the watch"
    );
    let second = other.update("service.a", "2".into(), first).await?;
    tokio::time::timeout(Duration::from_secs(10), watched.caught_up(second))
        .await
        .context("another replica's write did not come in 10 s")?;
    assert_eq!(
        read("service.a").await?,
        Some(("2".into(), second)),
        "another replica's write"
    );
    assert_eq!(read("service.none").await?, None, "an absent key");
    let own = watched.update("service.a", "3".into(), second).await?;
    assert_eq!(
        read("service.a").await?,
        Some(("3".into(), own)),
        "its own write, at once"
    );
    let created = watched.create("service.b", "b".into()).await?;
    assert_eq!(read("service.b").await?, Some(("b".into(), created)));
    let mut keys = watched.keys().await?;
    keys.sort();
    assert_eq!(keys, ["service.a", "service.b"]);
    assert_eq!(
        counted.gets.load(Ordering::SeqCst),
        gets,
        "no read went to the bucket while the watch was open"
    );

    // Another replica moves the key on; a compare-and-set on the revision read here fails,
    // whether or not the watch has brought the new value yet, and the next read is the bucket's.
    let moved = other.update("service.a", "4".into(), own).await?;
    let stale = watched.update("service.a", "x".into(), own).await;
    assert!(matches!(stale, Err(KvError::Conflict { .. })), "{stale:?}");
    assert_eq!(
        read("service.a").await?,
        Some(("4".into(), moved)),
        "after a lost compare-and-set"
    );
    let exists = watched.create("service.b", "again".into()).await;
    assert!(matches!(exists, Err(KvError::Exists(_))), "{exists:?}");
    assert_eq!(read("service.b").await?, Some(("b".into(), created)));
    assert_eq!(
        counted.gets.load(Ordering::SeqCst),
        gets + 2,
        "each key a compare-and-set lost on was read from the bucket once"
    );
    assert_eq!(read("service.a").await?, Some(("4".into(), moved)));
    assert_eq!(counted.gets.load(Ordering::SeqCst), gets + 2, "then from memory again");
    Ok(())
}
