use std::sync::Arc;

use selfheal_bus::kv::MemoryKeyValue;

use super::*;

fn limiter(config: LimitsConfig) -> Limiter {
    Limiter::new(
        Arc::new(MemoryKeyValue::default()),
        Arc::new(MemoryKeyValue::default()),
        config,
    )
}

/// A record that does not parse fails closed: the actions it counts are refused with its key
/// named, actions elsewhere go on, and the record is left for a person to look at.
#[tokio::test]
async fn an_unreadable_record_refuses_what_it_counts_and_is_kept() -> Result<(), LimitError> {
    let kv: SharedKeyValue = Arc::new(MemoryKeyValue::default());
    let limiter = Limiter::new(kv.clone(), Arc::new(MemoryKeyValue::default()), LimitsConfig::default());
    let store = LimitError::Store;
    kv.create("service.checkout", "{not json".into()).await.map_err(store)?;
    let now = Utc::now();
    let Verdict::Refused(reason) = limiter.reserve("checkout", "a", "rollback", now).await? else {
        panic!("an unreadable record must refuse");
    };
    assert!(
        reason.contains("limits record service.checkout in selfheal_actions is unreadable"),
        "{reason}"
    );
    assert_eq!(
        limiter.preview("checkout", "a", "rollback", now, false).await?,
        Verdict::Refused(reason)
    );
    assert!(limiter.history("checkout", now).await?.is_empty());
    assert_eq!(limiter.reserve("cart", "b", "rollback", now).await?, Verdict::Allowed);
    // A record whose time does not parse is as unreadable as one that is not JSON.
    kv.create(
        "service.search",
        r#"[{"incident":"x","service":"search","action":"rollback","at":"yesterday"}]"#.into(),
    )
    .await
    .map_err(store)?;
    let Verdict::Refused(reason) = limiter.reserve("search", "d", "rollback", now).await? else {
        panic!("a record with a bad time must refuse");
    };
    assert!(
        reason.contains("limits record service.search in selfheal_actions is unreadable"),
        "{reason}"
    );
    assert!(reason.contains("\"yesterday\" is not an RFC 3339 time"), "{reason}");
    // Stored times keep their shape: RFC 3339 with milliseconds.
    let cart = kv
        .get("service.cart")
        .await
        .map_err(store)?
        .map(|e| e.value)
        .unwrap_or_default();
    let stored: serde_json::Value = serde_json::from_slice(&cart).unwrap_or_default();
    let at = stored[0]["at"].as_str().unwrap_or_default();
    assert!(at.len() == 24 && at.ends_with('Z') && at.as_bytes()[19] == b'.', "{at}");
    let kept = kv.get("service.checkout").await.map_err(store)?.map(|e| e.value);
    assert_eq!(kept.as_deref(), Some(&b"{not json"[..]), "never overwritten");

    let global = kv
        .get("global")
        .await
        .map_err(store)?
        .map(|e| e.revision)
        .unwrap_or_default();
    kv.update("global", "[{\"incident\": 1}]".into(), global)
        .await
        .map_err(store)?;
    let Verdict::Refused(reason) = limiter.reserve("cart", "c", "rollback", now).await? else {
        panic!("an unreadable global record must refuse every action");
    };
    assert!(reason.contains("limits record global"), "{reason}");
    Ok(())
}

#[tokio::test]
async fn per_service_limit_counts_incidents_once_and_expires() -> Result<(), LimitError> {
    // Without recently_fixed, records are kept only for the rate limit's window.
    let limiter = limiter(LimitsConfig {
        recently_fixed: Duration::ZERO,
        ..Default::default()
    });
    let t0 = Utc::now();
    assert_eq!(
        limiter.reserve("checkout", "a", "rollback", t0).await?,
        Verdict::Allowed
    );
    assert_eq!(
        limiter.reserve("checkout", "a", "rollback", t0).await?,
        Verdict::Allowed,
        "same incident again"
    );
    assert_eq!(
        limiter.reserve("checkout", "b", "rollback", t0).await?,
        Verdict::Allowed
    );
    let third = limiter.reserve("checkout", "c", "rollback", t0).await?;
    assert!(
        matches!(&third, Verdict::Refused(r) if r.contains("rate limit") && r.contains("limit 2 per 30m")),
        "{third:?}"
    );
    assert_eq!(
        limiter.reserve("cart", "d", "rollback", t0).await?,
        Verdict::Allowed,
        "other services unaffected"
    );
    let later = t0 + chrono::Duration::minutes(31);
    assert_eq!(
        limiter.reserve("checkout", "c", "rollback", later).await?,
        Verdict::Allowed
    );
    assert_eq!(limiter.history("checkout", later).await?.len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_made_at_once_are_taken_together_within_every_limit() -> Result<(), LimitError> {
    let limiter = limiter(LimitsConfig {
        global_max: 10,
        ..LimitsConfig::default()
    });
    let now = Utc::now();
    let asks: Vec<(String, String)> = (0..60)
        .map(|i| (format!("svc{}", i % 6), format!("incident{i}")))
        .collect();
    let verdicts = futures::future::join_all(asks.iter().map(|(service, incident)| {
        let limiter = limiter.clone();
        async move { limiter.reserve(service, incident, "rollback", now).await }
    }))
    .await;
    let mut allowed = Vec::new();
    for ((service, incident), verdict) in asks.iter().zip(verdicts) {
        match verdict? {
            Verdict::Allowed => allowed.push((service.clone(), incident.clone())),
            Verdict::Refused(reason) => assert!(
                reason.contains("rate limit") || reason.contains("global budget"),
                "{reason}"
            ),
        }
    }
    assert_eq!(allowed.len(), 10, "the global budget: {allowed:?}");
    for service in (0..6).map(|i| format!("svc{i}")) {
        let taken = allowed.iter().filter(|(s, _)| *s == service).count();
        assert!(taken <= 2, "{service} took {taken}");
        // What the bucket says agrees with the verdicts.
        assert_eq!(limiter.history(&service, now).await?.len(), taken, "{service}");
    }
    // Asked again, an allowed incident keeps its slot and takes no other.
    let (service, incident) = &allowed[0];
    assert_eq!(
        limiter.reserve(service, incident, "rollback", now).await?,
        Verdict::Allowed
    );
    assert_eq!(
        limiter.history(service, now).await?.len(),
        allowed.iter().filter(|(s, _)| s == service).count()
    );
    Ok(())
}

use selfheal_bus::kv::KeyValue as _;

/// A bucket where another replica fills `key` just before this one first writes it.
struct Raced {
    inner: MemoryKeyValue,
    key: String,
    theirs: std::sync::Mutex<Option<bytes::Bytes>>,
}

#[async_trait::async_trait]
impl selfheal_bus::kv::KeyValue for Raced {
    async fn get(&self, key: &str) -> Result<Option<selfheal_bus::kv::Entry>, KvError> {
        self.inner.get(key).await
    }
    async fn create(&self, key: &str, value: bytes::Bytes) -> Result<u64, KvError> {
        self.interfere(key).await;
        self.inner.create(key, value).await
    }
    async fn update(&self, key: &str, value: bytes::Bytes, revision: u64) -> Result<u64, KvError> {
        self.interfere(key).await;
        self.inner.update(key, value, revision).await
    }
    async fn keys(&self) -> Result<Vec<String>, KvError> {
        self.inner.keys().await
    }
}

impl Raced {
    async fn interfere(&self, key: &str) {
        let theirs = if key == self.key {
            self.theirs.lock().expect("lock").take()
        } else {
            None
        };
        if let Some(theirs) = theirs {
            let _ = self.inner.create(key, theirs).await;
        }
    }
}

#[tokio::test]
async fn a_reservation_refused_after_a_lost_race_holds_no_slot() -> Result<(), LimitError> {
    let now = Utc::now();
    let record = |incident: &str| ActionRecord::new(incident, "checkout", "rollback", now);
    // The other replica takes checkout's two slots between our read and our write.
    let theirs = serde_json::to_vec(&[record("theirs1"), record("theirs2")]).expect("json");
    let kv = Arc::new(Raced {
        inner: MemoryKeyValue::default(),
        key: "service.checkout".into(),
        theirs: std::sync::Mutex::new(Some(theirs.into())),
    });
    let limiter = Limiter::new(kv.clone(), Arc::new(MemoryKeyValue::default()), LimitsConfig::default());
    let verdict = limiter.reserve("checkout", "ours", "rollback", now).await?;
    assert!(
        matches!(&verdict, Verdict::Refused(r) if r.contains("rate limit")),
        "{verdict:?}"
    );
    let global: Vec<ActionRecord> = match kv.get("global").await.map_err(LimitError::Store)? {
        Some(entry) => serde_json::from_slice(&entry.value).expect("json"),
        None => Vec::new(),
    };
    assert!(
        global.iter().all(|r| r.incident != "ours"),
        "the refused incident holds no global slot: {global:?}"
    );
    Ok(())
}

#[tokio::test]
async fn global_budget_cooldown_and_kill_switch() -> Result<(), LimitError> {
    let limiter = limiter(LimitsConfig {
        global_max: 1,
        ..Default::default()
    });
    let now = Utc::now();
    assert_eq!(limiter.reserve("a", "1", "scale", now).await?, Verdict::Allowed);
    let refused = limiter.reserve("b", "2", "scale", now).await?;
    assert!(
        matches!(&refused, Verdict::Refused(r) if r.contains("global budget")),
        "{refused:?}"
    );
    assert!(
        limiter.history("b", now).await?.is_empty(),
        "the refused service's slot is given back"
    );

    let cooling = self::limiter(LimitsConfig {
        cooldown: Duration::from_secs(600),
        ..Default::default()
    });
    assert_eq!(cooling.reserve("a", "1", "restart", now).await?, Verdict::Allowed);
    let refused = cooling
        .reserve("a", "2", "restart", now + chrono::Duration::minutes(5))
        .await?;
    assert!(
        matches!(&refused, Verdict::Refused(r) if r.contains("cooldown")),
        "{refused:?}"
    );

    let off = self::limiter(LimitsConfig {
        kill_switch: true,
        ..Default::default()
    });
    assert!(matches!(off.reserve("a", "1", "rollback", now).await?, Verdict::Refused(r) if r.contains("kill switch")));
    Ok(())
}

#[tokio::test]
async fn a_kill_switch_left_on_in_the_old_place_is_carried_over_once() -> Result<(), LimitError> {
    let actions: SharedKeyValue = Arc::new(MemoryKeyValue::default());
    let control: SharedKeyValue = Arc::new(MemoryKeyValue::default());
    assert!(!carry_over_kill_switch(&actions, &control).await?, "nothing to carry");
    actions
        .create(KILL_SWITCH_KEY, "on".into())
        .await
        .map_err(LimitError::Store)?;
    assert!(carry_over_kill_switch(&actions, &control).await?);
    assert!(kill_switch_on(&control).await?, "still on after the upgrade");
    // Turned off in the new place: a restart does not turn it on again.
    set_kill_switch(&control, false).await?;
    assert!(!carry_over_kill_switch(&actions, &control).await?);
    assert!(!kill_switch_on(&control).await?);
    Ok(())
}

#[tokio::test]
async fn the_runtime_kill_switch_is_read_from_the_control_bucket() -> Result<(), LimitError> {
    let actions: SharedKeyValue = Arc::new(MemoryKeyValue::default());
    let control: SharedKeyValue = Arc::new(MemoryKeyValue::default());
    let limiter = Limiter::new(actions.clone(), control.clone(), LimitsConfig::default());
    let now = Utc::now();
    set_kill_switch(&control, true).await?;
    let refused = limiter.reserve("a", "1", "rollback", now).await?;
    assert!(
        matches!(&refused, Verdict::Refused(r) if r.contains("kill switch")),
        "{refused:?}"
    );
    assert!(
        actions.get(KILL_SWITCH_KEY).await.map_err(LimitError::Store)?.is_none(),
        "the switch is not kept among the reservations, which expire"
    );
    set_kill_switch(&control, false).await?;
    assert_eq!(limiter.reserve("a", "1", "rollback", now).await?, Verdict::Allowed);
    Ok(())
}

/// A verified fix is kept in its record; the same alert within `recently_fixed` is a repeat,
/// after it (or another alert, or a fix that was not verified) is not.
#[tokio::test]
async fn a_verified_fix_makes_a_repeat_within_the_window_a_refusal() -> Result<(), LimitError> {
    let limiter = limiter(LimitsConfig {
        recently_fixed: Duration::from_secs(3600),
        ..Default::default()
    });
    let now = Utc::now();
    assert_eq!(
        limiter
            .reserve_for("checkout", "first", "rollback", "HighErrorRate", now)
            .await?,
        Verdict::Allowed
    );
    // Escalated, not verified: no repeat.
    assert!(limiter.record_outcome("checkout", "first", "escalated", now).await?);
    let history = limiter.history("checkout", now).await?;
    assert_eq!(limiter.recently_fixed(&history, "HighErrorRate", now), None);
    let verified = now + chrono::Duration::minutes(5);
    assert!(
        limiter
            .record_outcome("checkout", "first", "verified", verified)
            .await?
    );
    assert!(
        !limiter
            .record_outcome("checkout", "unknown", "verified", verified)
            .await?
    );
    let later = now + chrono::Duration::minutes(20);
    let history = limiter.history("checkout", later).await?;
    assert_eq!(history[0].outcome.as_deref(), Some("verified"));
    assert_eq!(history[0].alertname, "HighErrorRate");
    let refusal = limiter
        .recently_fixed(&history, "HighErrorRate", later)
        .expect("a repeat within the hour");
    assert!(
        refusal.starts_with(
            "recently fixed: HighErrorRate on checkout was fixed by a rollback (incident first) verified at"
        ),
        "{refusal}"
    );
    assert_eq!(limiter.recently_fixed(&history, "HighCPU", later), None);
    let past = verified + chrono::Duration::minutes(61);
    assert_eq!(limiter.recently_fixed(&history, "HighErrorRate", past), None);
    // The record outlives the rate-limit window while recently_fixed needs it.
    let kept = limiter.history("checkout", now + chrono::Duration::minutes(45)).await?;
    assert_eq!(kept.len(), 1, "kept for recently_fixed");
    Ok(())
}
